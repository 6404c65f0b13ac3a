package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func newTestRunner(t *testing.T, a *fakeAgent, o Options) (*Runner, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	o.Agent, o.Stderr = a, &out
	if o.Chrooted == nil {
		o.Chrooted = func() bool { return false }
	}
	r, err := NewRunner(o)
	if err != nil {
		t.Fatal(err)
	}
	return r, &out
}

// captureRoot is the dpkg --root the apt captures were made with: the Runner
// takes them for this host's installs only with this Root.
const captureRoot = "/tmp/capture/root"

const (
	beginDistUpgrade = "begin apt hello=2.0-1 libdummy1=1.1-1 libdummy1=1.1-1 linux-image-6.99.0-2-amd64=6.99.2-1 " +
		"linux-image-amd64=6.99.2-1 login=1:4.13+dfsg1-1+deb12u1"
	beginNewpkg = "begin apt newpkg=1.0-1"
)

func TestAptPreInstall(t *testing.T) {
	unreachable := fmt.Errorf("call org.autopod.Agent1: %w", ErrAgentUnreachable)
	for _, tc := range []struct {
		name    string
		capture string
		opts    Options
		agent   *fakeAgent
		refused bool
		calls   []string
		says    []string // in the output, in order
	}{
		{name: "kernel, the pods move away", capture: "apt/v3-dist-upgrade.stdin",
			agent: &fakeAgent{needed: true, progress: [][2]string{{"locked", "choosing a peer"}, {"locked", "choosing a peer"},
				{"evacuating", "moving web to hostb"}}},
			calls: []string{beginDistUpgrade, "wait"},
			says: []string{"apt-get is about to install linux-image-6.99.0-2-amd64 6.99.2-1, linux-image-amd64 6.99.2-1; waiting up to 1h0m0s",
				"autopod: locked: choosing a peer\nautopod: evacuating: moving web to hostb\n", "the pods are away; apt-get goes on"}},
		{name: "the agent needs nothing", capture: "apt/v3-dist-upgrade.stdin", agent: &fakeAgent{needed: false},
			calls: []string{beginDistUpgrade}},
		{name: "version 2", capture: "apt/v2-dist-upgrade.stdin", agent: &fakeAgent{needed: false},
			calls: []string{"begin apt hello=2.0-1 libdummy1=1.1-1 linux-image-6.99.0-2-amd64=6.99.2-1 linux-image-amd64=6.99.2-1 login=1:4.13+dfsg1-1+deb12u1"}},
		{name: "kernel, agent unreachable", capture: "apt/v3-dist-upgrade.stdin", agent: &fakeAgent{beginErr: unreachable},
			refused: true, calls: []string{beginDistUpgrade},
			says: []string{"apt-get is about to install a new kernel (linux-image-6.99.0-2-amd64 6.99.2-1, linux-image-amd64 6.99.2-1), but the autopod agent did not answer",
				"so nobody would move this host's pods away before that kernel is booted. apt-get stops here, before dpkg runs; " +
					"try again later, or install without autopod: AUTOPOD_HOOK=skip apt-get ...\n"}},
		{name: "kernel, agent busy", capture: "apt/v3-dist-upgrade.stdin", agent: &fakeAgent{beginErr: errors.New("busy (state returning)")},
			refused: true, calls: []string{beginDistUpgrade}, says: []string{"refused to start an update cycle (busy (state returning))"}},
		{name: "kernel, no system bus", capture: "apt/v3-dist-upgrade.stdin", agent: &fakeAgent{beginErr: fmt.Errorf("dial: %w", ErrNoBus)},
			calls: []string{beginDistUpgrade}, says: []string{"warning: dial: no system bus: this is not a running system"}},
		{name: "no kernel, agent unreachable", capture: "apt/v3-install.stdin", agent: &fakeAgent{beginErr: unreachable},
			calls: []string{beginNewpkg}, says: []string{"warning: could not tell the autopod agent about newpkg 1.0-1", "none of them is a kernel, so apt-get goes on"}},
		{name: "evacuation fails", capture: "apt/v3-dist-upgrade.stdin", agent: &fakeAgent{needed: true, waitErr: errors.New("aborted (state returning): no peer")},
			refused: true, calls: []string{beginDistUpgrade, "wait", "end ok=false apt-get's hook stopped it: the pods could not be moved away (aborted (state returning): no peer)"},
			says: []string{"the pods could not be moved away (aborted (state returning): no peer); the pods that moved come back. apt-get stops here"}},
		{name: "timeout", capture: "apt/v3-install.stdin", opts: Options{Timeout: 10 * time.Millisecond}, agent: &fakeAgent{needed: true, block: true},
			refused: true, calls: []string{beginNewpkg, "wait", "end ok=false apt-get's hook stopped it: the pods were not away within 10ms (context deadline exceeded)"},
			says: []string{"apt-get is about to install newpkg 1.0-1; waiting up to 10ms"}},
		{name: "only removals", capture: "apt/v3-remove.stdin"},
		{name: "only configuring", capture: "apt/v3-configure.stdin"},
		{name: "skip", capture: "apt/v3-dist-upgrade.stdin", opts: Options{Skip: true}, says: []string{"AUTOPOD_HOOK=skip: not asking"}},
		{name: "another root", capture: "apt/v3-dist-upgrade.stdin", opts: Options{Root: "/"},
			says: []string{"apt-get installs into /tmp/capture/root, not into this host"}},
		{name: "chroot", capture: "apt/v3-dist-upgrade.stdin", opts: Options{Chrooted: func() bool { return true }},
			says: []string{"apt-get runs in a chroot"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.Root == "" {
				tc.opts.Root = captureRoot
			}
			if tc.agent == nil {
				tc.agent = &fakeAgent{}
			}
			r, out := newTestRunner(t, tc.agent, tc.opts)
			err := r.AptPreInstall(t.Context(), bytes.NewReader(readCapture(t, tc.capture)))
			if tc.refused != errors.Is(err, ErrRefused) || (!tc.refused && err != nil) {
				t.Errorf("AptPreInstall = %v, refused %v", err, tc.refused)
			}
			if got := tc.agent.Calls(); !reflect.DeepEqual(got, tc.calls) {
				t.Errorf("calls:\n got %q\nwant %q", got, tc.calls)
			}
			rest := out.String()
			for _, s := range tc.says {
				i := strings.Index(rest, s)
				if i < 0 {
					t.Fatalf("the output lacks %q (in order):\n%s", s, out)
				}
				rest = rest[i+len(s):]
			}
			if len(tc.says) == 0 && out.Len() > 0 {
				t.Errorf("unexpected output:\n%s", out)
			}
		})
	}
}

