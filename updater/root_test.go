//go:build roottest

package updater

import (
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
)

// The root tier of the updater: the Detector and Watch against the real apt, dpkg, dnf
// and rpm, each in a private universe under a temp dir (the host's package state is
// never touched), and the captures in testdata/ regenerated and compared. Run as root:
//
//	go test -tags roottest -run '^TestRoot' ./updater/
//
// It needs dpkg-dev, apt-utils (apt-ftparchive), rpm (rpmbuild), dnf, dnf-plugins-core
// and createrepo-c: apt-get install -y dpkg-dev apt-utils rpm dnf dnf-plugins-core createrepo-c

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

func mustRun(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRootDebianVersionsAgainstDpkgMany(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		crossCheckDebian(t, seed, 1500)
	}
}

// aptUniverse is a dpkg root and database, a flat repository and an apt configuration
// of their own, read by apt instead of /etc/apt (APT_CONFIG).
type aptUniverse struct {
	dir, root, admin, repo, lists string
	env                           []string
}

func newAptUniverse(t *testing.T) *aptUniverse {
	dir := t.TempDir()
	u := &aptUniverse{dir: dir, root: filepath.Join(dir, "root"), repo: filepath.Join(dir, "repo"),
		lists: filepath.Join(dir, "apt/state/lists")}
	u.admin = filepath.Join(u.root, "var/lib/dpkg")
	etc := filepath.Join(dir, "apt/etc")
	for _, d := range []string{u.repo, filepath.Join(u.lists, "partial"), filepath.Join(dir, "apt/cache/archives/partial"),
		filepath.Join(dir, "apt/log"), filepath.Join(etc, "apt.conf.d"), filepath.Join(etc, "sources.list.d"),
		filepath.Join(etc, "preferences.d"), filepath.Join(u.admin, "info"), filepath.Join(u.admin, "updates"),
		filepath.Join(u.admin, "triggers"), filepath.Join(dir, "debs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(u.admin, "status"), "")
	writeFile(t, filepath.Join(u.admin, "available"), "")
	writeFile(t, filepath.Join(etc, "sources.list"), "deb [trusted=yes] file:"+u.repo+" ./\n")
	conf := fmt.Sprintf(`Dir::Etc::main "%[1]s/apt.conf";
Dir::Etc::parts "%[1]s/apt.conf.d";
Dir::Etc::sourcelist "%[1]s/sources.list";
Dir::Etc::sourceparts "%[1]s/sources.list.d";
Dir::Etc::preferences "%[1]s/preferences";
Dir::Etc::preferencesparts "%[1]s/preferences.d";
Dir::State "%[2]s/apt/state";
Dir::State::status "%[3]s/status";
Dir::Cache "%[2]s/apt/cache";
Dir::Log "%[2]s/apt/log";
Debug::NoLocking "1";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
DPkg::Options { "--root=%[4]s"; "--admindir=%[3]s"; "--force-not-root"; "--force-bad-path"; };
`, etc, dir, u.admin, u.root)
	writeFile(t, filepath.Join(dir, "apt.conf"), conf)
	u.env = []string{"APT_CONFIG=" + filepath.Join(dir, "apt.conf")}
	return u
}

// deb builds a package with one file: /boot/vmlinuz-RELEASE for a kernel image.
func (u *aptUniverse) deb(t *testing.T, name, version string, control ...string) string {
	src := filepath.Join(u.dir, "src", name+"_"+version)
	file := filepath.Join("usr/share/doc", name, "dummy")
	if r, ok := dpkgKernelRelease(name); ok {
		file = "boot/vmlinuz-" + r
	}
	if err := os.MkdirAll(filepath.Join(src, "DEBIAN"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(src, filepath.Dir(file)), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, file), name+" "+version+"\n")
	writeFile(t, filepath.Join(src, "DEBIAN/control"), strings.Join(append([]string{
		"Package: " + name, "Version: " + version, "Architecture: amd64",
		"Maintainer: autopod tests <tests@autopod.invalid>", "Description: autopod test dummy"}, control...), "\n")+"\n")
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
	// apt-ftparchive names files by the path it was given; the flat repo wants them
	// relative to itself.
	writeFile(t, filepath.Join(u.repo, "Packages"), strings.ReplaceAll(packages, u.repo+"/", ""))
	writeFile(t, filepath.Join(u.repo, "Release"), mustRun(t, nil, "apt-ftparchive", "release", u.repo))
}

// drain takes a signal that may still be pending from earlier changes.
func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	case <-time.After(300 * time.Millisecond):
	}
}

