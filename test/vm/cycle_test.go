//go:build e2e

package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The private link: the hosts' addresses (on their pod bridges) and the
// pod's, which moves between them.
const (
	addrA   = "10.44.0.1"
	addrB   = "10.44.0.2"
	podAddr = "10.44.0.10"
	podName = "kv"
	// The guests' copy of the kernel repository (see vm-kernel-repo.sh).
	guestRepo = "/srv/autopod-e2e-repo"
)

// clientState is what e2eclient write keeps in its state file.
type clientState struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
	Acked  int    `json:"acked"`
	Pauses []struct {
		Start   int64   `json:"start_unix_ms"`
		Seconds float64 `json:"seconds"`
		After   int     `json:"after"`
	} `json:"pauses"`
	Error   string `json:"error"`
	Stopped bool   `json:"stopped"`
}

// podInfo is the part of `autopodctl --json pod NAME` the test reads.
type podInfo struct {
	State    string `json:"state"`
	Location string `json:"location"`
	Home     string `json:"home"`
	Error    string `json:"error"`
}

// e2e is the scenario's state: the two hosts, the client on B, and the
// record of phases and pauses.
type e2e struct {
	t      *testing.T
	a, b   *Guest
	tm     *timings
	moves  []move
	client clientState // as last read
	seen   int         // pauses already attributed to a move
}

// move is one step that may pause the client.
type move struct {
	name     string
	seconds  float64 // wall time of the step
	frozen   string  // what autopod reported, if it did
	pause    float64 // the longest pause the client saw in the step
	acked    int     // acknowledged writes at its end
	strategy string
}

