package updater

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autopod/autopod/osthread"
	"golang.org/x/sys/unix"
)

// fakeRunner answers commands from a table keyed by the tool and its command word
// ("apt-get dist-upgrade", "dnf check-update", "rpm kernel-core", ...), and records
// every command it was given.
type fakeRunner struct {
	mu      sync.Mutex
	answers map[string]Result
	ran     []Command
}

func (f *fakeRunner) Run(ctx context.Context, c Command) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ran = append(f.ran, c)
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	key := c.Name + " " + commandWord(c)
	res, ok := f.answers[key]
	if !ok {
		return Result{}, errors.New("fakeRunner: no answer for " + key + " (" + c.String() + ")")
	}
	return res, nil
}

// commandWord picks what identifies a command in the table.
func commandWord(c Command) string {
	for _, w := range []string{"update", "dist-upgrade", "makecache", "check-update", "needs-restarting", "kernel-core", "-W"} {
		if slices.Contains(c.Args, w) {
			return w
		}
	}
	return "query" // rpm -q --qf … name.arch…
}

func (f *fakeRunner) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s []string
	for _, c := range f.ran {
		s = append(s, c.String())
	}
	return s
}

var checked = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

func testOptions(t *testing.T, b Backend, f *fakeRunner, running string) Options {
	dir := t.TempDir()
	return Options{
		Backend:            b,
		Runner:             f,
		RebootRequiredFile: filepath.Join(dir, "reboot-required"),
		BootDir:            filepath.Join(dir, "boot"), // absent
		Uname:              func() (Uname, error) { return Uname{Release: running}, nil },
		Now:                func() time.Time { return checked },
	}
}

func TestDetectorApt(t *testing.T) {
	f := &fakeRunner{answers: map[string]Result{
		"apt-get dist-upgrade": loadCapture(t, "apt/simulate-dist-upgrade").result(),
		"dpkg-query -W":        loadCapture(t, "apt/dpkg-query-kernels-one").result(),
	}}
	o := testOptions(t, Apt, f, "6.99.0-1-amd64")
	o.AptArgs = []string{"-o", "Dir::State=/private"}
	o.DpkgArgs = []string{"--admindir=/private/dpkg"}
	o.Env = []string{"APT_CONFIG=/private/apt.conf"}
	d, err := NewDetector(o)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := &Report{
		Backend:       Apt,
		Updates:       aptUniverseUpdates,
		RunningKernel: "6.99.0-1-amd64",
		NewestKernel:  "6.99.0-1-amd64",
		Checked:       checked,
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("report:\n got %+v\nwant %+v", r, want)
	}
	if got := r.ByClass(ClassKernel); len(got) != 2 || got[0].Name != "linux-image-6.99.0-2-amd64" {
		t.Errorf("kernel updates: %v", got)
	}
	wantCmds := []string{
		"apt-get -o Dir::State=/private --simulate -o Debug::NoLocking=1 dist-upgrade",
		"dpkg-query --admindir=/private/dpkg -W -f=${Package} ${Version} ${Status}\n linux-image-*",
	}
	if got := f.commands(); !reflect.DeepEqual(got, wantCmds) {
		t.Errorf("commands:\n got %q\nwant %q", got, wantCmds)
	}
	for _, c := range f.ran {
		if !reflect.DeepEqual(c.Env, o.Env) {
			t.Errorf("%s: env %q, want %q", c, c.Env, o.Env)
		}
	}
}

