//go:build roottest

package system

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/cycle"
	"github.com/autopod/autopod/test/testbed"
)

// aptUniverse is a private apt and dpkg world for one test host: a dpkg
// root with its own database, a flat repository, and an apt configuration
// that apt reads instead of /etc/apt (APT_CONFIG). The host's own package
// state is never touched.
type aptUniverse struct {
	dir, root, repo, conf string
}

func newAptUniverse(t *testing.T, dir string) *aptUniverse {
	t.Helper()
	u := &aptUniverse{dir: dir, root: filepath.Join(dir, "root"), repo: filepath.Join(dir, "repo"), conf: filepath.Join(dir, "apt.conf")}
	etc := filepath.Join(dir, "etc")
	for _, d := range []string{u.repo, filepath.Join(u.root, "var/lib/dpkg/info"), filepath.Join(u.root, "var/lib/dpkg/updates"),
		filepath.Join(etc, "apt.conf.d"), filepath.Join(etc, "sources.list.d"), filepath.Join(etc, "preferences.d"),
		filepath.Join(dir, "state/lists/partial"), filepath.Join(dir, "cache/archives/partial"), filepath.Join(dir, "log"), filepath.Join(dir, "debs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(u.root, "var/lib/dpkg/status"), nil, 0o644)
	os.WriteFile(filepath.Join(u.root, "var/lib/dpkg/available"), nil, 0o644)
	os.WriteFile(filepath.Join(etc, "sources.list"), []byte("deb [trusted=yes] file:"+u.repo+" ./\n"), 0o644)
	os.WriteFile(u.conf, []byte(fmt.Sprintf(`Dir::Etc::main "%[1]s/apt.conf";
Dir::Etc::parts "%[1]s/apt.conf.d";
Dir::Etc::sourcelist "%[1]s/sources.list";
Dir::Etc::sourceparts "%[1]s/sources.list.d";
Dir::Etc::preferences "%[1]s/preferences";
Dir::Etc::preferencesparts "%[1]s/preferences.d";
Dir::State "%[2]s/state";
Dir::State::status "%[3]s/var/lib/dpkg/status";
Dir::Cache "%[2]s/cache";
Dir::Log "%[2]s/log";
Debug::NoLocking "1";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
DPkg::Options { "--root=%[3]s"; "--admindir=%[3]s/var/lib/dpkg"; "--force-not-root"; "--force-bad-path"; };
`, etc, dir, u.root)), 0o644)
	return u
}

// deb builds a dummy package and returns its file.
func (u *aptUniverse) deb(t *testing.T, name, version string) string {
	t.Helper()
	src := filepath.Join(u.dir, "src", name+"_"+version)
	os.MkdirAll(filepath.Join(src, "DEBIAN"), 0o755)
	os.MkdirAll(filepath.Join(src, "usr/share/doc", name), 0o755)
	os.WriteFile(filepath.Join(src, "DEBIAN/control"), []byte(fmt.Sprintf(
		"Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: autopod tests <tests@autopod.invalid>\nDescription: autopod test kernel\n", name, version)), 0o644)
	os.WriteFile(filepath.Join(src, "usr/share/doc", name, "version"), []byte(version+"\n"), 0o644)
	out := filepath.Join(u.dir, "debs", name+"_"+version+"_amd64.deb")
	mustRun(t, nil, "dpkg-deb", "--root-owner-group", "-Zgzip", "--build", src, out)
	return out
}

// install installs a package file into the private root with dpkg.
func (u *aptUniverse) install(t *testing.T, deb string) {
	t.Helper()
	mustRun(t, nil, "dpkg", "--root="+u.root, "--admindir="+u.root+"/var/lib/dpkg", "--force-not-root", "--force-bad-path", "-i", deb)
}

// publish puts a package file in the repository and re-indexes it.
func (u *aptUniverse) publish(t *testing.T, deb string) {
	t.Helper()
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(u.repo, filepath.Base(deb)), data, 0o644)
	cmd := exec.Command("sh", "-c", "apt-ftparchive packages . > Packages && apt-ftparchive release . > Release")
	cmd.Dir = u.repo
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apt-ftparchive: %v\n%s", err, out)
	}
}

// aptGet runs apt-get in the universe, as apt-daily would.
func (u *aptUniverse) aptGet(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, []string{"APT_CONFIG=" + u.conf}, "apt-get", args...)
}

// installed returns the version of name in the private root, "" if none.
func (u *aptUniverse) installed(name string) string {
	out, err := exec.Command("dpkg-query", "--admindir="+u.root+"/var/lib/dpkg", "-W", "-f=${Version} ${Status}", name).Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "install ok installed") {
		return ""
	}
	return strings.Fields(string(out))[0]
}