// TestE2EUpdateCycle is the whole product on real hosts: two trixie guests
// with systemd, autopod installed from the .deb built from this checkout, a
// redis pod on A written to by a client on B over one TCP connection. The
// pod moves A→B→A with each migration strategy the guests can run; then a
// newer linux-image from a local apt repository is installed on A by
// unattended-upgrades, autopod evacuates the pod to B, a logind block
// inhibitor holds the reboot until it is released, A reboots into the new
// kernel and autopod brings the pod home. No acknowledged write may be
// lost, the connection must be the same throughout, nothing may be left
// locked or inhibited, and every phase and pause is printed as a table.
func TestE2EUpdateCycle(t *testing.T) {
	requireHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	repo := repoRoot(t)
	e := &e2e{t: t, tm: &timings{}}
	defer func() {
		report := e.report()
		t.Logf("end-to-end report:\n%s", report)
		if p := os.Getenv("AUTOPOD_E2E_REPORT"); p != "" {
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
				t.Errorf("write report: %v", err)
			}
		}
	}()

	// --- inputs: image, kernel repository, package, client ---------------
	start := time.Now()
	img := BuildImage(ctx, t, repo)
	e.tm.since("image (build or cache)", start)
	start = time.Now()
	krepo, newKernel := kernelRepo(ctx, t, repo, img)
	e.tm.since("kernel repository (build or cache)", start)
	start = time.Now()
	deb := buildDeb(ctx, t, repo)
	client := buildClient(ctx, t, repo)
	e.tm.since("make deb, build client", start)
	t.Logf("package %s; new kernel offered: %s", filepath.Base(deb), newKernel)

	// --- two hosts ---------------------------------------------------------
	link := NewLink(t)
	cfgs := []GuestConfig{
		{Name: "vm-a", Index: 1, Image: img, Link: link, Side: 0, LinkAddr: addrA + "/24", Bridge: "autopod0", MemoryMiB: 1280},
		{Name: "vm-b", Index: 2, Image: img, Link: link, Side: 1, LinkAddr: addrB + "/24", Bridge: "autopod0", MemoryMiB: 1280},
	}
	guests := make([]*Guest, 2)
	parallel(t, "boot", func(i int) error {
		s := time.Now()
		g, err := Boot(ctx, t, cfgs[i])
		if err != nil {
			return err
		}
		guests[i] = g
		e.tm.since("boot "+cfgs[i].Name, s)
		s = time.Now()
		err = g.WaitSSH(ctx, 3*time.Minute)
		e.tm.since("first ssh "+cfgs[i].Name, s)
		return err
	})
	e.a, e.b = guests[0], guests[1]
	oldKernel := e.a.Kernel

	// --- install autopod from its .deb, as an operator does -----------------
	start = time.Now()
	parallel(t, "install", func(i int) error {
		g := guests[i]
		remote := "/root/" + filepath.Base(deb)
		if err := g.CopyIn(ctx, deb, remote); err != nil {
			return err
		}
		if _, err := g.Run(ctx, "DEBIAN_FRONTEND=noninteractive apt-get install -y "+shellQuote(remote)); err != nil {
			return err
		}
		if i == 1 {
			if err := g.CopyIn(ctx, client, "/usr/local/bin/e2eclient"); err != nil {
				return err
			}
			_, err := g.Run(ctx, "chmod 0755 /usr/local/bin/e2eclient")
			return err
		}
		return copyRepo(ctx, g, krepo)
	})
	e.tm.since("install autopod (both)", start)
	for _, g := range guests {
		if out := strings.TrimSpace(g.MustRun(ctx, "systemctl is-active autopod.socket autopod-updates.path | sort -u")); out != "active" {
			t.Fatalf("%s: after installing the .deb, autopod.socket and autopod-updates.path are %q, want active", g.cfg.Name, out)
		}
	}

	// --- configure, pair, start the pod --------------------------------------
	start = time.Now()
	e.configure(ctx, e.a, addrA, true)
	e.configure(ctx, e.b, addrB, false)
	e.pair(ctx)
	e.waitPod(ctx, e.a, "running", "", 3*time.Minute)
	e.tm.since("configure, pair, start pod", start)
	for _, g := range guests {
		t.Logf("%s: autopodctl status:\n%s", g.cfg.Name, g.MustRun(ctx, "autopodctl status"))
	}

	// --- data, then the client on B ------------------------------------------
	start = time.Now()
	e.b.MustRun(ctx, fmt.Sprintf("e2eclient fill -addr %s:6379 -n 1024 -size 16384", podAddr))
	e.b.MustRun(ctx, fmt.Sprintf("systemd-run --unit e2e-client --collect e2eclient write -addr %s:6379 -state /root/client.json", podAddr))
	e.tm.since("fill 16 MiB, start client", start)
	time.Sleep(3 * time.Second)
	first := e.readClient(ctx)
	if first.Acked == 0 || first.Error != "" {
		t.Fatalf("the client on vm-b is not writing: %+v\n%s", first, e.b.MustRun(ctx, "journalctl -u e2e-client --no-pager | tail -20"))
	}
	conn := first.Local
	t.Logf("client on vm-b: connection %s → %s", first.Local, first.Remote)

	// --- migrations with every strategy the guests can run -------------------
	strategies := e.strategies(ctx)
	for _, s := range strategies {
		e.migrate(ctx, s)
		if e.t.Failed() {
			return
		}
		e.giveBack(ctx)
		if t.Failed() {
			return
		}
	}

	// --- the update cycle ------------------------------------------------------
	e.updateCycle(ctx, oldKernel, newKernel)
	if t.Failed() {
		return
	}

	// --- the checks ---------------------------------------------------------------
	time.Sleep(2 * time.Second) // the client writes on against the pod at home
	e.b.MustRun(ctx, "systemctl stop e2e-client")
	final := e.readClient(ctx)
	if !final.Stopped || final.Error != "" {
		t.Errorf("the client on vm-b stopped with an error: %q", final.Error)
	}
	if final.Local != conn {
		t.Errorf("the client's connection changed: %s, then %s", conn, final.Local)
	}
	out, err := e.b.Run(ctx, fmt.Sprintf("e2eclient verify -addr %s:6379 -n %d", podAddr, final.Acked))
	if err != nil {
		t.Errorf("acknowledged writes lost: %v", err)
	} else {
		t.Logf("data check: %s", strings.TrimSpace(out))
	}
	e.checkNothingLeft(ctx)
}

// strategies asks A's agent which migration strategies it can run (pre-copy
// needs dirty-memory tracking, which Debian's kernels have).
func (e *e2e) strategies(ctx context.Context) []string {
	var st struct {
		Criu struct {
			Features map[string]bool `json:"features"`
		} `json:"criu"`
	}
	if err := json.Unmarshal([]byte(e.a.MustRun(ctx, "autopodctl --json status")), &st); err != nil {
		e.t.Fatalf("autopodctl --json status: %v", err)
	}
	// Debian's kernels track dirty memory and have userfaultfd: all three
	// must run here; a missing one is a failure, not a skip.
	out := []string{"stop-and-copy", "pre-copy", "post-copy"}
	if !st.Criu.Features["mem_dirty_track"] || !st.Criu.Features["uffd-noncoop"] {
		e.t.Fatalf("the guest's CRIU lacks dirty-memory tracking or userfaultfd: %v", st.Criu.Features)
	}
	return out
}