func waitSignal(t *testing.T, ch <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(within):
		t.Fatalf("%s: no signal from Watch within %v", what, within)
	}
}

// TestRootAptDetector: the Detector refreshes a private apt universe with the real
// apt-get update, finds the new kernel ABI and the boot-critical update with the real
// simulation, and, once the real upgrade is installed, tells that the running (old)
// kernel needs a reboot. Watch sees both the refresh and the install.
func TestRootAptDetector(t *testing.T) {
	requireRoot(t, map[string]string{"apt-get": "apt", "dpkg-deb": "dpkg", "apt-ftparchive": "apt-utils"})
	u := newAptUniverse(t)
	u.dpkg(t, "-i",
		u.deb(t, "linux-image-6.99.0-1-amd64", "6.99.1-1"),
		u.deb(t, "linux-image-amd64", "6.99.1-1", "Depends: linux-image-6.99.0-1-amd64"),
		u.deb(t, "libc6", "2.36-9"),
		u.deb(t, "hello", "1.0-1"))
	u.publish(t,
		u.deb(t, "linux-image-6.99.0-2-amd64", "6.99.2-1"),
		u.deb(t, "linux-image-amd64", "6.99.2-1", "Depends: linux-image-6.99.0-2-amd64"),
		u.deb(t, "libc6", "2.36-9+deb12u1"),
		u.deb(t, "hello", "1.0-1"))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	changes, err := Watch(ctx, []string{u.lists, filepath.Join(u.admin, "status")}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Backend:            Apt,
		Refresh:            true,
		Env:                u.env,
		DpkgArgs:           []string{"--admindir=" + u.admin},
		BootDir:            filepath.Join(u.root, "boot"),
		RebootRequiredFile: filepath.Join(u.dir, "reboot-required"),
		Uname: func() (Uname, error) {
			return Uname{"6.99.0-1-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.99.1-1 (2026-11-30)"}, nil
		},
	}
	d, err := NewDetector(opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []Update{
		{"libc6", "amd64", "2.36-9", "2.36-9+deb12u1", ClassBootCritical},
		{"linux-image-6.99.0-2-amd64", "amd64", "", "6.99.2-1", ClassKernel},
		{"linux-image-amd64", "amd64", "6.99.1-1", "6.99.2-1", ClassKernel},
	}
	if !reflect.DeepEqual(r.Updates, want) || r.RebootRequired || r.NewestKernel != "6.99.0-1-amd64" {
		t.Fatalf("before the upgrade: %+v\nwant updates %+v, no reboot, newest 6.99.0-1-amd64", r, want)
	}
	waitSignal(t, changes, 5*time.Second, "apt-get update filled the private lists")
	// A check that does not refresh changes nothing that Watch reports: no loop.
	d2, err := NewDetector(Options{Backend: Apt, Env: u.env, DpkgArgs: opts.DpkgArgs, BootDir: opts.BootDir,
		RebootRequiredFile: opts.RebootRequiredFile, Uname: opts.Uname})
	if err != nil {
		t.Fatal(err)
	}
	drain(changes)
	if _, err := d2.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, changes, "a check without refresh")

	// The host's lists never saw the private repository.
	hostLists, _ := os.ReadDir("/var/lib/apt/lists")
	for _, e := range hostLists {
		if strings.Contains(e.Name(), strings.ReplaceAll(strings.TrimPrefix(u.repo, "/"), "/", "_")) {
			t.Errorf("the private repository leaked into the host's lists: %s", e.Name())
		}
	}

	mustRun(t, u.env, "apt-get", "-q", "-y", "dist-upgrade")
	waitSignal(t, changes, 5*time.Second, "the upgrade rewrote the private dpkg status")

	d, err = NewDetector(Options{Backend: Apt, Env: u.env, DpkgArgs: opts.DpkgArgs, BootDir: opts.BootDir,
		RebootRequiredFile: opts.RebootRequiredFile, Uname: opts.Uname})
	if err != nil {
		t.Fatal(err)
	}
	r, err = d.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Updates) != 0 || !r.RebootRequired || r.NewestKernel != "6.99.0-2-amd64" ||
		len(r.Reasons) != 1 || r.Reasons[0].Kind != ReasonNewerKernel {
		t.Fatalf("after the upgrade: %+v", r)
	}
	t.Logf("after the upgrade: %v", r.Reasons)
}