// TestDetectorAptAfterUpgrade: the new kernel ABI is installed (the package database
// and /boot both say so), the running one is older, and the kernel's postinst left
// /run/reboot-required.
func TestDetectorAptAfterUpgrade(t *testing.T) {
	f := &fakeRunner{answers: map[string]Result{
		"apt-get update":       {},
		"apt-get dist-upgrade": loadCapture(t, "apt/simulate-none").result(),
		"dpkg-query -W":        loadCapture(t, "apt/dpkg-query-kernels-two").result(),
	}}
	o := testOptions(t, Apt, f, "6.99.0-1-amd64")
	o.Refresh = true
	if err := os.MkdirAll(o.BootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range strings.Fields(string(loadCapture(t, "apt/boot-ls").out)) {
		if err := os.WriteFile(filepath.Join(o.BootDir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// RebootRequiredPkgsFile is left to its default, RebootRequiredFile + ".pkgs".
	writeFile(t, o.RebootRequiredFile, "*** System restart required ***\n")
	writeFile(t, o.RebootRequiredFile+".pkgs", "linux-image-6.99.0-2-amd64\n")
	d, err := NewDetector(o)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Updates) != 0 || !r.RebootRequired || r.NewestKernel != "6.99.0-2-amd64" {
		t.Fatalf("report %+v", r)
	}
	kinds := []ReasonKind{}
	for _, rs := range r.Reasons {
		kinds = append(kinds, rs.Kind)
	}
	if want := []ReasonKind{ReasonNewerKernel, ReasonRebootRequiredFile}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("reasons %v, want kinds %v", r.Reasons, want)
	}
	for _, rs := range r.Reasons {
		if !reflect.DeepEqual(rs.Packages, []string{"linux-image-6.99.0-2-amd64"}) {
			t.Errorf("%s: packages %q", rs.Kind, rs.Packages)
		}
	}
	if got := f.commands()[0]; got != "apt-get -q update" {
		t.Errorf("refresh ran %q", got)
	}
}

func TestDetectorAptErrors(t *testing.T) {
	tests := []struct {
		name      string
		answers   map[string]Result
		refresh   bool
		wantInErr string
	}{
		{"refresh fails", map[string]Result{"apt-get update": loadCapture(t, "apt/update-error").result()}, true,
			"E: Failed to fetch file:/tmp/capture/no-such-repo/./Packages"},
		{"simulate fails", map[string]Result{"apt-get dist-upgrade": {ExitCode: 100, Stderr: []byte("E: Unmet dependencies.")}}, false,
			"exit status 100; stderr: E: Unmet dependencies."},
		{"simulate unreadable", map[string]Result{"apt-get dist-upgrade": {Stdout: []byte("Inst foo\n")}}, false,
			"unparsable line"},
		{"dpkg-query fails", map[string]Result{
			"apt-get dist-upgrade": {},
			"dpkg-query -W":        {ExitCode: 2, Stderr: []byte("dpkg-query: error: parsing file '/var/lib/dpkg/status'")},
		}, false, "dpkg-query: error: parsing file"},
	}
	for _, tt := range tests {
		f := &fakeRunner{answers: tt.answers}
		o := testOptions(t, Apt, f, "6.1.0-13-amd64")
		o.Refresh = tt.refresh
		d, err := NewDetector(o)
		if err != nil {
			t.Fatal(err)
		}
		r, err := d.Check(t.Context())
		var ce *CommandError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantInErr) {
			t.Errorf("%s: report %+v, err %v; want a *CommandError containing %q", tt.name, r, err, tt.wantInErr)
		}
	}

	// No kernel package at all is not an error.
	f := &fakeRunner{answers: map[string]Result{
		"apt-get dist-upgrade": {},
		"dpkg-query -W":        loadCapture(t, "apt/dpkg-query-kernels-none").result(),
	}}
	d, _ := NewDetector(testOptions(t, Apt, f, "6.18.44-fc-v769"))
	if r, err := d.Check(t.Context()); err != nil || r.RebootRequired || r.NewestKernel != "" {
		t.Errorf("no kernels: %+v, %v", r, err)
	}
}

func TestDetectorDnf(t *testing.T) {
	f := &fakeRunner{answers: map[string]Result{
		"dnf check-update":     loadCapture(t, "dnf/check-update-cacheonly").result(),
		"rpm query":            loadCapture(t, "dnf/rpm-installed").result(),
		"dnf needs-restarting": loadCapture(t, "dnf/needs-restarting-reboot").result(),
		"rpm kernel-core":      loadCapture(t, "dnf/rpm-kernel-core-two").result(),
	}}
	o := testOptions(t, Dnf, f, "6.1.0-1.x86_64")
	o.DnfArgs = []string{"-c", "/private/dnf.conf", "--installroot=/private/root"}
	o.RPMArgs = []string{"--root=/private/root"}
	d, err := NewDetector(o)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	wantUpdates := slices.Clone(dnfUniverseUpdates)
	from := map[string]string{longRPMName: "1.0-1", "epochpkg": "2:1.0-1", "glibc": "2.37-1", "hello": "1.0-1",
		"kernel": "6.1.0-1", "kernel-core": "6.1.0-1", "systemd": "253-1"}
	for i := range wantUpdates {
		if v, ok := from[wantUpdates[i].Name]; ok {
			wantUpdates[i].From = v
		}
	}
	want := &Report{
		Backend: Dnf,
		Updates: wantUpdates,
		Reasons: []Reason{
			{ReasonNeedsRestarting, "dnf needs-restarting -r: core packages updated since boot", []string{"glibc", "kernel", "linux-firmware", "systemd"}},
			{ReasonNewerKernel, "running kernel 6.1.0-1.x86_64 is older than the newest installed kernel 6.2.0-1.x86_64", []string{"kernel-core"}},
		},
		RebootRequired: true,
		RunningKernel:  "6.1.0-1.x86_64",
		NewestKernel:   "6.2.0-1.x86_64",
		Checked:        checked,
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("report:\n got %+v\nwant %+v", r, want)
	}
	cmds := f.commands()
	wantFirst := "dnf -c /private/dnf.conf --installroot=/private/root -C check-update"
	if len(cmds) != 4 || cmds[0] != wantFirst || !strings.HasPrefix(cmds[1], "rpm --root=/private/root -q --qf ") ||
		!strings.HasSuffix(cmds[1], " "+longRPMName+".x86_64 epochpkg.noarch glibc.x86_64 hello.noarch kernel.x86_64 kernel-core.x86_64 systemd.x86_64 newtool.noarch") {
		t.Errorf("commands %q", cmds)
	}
}

func TestDetectorDnfErrors(t *testing.T) {
	ok := map[string]Result{
		"dnf check-update":     loadCapture(t, "dnf/check-update-none").result(),
		"dnf needs-restarting": loadCapture(t, "dnf/needs-restarting-none").result(),
		"rpm kernel-core":      loadCapture(t, "dnf/rpm-kernel-core-none").result(),
	}
	with := func(k string, r Result) map[string]Result {
		m := map[string]Result{}
		for kk, v := range ok {
			m[kk] = v
		}
		m[k] = r
		return m
	}
	tests := []struct {
		name      string
		answers   map[string]Result
		refresh   bool
		wantInErr string
	}{
		{"check-update fails", with("dnf check-update", loadCapture(t, "dnf/check-update-error").result()), false,
			"Error: Failed to download metadata for repo 'local'"},
		{"refresh fails", with("dnf makecache", Result{ExitCode: 1, Stderr: []byte("Error: Failed to download metadata for repo 'fedora'")}), true,
			"dnf -q makecache --refresh: exit status 1; stderr: Error: Failed to download metadata"},
		{"exit 100 with nothing listed", with("dnf check-update", Result{ExitCode: 100}), false, "exit code 100 but 0 updates"},
		{"exit 0 with updates listed", with("dnf check-update", Result{Stdout: []byte("kernel-core.x86_64 6.2.0-1 local\n")}), false,
			"exit code 0 but 1 updates"},
		{"needs-restarting missing", with("dnf needs-restarting", Result{ExitCode: 2, Stderr: []byte("No such command: needs-restarting.")}), false,
			"No such command: needs-restarting"},
		{"needs-restarting other error", with("dnf needs-restarting", Result{ExitCode: 1, Stdout: loadCapture(t, "dnf/needs-restarting-none").out}), false,
			"does not match the output"},
		{"rpm fails", with("rpm kernel-core", Result{ExitCode: 1, Stderr: []byte("error: rpmdb: damaged header")}), false,
			"error: rpmdb: damaged header"},
	}
	for _, tt := range tests {
		f := &fakeRunner{answers: tt.answers}
		o := testOptions(t, Dnf, f, "6.1.0-1.x86_64")
		o.Refresh = tt.refresh
		d, err := NewDetector(o)
		if err != nil {
			t.Fatal(err)
		}
		r, err := d.Check(t.Context())
		var ce *CommandError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantInErr) {
			t.Errorf("%s: report %+v, err %v; want a *CommandError containing %q", tt.name, r, err, tt.wantInErr)
		}
	}
	// All quiet.
	d, _ := NewDetector(testOptions(t, Dnf, &fakeRunner{answers: ok}, "6.1.0-1.x86_64"))
	if r, err := d.Check(t.Context()); err != nil || r.RebootRequired || len(r.Updates) != 0 {
		t.Errorf("nothing pending: %+v, %v", r, err)
	}
}