// migrate moves the pod A→B with strategy s.
func (e *e2e) migrate(ctx context.Context, s string) {
	e.t.Helper()
	cmd := "autopodctl migrate " + podName + " --to vm-b --strategy " + s
	start := time.Now()
	out, err := e.a.Run(ctx, cmd)
	d := time.Since(start)
	if err != nil {
		e.t.Errorf("migrate (%s) A→B: %v\n%s", s, err, e.journal(ctx, e.a))
		return
	}
	e.t.Logf("vm-a: %s", lastLines(out, 1))
	e.waitPod(ctx, e.b, "running", "", time.Minute)
	got, fr := e.logMigrated(ctx, e.a)
	if got != s {
		e.t.Errorf("migrate --strategy %s: the agent used %q", s, got)
	}
	e.record("migrate A→B", s, d, fr)
}

// logMigrated logs what the source's agent said about the last migration
// (strategy, frozen, total, bytes, pre-copy rounds) and returns the
// strategy it used and how long it says the pod was frozen.
func (e *e2e) logMigrated(ctx context.Context, src *Guest) (strategy, frozen string) {
	out, _ := src.Run(ctx, `journalctl -u autopod.service --no-pager -o cat | grep 'msg="pod migrated"' | tail -n1`)
	e.t.Logf("%s: %s", src.cfg.Name, strings.TrimSpace(out))
	strategy, frozen = "?", ""
	if m := strategyRE.FindStringSubmatch(out); m != nil {
		strategy = m[1]
	}
	if m := frozenRE.FindStringSubmatch(out); m != nil {
		if d, err := time.ParseDuration(m[1]); err == nil {
			frozen = fmt.Sprintf("%.2f", d.Seconds())
		}
	}
	return strategy, frozen
}

var (
	strategyRE = regexp.MustCompile(` strategy=(\S+)`)
	frozenRE   = regexp.MustCompile(` frozen=(\S+)`)
)

// giveBack brings the pod home with `autopodctl return` on A; B, where
// the pod runs, picks the strategy ("auto": post-copy where it can).
func (e *e2e) giveBack(ctx context.Context) {
	e.t.Helper()
	start := time.Now()
	if _, err := e.a.Run(ctx, "autopodctl return"); err != nil {
		e.t.Errorf("return B→A: %v\n%s", err, e.journal(ctx, e.b))
		return
	}
	e.waitPod(ctx, e.a, "running", "", time.Minute)
	d := time.Since(start)
	st, fr := e.logMigrated(ctx, e.b)
	e.record("return B→A", st, d, fr)
}

// record attributes the client's pauses since the last step to this one.
func (e *e2e) record(name, strategy string, d time.Duration, frozen string) {
	time.Sleep(500 * time.Millisecond) // the client saves its state 4 times a second
	st := e.readClient(context.Background())
	m := move{name: name, strategy: strategy, seconds: d.Seconds(), frozen: frozen, acked: st.Acked}
	for _, p := range st.Pauses[min(e.seen, len(st.Pauses)):] {
		m.pause = max(m.pause, p.Seconds)
	}
	e.seen = len(st.Pauses)
	e.moves = append(e.moves, m)
	e.tm.add(fmt.Sprintf("%s (%s)", name, strategy), d)
	e.t.Logf("%s (%s): %.1f s, client pause %.2f s, %d writes acknowledged", name, strategy, d.Seconds(), m.pause, st.Acked)
	if st.Error != "" {
		e.t.Fatalf("the client failed: %s", st.Error)
	}
}

func (e *e2e) readClient(ctx context.Context) clientState {
	e.t.Helper()
	var st clientState
	out, err := e.b.Run(ctx, "cat /root/client.json")
	if err != nil {
		e.t.Fatalf("read the client's state: %v", err)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatalf("the client's state %q: %v", out, err)
	}
	e.client = st
	return st
}