// dnfUniverse is a local RPM repository and a dnf installroot with a private
// configuration, as in shared/notes/dnf-and-rpm-on-debian.md.
type dnfUniverse struct {
	dir, repo, root, cache, conf string
}

func newDnfUniverse(t *testing.T) *dnfUniverse {
	dir := t.TempDir()
	u := &dnfUniverse{dir: dir, repo: filepath.Join(dir, "repo"), root: filepath.Join(dir, "root"),
		cache: filepath.Join(dir, "cache"), conf: filepath.Join(dir, "dnf.conf")}
	plugins := filepath.Join(dir, "plugins")
	for _, d := range []string{u.repo, u.root, u.cache, plugins} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Plugins that write host paths whatever the installroot (see capture.sh) are off.
	for _, p := range []string{"local", "generate_completion_cache", "versionlock", "post-transaction-actions", "debuginfo-install"} {
		writeFile(t, filepath.Join(plugins, p+".conf"), "[main]\nenabled=0\n")
	}
	writeFile(t, u.conf, fmt.Sprintf(`[main]
reposdir=/dev/null
pluginconfpath=%s
cachedir=%s
gpgcheck=0
installonly_limit=3

[local]
name=local
baseurl=file://%s
gpgcheck=0
`, plugins, u.cache, u.repo))
	return u
}

func (u *dnfUniverse) args() []string {
	return []string{"-c", u.conf, "--installroot=" + u.root, "--releasever=1"}
}

// rpm builds a package into the repository; kernel-core carries /boot/vmlinuz-V-R.ARCH
// and is install-only, as Fedora's is.
func (u *dnfUniverse) rpm(t *testing.T, name, version, arch string, tags ...string) {
	file := fmt.Sprintf("/usr/share/autopod-dummy/%s-%s", name, version)
	if name == "kernel-core" {
		file = fmt.Sprintf("/boot/vmlinuz-%s.%s", version, arch)
		tags = append(tags, "Provides: installonlypkg(kernel)")
	}
	v, r, _ := strings.Cut(version, "-")
	spec := strings.Join(append([]string{
		"Name: " + name, "Version: " + v, "Release: " + r, "Summary: autopod test dummy", "License: MIT",
		"BuildArch: " + arch, "AutoReqProv: no"}, tags...), "\n") + fmt.Sprintf(`
%%define debug_package %%{nil}
%%description
autopod test dummy
%%install
mkdir -p %%{buildroot}%s
echo %s > %%{buildroot}%s
%%files
%s
`, filepath.Dir(file), name, file, file)
	specFile := filepath.Join(u.dir, name+"-"+version+".spec")
	writeFile(t, specFile, spec)
	mustRun(t, nil, "rpmbuild", "--quiet", "--define", "_topdir "+filepath.Join(u.dir, "rpmbuild"),
		"--define", "_rpmdir "+u.repo, "-bb", specFile)
}

