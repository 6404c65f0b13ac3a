//go:build roottest

// Package packaging tests autopod's distro packages as an operator meets
// them: both are built from a clean copy of the checkout with `make deb` and
// `make rpm`; the .deb is checked with lintian and then installed, enabled,
// activated over D-Bus and over its socket, upgraded while a pod runs,
// removed and purged in a Debian root booted with systemd as PID 1
// (systemd-nspawn); the .rpm is checked with `rpm -qp` and installed into an
// empty root. Run as root: `make test-packaging` (docs/packaging.md).
package packaging

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPackaging(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the packaging tier needs root (dpkg-buildpackage, overlay mounts, systemd-nspawn): run `sudo make test-packaging`")
	}
	requireTools(t, "make", "git", "dpkg-buildpackage", "dh", "lintian", "rpmbuild", "rpm",
		"debootstrap", "systemd-nspawn", "nsenter", "mount")
	tm := newTimings()
	t.Cleanup(func() { t.Log(tm.summary()) })
	ctx := t.Context()
	dir := t.TempDir()

	// The packages and the Debian root do not depend on each other.
	var b builds
	var lower string
	ok := t.Run("prepare", func(t *testing.T) {
		t.Run("build", func(t *testing.T) {
			t.Parallel()
			b = buildPackages(t, ctx, tm, dir)
		})
		t.Run("debian-root", func(t *testing.T) {
			t.Parallel()
			done := tm.track("Debian root (debootstrap or cache)")
			lower = debianRoot(t, ctx)
			done()
		})
	})
	if !ok {
		t.FailNow()
	}

	t.Run("checks", func(t *testing.T) {
		t.Run("deb-contents", func(t *testing.T) {
			t.Parallel()
			defer tm.track("deb contents and scripts")()
			checkDebContents(t, ctx, b)
		})
		t.Run("lintian", func(t *testing.T) {
			t.Parallel()
			defer tm.track("lintian")()
			checkLintian(t, ctx, b.deb)
		})
		t.Run("rpm", func(t *testing.T) {
			t.Parallel()
			defer tm.track("rpm -qp, rpm --root")()
			checkRPM(t, ctx, b)
		})
		t.Run("deb-lifecycle", func(t *testing.T) {
			t.Parallel()
			debLifecycle(t, ctx, tm, b, lower)
		})
	})
	// After the lifecycle's container is gone: one container at a time.
	t.Run("update-cycle-logind", func(t *testing.T) {
		logindCycle(t, ctx, tm, b, lower)
	})
}

// installedFiles are the files both packages install (the .deb's units live
// in /lib/systemd on Debian 12, the .rpm's in /usr/lib/systemd), with their
// modes; man pages are compressed by the distribution's tools.
var installedFiles = map[string]os.FileMode{
	"/usr/bin/autopod":                                             0o755,
	"/usr/bin/autopodctl":                                          0o755,
	"/lib/systemd/system/autopod.service":                          0o644,
	"/lib/systemd/system/autopod.socket":                           0o644,
	"/lib/systemd/system/autopod-updates.path":                     0o644,
	"/lib/systemd/system-preset/80-autopod.preset":                 0o644,
	"/usr/lib/tmpfiles.d/autopod.conf":                             0o644,
	"/usr/share/dbus-1/system.d/org.autopod.Agent1.conf":           0o644,
	"/usr/share/dbus-1/system-services/org.autopod.Agent1.service": 0o644,
	"/usr/share/man/man5/autopod.toml.5":                           0o644,
	"/usr/share/man/man5/autopod-pod.toml.5":                       0o644,
	"/usr/share/man/man8/autopod.8":                                0o644,
	"/usr/share/man/man8/autopodctl.8":                             0o644,
	"/usr/share/bash-completion/completions/autopod":               0o644,
	"/usr/share/bash-completion/completions/autopodctl":            0o644,
	"/etc/autopod/autopod.toml":                                    0o644,
}

// debOnlyFiles are the apt hooks, which only the .deb installs.
var debOnlyFiles = map[string]os.FileMode{
	"/etc/apt/apt.conf.d/99autopod":                     0o644,
	"/etc/apt/apt.conf.d/99autopod-unattended-upgrades": 0o644,
}

