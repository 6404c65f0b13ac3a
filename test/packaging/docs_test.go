package packaging

// The tests in this file need neither root nor packaging tools, so they
// carry no build tag and run with every `go test ./...`: they keep the
// hand-written man pages, the bash completion and the spec file in step with
// the code they describe. The package builds and installs are in the
// roottest files (make test-packaging).

import (
	"bufio"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/autopod/autopod/agent"
	"github.com/autopod/autopod/pods"
)

func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// changelogVersion returns the version of debian/changelog's first entry,
// the version of both packages.
func changelogVersion(t testing.TB, changelog string) string {
	t.Helper()
	f, err := os.Open(changelog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if sc.Scan() {
		line := sc.Text()
		if i, j := strings.Index(line, "("), strings.Index(line, ")"); strings.HasPrefix(line, "autopod ") && i > 0 && j > i {
			return line[i+1 : j]
		}
	}
	t.Fatalf("%s: no \"autopod (VERSION)\" first line", changelog)
	return ""
}

const manDir = "packaging/usr/share/man"

// manText returns a man page with roff's escaped hyphens and quotes made
// plain, so that "\-\-config" matches "--config".
func manText(t *testing.T, page string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), manDir, page))
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer(`\-`, "-", `\(dq`, `"`, `\(aq`, "'").Replace(string(data))
}

// section returns the text of a man page from ".SH title" to the next ".SH".
func section(t *testing.T, man, title string) string {
	t.Helper()
	start := strings.Index(man, "\n.SH "+title+"\n")
	if start < 0 {
		t.Fatalf("no section %q", title)
	}
	rest := man[start+len(title)+5:]
	if end := strings.Index(rest, "\n.SH "); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

// helpOutput builds a command of this tree and returns its --help text.
func helpOutput(t *testing.T, pkg string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command(goTool, "build", "-o", bin, pkg)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", pkg, err, out)
	}
	return string(out)
}

var longOption = regexp.MustCompile(`--[a-z][a-z-]*[a-z]`)

// options returns the long options mentioned in text, each once.
func options(text string) []string {
	o := longOption.FindAllString(text, -1)
	slices.Sort(o)
	return slices.Compact(o)
}

// ctlCommands returns autopodctl's commands and aliases from the COMMANDS
// section of its --help, one per line ("pods (list)", "migrate NAME --to
// PEER", "peer remove NAME (peer rm)"): a command is its first word, plus
// the second if that is a lower-case word (a sub-command: "peer add").
func ctlCommands(t *testing.T, help string) []string {
	t.Helper()
	start := strings.Index(help, "\nCOMMANDS\n")
	end := strings.Index(help, "\nOPTIONS\n")
	if start < 0 || end < start {
		t.Fatalf("no COMMANDS section in autopodctl --help:\n%s", help)
	}
	word := regexp.MustCompile(`^[a-z]+$`)
	var cmds []string
	for _, l := range strings.Split(help[start:end], "\n") {
		if !strings.HasPrefix(l, "    ") || strings.HasPrefix(l, "     ") {
			continue
		}
		head, aliases, _ := strings.Cut(l, "(")
		f := strings.Fields(head)
		cmd := f[0]
		if len(f) > 1 && word.MatchString(f[1]) {
			cmd += " " + f[1]
		}
		cmds = append(cmds, cmd)
		if aliases, ok := strings.CutSuffix(strings.TrimSpace(aliases), ")"); ok {
			for _, a := range strings.Split(aliases, ",") {
				cmds = append(cmds, strings.TrimSpace(a))
			}
		}
	}
	if len(cmds) < 5 {
		t.Fatalf("found only commands %v in autopodctl --help", cmds)
	}
	slices.Sort(cmds)
	return cmds
}

