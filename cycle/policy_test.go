package cycle

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestPolicyDefaults(t *testing.T) {
	p := Policy{}.WithDefaults()
	if !equalPolicy(p, DefaultPolicy()) {
		t.Fatalf("WithDefaults of an empty policy = %+v; want DefaultPolicy", p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.Updates != UpdatesKernel || p.Mode != ModeAutomatic || p.RebootMethod != RebootLogind || p.NoPeer != NoPeerWait {
		t.Errorf("defaults: %+v", p)
	}
	// Set keys are kept.
	q := Policy{Mode: ModeNotify, RetryInterval: time.Minute}.WithDefaults()
	if q.Mode != ModeNotify || q.RetryInterval != time.Minute || q.CheckInterval != time.Hour {
		t.Errorf("WithDefaults overwrote set keys: %+v", q)
	}
}

func equalPolicy(a, b Policy) bool {
	return slices.EqualFunc(a.Windows, b.Windows, func(x, y Window) bool {
		return slices.Equal(x.Days, y.Days) && x.Start == y.Start && x.Length == y.Length && x.TimeZone == y.TimeZone
	}) && a.Updates == b.Updates && a.Mode == b.Mode && a.RebootMethod == b.RebootMethod && a.NoPeer == b.NoPeer &&
		a.CheckInterval == b.CheckInterval && a.RetryInterval == b.RetryInterval &&
		a.EvacuationTimeout == b.EvacuationTimeout && a.ReturnTimeout == b.ReturnTimeout &&
		a.InstallTimeout == b.InstallTimeout && a.RebootTimeout == b.RebootTimeout &&
		a.ExternalInstallTimeout == b.ExternalInstallTimeout && a.MaxAttempts == b.MaxAttempts
}

func TestPolicyValidate(t *testing.T) {
	win := func(days []string, start string, length time.Duration, tz string) Policy {
		return Policy{Windows: []Window{{Days: []string{"daily"}, Start: "01:00", Length: time.Hour}, {Days: days, Start: start, Length: length, TimeZone: tz}}}
	}
	for _, tc := range []struct {
		p       Policy
		key     string
		message string
	}{
		{Policy{Updates: "security"}, "updates", `must be "kernel" or "all", got "security"`},
		{Policy{Mode: "auto"}, "mode", `must be "automatic" or "notify"`},
		{Policy{RebootMethod: "systemctl"}, "reboot_method", `must be "logind" or "kexec"`},
		{Policy{NoPeer: "reboot"}, "no_peer", `must be "wait" or "local-checkpoint"`},
		{Policy{RetryInterval: -time.Minute}, "retry_interval", "at least 1s"},
		{Policy{RebootTimeout: time.Millisecond}, "reboot_timeout", "at least 1s"},
		{Policy{MaxAttempts: -1}, "max_attempts", "at least 1"},
		{win(nil, "02:00", time.Hour, ""), "window[1].days", "is required"},
		{win([]string{"mon", "funday"}, "02:00", time.Hour, ""), "window[1].days", `unknown day "funday"`},
		{win([]string{"mon"}, "24:00", time.Hour, ""), "window[1].start", `"HH:MM"`},
		{win([]string{"mon"}, "2:5", time.Hour, ""), "window[1].start", `got "2:5"`},
		{win([]string{"mon"}, "", time.Hour, ""), "window[1].start", `got ""`},
		{win([]string{"mon"}, "02:00", 0, ""), "window[1].length", "from 1m to 168h"},
		{win([]string{"mon"}, "02:00", 200*time.Hour, ""), "window[1].length", "from 1m to 168h"},
		{win([]string{"mon"}, "02:00", time.Hour, "Mars/Olympus_Mons"), "window[1].time_zone", `unknown time zone "Mars/Olympus_Mons"`},
	} {
		err := tc.p.WithDefaults().Validate()
		pe, ok := err.(*PolicyError)
		if !ok || pe.Key != tc.key || !strings.Contains(pe.Msg, tc.message) {
			t.Errorf("%+v: %v; want a *PolicyError for %s saying %q", tc.p, err, tc.key, tc.message)
			continue
		}
		if !strings.HasPrefix(err.Error(), "update."+tc.key+": ") {
			t.Errorf("error text %q does not name update.%s", err, tc.key)
		}
		if _, err := New(Config{StateFile: "x", Policy: tc.p, Detector: fake{}, Pods: fake{}, Peers: fake{}, Lock: fake{},
			Inhibitor: fake{}, Installer: fake{}, Rebooter: fake{}}); err == nil {
			t.Errorf("New accepted %+v", tc.p)
		}
	}
	for _, ok := range []Policy{
		{},
		{Updates: UpdatesAll, Mode: ModeNotify, RebootMethod: RebootKexec, NoPeer: NoPeerLocalCheckpoint},
		win([]string{"Mon", "wednesday", "weekends"}, "0:00", time.Minute, "local"),
		win([]string{"daily"}, "23:59", 168*time.Hour, "America/New_York"),
	} {
		if err := ok.WithDefaults().Validate(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

// docBlock returns the body of the first fenced block of the given kind
// in docs/update-cycle.md.
func docBlock(t *testing.T, kind string) string {
	t.Helper()
	data, err := os.ReadFile("../docs/update-cycle.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i := strings.Index(doc, "```"+kind+"\n")
	if i < 0 {
		t.Fatalf("docs/update-cycle.md has no %s block", kind)
	}
	body := doc[i+len(kind)+4:]
	return body[:strings.Index(body, "```")]
}

func TestDocumentedExampleDecodes(t *testing.T) {
	var cfg struct {
		Update Policy `toml:"update"`
	}
	md, err := toml.Decode(docBlock(t, "toml"), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("keys in the documented example that Policy does not know: %v", u)
	}
	p := cfg.Update
	if err := p.WithDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
	// The example spells out the defaults.
	def := DefaultPolicy()
	def.Windows = p.Windows
	if !equalPolicy(p, def) {
		t.Errorf("documented example %+v differs from DefaultPolicy %+v", p, def)
	}
	if len(p.Windows) != 2 || p.Windows[0].Length != 3*time.Hour || p.Windows[1].Length != 90*time.Minute || p.Windows[0].TimeZone != "Europe/Berlin" {
		t.Errorf("windows: %+v", p.Windows)
	}
}

func TestDocumentedDiagramMatchesTable(t *testing.T) {
	edge := regexp.MustCompile(`^\s*(\w+) --> (\w+)`)
	kebab := regexp.MustCompile(`([a-z])([A-Z])`)
	got := map[[2]State]bool{}
	for _, line := range strings.Split(docBlock(t, "mermaid"), "\n") {
		m := edge.FindStringSubmatch(line)
		if m == nil || m[1] == "" {
			continue
		}
		name := func(s string) State { return State(strings.ToLower(kebab.ReplaceAllString(s, "$1-$2"))) }
		got[[2]State{name(m[1]), name(m[2])}] = true
	}
	want := map[[2]State]bool{}
	for _, from := range AllStates() {
		for _, to := range from.Next() {
			want[[2]State{from, to}] = true
			if !got[[2]State{from, to}] {
				t.Errorf("the diagram lacks %s → %s", from, to)
			}
		}
	}
	for e := range got {
		if !want[e] {
			t.Errorf("the diagram has %s → %s, which the table does not", e[0], e[1])
		}
	}
}