func TestAptPreInstallUnreadable(t *testing.T) {
	a := &fakeAgent{}
	r, out := newTestRunner(t, a, Options{})
	err := r.AptPreInstall(t.Context(), strings.NewReader("VERSION 3\nA=b\n\nhello - - none\n"))
	if !errors.Is(err, ErrRefused) || len(a.Calls()) != 0 {
		t.Errorf("AptPreInstall = %v, calls %q", err, a.Calls())
	}
	if !strings.Contains(out.String(), "autopod cannot read what apt is about to do") {
		t.Errorf("output:\n%s", out)
	}
	// Skipping does not even parse.
	r, _ = newTestRunner(t, &fakeAgent{}, Options{Skip: true})
	if err := r.AptPreInstall(t.Context(), strings.NewReader("garbage")); err != nil {
		t.Errorf("skip: %v", err)
	}
}

func TestAptPreInstallInterrupted(t *testing.T) {
	a := &fakeAgent{needed: true, block: true}
	r, out := newTestRunner(t, a, Options{Root: captureRoot})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(20*time.Millisecond, cancel)
	err := r.AptPreInstall(ctx, bytes.NewReader(readCapture(t, "apt/v3-install.stdin")))
	if !errors.Is(err, ErrRefused) || !strings.Contains(out.String(), "interrupted while waiting for the pods to move away") {
		t.Errorf("AptPreInstall = %v\n%s", err, out)
	}
	// The agent still hears that apt stops, on a context of its own.
	if c := a.Calls(); len(c) != 3 || !strings.HasPrefix(c[2], "end ok=false") || a.endCtxErr != nil {
		t.Errorf("calls %q, End's context: %v", c, a.endCtxErr)
	}
}

func TestDnfPreTransaction(t *testing.T) {
	a := &fakeAgent{needed: true}
	r, out := newTestRunner(t, a, Options{})
	if err := r.DnfPreTransaction(t.Context(), bytes.NewReader(readCapture(t, "dnf/upgrade.stdin"))); err != nil {
		t.Fatal(err)
	}
	want := []string{"begin dnf kernel=6.2.0-1 kernel-core=6.2.0-1 newtool=2.0-1 epochpkg=2:1.0-2 hello=1.1-1 systemd=253-2", "wait"}
	if !reflect.DeepEqual(a.Calls(), want) {
		t.Errorf("calls %q, want %q", a.Calls(), want)
	}
	if !strings.Contains(out.String(), "dnf is about to install kernel 6.2.0-1, kernel-core 6.2.0-1; waiting") {
		t.Errorf("output:\n%s", out)
	}

	a = &fakeAgent{beginErr: ErrAgentUnreachable}
	r, out = newTestRunner(t, a, Options{})
	err := r.DnfPreTransaction(t.Context(), bytes.NewReader(readCapture(t, "dnf/install-kernel.stdin")))
	if !errors.Is(err, ErrRefused) || !strings.Contains(out.String(), "AUTOPOD_HOOK=skip dnf ...") {
		t.Errorf("DnfPreTransaction = %v\n%s", err, out)
	}
	// Removals only: the agent is not asked.
	a = &fakeAgent{}
	r, _ = newTestRunner(t, a, Options{})
	if err := r.DnfPreTransaction(t.Context(), bytes.NewReader(readCapture(t, "dnf/remove.stdin"))); err != nil || len(a.Calls()) != 0 {
		t.Errorf("remove: %v, calls %q", err, a.Calls())
	}
	r, _ = newTestRunner(t, a, Options{})
	if err := r.DnfPreTransaction(t.Context(), strings.NewReader("kernel-core 6.2\n")); !errors.Is(err, ErrRefused) {
		t.Errorf("unreadable: %v", err)
	}
}

