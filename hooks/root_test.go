//go:build roottest

package hooks

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/updater"
)

// The root tier of the hooks: real apt-get and dnf run the hooks as autopod ships
// them (packaging/etc/apt/apt.conf.d/99autopod, the dnf plugin and its
// configuration), each in a private universe under a temp dir (the host's package
// state is never touched), with autopodctl replaced by
//
//   - testdata/recorder.sh, which keeps what it was given, to check what apt and
//     dnf send and what they do with a failing hook, and
//   - this test binary (TestMain: AUTOPOD_TEST_FAKECTL), which runs the real
//     Runner against a fake agent, to check the whole hook with real apt and dnf.
//
// Run as root:
//
//	go test -count=1 -tags roottest -run '^TestRoot' -v ./hooks/
//
// It needs dpkg-dev, apt-utils (apt-ftparchive), rpm (rpmbuild), dnf and
// createrepo-c: apt-get install -y dpkg-dev apt-utils rpm dnf createrepo-c

func TestMain(m *testing.M) {
	if os.Getenv("AUTOPOD_TEST_FAKECTL") != "" {
		os.Exit(fakectl(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakectl is `autopodctl hook SUBCOMMAND` wired to a fake agent, as autopodctl
// wires the real one: AUTOPOD_FAKE_AGENT chooses its answers (unreachable, nobus,
// not-needed, ready, abort), AUTOPOD_FAKE_LOG receives its calls, one a line,
// AUTOPOD_FAKE_ROOT is Options.Root, and AUTOPOD_FAKE_LOCK a lock file whose
// holder ExternalInstallBegin records.
func fakectl(args []string) int {
	a := &fakeAgent{}
	switch mode := os.Getenv("AUTOPOD_FAKE_AGENT"); mode {
	case "unreachable":
		a.beginErr = fmt.Errorf("org.freedesktop.DBus.Error.ServiceUnknown: %w", ErrAgentUnreachable)
		a.endErr = a.beginErr
	case "nobus":
		a.beginErr, a.endErr = ErrNoBus, ErrNoBus
	case "not-needed":
	case "ready":
		a.needed = true
		a.progress = [][2]string{{"locked", "choosing a peer"}, {"evacuating", "moving web to hostb"}}
	case "abort":
		a.needed = true
		a.waitErr = fmt.Errorf("aborted (state returning): evacuate to hostb: pod web: peer refused")
	default:
		fmt.Fprintf(os.Stderr, "fakectl: AUTOPOD_FAKE_AGENT=%q\n", mode)
		return 2
	}
	if lock := os.Getenv("AUTOPOD_FAKE_LOCK"); lock != "" {
		a.onBegin = func() {
			pid, held, err := LockHolder(lock)
			a.record("lock pid=%d held=%v err=%v", pid, held, err)
		}
	}
	defer func() {
		if log := os.Getenv("AUTOPOD_FAKE_LOG"); log != "" {
			f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err == nil {
				for _, c := range a.Calls() {
					fmt.Fprintln(f, c)
				}
				f.Close()
			}
		}
	}()
	r, err := NewRunner(Options{Agent: a, Stderr: os.Stderr, Root: os.Getenv("AUTOPOD_FAKE_ROOT"),
		Skip: SkipRequested(os.Getenv), Timeout: 10 * time.Second, CallTimeout: 10 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	if len(args) < 2 || args[0] != "hook" {
		fmt.Fprintf(os.Stderr, "fakectl: args %q\n", args)
		return 2
	}
	switch sub := strings.Join(args[1:], " "); sub {
	case "apt-pre-install":
		err = r.AptPreInstall(ctx, os.Stdin)
	case "apt-post-invoke":
		err = r.AptPostInvoke(ctx)
	case "dnf-pre-transaction":
		err = r.DnfPreTransaction(ctx, os.Stdin)
	case "dnf-post-transaction":
		err = r.DnfPostTransaction(ctx, true, os.Stdin)
	case "dnf-post-transaction --failed":
		err = r.DnfPostTransaction(ctx, false, os.Stdin)
	default:
		fmt.Fprintf(os.Stderr, "fakectl: unknown hook %q\n", sub)
		return 2
	}
	if err != nil {
		return 1
	}
	return 0
}

func requireRoot(t *testing.T, tools map[string]string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the root tier must run as root (dpkg --root, dnf --installroot)")
	}
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: apt-get install -y %s", tool, pkg)
		}
	}
}

// run runs a command with env added to the test's environment and returns its
// combined output and exit code; it fails the test only when it cannot run.
func run(t *testing.T, env []string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C", "PYTHONDONTWRITEBYTECODE=1"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), 0
}

func mustRun(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, rc := run(t, env, name, args...)
	if rc != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), rc, out)
	}
	return out
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func abs(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// recording is one call of recorder.sh.
type recording struct {
	args       []string
	stdin, env string
}

func recordings(t *testing.T, dir string) []recording {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.args"))
	slices.Sort(files)
	var out []recording
	for _, f := range files {
		read := func(ext string) string {
			b, err := os.ReadFile(strings.TrimSuffix(f, ".args") + ext)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		out = append(out, recording{args: lines([]byte(read(".args"))), stdin: read(".stdin"), env: read(".env")})
	}
	return out
}

// ---------------------------------------------------------------------------
// apt

// aptUniverse is a dpkg root and database, a flat repository and an apt
// configuration of their own, read by apt instead of /etc/apt (APT_CONFIG). apt
// takes its locks in the private directories (the frontend lock next to
// Dir::State::status), so it runs with locking, as on a host.
type aptUniverse struct {
	dir, root, admin, repo, etc string
	env                         []string
}

func newAptUniverse(t *testing.T) *aptUniverse {
	dir := t.TempDir()
	u := &aptUniverse{dir: dir, root: filepath.Join(dir, "root"), repo: filepath.Join(dir, "repo"), etc: filepath.Join(dir, "apt/etc")}
	u.admin = filepath.Join(u.root, "var/lib/dpkg")
	for _, d := range []string{u.repo, filepath.Join(dir, "apt/state/lists/partial"), filepath.Join(dir, "apt/cache/archives/partial"),
		filepath.Join(dir, "apt/log"), filepath.Join(u.etc, "apt.conf.d"), filepath.Join(u.etc, "sources.list.d"),
		filepath.Join(u.etc, "preferences.d"), filepath.Join(u.admin, "info"), filepath.Join(u.admin, "updates"),
		filepath.Join(u.admin, "triggers"), filepath.Join(dir, "debs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(u.admin, "status"), "")
	writeFile(t, filepath.Join(u.admin, "available"), "")
	writeFile(t, filepath.Join(u.etc, "sources.list"), "deb [trusted=yes] file:"+u.repo+" ./\n")
	writeFile(t, filepath.Join(dir, "apt.conf"), fmt.Sprintf(`Dir::Etc::main "%[1]s/apt.conf";
Dir::Etc::parts "%[1]s/apt.conf.d";
Dir::Etc::sourcelist "%[1]s/sources.list";
Dir::Etc::sourceparts "%[1]s/sources.list.d";
Dir::Etc::preferences "%[1]s/preferences";
Dir::Etc::preferencesparts "%[1]s/preferences.d";
Dir::State "%[2]s/apt/state";
Dir::State::status "%[3]s/status";
Dir::Cache "%[2]s/apt/cache";
Dir::Log "%[2]s/apt/log";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
DPkg::Options { "--root=%[4]s"; "--admindir=%[3]s"; "--force-not-root"; "--force-bad-path"; };
`, u.etc, dir, u.admin, u.root))
	u.env = []string{"APT_CONFIG=" + filepath.Join(dir, "apt.conf")}
	return u
}

// deb builds a package with one file (/boot/vmlinuz-RELEASE for a kernel image);
// with a control line "postinst" it gets a postinst, which cannot run in the
// private root (no shell there): dpkg fails to configure it.
func (u *aptUniverse) deb(t *testing.T, name, version string, control ...string) string {
	src := filepath.Join(u.dir, "src", name+"_"+version)
	file := filepath.Join("usr/share/doc", name, "dummy")
	if r, ok := strings.CutPrefix(name, "linux-image-6"); ok {
		file = "boot/vmlinuz-6" + r
	}
	writeFile(t, filepath.Join(src, file), name+" "+version+"\n")
	var lines []string
	for _, c := range control {
		if c == "postinst" {
			writeFile(t, filepath.Join(src, "DEBIAN/postinst"), "#!/bin/sh\nexit 0\n")
			if err := os.Chmod(filepath.Join(src, "DEBIAN/postinst"), 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		lines = append(lines, c)
	}
	writeFile(t, filepath.Join(src, "DEBIAN/control"), strings.Join(append([]string{
		"Package: " + name, "Version: " + version, "Architecture: amd64",
		"Maintainer: autopod tests <tests@autopod.invalid>", "Description: autopod test dummy"}, lines...), "\n")+"\n")
	out := filepath.Join(u.dir, "debs", name+"_"+version+"_amd64.deb")
	mustRun(t, nil, "dpkg-deb", "--root-owner-group", "-Zgzip", "--build", src, out)
	return out
}

func (u *aptUniverse) dpkg(t *testing.T, args ...string) {
	mustRun(t, nil, "dpkg", append([]string{"--root=" + u.root, "--admindir=" + u.admin, "--force-not-root", "--force-bad-path"}, args...)...)
}

func (u *aptUniverse) publish(t *testing.T, debs ...string) {
	for _, d := range debs {
		if err := os.Rename(d, filepath.Join(u.repo, filepath.Base(d))); err != nil {
			t.Fatal(err)
		}
	}
	packages := mustRun(t, nil, "apt-ftparchive", "packages", u.repo)
	writeFile(t, filepath.Join(u.repo, "Packages"), strings.ReplaceAll(packages, u.repo+"/", ""))
	mustRun(t, u.env, "apt-get", "-q", "update")
}

// hook installs 99autopod as autopod ships it, with ctl in place of
// /usr/bin/autopodctl.
func (u *aptUniverse) hook(t *testing.T, ctl string) {
	b, err := os.ReadFile(filepath.Join(aptConfDir, "99autopod"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(u.etc, "apt.conf.d/99autopod"), strings.ReplaceAll(string(b), "/usr/bin/autopodctl", ctl))
}

// version returns a package's installed version in the private root, or "".
func (u *aptUniverse) version(t *testing.T, name string) string {
	out, rc := run(t, nil, "dpkg-query", "--admindir="+u.admin, "-W", "-f=${db:Status-Status} ${Version}", name)
	if rc != 0 || !strings.HasPrefix(out, "installed ") {
		return ""
	}
	return strings.TrimPrefix(out, "installed ")
}

// snapshot saves the private root; restore brings it back between cases.
func (u *aptUniverse) snapshot(t *testing.T) {
	mustRun(t, nil, "cp", "-a", u.root, u.root+".saved")
}

func (u *aptUniverse) restore(t *testing.T) {
	if err := os.RemoveAll(u.root); err != nil {
		t.Fatal(err)
	}
	mustRun(t, nil, "cp", "-a", u.root+".saved", u.root)
}

// kernelUniverse: kernel ABI 6.99.0-1 with its metapackage and hello 1.0
// installed; the repository has ABI 6.99.0-2 (through the metapackage), hello 2.0
// and a package whose postinst fails.
func kernelUniverse(t *testing.T) *aptUniverse {
	requireRoot(t, map[string]string{"apt-get": "apt", "dpkg-deb": "dpkg", "apt-ftparchive": "apt-utils"})
	u := newAptUniverse(t)
	u.dpkg(t, "-i",
		u.deb(t, "linux-image-6.99.0-1-amd64", "6.99.1-1"),
		u.deb(t, "linux-image-amd64", "6.99.1-1", "Depends: linux-image-6.99.0-1-amd64"),
		u.deb(t, "hello", "1.0-1"))
	u.publish(t,
		u.deb(t, "linux-image-6.99.0-2-amd64", "6.99.2-1"),
		u.deb(t, "linux-image-amd64", "6.99.2-1", "Depends: linux-image-6.99.0-2-amd64"),
		u.deb(t, "hello", "2.0-1"),
		u.deb(t, "failing", "1.0-1", "postinst"))
	u.snapshot(t)
	return u
}

// TestRootAptHookProtocol: apt-get runs the hooks of 99autopod with the protocol
// configured there (version 3 on stdin, no terminal), a failing hook stops apt
// before dpkg with the hook's message shown, and a missing autopodctl (autopod
// removed, its conffile kept) stops nothing.
func TestRootAptHookProtocol(t *testing.T) {
	u := kernelUniverse(t)
	recorder := abs(t, "testdata/recorder.sh")
	u.hook(t, recorder)
	rec := filepath.Join(u.dir, "rec")
	env := func(extra ...string) []string {
		os.RemoveAll(rec)
		if err := os.MkdirAll(rec, 0o755); err != nil {
			t.Fatal(err)
		}
		return append(append([]string{"RECORD_DIR=" + rec}, u.env...), extra...)
	}

	t.Run("calls", func(t *testing.T) {
		defer u.restore(t)
		mustRun(t, env(), "apt-get", "-y", "install", "linux-image-amd64")
		calls := recordings(t, rec)
		if len(calls) != 2 || !reflect.DeepEqual(calls[0].args, []string{"hook", "apt-pre-install"}) ||
			!reflect.DeepEqual(calls[1].args, []string{"hook", "apt-post-invoke"}) {
			t.Fatalf("calls: %+v", calls)
		}
		if !strings.Contains(calls[0].env, "APT_HOOK_INFO_FD=0\n") || !strings.Contains(calls[0].env, "tty=no\n") {
			t.Errorf("the hook's environment:\n%s", calls[0].env)
		}
		h, err := ParseAptHook(strings.NewReader(calls[0].stdin))
		if err != nil {
			t.Fatal(err)
		}
		var ks []string
		for _, k := range Kernels(updater.Apt, h.Packages) {
			ks = append(ks, k.String())
		}
		want := []string{"linux-image-6.99.0-2-amd64:amd64 6.99.2-1 (install)", "linux-image-amd64:amd64 6.99.1-1 -> 6.99.2-1 (upgrade)"}
		if h.Version != 3 || !reflect.DeepEqual(ks, want) || h.Frontend() != "apt-get" || h.TargetRoot() != u.root {
			t.Errorf("version %d, kernels %q (want %q), frontend %s, root %s", h.Version, ks, want, h.Frontend(), h.TargetRoot())
		}
		if calls[1].stdin != "" {
			t.Errorf("DPkg::Post-Invoke got input: %q", calls[1].stdin)
		}
		if u.version(t, "linux-image-6.99.0-2-amd64") != "6.99.2-1" {
			t.Error("the new kernel was not installed")
		}
	})

	t.Run("refused", func(t *testing.T) {
		defer u.restore(t)
		out, rc := run(t, env("RECORD_FAIL=apt-pre-install", "RECORD_MESSAGE=autopod: the pods cannot leave (recorder)"),
			"apt-get", "-y", "install", "linux-image-amd64")
		if rc != 100 || !strings.Contains(out, "autopod: the pods cannot leave (recorder)\n") ||
			!strings.Contains(out, "E: Sub-process "+recorder+" hook apt-pre-install || [ ! -e "+recorder+" ] returned an error code (1)") {
			t.Errorf("apt-get: exit %d\n%s", rc, out)
		}
		if v := u.version(t, "linux-image-6.99.0-2-amd64"); v != "" || u.version(t, "linux-image-amd64") != "6.99.1-1" {
			t.Errorf("dpkg ran although the hook refused: new kernel %q", v)
		}
		if calls := recordings(t, rec); len(calls) != 1 {
			t.Errorf("%d calls, want the pre-install hook only", len(calls))
		}
	})

	t.Run("autopodctl missing", func(t *testing.T) {
		defer u.restore(t)
		defer u.hook(t, recorder)
		missing := filepath.Join(u.dir, "no-such-autopodctl")
		u.hook(t, missing)
		out := mustRun(t, env(), "apt-get", "-y", "install", "hello")
		if !strings.Contains(out, missing+": not found") || u.version(t, "hello") != "2.0-1" {
			t.Errorf("apt-get:\n%s", out)
		}
	})
}

// TestRootAptHookRunner: the whole hook (the Runner, as autopodctl runs it, with a
// fake agent) under real apt-get: what the agent is told, where apt stops and what
// the operator reads.
func TestRootAptHookRunner(t *testing.T) {
	u := kernelUniverse(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	u.hook(t, self)
	log := filepath.Join(u.dir, "agent.log")
	const (
		beginKernel = "begin apt linux-image-6.99.0-2-amd64=6.99.2-1 linux-image-amd64=6.99.2-1"
		beginHello  = "begin apt hello=2.0-1"
	)
	for _, tc := range []struct {
		name, agent, pkg string
		env              []string
		fails            bool
		calls            []string
		says             []string
	}{
		{name: "kernel, the pods move away", agent: "ready", pkg: "linux-image-amd64",
			calls: []string{beginKernel, "lock pid=APT held=true err=<nil>", "wait", "end ok=true "},
			says: []string{"autopod: apt-get is about to install linux-image-6.99.0-2-amd64 6.99.2-1, linux-image-amd64 6.99.2-1; waiting up to 10s",
				"autopod: evacuating: moving web to hostb", "autopod: the pods are away; apt-get goes on", "Unpacking linux-image-6.99.0-2-amd64"}},
		{name: "kernel, agent unreachable", agent: "unreachable", pkg: "linux-image-amd64", fails: true,
			calls: []string{beginKernel, "lock pid=APT held=true err=<nil>"},
			says: []string{"but the autopod agent did not answer (org.freedesktop.DBus.Error.ServiceUnknown: the autopod agent cannot be reached)",
				"before that kernel is booted. apt-get stops here, before dpkg runs; try again later, or install without autopod: AUTOPOD_HOOK=skip apt-get ...\n",
				"E: Sub-process " + self + " hook apt-pre-install"}},
		{name: "kernel, skipped", agent: "unreachable", pkg: "linux-image-amd64", env: []string{"AUTOPOD_HOOK=skip"},
			says: []string{"autopod: AUTOPOD_HOOK=skip: not asking the autopod agent"}},
		{name: "kernel, no system bus", agent: "nobus", pkg: "linux-image-amd64",
			calls: []string{beginKernel, "lock pid=APT held=true err=<nil>", "end ok=true "},
			says:  []string{"autopod: warning: no system bus: this is not a running system"}},
		{name: "no kernel, agent unreachable", agent: "unreachable", pkg: "hello",
			calls: []string{beginHello, "lock pid=APT held=true err=<nil>", "end ok=true "},
			says: []string{"autopod: warning: could not tell the autopod agent about hello 2.0-1",
				"Unpacking hello", "autopod: warning: could not tell the autopod agent that the install has ended"}},
		{name: "evacuation fails", agent: "abort", pkg: "linux-image-amd64", fails: true,
			calls: []string{beginKernel, "lock pid=APT held=true err=<nil>", "wait",
				"end ok=false apt-get's hook stopped it: the pods could not be moved away (aborted (state returning): evacuate to hostb: pod web: peer refused)"},
			says: []string{"autopod: the pods could not be moved away (aborted (state returning): evacuate to hostb: pod web: peer refused); the pods that moved come back"}},
		{name: "dpkg fails", agent: "ready", pkg: "failing", fails: true,
			calls: []string{"begin apt failing=1.0-1", "lock pid=APT held=true err=<nil>", "wait", "end ok=true dpkg left packages unfinished: failing half-configured"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer u.restore(t)
			os.Remove(log)
			env := append(append([]string{"AUTOPOD_TEST_FAKECTL=1", "AUTOPOD_FAKE_AGENT=" + tc.agent, "AUTOPOD_FAKE_LOG=" + log,
				"AUTOPOD_FAKE_ROOT=" + u.root, "AUTOPOD_FAKE_LOCK=" + filepath.Join(u.admin, "lock-frontend")}, u.env...), tc.env...)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "apt-get", "-y", "install", tc.pkg)
			cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			if (err != nil) != tc.fails {
				t.Errorf("apt-get: %v, want failure %v\n%s", err, tc.fails, out.String())
			}
			b, _ := os.ReadFile(log)
			var calls []string
			if len(b) > 0 {
				calls = lines(b)
			}
			// apt-get holds the dpkg frontend lock while the hook runs.
			want := slices.Clone(tc.calls)
			for i := range want {
				want[i] = strings.ReplaceAll(want[i], "pid=APT", fmt.Sprintf("pid=%d", cmd.Process.Pid))
			}
			if !reflect.DeepEqual(calls, want) {
				t.Errorf("agent calls:\n got %q\nwant %q", calls, want)
			}
			rest := out.String()
			for _, s := range tc.says {
				i := strings.Index(rest, s)
				if i < 0 {
					t.Fatalf("apt-get's output lacks %q (in order):\n%s", s, out.String())
				}
				rest = rest[i+len(s):]
			}
			if tc.fails && tc.pkg != "failing" && u.version(t, "linux-image-6.99.0-2-amd64") != "" {
				t.Error("dpkg installed the kernel although the hook refused")
			}
		})
	}
}

// ---------------------------------------------------------------------------
// dnf

// dnfUniverse is a local RPM repository and a dnf installroot with a private
// configuration that loads the plugin from packaging/ and only it.
type dnfUniverse struct {
	dir, repo, root, plugins, conf string
	rpms                           string
}

func newDnfUniverse(t *testing.T) *dnfUniverse {
	requireRoot(t, map[string]string{"dnf": "dnf", "rpmbuild": "rpm", "createrepo_c": "createrepo-c"})
	dir := t.TempDir()
	u := &dnfUniverse{dir: dir, repo: filepath.Join(dir, "repo"), root: filepath.Join(dir, "root"),
		plugins: filepath.Join(dir, "plugins"), conf: filepath.Join(dir, "dnf.conf"), rpms: filepath.Join(dir, "rpms")}
	for _, d := range []string{u.repo, u.root, u.plugins, filepath.Join(dir, "cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, u.conf, fmt.Sprintf(`[main]
reposdir=/dev/null
pluginpath=%s
pluginconfpath=%s
cachedir=%s/cache
gpgcheck=0
installonly_limit=3
keepcache=0

[local]
name=local
baseurl=file://%s
gpgcheck=0
metadata_expire=0
`, abs(t, filepath.Dir(dnfPlugin)), u.plugins, dir, u.repo))
	return u
}

// pluginConf writes autopod.conf as autopod ships it, with ctl as autopodctl and
// hostRoot as host_root.
func (u *dnfUniverse) pluginConf(t *testing.T, ctl, hostRoot string) {
	b, err := os.ReadFile(dnfPluginConf)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "#autopodctl = /usr/bin/autopodctl", "autopodctl = "+ctl, 1)
	s = strings.Replace(s, "#host_root = /", "host_root = "+hostRoot, 1)
	writeFile(t, filepath.Join(u.plugins, "autopod.conf"), s)
}

// rpm builds a package with one file (/boot/vmlinuz-VERSION-RELEASE.ARCH for
// kernel-core) and adds it to the repository; spec lines such as "%pre" scripts go
// into the spec as they are.
func (u *dnfUniverse) rpm(t *testing.T, name, version string, spec ...string) {
	file := "/usr/share/autopod-dummy/" + name + "-" + version
	if name == "kernel-core" {
		file = "/boot/vmlinuz-" + version + "-1.x86_64"
	}
	var body []string
	body = append(body, "Name: "+name, "Version: "+version, "Release: 1", "Summary: autopod test dummy", "License: MIT",
		"BuildArch: x86_64", "AutoReqProv: no")
	var scripts []string
	for _, s := range spec {
		if strings.HasPrefix(s, "%") {
			scripts = append(scripts, s)
		} else {
			body = append(body, s)
		}
	}
	body = append(body, "%define debug_package %{nil}", "%description", "autopod test dummy", "%install",
		"mkdir -p %{buildroot}"+filepath.Dir(file), "echo "+name+" > %{buildroot}"+file)
	body = append(body, scripts...)
	body = append(body, "%files", file)
	specFile := filepath.Join(u.dir, "specs", name+"-"+version+".spec")
	writeFile(t, specFile, strings.Join(body, "\n")+"\n")
	mustRun(t, nil, "rpmbuild", "--quiet", "--define", "_topdir "+filepath.Join(u.dir, "rpmbuild"),
		"--define", "_rpmdir "+u.rpms, "-bb", specFile)
	rpms, _ := filepath.Glob(filepath.Join(u.rpms, "*", "*.rpm"))
	for _, r := range rpms {
		if err := os.Rename(r, filepath.Join(u.repo, filepath.Base(r))); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, nil, "createrepo_c", "-q", u.repo)
}

func (u *dnfUniverse) dnf(t *testing.T, env []string, args ...string) (string, int) {
	return run(t, env, "dnf", append([]string{"-c", u.conf, "--installroot=" + u.root, "--releasever=1", "-y"}, args...)...)
}

// installed returns name's installed versions in the installroot, sorted.
func (u *dnfUniverse) installed(t *testing.T, name string) []string {
	out, rc := run(t, nil, "rpm", "--root="+u.root, "-q", "--qf", "%{VERSION}\n", name)
	if rc != 0 {
		return nil
	}
	vs := lines([]byte(out))
	slices.Sort(vs)
	return vs
}

func kernelDnfUniverse(t *testing.T) *dnfUniverse {
	u := newDnfUniverse(t)
	for _, v := range []string{"6.1.0", "6.2.0"} {
		u.rpm(t, "kernel-core", v, "Provides: installonlypkg(kernel)")
	}
	u.rpm(t, "hello", "1.0")
	// Its %pre (in rpm's built-in Lua: the installroot has no shell) fails:
	// rpm's transaction fails after the plugin's pre_transaction.
	u.rpm(t, "failing", "1.0", "%pre -p <lua>\nerror(\"autopod test: %pre fails\")")
	return u
}

// TestRootDnfPlugin: the plugin, loaded by real dnf from packaging/, sends the
// transaction in the documented format, stops the transaction with the hook's
// message when the hook fails, reports the end of the transaction (and its
// failure), stays out of other installroots, and lets dnf work when autopodctl is
// missing.
func TestRootDnfPlugin(t *testing.T) {
	u := kernelDnfUniverse(t)
	recorder := abs(t, "testdata/recorder.sh")
	rec := filepath.Join(u.dir, "rec")
	env := func(extra ...string) []string {
		os.RemoveAll(rec)
		if err := os.MkdirAll(rec, 0o755); err != nil {
			t.Fatal(err)
		}
		return append([]string{"RECORD_DIR=" + rec}, extra...)
	}
	u.pluginConf(t, recorder, u.root)

	out, rc := u.dnf(t, env(), "install", "kernel-core-6.1.0", "hello")
	calls := recordings(t, rec)
	if rc != 0 || len(calls) != 2 {
		t.Fatalf("dnf install: exit %d, %d calls\n%s", rc, len(calls), out)
	}
	if !reflect.DeepEqual(calls[0].args, []string{"hook", "dnf-pre-transaction"}) ||
		calls[0].stdin != "hello 0:1.0-1.x86_64 install\nkernel-core 0:6.1.0-1.x86_64 install\n" ||
		!strings.Contains(calls[0].env, "tty=no\n") {
		t.Errorf("pre-transaction: %+v", calls[0])
	}
	if !reflect.DeepEqual(calls[1].args, []string{"hook", "dnf-post-transaction"}) {
		t.Errorf("post-transaction: %+v", calls[1])
	}

	// The hook refuses: nothing is installed, and dnf shows why.
	out, rc = u.dnf(t, env("RECORD_FAIL=dnf-pre-transaction", "RECORD_MESSAGE=autopod: the pods cannot leave (recorder)"),
		"install", "kernel-core-6.2.0")
	if rc != 1 || !strings.Contains(out, "autopod: the pods cannot leave (recorder)\n") ||
		!strings.Contains(out, "Error: autopod: the transaction was stopped before any package changed "+
			"(autopodctl hook dnf-pre-transaction exited with 3): autopod: the pods cannot leave (recorder)") {
		t.Errorf("dnf: exit %d\n%s", rc, out)
	}
	if v := u.installed(t, "kernel-core"); !reflect.DeepEqual(v, []string{"6.1.0"}) {
		t.Errorf("kernel-core %q installed although the hook refused", v)
	}
	if calls := recordings(t, rec); len(calls) != 1 {
		t.Errorf("%d calls after a refusal, want the pre-transaction hook only", len(calls))
	}

	// rpm fails on a package after pre_transaction: dnf still runs the plugin's
	// transaction hook, which reports the failure and the package.
	out, rc = u.dnf(t, env(), "install", "failing")
	calls = recordings(t, rec)
	var args []string
	for _, c := range calls {
		args = append(args, strings.Join(c.args, " "))
	}
	if want := []string{"hook dnf-pre-transaction", "hook dnf-post-transaction --failed"}; rc != 1 || !reflect.DeepEqual(args, want) ||
		calls[1].stdin != "failing 0:1.0-1.x86_64 install\n" || !strings.Contains(out, "Error: Transaction failed") {
		t.Errorf("a failed rpm transaction (exit %d): calls %+v, want %q\n%s", rc, calls, want, out)
	}

	// Another plugin stops the transaction after autopod's pre_transaction: rpm
	// never runs, and the plugin reports that at dnf's exit.
	later := filepath.Join(u.dir, "later-plugins")
	writeFile(t, filepath.Join(later, "zzstop.py"), "import dnf, dnf.exceptions\n"+
		"class ZZStop(dnf.Plugin):\n    name = 'zzstop'\n"+
		"    def pre_transaction(self):\n        raise dnf.exceptions.Error('zzstop: a later plugin stops the transaction')\n")
	out, rc = run(t, env(), "dnf", "-c", u.conf, "--installroot="+u.root, "--releasever=1", "-y",
		"--setopt=pluginpath="+abs(t, filepath.Dir(dnfPlugin))+","+later, "install", "kernel-core-6.2.0")
	calls = recordings(t, rec)
	args = nil
	for _, c := range calls {
		args = append(args, strings.Join(c.args, " "))
	}
	if want := []string{"hook dnf-pre-transaction", "hook dnf-post-transaction --failed"}; rc != 1 || !reflect.DeepEqual(args, want) ||
		calls[1].stdin != "" || !strings.Contains(out, "Error: zzstop: a later plugin stops the transaction") {
		t.Errorf("a later plugin stops the transaction (exit %d): calls %+v, want %q\n%s", rc, calls, want, out)
	}

	// Removals are announced too (autopodctl decides they need nothing).
	if out, rc := u.dnf(t, env(), "remove", "hello"); rc != 0 || len(recordings(t, rec)) != 2 {
		t.Errorf("dnf remove: exit %d\n%s", rc, out)
	}

	// Another installroot than host_root: not announced.
	u.pluginConf(t, recorder, "/")
	if out, rc := u.dnf(t, env(), "install", "hello"); rc != 0 || len(recordings(t, rec)) != 0 {
		t.Errorf("installroot other than host_root: exit %d, %d calls\n%s", rc, len(recordings(t, rec)), out)
	}

	// autopodctl missing: dnf goes on, with a warning.
	u.pluginConf(t, filepath.Join(u.dir, "no-such-autopodctl"), u.root)
	out, rc = u.dnf(t, env(), "install", "kernel-core-6.2.0")
	if rc != 0 || !strings.Contains(out, "is not installed; not asking autopod") {
		t.Errorf("autopodctl missing: exit %d\n%s", rc, out)
	}
	if v := u.installed(t, "kernel-core"); !reflect.DeepEqual(v, []string{"6.1.0", "6.2.0"}) {
		t.Errorf("kernel-core %q", v)
	}
}

// TestRootDnfPluginRunner: the plugin with the Runner behind it (this test binary
// as autopodctl, a fake agent) under real dnf.
func TestRootDnfPluginRunner(t *testing.T) {
	u := kernelDnfUniverse(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	u.pluginConf(t, self, u.root)
	log := filepath.Join(u.dir, "agent.log")
	env := func(agent string) []string {
		os.Remove(log)
		return []string{"AUTOPOD_TEST_FAKECTL=1", "AUTOPOD_FAKE_AGENT=" + agent, "AUTOPOD_FAKE_LOG=" + log}
	}
	calls := func() []string {
		b, _ := os.ReadFile(log)
		if len(b) == 0 {
			return nil
		}
		return lines(b)
	}

	out, rc := u.dnf(t, env("unreachable"), "install", "kernel-core-6.1.0")
	if rc != 1 || !strings.Contains(out, "autopod: dnf is about to install a new kernel (kernel-core 6.1.0-1), but the autopod agent did not answer") ||
		!strings.Contains(out, "Error: autopod: the transaction was stopped before any package changed (autopodctl hook dnf-pre-transaction exited with 1): "+
			"autopod: dnf is about to install a new kernel (kernel-core 6.1.0-1), but the autopod agent did not answer (org.freedesktop.DBus.Error.ServiceUnknown: "+
			"the autopod agent cannot be reached), so nobody would move this host's pods away before that kernel is booted. dnf stops here, before rpm runs; "+
			"try again later, or install without autopod: AUTOPOD_HOOK=skip dnf ...\n") {
		t.Errorf("unreachable: exit %d\n%s", rc, out)
	}
	if v := u.installed(t, "kernel-core"); v != nil {
		t.Errorf("kernel-core %q installed although the hook refused", v)
	}

	out, rc = u.dnf(t, env("ready"), "install", "kernel-core-6.1.0")
	want := []string{"begin dnf kernel-core=6.1.0-1", "wait", "end ok=true "}
	if rc != 0 || !reflect.DeepEqual(calls(), want) || !strings.Contains(out, "autopod: evacuating: moving web to hostb\n") {
		t.Errorf("ready: exit %d, calls %q (want %q)\n%s", rc, calls(), want, out)
	}
	if v := u.installed(t, "kernel-core"); !reflect.DeepEqual(v, []string{"6.1.0"}) {
		t.Errorf("kernel-core %q", v)
	}
}

// TestRootCapturesReproduce: testdata/capture.sh still works, and gives the hook
// inputs and dpkg status files that the tests read, byte for byte.
func TestRootCapturesReproduce(t *testing.T) {
	requireRoot(t, map[string]string{"apt-get": "apt", "dpkg-deb": "dpkg", "apt-ftparchive": "apt-utils",
		"dnf": "dnf", "rpmbuild": "rpm", "createrepo_c": "createrepo-c"})
	dir := t.TempDir()
	mustRun(t, []string{"OUT=" + dir}, "testdata/capture.sh")
	for _, pattern := range []string{"apt/*.stdin", "apt/*.status", "apt/*.rc", "apt/*.err", "dnf/*.stdin", "dnf/*.rc", "dnf/*.err"} {
		for _, name := range captureFiles(t, pattern) {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Errorf("capture.sh did not write %s: %v", name, err)
				continue
			}
			if !bytes.Equal(got, readCapture(t, name)) {
				t.Errorf("%s differs from a new capture:\n%s", name, got)
			}
		}
	}
}