// topLevel returns the first words of commands, each once; subCommands the
// second words of those that start with parent.
func topLevel(cmds []string) []string {
	var top []string
	for _, c := range cmds {
		first, _, _ := strings.Cut(c, " ")
		top = append(top, first)
	}
	slices.Sort(top)
	return slices.Compact(top)
}

func subCommands(cmds []string, parent string) []string {
	var subs []string
	for _, c := range cmds {
		if rest, ok := strings.CutPrefix(c, parent+" "); ok {
			subs = append(subs, rest)
		}
	}
	slices.Sort(subs)
	return subs
}

func TestManAutopodMatchesFlags(t *testing.T) {
	help := helpOutput(t, "./cmd/autopod")
	man := manText(t, "man8/autopod.8")
	opts := section(t, man, "OPTIONS")
	for _, o := range options(help) {
		if !strings.Contains(opts, ".BI "+o) && !strings.Contains(opts, ".B "+o) && !strings.Contains(opts, ".BR "+o) {
			t.Errorf("autopod.8 OPTIONS does not document %s (from autopod --help)", o)
		}
	}
	for _, o := range options(opts) {
		if !strings.Contains(help, o) && o != "--help" {
			t.Errorf("autopod.8 documents %s, which autopod --help does not know", o)
		}
	}
}

func TestManAutopodctlMatchesCommands(t *testing.T) {
	help := helpOutput(t, "./cmd/autopodctl")
	man := manText(t, "man8/autopodctl.8")
	// The COMMANDS section without fonts and quotes: `.BR "peer list" " ("
	// "peer ls" )` becomes `.BR peer list ( peer ls )`.
	cmds := section(t, man, "COMMANDS")
	cmds = regexp.MustCompile(`\\f[BIRP]`).ReplaceAllString(cmds, "")
	cmds = regexp.MustCompile(`[ \t]+`).ReplaceAllString(strings.ReplaceAll(cmds, `"`, " "), " ")
	for _, c := range ctlCommands(t, help) {
		q := regexp.QuoteMeta(c)
		if !regexp.MustCompile(`(?m)^\.B[IR]? ` + q + `\b|\( ?(alias )?` + q + ` ?\)`).MatchString(cmds) {
			t.Errorf("autopodctl.8 COMMANDS does not document %q (from autopodctl --help)", c)
		}
	}
	opts := section(t, man, "OPTIONS")
	for _, o := range options(help) {
		if !strings.Contains(opts, o) {
			t.Errorf("autopodctl.8 OPTIONS does not document %s (from autopodctl --help)", o)
		}
	}
	for _, o := range options(opts) {
		if !strings.Contains(help, o) {
			t.Errorf("autopodctl.8 documents %s, which autopodctl --help does not know", o)
		}
	}
}