func TestDetectorRunnerErrors(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	d, _ := NewDetector(testOptions(t, Apt, &fakeRunner{}, "6.1.0-13-amd64"))
	if _, err := d.Check(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v", err)
	}
	o := testOptions(t, Apt, &fakeRunner{}, "")
	o.Uname = func() (Uname, error) { return Uname{}, errors.New("no uname") }
	d, _ = NewDetector(o)
	if _, err := d.Check(t.Context()); err == nil || !strings.Contains(err.Error(), "no uname") {
		t.Errorf("uname fails: err = %v", err)
	}
}

func TestNewDetectorBackend(t *testing.T) {
	have := func(tools ...string) func(string) (string, error) {
		return func(name string) (string, error) {
			if slices.Contains(tools, name) {
				return "/usr/bin/" + name, nil
			}
			return "", errors.New("not found")
		}
	}
	tests := []struct {
		tools []string
		want  Backend
	}{
		{[]string{"dpkg", "dpkg-query", "apt-get"}, Apt},
		{[]string{"dpkg", "dpkg-query", "apt-get", "rpm", "dnf"}, Apt}, // a Debian host with the RPM tools
		{[]string{"rpm", "dnf"}, Dnf},
		{[]string{"rpm", "apt-get"}, ""},
		{nil, ""},
	}
	for _, tt := range tests {
		d, err := NewDetector(Options{lookPath: have(tt.tools...)})
		switch {
		case tt.want == "" && !errors.Is(err, ErrNoBackend):
			t.Errorf("%v: err = %v, want ErrNoBackend", tt.tools, err)
		case tt.want != "" && (err != nil || d.Backend() != tt.want):
			t.Errorf("%v: %v, %v; want %s", tt.tools, d, err, tt.want)
		}
	}
	// An explicit backend is not second-guessed.
	if d, err := NewDetector(Options{Backend: Dnf, lookPath: have()}); err != nil || d.Backend() != Dnf {
		t.Errorf("explicit dnf: %v, %v", d, err)
	}
	if _, err := NewDetector(Options{Backend: "zypper"}); err == nil {
		t.Error("unknown backend accepted")
	}
}