func dirNames(dir string) []string {
	es, _ := os.ReadDir(dir)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestRootDnfDetector: the same story with the real dnf and rpm in an installroot:
// refresh with makecache, updates from check-update with the installed versions from
// rpm, the obsoleted package, needs-restarting's reboot hint, and the running kernel
// older than the newest installed kernel-core after the upgrade.
func TestRootDnfDetector(t *testing.T) {
	requireRoot(t, map[string]string{"dnf": "dnf dnf-plugins-core", "rpmbuild": "rpm", "createrepo_c": "createrepo-c"})
	hostBefore := [][]string{dirNames("/var/lib/dnf"), dirNames("/var/cache/dnf")}
	u := newDnfUniverse(t)
	u.rpm(t, "kernel-core", "6.1.0-1", "x86_64")
	u.rpm(t, "glibc", "2.37-1", "x86_64")
	u.rpm(t, "hello", "1.0-1", "noarch")
	u.rpm(t, "oldtool", "1.0-1", "noarch")
	mustRun(t, nil, "createrepo_c", "-q", u.repo)
	mustRun(t, nil, "dnf", append(u.args(), "-q", "-y", "install", "kernel-core", "glibc", "hello", "oldtool")...)

	u.rpm(t, "kernel-core", "6.2.0-1", "x86_64")
	u.rpm(t, "hello", "1.1-1", "noarch")
	u.rpm(t, "newtool", "2.0-1", "noarch", "Obsoletes: oldtool < 2.0", "Provides: oldtool = 2.0")
	mustRun(t, nil, "createrepo_c", "-q", "--update", u.repo)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// With --installroot, dnf puts its cachedir inside the root.
	// Debian's rpm keeps its database in ~/.rpmdb, Fedora's in /var/lib/rpm.
	changes, err := Watch(ctx, []string{filepath.Join(u.root, u.cache), filepath.Join(u.root, "root/.rpmdb"),
		filepath.Join(u.root, "var/lib/rpm"), filepath.Join(u.root, "boot")}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Backend:            Dnf,
		Refresh:            true,
		DnfArgs:            u.args(),
		RPMArgs:            []string{"--root=" + u.root},
		BootDir:            filepath.Join(u.root, "boot"),
		RebootRequiredFile: filepath.Join(u.dir, "reboot-required"),
		Uname:              func() (Uname, error) { return Uname{Release: "6.1.0-1.x86_64"}, nil },
	}
	d, err := NewDetector(opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []Update{
		{"hello", "noarch", "1.0-1", "1.1-1", ClassOther},
		{"kernel-core", "x86_64", "6.1.0-1", "6.2.0-1", ClassKernel},
		{"newtool", "noarch", "", "2.0-1", ClassOther},
		{"oldtool", "noarch", "1.0-1", "", ClassOther},
	}
	if !reflect.DeepEqual(r.Updates, want) || r.NewestKernel != "6.1.0-1.x86_64" {
		t.Fatalf("before the upgrade: %+v\nwant updates %+v, newest 6.1.0-1.x86_64", r, want)
	}
	// glibc was installed after boot: needs-restarting asks for a reboot already.
	if len(r.Reasons) != 1 || r.Reasons[0].Kind != ReasonNeedsRestarting || !slices.Contains(r.Reasons[0].Packages, "glibc") {
		t.Errorf("before the upgrade: reasons %v, want needs-restarting naming glibc", r.Reasons)
	}
	waitSignal(t, changes, 5*time.Second, "dnf makecache --refresh wrote the private cache")
	// A check that does not refresh changes nothing that Watch reports: dnf's lock and
	// expired_repos.json in the cache and rpm's -wal/-shm files are ignored. No loop.
	opts.Refresh = false
	d, err = NewDetector(opts)
	if err != nil {
		t.Fatal(err)
	}
	drain(changes)
	if _, err := d.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, changes, "a check without refresh")

	mustRun(t, nil, "dnf", append(u.args(), "-q", "-y", "upgrade")...)
	waitSignal(t, changes, 5*time.Second, "the upgrade wrote the rpm database and /boot")
	r, err = d.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var kinds []ReasonKind
	for _, rs := range r.Reasons {
		kinds = append(kinds, rs.Kind)
	}
	if len(r.Updates) != 0 || !r.RebootRequired || r.NewestKernel != "6.2.0-1.x86_64" ||
		!reflect.DeepEqual(kinds, []ReasonKind{ReasonNeedsRestarting, ReasonNewerKernel}) {
		t.Fatalf("after the upgrade: %+v", r)
	}
	t.Logf("after the upgrade: %v", r.Reasons)

	if after := [][]string{dirNames("/var/lib/dnf"), dirNames("/var/cache/dnf")}; !reflect.DeepEqual(after, hostBefore) {
		t.Errorf("the host's dnf state changed: %q, before %q", after, hostBefore)
	}
}

// TestRootCapturesReproduce re-runs testdata/capture.sh (apt and dnf; the host's own
// pending updates change with time) into a temp dir and checks that every parser reads
// the same from the new captures as from the committed ones: the testdata are what the
// real tools print, and still print.
func TestRootCapturesReproduce(t *testing.T) {
	requireRoot(t, map[string]string{"apt-ftparchive": "apt-utils", "dnf": "dnf dnf-plugins-core",
		"rpmbuild": "rpm", "createrepo_c": "createrepo-c", "script": "bsdutils"})
	fresh := t.TempDir()
	mustRun(t, []string{"OUT=" + fresh}, "bash", "testdata/capture.sh", "apt", "dnf")

	type parsed struct {
		v   any
		err error
	}
	parse := func(name string, c capture) parsed {
		switch base := filepath.Base(name); {
		case strings.HasPrefix(base, "simulate-"):
			v, err := ParseAptSimulate(c.out)
			return parsed{v, err}
		case strings.HasPrefix(base, "list-upgradable"):
			v, err := ParseAptListUpgradable(c.out)
			return parsed{v, err}
		case strings.HasPrefix(base, "dpkg-query-kernels"):
			v, err := ParseDpkgKernels(c.out)
			return parsed{v, err}
		case base == "boot-ls":
			return parsed{KernelsFromBoot(strings.Fields(string(c.out))), nil}
		case base == "update-error":
			return parsed{strings.Contains(string(c.err), "E: Failed to fetch"), nil}
		case strings.HasPrefix(base, "check-update"):
			v, err := ParseDnfCheckUpdate(c.out)
			return parsed{v, err}
		case strings.HasPrefix(base, "needs-restarting"):
			v, err := ParseNeedsRestarting(c.out)
			return parsed{v, err}
		case base == "rpm-installed":
			v, err := ParseRPMInstalled(c.out)
			return parsed{v, err}
		case strings.HasPrefix(base, "rpm-kernel-core"):
			v, err := ParseRPMKernels(c.out)
			return parsed{v, err}
		}
		t.Fatalf("%s: no parser for this capture; add it here", name)
		return parsed{}
	}
	var n int
	for _, dir := range []string{"apt", "dnf"} {
		for _, f := range dirNames(filepath.Join("testdata", dir)) {
			name, ok := strings.CutSuffix(f, ".rc")
			if !ok || strings.HasPrefix(name, "host-") {
				continue
			}
			name = dir + "/" + name
			old, now := loadCapture(t, name), loadCaptureFrom(t, fresh, name)
			po, pn := parse(name, old), parse(name, now)
			if old.rc != now.rc || !reflect.DeepEqual(po, pn) {
				t.Errorf("%s: committed capture (exit %d) reads as %+v, a fresh one (exit %d) as %+v", name, old.rc, po, now.rc, pn)
			}
			n++
		}
	}
	if n < 20 {
		t.Errorf("compared only %d captures", n)
	}
	t.Logf("%d captures reproduce", n)
}