// TestManConfigMatchesKeys: every key of agent.Config, and no other, is
// documented in autopod.toml(5) and listed in the packaged autopod.toml.
func TestManConfigMatchesKeys(t *testing.T) {
	man := manText(t, "man5/autopod.toml.5")
	keys := section(t, man, "KEYS")
	conf, err := os.ReadFile(filepath.Join(repoRoot(t), "packaging/etc/autopod/autopod.toml"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	typ := reflect.TypeOf(agent.Config{})
	for i := 0; i < typ.NumField(); i++ {
		k, _, _ := strings.Cut(typ.Field(i).Tag.Get("toml"), ",")
		if k == "" || k == "-" {
			continue
		}
		known[k] = true
		if !regexp.MustCompile(`(?m)^\.B ` + regexp.QuoteMeta(k) + `$`).MatchString(keys) {
			t.Errorf("autopod.toml.5 does not document key %q (agent.Config)", k)
		}
		if typ.Field(i).Type.Kind() == reflect.Struct && typ.Field(i).Type != reflect.TypeOf(netip.Prefix{}) {
			// A table: its header in the file, its keys in a section of their own.
			if !regexp.MustCompile(`(?m)^#?\[` + regexp.QuoteMeta(k) + `\]$`).Match(conf) {
				t.Errorf("the packaged autopod.toml does not list table [%s]", k)
			}
			tableKeys(t, man, conf, k, typ.Field(i).Type)
			continue
		}
		if !regexp.MustCompile(`(?m)^#?` + regexp.QuoteMeta(k) + ` = `).Match(conf) {
			t.Errorf("the packaged autopod.toml does not list key %q", k)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^\.TP\n\.B ([a-z_]+)$`).FindAllStringSubmatch(keys, -1) {
		if !known[m[1]] {
			t.Errorf("autopod.toml.5 documents key %q, which agent.Config does not have", m[1])
		}
	}
}

// TestManPodMatchesSpec: every key of pods.Spec, table by table, is
// documented in autopod-pod.toml(5).
func TestManPodMatchesSpec(t *testing.T) {
	man := manText(t, "man5/autopod-pod.toml.5")
	textType := reflect.TypeOf((*interface{ UnmarshalText([]byte) error })(nil)).Elem()
	documented := func(sec, key string) bool {
		return regexp.MustCompile(`(?m)^\.TP\n\.B ` + regexp.QuoteMeta(key) + `$`).MatchString(section(t, man, sec))
	}
	var walk func(typ reflect.Type, sec string)
	walk = func(typ reflect.Type, sec string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			k, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if k == "" || k == "-" || !f.IsExported() {
				continue
			}
			ft := f.Type
			isText := reflect.PointerTo(ft).Implements(textType)
			switch {
			case ft.Kind() == reflect.Struct && !isText:
				walk(ft, "["+k+"]")
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(ft.Elem(), "[["+k+"]]")
			default:
				if !documented(sec, k) {
					t.Errorf("autopod-pod.toml.5 section %s does not document key %q (pods.Spec)", sec, k)
				}
			}
		}
	}
	walk(reflect.TypeOf(pods.Spec{}), "TOP-LEVEL KEYS")
}

// TestManPagesFormat runs groff's own checks, as lintian does with man.
func TestManPagesFormat(t *testing.T) {
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("groff is not installed (apt-get install groff-base); lintian checks the pages in the packaging tier")
	}
	pages, _ := filepath.Glob(filepath.Join(repoRoot(t), manDir, "man*", "*.[58]"))
	if len(pages) != 4 {
		t.Fatalf("want 4 man pages, found %v", pages)
	}
	for _, p := range pages {
		out, err := exec.Command(groff, "-man", "-ww", "-z", "-Tutf8", p).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("groff -ww %s: %v\n%s", filepath.Base(p), err, out)
		}
	}
}

// TestCompletion loads the bash completions with a minimal stand-in for
// bash-completion's _init_completion and completes a few command lines.
func TestCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	dir := filepath.Join(repoRoot(t), "packaging/usr/share/bash-completion/completions")
	complete := func(file string, words ...string) []string {
		t.Helper()
		script := `_init_completion() { words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}; }
_filedir() { :; }
source "$1" || exit 1
shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
"$(complete -p "$1" | sed 's/.*-F \([^ ]*\) .*/\1/')"
printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.Command(bash, append([]string{"-c", script, "bash", filepath.Join(dir, file)}, words...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("completing %q: %v\n%s", words, err, out)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		return got
	}

	cmds := ctlCommands(t, helpOutput(t, "./cmd/autopodctl"))
	if got, want := complete("autopodctl", "autopodctl", ""), topLevel(cmds); !slices.Equal(got, want) {
		t.Errorf("autopodctl <TAB>: %v, want the commands of autopodctl --help %v", got, want)
	}
	if got, want := complete("autopodctl", "autopodctl", "peer", ""), subCommands(cmds, "peer"); !slices.Equal(got, want) {
		t.Errorf("autopodctl peer <TAB>: %v, want the sub-commands of autopodctl --help %v", got, want)
	}
	if got := complete("autopodctl", "autopodctl", "peer", "add", "hostb", "192.0.2.2", "--"); !slices.Contains(got, "--cert") {
		t.Errorf("autopodctl peer add ... --<TAB>: %v, want --cert among them", got)
	}
	if got := complete("autopodctl", "autopodctl", "migrate", "web", "--"); !slices.Contains(got, "--to") {
		t.Errorf("autopodctl migrate web --<TAB>: %v, want --to among them", got)
	}
	if got := complete("autopodctl", "autopodctl", "--json", "--timeout", "5s", "che"); !slices.Equal(got, []string{"checkpoint"}) {
		t.Errorf("autopodctl --json --timeout 5s che<TAB>: %v", got)
	}
	if got := complete("autopodctl", "autopodctl", "checkpoint", "--"); !slices.Contains(got, "--leave-running") {
		t.Errorf("autopodctl checkpoint --<TAB>: %v, want --leave-running among them", got)
	}
	if got := complete("autopodctl", "autopodctl", "pods", "--"); slices.Contains(got, "--leave-running") {
		t.Errorf("autopodctl pods --<TAB> offers --leave-running: %v", got)
	}
	if got := complete("autopodctl", "autopodctl", "help", "res"); !slices.Equal(got, []string{"restore"}) {
		t.Errorf("autopodctl help res<TAB>: %v", got)
	}
	if got := complete("autopod", "autopod", "--log-level", ""); !slices.Equal(got, []string{"debug", "error", "info", "warn"}) {
		t.Errorf("autopod --log-level <TAB>: %v", got)
	}
	help := helpOutput(t, "./cmd/autopod")
	for _, o := range options(help) {
		if got := complete("autopod", "autopod", "--"); !slices.Contains(got, o) {
			t.Errorf("autopod --<TAB>: %v lacks %s", got, o)
		}
	}
}

// TestSpecVersion: the spec's fallback version (for a bare rpmbuild) is
// debian/changelog's, which `make rpm` passes.
func TestSpecVersion(t *testing.T) {
	root := repoRoot(t)
	spec, err := os.ReadFile(filepath.Join(root, "rpm/autopod.spec"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^%\{!\?autopod_version: %global autopod_version (\S+)\}$`).FindSubmatch(spec)
	if m == nil {
		t.Fatal("rpm/autopod.spec: no fallback autopod_version")
	}
	if want := changelogVersion(t, filepath.Join(root, "debian/changelog")); string(m[1]) != want {
		t.Errorf("rpm/autopod.spec falls back to version %s, debian/changelog says %s", m[1], want)
	}
}

// tableKeys checks that every key of table name (Go type typ, embedded
// structs flattened, arrays of tables by their own keys) is documented in
// the man page section named after the table and listed in the packaged
// file.
func tableKeys(t *testing.T, man string, conf []byte, name string, typ reflect.Type) {
	t.Helper()
	sec := section(t, man, `"THE [`+strings.ToUpper(name)+`] TABLE"`)
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if f.Anonymous {
				walk(f.Type)
				continue
			}
			k, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if k == "" || k == "-" {
				continue
			}
			if !regexp.MustCompile(`(?m)^\.B ` + regexp.QuoteMeta(k) + `$`).MatchString(sec) {
				t.Errorf("autopod.toml.5 does not document key %q of [%s]", k, name)
			}
			if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
				if !regexp.MustCompile(`(?m)^#?\[\[` + regexp.QuoteMeta(name+"."+k) + `\]\]$`).Match(conf) {
					t.Errorf("the packaged autopod.toml does not show [[%s.%s]]", name, k)
				}
				walk(f.Type.Elem())
				continue
			}
			if !regexp.MustCompile(`(?m)^#?` + regexp.QuoteMeta(k) + ` = `).Match(conf) {
				t.Errorf("the packaged autopod.toml does not list key %q of [%s]", k, name)
			}
		}
	}
	walk(typ)
}