func TestExecRunner(t *testing.T) {
	ctx := t.Context()
	res, err := ExecRunner{}.Run(ctx, Command{Name: "sh", Args: []string{"-c", `echo "$LC_ALL $EXTRA"; echo oops >&2; exit 3`}, Env: []string{"EXTRA=x"}})
	if err != nil || res.ExitCode != 3 || string(res.Stdout) != "C x\n" || string(res.Stderr) != "oops\n" {
		t.Errorf("exit 3: %+v, %v", res, err)
	}
	if _, err := (ExecRunner{}).Run(ctx, Command{Name: "/nonexistent/autopod-no-such-tool"}); err == nil {
		t.Error("a missing tool ran")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = ExecRunner{}.Run(short, Command{Name: "sleep", Args: []string{"10"}})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("timeout: err = %v after %v", err, time.Since(start))
	}
	if _, err := (ExecRunner{}).Run(ctx, Command{Name: "sh", Args: []string{"-c", "kill -9 $$"}}); err == nil {
		t.Error("a tool killed by a signal is no error")
	}
}

// TestExecRunnerNice: the command starts with the nice value asked for (a
// shell that reads its own), and the runner's threads keep theirs.
func TestExecRunnerNice(t *testing.T) {
	before, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, nice := range []int{CheckNice, 0} {
		res, err := ExecRunner{Nice: nice}.Run(t.Context(), Command{Name: "sh", Args: []string{"-c", "cat /proc/$$/stat; grep -h '^se.slice' /proc/$$/sched"}})
		if err != nil {
			t.Fatal(err)
		}
		stat, sched, _ := strings.Cut(string(res.Stdout), "\n")
		// The slice: the shortest when niced, on kernels that keep one
		// (6.12 and later show it in /proc/PID/sched).
		if slice := strings.Fields(sched); nice != 0 && len(slice) == 3 && slice[2] != strconv.FormatInt(osthread.ShortSlice.Nanoseconds(), 10) {
			t.Errorf("ExecRunner{Nice: %d} ran a command with slice %s ns, want %d", nice, slice[2], osthread.ShortSlice.Nanoseconds())
		}
		f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+2:])
		want := nice
		if nice == 0 {
			want = 20 - before // getpriority's 40..1 is nice -20..19
		}
		if len(f) < 17 || f[16] != strconv.Itoa(want) { // field 19
			t.Errorf("ExecRunner{Nice: %d} ran a command at nice %v, want %d", nice, f[16:17], want)
		}
	}
	for i := 0; i < 20; i++ {
		// Busy threads: a thread left at nice 19 would show up.
		ExecRunner{Nice: CheckNice}.Run(t.Context(), Command{Name: "true"})
	}
	// The threads that started them end just after: give them a moment.
	var odd []string
	for try := 0; try < 100; try++ {
		odd = nil
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, e := range tasks {
			tid, _ := strconv.Atoi(e.Name())
			if p, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil && p != before {
				odd = append(odd, fmt.Sprintf("thread %d at priority %d", tid, p))
			}
		}
		if len(odd) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("the runner's process keeps threads that are not at priority %d: %v", before, odd)
}

func TestCommandErrorTruncates(t *testing.T) {
	long := strings.Repeat("x", 3*maxStderr) + "E: the line that matters"
	e := newCommandError(Command{Name: "apt-get", Args: []string{"update"}}, Result{ExitCode: 100, Stderr: []byte(long)}, nil)
	if len(e.Stderr) > maxStderr+len("…") || !strings.HasSuffix(e.Error(), "E: the line that matters") {
		t.Errorf("kept %d bytes: %.80q…", len(e.Stderr), e.Error())
	}
}