// updateCycle is the kernel update on A: unattended-upgrades installs the
// new kernel, autopod evacuates, a block inhibitor holds the reboot, A
// reboots into the new kernel, autopod returns the pod.
func (e *e2e) updateCycle(ctx context.Context, oldKernel, newKernel string) {
	t := e.t
	a := e.a
	// The repository offers the kernel; unattended-upgrades may take from it.
	a.MustRun(ctx, fmt.Sprintf(`set -e
printf 'deb [trusted=yes] file:%s ./\n' >/etc/apt/sources.list
rm -f /etc/apt/sources.list.d/*
printf 'Unattended-Upgrade::Origins-Pattern:: "origin=autopod-e2e";\n' >/etc/apt/apt.conf.d/51autopod-e2e
apt-get -q update >/dev/null`, guestRepo))
	// A backup that must not be cut short: logind holds every reboot.
	a.MustRun(ctx, `systemd-run --unit e2e-inhibit --collect systemd-inhibit --what=shutdown --mode=block --who=e2e-backup --why="nightly backup" sleep infinity`)
	bootBefore := strings.TrimSpace(a.MustRun(ctx, "cat /proc/sys/kernel/random/boot_id"))

	// unattended-upgrades, as its timer would run it. The apt hook has the
	// pod moved to B before dpkg starts.
	var evacuated time.Duration
	start := time.Now()
	watch := make(chan struct{})
	go func() {
		defer close(watch)
		for time.Since(start) < 15*time.Minute {
			out, err := a.Run(ctx, "autopodctl --json pod "+podName)
			var p podInfo
			if err == nil && json.Unmarshal([]byte(out), &p) == nil && p.State == "migrated" {
				evacuated = time.Since(start)
				return
			}
			time.Sleep(time.Second)
		}
	}()
	out, err := a.Run(ctx, "unattended-upgrade -v 2>&1")
	installed := time.Since(start)
	<-watch
	if err != nil {
		t.Fatalf("unattended-upgrade on vm-a: %v\n%s", err, e.journal(ctx, a))
	}
	t.Logf("unattended-upgrade (last lines):\n%s", lastLines(out, 15))
	if evacuated == 0 {
		t.Fatalf("the pod was not evacuated while unattended-upgrades ran\n%s", e.journal(ctx, a))
	}
	st, fr := e.logMigrated(ctx, a)
	e.record("evacuate A→B (unattended-upgrade start → pod on B)", st, evacuated, fr)
	e.tm.add("install kernel (unattended-upgrades)", installed-evacuated)
	if !strings.Contains(a.MustRun(ctx, "ls /boot"), "vmlinuz-"+newKernel) {
		t.Fatalf("unattended-upgrades did not install %s:\n%s", newKernel, out)
	}

	// The reboot is due but blocked: autopod says by whom and waits.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		status := a.MustRun(ctx, "autopodctl status")
		if strings.Contains(status, "e2e-backup") {
			t.Logf("vm-a waits for the inhibitor:\n%s", status)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("autopodctl status on vm-a never named the block inhibitor:\n%s\n%s", status, e.journal(ctx, a))
		}
		time.Sleep(2 * time.Second)
	}
	time.Sleep(10 * time.Second)
	if now := strings.TrimSpace(a.MustRun(ctx, "cat /proc/sys/kernel/random/boot_id")); now != bootBefore {
		t.Fatalf("vm-a rebooted despite the block inhibitor")
	}
	select {
	case <-a.Exited():
		t.Fatalf("vm-a went down despite the block inhibitor")
	default:
	}

	// The backup ends; autopod reboots A through logind.
	start = time.Now()
	a.MustRun(ctx, "systemctl stop e2e-inhibit")
	kver, err := a.Restart(ctx, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.WaitSSH(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	e.tm.since("reboot vm-a (inhibitor released → ssh)", start)
	if kver == oldKernel || kver != newKernel {
		t.Errorf("vm-a booted %s; want the new kernel %s (was %s)", kver, newKernel, oldKernel)
	}
	if u := strings.TrimSpace(a.MustRun(ctx, "uname -r")); u != newKernel {
		t.Errorf("uname -r on vm-a: %s, want %s", u, newKernel)
	}

	// The agent, not enabled, is started by autopod-updates.path because
	// a cycle is under way; it resumes the cycle and brings the pod home.
	if en := strings.TrimSpace(a.MustRun(ctx, "systemctl is-enabled autopod.service || true")); en == "enabled" {
		t.Errorf("autopod.service is enabled on vm-a; the test needs it not to be")
	}
	start = time.Now()
	e.waitPod(ctx, a, "running", "", 10*time.Minute)
	d := time.Since(start)
	st, fr = e.logMigrated(ctx, e.b)
	e.record("return B→A (after reboot)", st, d, fr)
	e.waitCycleIdle(ctx, a, 2*time.Minute)
}

// checkNothingLeft: no lease, no autopod inhibitor, the pod home, the cycle
// idle on both hosts.
func (e *e2e) checkNothingLeft(ctx context.Context) {
	for _, g := range []*Guest{e.a, e.b} {
		inh := g.MustRun(ctx, "systemd-inhibit --list --no-pager --no-legend || true")
		if strings.Contains(inh, "autopod") || strings.Contains(inh, "e2e-backup") {
			e.t.Errorf("%s: inhibitors left:\n%s", g.cfg.Name, inh)
		}
		var st struct {
			Update struct {
				State     string `json:"state"`
				LeaseHeld bool   `json:"lease_held"`
				LastError string `json:"last_error"`
			} `json:"update"`
		}
		out := g.MustRun(ctx, "autopodctl --json status")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			e.t.Errorf("%s: autopodctl --json status: %v", g.cfg.Name, err)
			continue
		}
		if st.Update.State != "idle" || st.Update.LeaseHeld {
			e.t.Errorf("%s: update cycle %q, lease held %v; want idle, no lease (last error %q)\n%s", g.cfg.Name, st.Update.State, st.Update.LeaseHeld, st.Update.LastError,
				g.MustRun(ctx, "autopodctl status"))
		}
		if lease := g.MustRun(ctx, "cat /var/lib/autopod/lease.json 2>/dev/null || true"); strings.Contains(lease, `"holder"`) && !strings.Contains(lease, `"holder":""`) {
			e.t.Logf("%s: lease file: %s", g.cfg.Name, lease)
		}
	}
	var p podInfo
	json.Unmarshal([]byte(e.a.MustRun(ctx, "autopodctl --json pod "+podName)), &p)
	if p.State != "running" || p.Location != "" {
		e.t.Errorf("pod on vm-a: %+v, want running at home", p)
	}
	if out, _ := e.b.Run(ctx, "autopodctl --json pod "+podName); strings.Contains(out, `"state":"running"`) {
		e.t.Errorf("vm-b still runs a copy of the pod: %s", out)
	}
}