func mustRun(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// updateStatus is `autopodctl --json status`'s update part.
func updateStatus(t *testing.T, h *testbed.Host) *cycle.Status {
	t.Helper()
	out, err := h.Ctl("--json", "status")
	if err != nil {
		return nil
	}
	var st struct {
		Update *cycle.Status `json:"update"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return st.Update
}

// waitIdle waits until h's update cycle has ended (state idle).
func waitIdle(t *testing.T, h *testbed.Host, d time.Duration) *cycle.Status {
	t.Helper()
	var st *cycle.Status
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if st = updateStatus(t, h); st != nil && st.State == cycle.Idle {
			return st
		}
	}
	t.Fatalf("%s's update cycle did not end within %s: %+v\n%s", h.Name, d, st, h.AgentLog())
	return nil
}

// TestUpdateCycle runs the whole update cycle on the test-bed: apt's lists
// change to offer a new kernel package; host A's agent notices, takes the
// lease from B, evacuates its pod to B while a client keeps writing,
// installs the package with a real apt-get (in A's private dpkg root),
// "reboots" (its agent is killed and started again under a new boot ID),
// and pulls the pod back. Every acknowledged write is there at the end,
// over the same connection.
func TestUpdateCycle(t *testing.T) {
	bed := testbed.New(t, 2)
	a, b := bed.Hosts[0], bed.Hosts[1]
	addr := kvPod(t, bed, a, "kv", 100)

	apt := newAptUniverse(t, filepath.Join(a.Dir, "apt"))
	const kernel = "linux-image-autopodtest-amd64"
	apt.install(t, apt.deb(t, kernel, "6.99.1-1"))
	apt.publish(t, apt.deb(t, "hello-autopodtest", "1.0-1"))
	apt.aptGet(t, "-q", "update")

	bootID := filepath.Join(a.Dir, "boot_id")
	os.WriteFile(bootID, []byte("boot-1\n"), 0o644)
	a.ConfigureUpdate(t, fmt.Sprintf("mode = \"automatic\"\napt_config = %q\nretry_interval = \"2s\"\ncheck_interval = \"1h\"", apt.conf))
	env := []string{
		"AUTOPOD_TEST_BOOT_ID=" + bootID,
		// The "reboot": a new boot ID, and the agent dies as a host going
		// down takes it. The test starts it again.
		fmt.Sprintf("AUTOPOD_TEST_REBOOT=echo boot-2 > %s; kill -KILL $PPID", bootID),
	}
	a.StartAgent(t, env...)
	b.StartAgent(t)
	bed.Pair(t)
	waitPod(t, a, "kv", "running")
	fill := dialRedis(t, bed, addr)
	if err := fill.FillRandom(20, 1<<20); err != nil {
		t.Fatal(err)
	}
	sums := valueSums(t, fill, 20)
	fill.Close()
	if st := updateStatus(t, a); st == nil || st.State != cycle.Idle {
		t.Fatalf("A's update cycle before the update: %+v", st)
	}

	l := startLoad(t, bed, addr)
	time.Sleep(300 * time.Millisecond)

	// apt-daily: the repository offers a new kernel, the lists change.
	start := time.Now()
	apt.publish(t, apt.deb(t, kernel, "6.99.2-1"))
	apt.aptGet(t, "-q", "update")

	// A notices within seconds and runs the cycle up to the reboot, which
	// kills its agent.
	select {
	case <-a.Exited():
	case <-time.After(3 * time.Minute):
		t.Fatalf("A's agent did not reboot; status: %+v\n%s", updateStatus(t, a), a.AgentLog())
	}
	tReboot := time.Since(start)
	if v := apt.installed(kernel); v != "6.99.2-1" {
		t.Fatalf("%s is %q in A's root after the install", kernel, v)
	}
	if p := waitPod(t, b, "kv", "running"); p.Home != "hosta" {
		t.Fatalf("on B during A's reboot: %+v", p)
	}
	if !strings.Contains(a.AgentLog(), "evacuating") && !strings.Contains(a.AgentLog(), "to=evacuating") {
		t.Logf("note: A's log does not mention the evacuation in the expected words")
	}
	l.check(t)

	// A boots: its agent comes back under a new boot ID and pulls the pod home.
	a.StartAgent(t, env...)
	st := waitIdle(t, a, 3*time.Minute)
	total := time.Since(start)
	if p := waitPod(t, a, "kv", "running"); p.Location != "" {
		t.Fatalf("on A after the cycle: %+v", p)
	}
	if _, ok := podOn(t, b, "kv"); ok {
		t.Fatal("kv still listed on B after the cycle")
	}
	if st.LeaseHeld || st.LastError != "" {
		t.Errorf("A after the cycle: lease held %v, last error %q", st.LeaseHeld, st.LastError)
	}
	if data, _ := os.ReadFile(filepath.Join(b.Dir, "state", "lease.json")); strings.Contains(string(data), "hosta") {
		t.Errorf("B still records A's lease: %s", data)
	}
	var path []string
	for _, tr := range st.History {
		path = append(path, string(tr.To))
	}
	want := []string{"update-pending", "waiting-for-window", "locked", "evacuating", "installing", "rebooting", "returning", "idle"}
	if got := strings.Join(path, " "); !strings.Contains(got, strings.Join(want, " ")) {
		t.Errorf("A's transitions: %s\nwant them to contain: %s", got, strings.Join(want, " "))
	}

	time.Sleep(300 * time.Millisecond)
	acked := l.finish(t)
	if v, _ := l.writerCon.Cmd("GET", "counter"); v != strconv.FormatInt(acked, 10) {
		t.Fatalf("counter %s, but %d writes were acknowledged", v, acked)
	}
	after := valueSums(t, l.writerCon, 20)
	for k, v := range sums {
		if after[k] != v {
			t.Fatalf("%s changed across the cycle", k)
		}
	}
	t.Logf("cycle: %d acknowledged writes, all present over one connection; lists changed → reboot %s, → pods home %s",
		acked, tReboot.Round(time.Millisecond), total.Round(time.Millisecond))
}

// TestUpdateCycleFromApt: apt-get itself installs a new kernel, with
// autopod's apt hook in place (packaging/etc/apt/apt.conf.d/99autopod).
// The hook asks A's agent, which is in notify mode and would not start on
// its own, to move the pod away first; apt waits, installs, tells the agent
// it has finished, and the agent reboots and pulls the pod back.
func TestUpdateCycleFromApt(t *testing.T) {
	bed := testbed.New(t, 2)
	a, b := bed.Hosts[0], bed.Hosts[1]
	addr := kvPod(t, bed, a, "kv", 100)

	apt := newAptUniverse(t, filepath.Join(a.Dir, "apt"))
	const kernel = "linux-image-autopodtest-amd64"
	apt.install(t, apt.deb(t, kernel, "6.99.1-1"))
	apt.publish(t, apt.deb(t, kernel, "6.99.2-1"))
	// The hook as packaged, pointing at the autopodctl under test.
	hook, err := os.ReadFile(filepath.Join(testbed.RepoRoot(), "packaging/etc/apt/apt.conf.d/99autopod"))
	if err != nil {
		t.Fatal(err)
	}
	hook = []byte(strings.ReplaceAll(string(hook), "/usr/bin/autopodctl", filepath.Join(bed.Bin, "autopodctl")))
	os.WriteFile(filepath.Join(apt.dir, "etc/apt.conf.d/99autopod"), hook, 0o644)

	bootID := filepath.Join(a.Dir, "boot_id")
	os.WriteFile(bootID, []byte("boot-1\n"), 0o644)
	a.ConfigureUpdate(t, fmt.Sprintf("apt_config = %q\nretry_interval = \"2s\"", apt.conf))
	env := []string{"AUTOPOD_TEST_BOOT_ID=" + bootID,
		fmt.Sprintf("AUTOPOD_TEST_REBOOT=echo boot-2 > %s; kill -KILL $PPID", bootID)}
	a.StartAgent(t, env...)
	b.StartAgent(t)
	bed.Pair(t)
	waitPod(t, a, "kv", "running")
	l := startLoad(t, bed, addr)
	time.Sleep(300 * time.Millisecond)

	apt.aptGet(t, "-q", "update")
	time.Sleep(3 * time.Second) // the agent sees the lists; notify mode: it only reports
	if st := updateStatus(t, a); st == nil || st.State != cycle.UpdatePending || len(st.PendingUpdates) == 0 {
		t.Fatalf("A after apt-get update: %+v", st)
	}

	start := time.Now()
	out := mustRun(t, []string{"APT_CONFIG=" + apt.conf, "DBUS_SYSTEM_BUS_ADDRESS=" + a.Bus, "AUTOPOD_HOOK_ROOT=" + apt.root},
		"apt-get", "-y", "install", kernel)
	t.Logf("apt-get install:\n%s", out)
	if !strings.Contains(out, "autopod") {
		t.Errorf("apt's output shows nothing from autopod's hook")
	}
	if v := apt.installed(kernel); v != "6.99.2-1" {
		t.Fatalf("%s is %q after apt-get install", kernel, v)
	}
	select {
	case <-a.Exited():
	case <-time.After(2 * time.Minute):
		t.Fatalf("A's agent did not reboot after apt; status: %+v\n%s", updateStatus(t, a), a.AgentLog())
	}
	if p := waitPod(t, b, "kv", "running"); p.Home != "hosta" {
		t.Fatalf("on B during A's reboot: %+v", p)
	}
	a.StartAgent(t, env...)
	st := waitIdle(t, a, 2*time.Minute)
	if p := waitPod(t, a, "kv", "running"); p.Location != "" {
		t.Fatalf("on A after the cycle: %+v", p)
	}
	if st.Trigger != "" && st.Trigger != cycle.TriggerAptHook {
		t.Errorf("trigger %q", st.Trigger)
	}
	time.Sleep(300 * time.Millisecond)
	acked := l.finish(t)
	if v, _ := l.writerCon.Cmd("GET", "counter"); v != strconv.FormatInt(acked, 10) {
		t.Fatalf("counter %s, but %d writes were acknowledged", v, acked)
	}
	t.Logf("apt-triggered cycle: %d acknowledged writes kept; apt start → pods home %s", acked, time.Since(start).Round(time.Millisecond))
}

// TestUpdateCycleLocalCheckpoint: no peer can take the pod, and the
// policy (no_peer = "local-checkpoint") keeps it on disk across the
// "reboot", as KUP did: checkpointed, the package installed, the agent
// killed and started under a new boot ID, the pod restored here with its
// memory and its client's TCP connection.
func TestUpdateCycleLocalCheckpoint(t *testing.T) {
	bed := testbed.New(t, 1)
	a := bed.Hosts[0]
	addr := kvPod(t, bed, a, "kv", 100)
	apt := newAptUniverse(t, filepath.Join(a.Dir, "apt"))
	const kernel = "linux-image-autopodtest-amd64"
	apt.install(t, apt.deb(t, kernel, "6.99.1-1"))
	apt.publish(t, apt.deb(t, "hello-autopodtest", "1.0-1"))
	apt.aptGet(t, "-q", "update")
	bootID := filepath.Join(a.Dir, "boot_id")
	os.WriteFile(bootID, []byte("boot-1\n"), 0o644)
	a.ConfigureUpdate(t, fmt.Sprintf("mode = \"automatic\"\nno_peer = \"local-checkpoint\"\napt_config = %q\nretry_interval = \"2s\"", apt.conf))
	env := []string{"AUTOPOD_TEST_BOOT_ID=" + bootID,
		fmt.Sprintf("AUTOPOD_TEST_REBOOT=echo boot-2 > %s; kill -KILL $PPID", bootID)}
	a.StartAgent(t, env...)
	waitPod(t, a, "kv", "running")
	fill := dialRedis(t, bed, addr)
	if err := fill.FillRandom(20, 1<<20); err != nil {
		t.Fatal(err)
	}
	sums := valueSums(t, fill, 20)
	fill.Close()
	l := startLoad(t, bed, addr)
	time.Sleep(300 * time.Millisecond)

	start := time.Now()
	apt.publish(t, apt.deb(t, kernel, "6.99.2-1"))
	apt.aptGet(t, "-q", "update")
	select {
	case <-a.Exited():
	case <-time.After(3 * time.Minute):
		t.Fatalf("A's agent did not reboot; status: %+v\n%s", updateStatus(t, a), a.AgentLog())
	}
	if v := apt.installed(kernel); v != "6.99.2-1" {
		t.Fatalf("%s is %q after the install", kernel, v)
	}
	if procs := a.CgroupProcs("kv"); len(procs) > 0 {
		t.Fatalf("the pod still runs during the reboot: %v", procs)
	}
	a.StartAgent(t, env...)
	st := waitIdle(t, a, 3*time.Minute)
	if st.LastError != "" {
		t.Fatalf("the cycle did not end cleanly: %+v\n%s", st, a.AgentLog())
	}
	waitPod(t, a, "kv", "running")
	l.pause()
	acked := l.finish(t)
	if v, _ := l.writerCon.Cmd("GET", "counter"); v != strconv.FormatInt(acked, 10) {
		t.Fatalf("counter %s, but %d writes were acknowledged", v, acked)
	}
	after := valueSums(t, l.writerCon, 20)
	for k, v := range sums {
		if after[k] != v {
			t.Fatalf("%s changed across the local checkpoint", k)
		}
	}
	t.Logf("local checkpoint across the reboot: %d acknowledged writes kept over one connection; cycle %s",
		acked, time.Since(start).Round(time.Millisecond))
}