// rpmOnlyFiles are dnf's plugin and its configuration, which only the .rpm
// installs (Debian's rpmbuild puts python3's site directory where Debian's
// python has it).
var rpmOnlyFiles = map[string]os.FileMode{
	"/usr/lib/python3/dist-packages/dnf-plugins/autopod.py": 0o644,
	"/etc/dnf/plugins/autopod.conf":                         0o644,
}

// with returns the union of the maps.
func with(ms ...map[string]os.FileMode) map[string]os.FileMode {
	out := map[string]os.FileMode{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// debPath is where the .deb puts a file of installedFiles.
func debPath(p string) string {
	if strings.HasPrefix(p, "/usr/share/man/") {
		return p + ".gz"
	}
	return p
}

// rpmPath is where the .rpm puts it.
func rpmPath(p string) string {
	if strings.HasPrefix(p, "/lib/systemd/") {
		return "/usr" + p
	}
	return p
}

func checkDebContents(t *testing.T, ctx context.Context, b builds) {
	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Depends", "Recommends"} {
		fields[f] = strings.TrimSpace(run(t, ctx, "", nil, "dpkg-deb", "-f", b.deb, f))
	}
	t.Logf("control fields: %v", fields)
	if fields["Package"] != "autopod" || fields["Version"] != b.version {
		t.Errorf("Package %q Version %q, want autopod %s", fields["Package"], fields["Version"], b.version)
	}
	for _, dep := range []string{"iproute2 (>= ", "nftables (>= ", "dbus-system-bus"} {
		if !strings.Contains(fields["Depends"], dep) {
			t.Errorf("Depends %q lacks %q", fields["Depends"], dep)
		}
	}
	if !strings.Contains(fields["Recommends"], "criu (>= 4.1)") {
		t.Errorf("Recommends %q lacks criu (>= 4.1)", fields["Recommends"])
	}

	// The payload: exactly the expected files, with their modes, plus the
	// pods directory; nothing under /var (tmpfiles.d creates it).
	x := t.TempDir()
	run(t, ctx, "", nil, "dpkg-deb", "-x", b.deb, x)
	want := map[string]os.FileMode{"/usr/share/doc/autopod/copyright": 0o644, "/usr/share/doc/autopod/changelog.gz": 0o644,
		"/usr/share/lintian/overrides/autopod": 0o644}
	for p, m := range with(installedFiles, debOnlyFiles) {
		want[debPath(p)] = m
	}
	have := map[string]os.FileMode{}
	_ = filepath.WalkDir(x, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			fi, _ := e.Info()
			have[strings.TrimPrefix(p, x)] = fi.Mode()
		}
		return nil
	})
	for p, m := range want {
		if got, ok := have[p]; !ok {
			t.Errorf(".deb lacks %s", p)
		} else if got != m {
			t.Errorf(".deb: %s has mode %v, want %v", p, got, m)
		}
	}
	for p := range have {
		if _, ok := want[p]; !ok {
			t.Errorf(".deb ships unexpected file %s", p)
		}
	}
	if m, kind := fileMode(filepath.Join(x, "etc/autopod/pods")); kind != "d" || m != 0o755 {
		t.Errorf(".deb: /etc/autopod/pods is %q %v, want a 0755 directory", kind, m)
	}
	// Installable on this host's Debian release with its own packages (apt
	// simulation, no download): on bookworm the criu Recommends is skipped,
	// never satisfied with criu 3.17.
	if _, err := os.Stat("/etc/debian_version"); err == nil {
		sim, err := runErr(t, ctx, "", nil, "apt-get", "install", "-s", "--no-download", b.deb)
		if err != nil || !strings.Contains(sim, "Inst autopod ") {
			t.Errorf("apt-get install -s %s on this host: %v\n%s", filepath.Base(b.deb), err, sim)
		}
		if strings.Contains(sim, "Inst criu ") {
			t.Errorf("apt would install a criu that does not satisfy criu (>= 4.1):\n%s", sim)
		}
	}
	if out := run(t, ctx, "", nil, filepath.Join(x, "usr/bin/autopod"), "--version"); strings.TrimSpace(out) != "autopod "+b.version {
		t.Errorf("autopod --version in the .deb: %q, want %q", out, "autopod "+b.version)
	}

	ctl := t.TempDir()
	run(t, ctx, "", nil, "dpkg-deb", "-e", b.deb, ctl)
	read := func(name string) string {
		data, err := os.ReadFile(filepath.Join(ctl, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	if c := strings.TrimSpace(read("conffiles")); c != "/etc/apt/apt.conf.d/99autopod\n/etc/apt/apt.conf.d/99autopod-unattended-upgrades\n/etc/autopod/autopod.toml" {
		t.Errorf("conffiles: %q, want the apt hooks and /etc/autopod/autopod.toml", c)
	}
	// What the scripts do is proven in the container; these pin the choices
	// in debian/rules that the container cannot tell apart from others.
	postinst, prerm := read("postinst"), read("prerm")
	for _, s := range []string{
		"deb-systemd-helper enable 'autopod.socket'",
		"deb-systemd-invoke start 'autopod.socket'",
		"deb-systemd-invoke try-restart 'autopod.service'",
		"systemd-tmpfiles ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} --create autopod.conf",
	} {
		if !strings.Contains(postinst, s) {
			t.Errorf("postinst lacks %q", s)
		}
	}
	for _, s := range []string{
		"deb-systemd-invoke restart 'autopod.socket'", // the peer port stays bound
		"deb-systemd-invoke try-restart 'autopod.socket'",
		"deb-systemd-invoke start 'autopod.service'", // the agent starts on demand
		"deb-systemd-invoke $_dh_action 'autopod.service'",
	} {
		if strings.Contains(postinst, s) {
			t.Errorf("postinst runs %q", s)
		}
	}
	if !strings.Contains(prerm, "deb-systemd-invoke stop 'autopod.socket'") {
		t.Errorf("prerm does not stop autopod.socket on removal:\n%s", prerm)
	}
	if _, err := os.Stat(filepath.Join(ctl, "preinst")); err == nil {
		t.Errorf("a preinst exists: nothing must stop the agent before the new files are unpacked:\n%s", read("preinst"))
	}
}

func checkLintian(t *testing.T, ctx context.Context, deb string) {
	// Errors and warnings fail; the ones that apply are overridden, with the
	// reason, in debian/autopod.lintian-overrides. Info and pedantic tags
	// are shown.
	out, err := runErr(t, ctx, "", nil, "lintian", "--fail-on", "error,warning", "--info", "--pedantic", deb)
	t.Logf("lintian:\n%s", out)
	if err != nil {
		t.Errorf("lintian fails: %v", err)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
			t.Errorf("lintian: %s", l)
		}
	}
}

func checkRPM(t *testing.T, ctx context.Context, b builds) {
	q := func(args ...string) string {
		return run(t, ctx, "", nil, "rpm", append([]string{"-qp"}, append(args, b.rpm)...)...)
	}
	if nvra := strings.TrimSpace(q("--queryformat", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}")); nvra != fmt.Sprintf("autopod %s 1 %s", b.version, rpmArch()) {
		t.Errorf("rpm NAME VERSION RELEASE ARCH: %q", nvra)
	}

	// --list: the same files as the .deb, at Fedora's paths.
	list := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(q("--list")), "\n") {
		if !strings.HasPrefix(l, "/usr/lib/.build-id") {
			list[l] = true
		}
	}
	want := map[string]bool{"/etc/autopod": true, "/etc/autopod/pods": true, "/var/lib/autopod": true, "/var/log/autopod": true}
	for p := range with(installedFiles, rpmOnlyFiles) {
		want[rpmPath(p)] = true
	}
	for p := range want {
		// Man pages are compressed where the distribution's rpm does that.
		if !list[p] && !list[p+".gz"] {
			t.Errorf(".rpm lacks %s", p)
		}
	}
	for p := range list {
		if !want[p] && !want[strings.TrimSuffix(p, ".gz")] {
			t.Errorf(".rpm ships unexpected %s", p)
		}
	}
	if cf := strings.TrimSpace(q("--queryformat", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]")); !strings.Contains(cf, "cn /etc/autopod/autopod.toml") {
		t.Errorf("/etc/autopod/autopod.toml is not %%config(noreplace):\n%s", cf)
	}

	// --scripts: systemd's scriptlets, expanded (a macro that rpmbuild did
	// not know would be left as literal text).
	scripts := q("--scripts")
	t.Logf("rpm scripts:\n%s", scripts)
	if strings.Contains(scripts, "%") {
		t.Errorf("unexpanded macro in the scriptlets")
	}
	for _, s := range []string{
		"systemctl --no-reload preset autopod.socket autopod-updates.path",
		"systemctl --no-reload disable --now autopod.socket autopod-updates.path autopod.service",
		"systemctl try-restart autopod.service",
		"systemd-tmpfiles --create autopod.conf",
	} {
		if !strings.Contains(scripts, s) {
			t.Errorf("scriptlets lack %q", s)
		}
	}
	if strings.Contains(scripts, "try-restart autopod.socket") {
		t.Errorf("an upgrade must not restart autopod.socket")
	}

	requires := q("--requires")
	for _, r := range []string{"iproute >= ", "nftables >= ", "dbus"} {
		if !strings.Contains(requires, r) {
			t.Errorf("Requires lacks %q:\n%s", r, requires)
		}
	}
	if rec := q("--recommends"); !strings.Contains(rec, "criu >= 4.1") {
		t.Errorf("Recommends lacks criu >= 4.1: %q", rec)
	}

	// Installed into an empty root: paths and modes. --nodeps: the root has
	// none of the dependencies; --noscripts: nor a shell to run them.
	root := t.TempDir()
	run(t, ctx, "", nil, "rpm", "--root", root, "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts", "-i", b.rpm)
	for p, m := range with(installedFiles, rpmOnlyFiles) {
		p = rpmPath(p)
		got, kind := fileMode(filepath.Join(root, p))
		if kind == "" && strings.HasPrefix(p, "/usr/share/man/") {
			got, kind = fileMode(filepath.Join(root, p+".gz"))
		}
		if kind != "f" || got != m {
			t.Errorf("rpm --root: %s is %q %v, want a file with mode %v", p, kind, got, m)
		}
	}
	for p, m := range map[string]os.FileMode{"/var/lib/autopod": 0o700, "/var/log/autopod": 0o755, "/etc/autopod/pods": 0o755} {
		if got, kind := fileMode(filepath.Join(root, p)); kind != "d" || got != m {
			t.Errorf("rpm --root: %s is %q %v, want a directory with mode %v", p, kind, got, m)
		}
	}
}