func (e *e2e) waitCycleIdle(ctx context.Context, g *Guest, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for {
		out, _ := g.Run(ctx, "autopodctl --json status")
		var st struct {
			Update struct {
				State string `json:"state"`
			} `json:"update"`
		}
		if json.Unmarshal([]byte(out), &st) == nil && st.Update.State == "idle" {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: the update cycle is %q after %v, want idle\n%s", g.cfg.Name, st.Update.State, limit, e.journal(ctx, g))
		}
		time.Sleep(2 * time.Second)
	}
}

// configure writes the agent's configuration and, on A, the pod, and
// starts the agent without enabling it: after A's reboot nothing but
// autopod-updates.path, which sees that a cycle is under way, starts it to
// bring the pod back.
func (e *e2e) configure(ctx context.Context, g *Guest, addr string, home bool) {
	e.t.Helper()
	conf := fmt.Sprintf(`# written by test/vm (TestE2EUpdateCycle)
bridge = "autopod0"
bridge_address = "%s/24"
log_level = "debug"

[update]
mode = "notify"
peers = [%q]
retry_interval = "5s"
`, addr, map[bool]string{true: "vm-b", false: "vm-a"}[home])
	if _, err := g.RunInput(ctx, strings.NewReader(conf), "cat >/etc/autopod/autopod.toml"); err != nil {
		e.t.Fatal(err)
	}
	if home {
		pod := fmt.Sprintf(`# redis, the pod that must survive A's kernel update
command = "/usr/bin/redis-server"
args = ["--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
workdir = "/tmp"
[network]
address = "%s/24"
[limits]
memory = "256M"
`, podAddr)
		if _, err := g.RunInput(ctx, strings.NewReader(pod), "mkdir -p /etc/autopod/pods && cat >/etc/autopod/pods/"+podName+".toml"); err != nil {
			e.t.Fatal(err)
		}
	}
	g.MustRun(ctx, "systemctl start autopod.service")
}