func TestAptPostInvoke(t *testing.T) {
	root := t.TempDir()
	status := filepath.Join(root, "var/lib/dpkg/status")
	if err := os.MkdirAll(filepath.Dir(status), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ capture, want string }{
		{"apt/dpkg-installed.status", "end ok=true "},
		{"apt/dpkg-failed.status", "end ok=true dpkg left packages unfinished: failing half-configured"},
		{"", "end ok=true could not read dpkg's status: open " + status + ": no such file or directory"},
	} {
		os.Remove(status)
		if tc.capture != "" {
			if err := os.WriteFile(status, readCapture(t, tc.capture), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		a := &fakeAgent{}
		r, _ := newTestRunner(t, a, Options{Root: root})
		if err := r.AptPostInvoke(t.Context()); err != nil {
			t.Error(err)
		}
		if c := a.Calls(); len(c) != 1 || c[0] != tc.want {
			t.Errorf("%s: calls %q, want %q", tc.capture, c, tc.want)
		}
	}
	// Unreachable: a warning and an error for the exit code (99autopod has || true).
	a := &fakeAgent{endErr: ErrAgentUnreachable}
	r, out := newTestRunner(t, a, Options{Root: root})
	if err := r.AptPostInvoke(t.Context()); !errors.Is(err, ErrAgentUnreachable) || !strings.Contains(out.String(), "warning: could not tell") {
		t.Errorf("AptPostInvoke = %v\n%s", err, out)
	}
	a = &fakeAgent{}
	r, _ = newTestRunner(t, a, Options{Root: root, Skip: true})
	if err := r.AptPostInvoke(t.Context()); err != nil || len(a.Calls()) != 0 {
		t.Errorf("skip: %v %q", err, a.Calls())
	}
}

func TestDnfPostTransaction(t *testing.T) {
	for _, tc := range []struct {
		ok          bool
		stdin, want string
	}{
		{true, "", "end ok=true "},
		{false, "", "end ok=false dnf exited before its transaction finished"},
		{false, "failing 0:1.0-1.x86_64 install\n", "end ok=false rpm failed on failing 1.0-1"},
	} {
		a := &fakeAgent{}
		r, _ := newTestRunner(t, a, Options{})
		if err := r.DnfPostTransaction(t.Context(), tc.ok, strings.NewReader(tc.stdin)); err != nil {
			t.Error(err)
		}
		if c := a.Calls(); len(c) != 1 || c[0] != tc.want {
			t.Errorf("calls %q, want %q", c, tc.want)
		}
	}
	a := &fakeAgent{endErr: ErrNoBus}
	r, out := newTestRunner(t, a, Options{})
	if err := r.DnfPostTransaction(t.Context(), true, strings.NewReader("")); !errors.Is(err, ErrNoBus) || out.Len() != 0 {
		t.Errorf("no bus: %v, output %q (no warning wanted)", err, out)
	}
}

func TestNewRunnerValidates(t *testing.T) {
	for _, o := range []Options{{}, {Agent: &fakeAgent{}, Timeout: -1}, {Agent: &fakeAgent{}, Root: "relative"}} {
		if _, err := NewRunner(o); err == nil {
			t.Errorf("NewRunner(%+v) accepted", o)
		}
	}
	r, err := NewRunner(Options{Agent: &fakeAgent{}})
	if err != nil || r.o.Timeout != DefaultTimeout || r.o.CallTimeout != DefaultCallTimeout || r.o.Root != "/" || r.o.Stderr == nil || r.o.Chrooted == nil {
		t.Errorf("defaults: %+v, %v", r.o, err)
	}
	if !SkipRequested(func(string) string { return "skip" }) || SkipRequested(func(string) string { return "" }) {
		t.Error("SkipRequested")
	}
	if inChroot() {
		t.Error("the tests run in a chroot?")
	}
}