// agentStatus is the reply of org.autopod.Agent1.Status, from busctl --json.
type agentStatus struct {
	Version     string
	CriuPath    string
	CriuVersion string
	CriuError   string
	Pods        int
}

func parseStatus(t *testing.T, out string) agentStatus {
	var reply struct {
		Data []map[string]struct {
			Data json.RawMessage `json:"data"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &reply); err != nil || len(reply.Data) != 1 {
		t.Fatalf("busctl Status reply %q: %v", out, err)
	}
	m := reply.Data[0]
	str := func(k string) string {
		var s string
		_ = json.Unmarshal(m[k].Data, &s)
		return s
	}
	var s agentStatus
	s.Version, s.CriuPath, s.CriuVersion, s.CriuError = str("version"), str("criu_path"), str("criu_version"), str("criu_error")
	_ = json.Unmarshal(m["pods"].Data, &s.Pods)
	return s
}

type podStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Pid   int    `json:"pid"`
	Error string `json:"error"`
}

const testPod = "pkgtest-sleeper"

// debLifecycle installs, activates, upgrades, removes and purges the .deb in
// a booted Debian root.
func debLifecycle(t *testing.T, ctx context.Context, tm *timings, b builds, lower string) {
	step := func(name string) func() { t.Logf("--- %s", name); return tm.track("container: " + name) }
	done := step("boot")
	c := bootContainer(t, ctx, lower, func(root string) {
		d := filepath.Join(root, "root/pkgtest")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{b.deb, b.debNext} {
			copyTree(t, p, filepath.Join(d, filepath.Base(p)))
		}
	})
	done()
	inC := func(p string) string { return "/root/pkgtest/" + filepath.Base(p) }
	show := func(unit, prop string) string {
		return strings.TrimSpace(c.must(ctx, "systemctl", "show", "-p", prop, "--value", unit))
	}
	state := func(verb, unit string) string {
		out, _ := c.exec(ctx, "systemctl", verb, unit)
		return strings.TrimSpace(out)
	}
	expectState := func(verb, unit, want string) {
		t.Helper()
		if got := state(verb, unit); got != want {
			t.Fatalf("systemctl %s %s: %q, want %q", verb, unit, got, want)
		}
	}
	status := func() agentStatus {
		t.Helper()
		return parseStatus(t, c.must(ctx, "busctl", "--json=short", "call", "org.autopod.Agent1",
			"/org/autopod/Agent1", "org.autopod.Agent1", "Status"))
	}
	pod := func() podStatus {
		t.Helper()
		var p podStatus
		out := c.must(ctx, "autopodctl", "--json", "pod", testPod)
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatalf("autopodctl --json pod: %q: %v", out, err)
		}
		return p
	}
	podAlive := func(pid int) bool {
		out, err := c.exec(ctx, "cat", fmt.Sprintf("/proc/%d/cmdline", pid))
		return err == nil && strings.Contains(out, "autopod-init")
	}
	expectFiles := func(present bool, paths ...string) {
		t.Helper()
		for _, p := range paths {
			// On trixie /lib is a symlink to usr/lib: Lstat follows it
			// (it is not the last component).
			_, kind := fileMode(c.path(p))
			if present && kind == "" {
				t.Errorf("%s is missing", p)
			} else if !present && kind != "" {
				t.Errorf("%s is still there", p)
			}
		}
	}
	var packaged []string
	for p := range with(installedFiles, debOnlyFiles) {
		if !strings.HasPrefix(p, "/etc/") { // conffiles stay until purge
			packaged = append(packaged, debPath(p))
		}
	}
	slices.Sort(packaged)

	done = step("install")
	out := c.must(ctx, "dpkg", "-i", inC(b.deb))
	t.Logf("dpkg -i:\n%s", out)
	v := strings.TrimSpace(c.must(ctx, "dpkg-query", "-W", "-f=${Version}", "criu"))
	if _, err := c.exec(ctx, "dpkg", "--compare-versions", v, "ge", "4.1"); err != nil {
		t.Errorf("criu %s in the %s root does not satisfy Recommends: criu (>= 4.1)", v, rootSuite)
	}
	if out := c.must(ctx, "dpkg", "--audit"); strings.TrimSpace(out) != "" {
		t.Errorf("dpkg --audit:\n%s", out)
	}
	done()

	done = step("files, units, verify")
	expectFiles(true, packaged...)
	for p, m := range with(installedFiles, debOnlyFiles) {
		p = debPath(p)
		fi, err := os.Stat(c.path(p))
		if err == nil && fi.Mode().Perm() != m {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), m)
		}
	}
	for p, m := range map[string]os.FileMode{"/var/lib/autopod": 0o700, "/var/log/autopod": 0o755, "/etc/autopod/pods": 0o755} {
		if got, kind := fileMode(c.path(p)); kind != "d" || got != m {
			t.Errorf("%s is %q %v, want a directory with mode %v (tmpfiles.d, package)", p, kind, got, m)
		}
	}
	expectState("is-enabled", "autopod.socket", "enabled")
	expectState("is-active", "autopod.socket", "active")
	expectState("is-enabled", "autopod.service", "disabled")
	expectState("is-active", "autopod.service", "inactive")
	verify, err := c.exec(ctx, "systemd-analyze", "verify", "autopod.service", "autopod.socket")
	t.Logf("systemd-analyze verify (the installed units, man pages included):\n%s", verify)
	if err != nil || strings.Contains(verify, "autopod") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, verify)
	}
	done()

	done = step("enable")
	// `systemctl enable autopod` enables the socket too (Also=).
	c.must(ctx, "systemctl", "enable", "autopod.service")
	expectState("is-enabled", "autopod.service", "enabled")
	c.must(ctx, "systemctl", "disable", "autopod.service")
	expectState("is-enabled", "autopod.socket", "disabled") // Also= works both ways
	c.must(ctx, "systemctl", "enable", "--now", "autopod.socket")
	expectState("is-enabled", "autopod.socket", "enabled")
	expectState("is-active", "autopod.socket", "active")
	expectState("is-active", "autopod.service", "inactive")
	done()

	done = step("D-Bus activation")
	st := status()
	t.Logf("Status: %+v", st)
	expectState("is-active", "autopod.service", "active")
	if st.Version != b.version {
		t.Errorf("agent version %q, want %q", st.Version, b.version)
	}
	// CRIU cannot work inside nspawn (/proc/sys is read-only): the agent
	// must start regardless and say why checkpoints will fail.
	if st.CriuError == "" || st.CriuVersion == "" {
		t.Errorf("Status does not report the CRIU problem: %+v", st)
	}
	if out, err := c.exec(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"busctl", "call", "org.autopod.Agent1", "/org/autopod/Agent1", "org.autopod.Agent1", "Status"); err != nil {
		t.Errorf("the bus policy refuses Status to an unprivileged caller: %v\n%s", err, out)
	}
	done()

	done = step("socket activation")
	c.must(ctx, "systemctl", "stop", "autopod.service")
	expectState("is-active", "autopod.socket", "active")
	expectState("is-active", "autopod.service", "inactive")
	// Whatever the peer protocol says first (mutual TLS waits for the
	// client; a host without a peer identity closes at once), the
	// connection itself must start the agent, on systemd's socket.
	answer, _ := c.exec(ctx, "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7781 && head -c 200 <&3")
	t.Logf("the peer port answered %q", answer)
	for deadline := time.Now().Add(20 * time.Second); state("is-active", "autopod.service") != "active"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("a connection to port 7781 did not start autopod.service: %s", state("is-active", "autopod.service"))
		}
	}
	// The agent listens on the socket systemd passed it: both hold it.
	listeners := c.must(ctx, "ss", "-Hltnp", "sport = :7781")
	if !strings.Contains(listeners, `"autopod"`) || !strings.Contains(listeners, `"systemd"`) {
		t.Errorf("port 7781 is not systemd's socket in the agent's hands:\n%s", listeners)
	}
	done()

	done = step("path activation")
	// apt-get update renames fresh lists into /var/lib/apt/lists/: with the
	// agent stopped, autopod-updates.path must start it to look.
	expectState("is-active", "autopod-updates.path", "active")
	c.must(ctx, "systemctl", "stop", "autopod.service")
	expectState("is-active", "autopod.service", "inactive")
	c.must(ctx, "sh", "-c", "echo test > /var/lib/apt/lists/autopod-test_Packages.new && mv /var/lib/apt/lists/autopod-test_Packages.new /var/lib/apt/lists/autopod-test_Packages")
	for deadline := time.Now().Add(20 * time.Second); state("is-active", "autopod.service") != "active"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("a change in apt's lists did not start autopod.service: %s", state("is-active", "autopod.service"))
		}
	}
	c.must(ctx, "rm", "-f", "/var/lib/apt/lists/autopod-test_Packages")
	done()

	done = step("pod")
	spec := "# The smallest pod: a process that runs until it is stopped.\ncommand = \"/bin/sleep\"\nargs = [\"infinity\"]\n"
	if err := os.WriteFile(c.path("/etc/autopod/pods/"+testPod+".toml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	c.must(ctx, "systemctl", "kill", "--kill-whom=main", "--signal=SIGHUP", "autopod.service")
	var p podStatus
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		// The agent re-reads its pods after the signal, in its own time:
		// "no such pod" until then.
		if out, err := c.exec(ctx, "autopodctl", "--json", "pod", testPod); err == nil {
			p = podStatus{}
			_ = json.Unmarshal([]byte(out), &p)
		}
		if p.State == "running" && p.Pid > 0 {
			break
		}
		if time.Now().After(deadline) {
			j, _ := c.exec(ctx, "journalctl", "-u", "autopod", "--no-pager", "-n", "30")
			t.Fatalf("pod %s: %+v, want running\n%s", testPod, p, j)
		}
	}
	if !podAlive(p.Pid) {
		t.Fatalf("pod %s reports pid %d, which is not its init", testPod, p.Pid)
	}
	done()

	done = step("upgrade")
	// A local change to the conffile survives the upgrade, without a prompt
	// (dpkg would read the answer from stdin and fail here).
	localConf := "\n# local change, kept across upgrades\nlog_level = \"debug\"\n"
	f, err := os.OpenFile(c.path("/etc/autopod/autopod.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(localConf)
	if cerr := f.Close(); err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	agentBefore := show("autopod.service", "MainPID")
	socketBefore := show("autopod.socket", "InvocationID")
	out = c.must(ctx, "dpkg", "-i", inC(b.debNext))
	t.Logf("dpkg -i (upgrade):\n%s", out)
	expectState("is-active", "autopod.service", "active")
	if after := show("autopod.service", "MainPID"); after == agentBefore || after == "0" {
		t.Errorf("the agent was not restarted by the upgrade: MainPID %s before, %s after", agentBefore, after)
	}
	if after := show("autopod.socket", "InvocationID"); after != socketBefore {
		t.Errorf("the upgrade restarted autopod.socket (invocation %s, then %s): the peer port closed", socketBefore, after)
	}
	if st := status(); st.Version != b.versionUp {
		t.Errorf("agent version after the upgrade: %q, want %q", st.Version, b.versionUp)
	}
	if p2 := pod(); p2.State != "running" || p2.Pid != p.Pid || !podAlive(p.Pid) {
		t.Errorf("pod after the upgrade: %+v, want running with pid %d", p2, p.Pid)
	}
	if conf, err := os.ReadFile(c.path("/etc/autopod/autopod.toml")); err != nil || !strings.HasSuffix(string(conf), localConf) {
		t.Errorf("the upgrade lost the local change to /etc/autopod/autopod.toml: %v\n%s", err, conf)
	}
	if j := c.must(ctx, "journalctl", "-u", "autopod", "--no-pager"); !strings.Contains(j, "re-adopted running pod") {
		t.Errorf("the new agent did not report re-adopting the pod:\n%s", lastLines(j, 20))
	}
	done()

	done = step("remove")
	out = c.must(ctx, "dpkg", "-r", "autopod")
	t.Logf("dpkg -r:\n%s", out)
	expectFiles(false, packaged...)
	expectFiles(true, "/etc/autopod/autopod.toml", "/var/lib/autopod/pods/"+testPod+"/state.json",
		"/var/log/autopod/"+testPod+".log")
	expectState("is-active", "autopod.service", "inactive")
	expectState("is-active", "autopod.socket", "inactive")
	if !podAlive(p.Pid) {
		t.Errorf("removing the package killed pod %s (pid %d): pods outlive the agent", testPod, p.Pid)
	}
	if s := c.must(ctx, "dpkg-query", "-W", "-f=${Status}", "autopod"); s != "deinstall ok config-files" {
		t.Errorf("dpkg status after remove: %q", s)
	}
	done()

	done = step("purge")
	out = c.must(ctx, "dpkg", "-P", "autopod")
	t.Logf("dpkg -P:\n%s", out)
	expectFiles(false, "/var/lib/autopod", "/var/log/autopod", "/etc/autopod/autopod.toml",
		"/etc/systemd/system/sockets.target.wants/autopod.socket", "/etc/apt/apt.conf.d/99autopod",
		"/etc/systemd/system/paths.target.wants/autopod-updates.path")
	// The admin's pod definitions are not the package's to delete.
	expectFiles(true, "/etc/autopod/pods/"+testPod+".toml")
	if s, err := c.exec(ctx, "dpkg-query", "-W", "-f=${Status}", "autopod"); err == nil && !strings.Contains(s, "not-installed") {
		t.Errorf("dpkg status after purge: %q", s)
	}
	done()
}