// pair exchanges the hosts' certificates as the manual says.
func (e *e2e) pair(ctx context.Context) {
	e.t.Helper()
	certA := e.a.MustRun(ctx, "autopodctl peer init")
	certB := e.b.MustRun(ctx, "autopodctl peer init")
	for _, p := range []struct {
		g          *Guest
		peer, addr string
		cert       string
	}{{e.a, "vm-b", addrB, certB}, {e.b, "vm-a", addrA, certA}} {
		if _, err := p.g.RunInput(ctx, strings.NewReader(p.cert), "cat >/root/"+p.peer+".pem"); err != nil {
			e.t.Fatal(err)
		}
		p.g.MustRun(ctx, fmt.Sprintf("autopodctl peer add %s %s --cert /root/%s.pem", p.peer, p.addr, p.peer))
	}
}

// waitPod waits until g's agent reports the pod in state (and, if
// location is set, running there).
func (e *e2e) waitPod(ctx context.Context, g *Guest, state, location string, limit time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	var last string
	for {
		out, err := g.Run(ctx, "autopodctl --json pod "+podName)
		var p podInfo
		if err == nil && json.Unmarshal([]byte(out), &p) == nil && p.State == state && (location == "" || p.Location == location) {
			return
		}
		last = out
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: pod %s not %s within %v: %s\n%s", g.cfg.Name, podName, state, limit, last, e.journal(ctx, g))
		}
		time.Sleep(time.Second)
	}
}

// journal is the agent's latest log lines, for failure messages.
func (e *e2e) journal(ctx context.Context, g *Guest) string {
	out, _ := g.Run(ctx, "journalctl -u autopod.service --no-pager -n 60 -o short-monotonic")
	return g.cfg.Name + ": journalctl -u autopod (last lines):\n" + out
}

// report is the table for docs/benchmarks.md: each move's pause, then
// every phase's time.
func (e *e2e) report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| move | strategy | wall, s | frozen (autopod), s | client-seen pause, s | writes acknowledged |\n|---|---|---:|---:|---:|---:|\n")
	for _, m := range e.moves {
		fr := m.frozen
		if fr == "" {
			fr = "–"
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f | %s | %.2f | %d |\n", m.name, m.strategy, m.seconds, fr, m.pause, m.acked)
	}
	fmt.Fprintf(&b, "\n| phase | seconds |\n|---|---:|\n")
	e.tm.mu.Lock()
	for _, r := range e.tm.rows {
		fmt.Fprintf(&b, "| %s | %.1f |\n", r.name, r.d.Seconds())
	}
	e.tm.mu.Unlock()
	return b.String()
}

// parallel runs f(0) and f(1) at once and fails the test on any error.
func parallel(t *testing.T, what string, f func(i int) error) {
	t.Helper()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// kernelRepo runs scripts/vm-kernel-repo.sh for the image and returns the
// repository and the kernel release it offers.
func kernelRepo(ctx context.Context, t *testing.T, repo string, img *Image) (string, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "scripts", "vm-kernel-repo.sh"), img.Dir)
	progress := &lineLogger{t: t}
	cmd.Stderr = progress
	out, err := cmd.Output()
	progress.flush()
	if err != nil {
		t.Fatalf("scripts/vm-kernel-repo.sh: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	k, err := os.ReadFile(filepath.Join(dir, "kernel"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, strings.TrimSpace(string(k))
}

// copyRepo puts the kernel repository into the guest (a tar stream over
// the shared ssh connection).
func copyRepo(ctx context.Context, g *Guest, dir string) error {
	tar := exec.CommandContext(ctx, "tar", "-C", dir, "-cf", "-", ".")
	stdout, err := tar.StdoutPipe()
	if err != nil {
		return err
	}
	if err := tar.Start(); err != nil {
		return err
	}
	_, err = g.RunInput(ctx, stdout, "mkdir -p "+guestRepo+" && tar -C "+guestRepo+" -xf -")
	if werr := tar.Wait(); err == nil {
		err = werr
	}
	return err
}

// buildClient builds e2eclient (static: the guests have another libc).
func buildClient(ctx context.Context, t *testing.T, repo string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "e2eclient")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./test/vm/e2eclient")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build e2eclient: %v\n%s", err, b)
	}
	return out
}
