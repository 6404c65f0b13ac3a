//go:build roottest

// Package testbed builds several "hosts" on one machine for autopod's
// system tests: each host is a network namespace plus a private mount
// namespace with its own data directory, its own agent, state directory
// and D-Bus bus; a client host holds connections to pods. The hosts share
// one L2 segment (a bridge in the root namespace), as machines on a LAN,
// so a pod's address can move from one host to another.
//
// Every address used lives inside namespaces this package creates; test
// traffic is sent only from inside the client namespace.
package testbed

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autopod/autopod/test/testbus"

	"golang.org/x/sys/unix"
)

// Subnet is the test LAN. Hosts are .1, .2, ...; the client is .250;
// pods use .100 and up.
const (
	subnetPrefix = "10.55.0."
	lanBridge    = "aptb-lan"
	clientAddr   = subnetPrefix + "250"
)

// PodAddr returns the test LAN address with the given last octet.
func PodAddr(last int) string { return fmt.Sprintf("%s%d", subnetPrefix, last) }

// Bed is a set of hosts and one client on a private LAN.
type Bed struct {
	t      testing.TB
	Dir    string
	Bin    string // directory holding autopod and autopodctl
	Shared string // the data path pods bind (each host mounts its own directory there)
	Hosts  []*Host
	client string // netns name
}

// Host is one simulated machine.
type Host struct {
	bed     *Bed
	Name    string // peer name, e.g. "hosta"
	Netns   string
	Addr    string // on the LAN and on its pod bridge
	Dir     string
	Bus     string // D-Bus address of its private system bus
	Config  string
	PodsDir string
	DataDir string // what this host sees at Bed.Shared
	// ShmSize, when set before StartAgent, gives the agent a tmpfs of that
	// size (mount's notation: "600k") at /dev/shm, where migrations pass:
	// a host whose memory for them runs out.
	ShmSize string
	agent   *exec.Cmd
	exited  chan struct{}
}

func run(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	if err != nil {
		return b.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(b.String()))
	}
	return b.String(), nil
}

func must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// CriuPath finds the CRIU that make deps installed.
func CriuPath(t testing.TB) string {
	for _, p := range []string{os.Getenv("AUTOPOD_CRIU"), "/opt/autopod-criu/sbin/criu"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	t.Fatal("no CRIU at /opt/autopod-criu/sbin/criu; run `make deps` (or set AUTOPOD_CRIU)")
	return ""
}

// CriuPatches lists the patches of scripts/criu-patches that the CRIU at
// path carries: what make deps recorded beside the build it made
// (PREFIX/autopod-patches); none for any other CRIU.
func CriuPatches(path string) []string {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(path)), "autopod-patches"))
	if err != nil {
		return nil
	}
	return strings.Fields(string(b))
}

// Build compiles autopod and autopodctl into dir.
func Build(t testing.TB, dir string) {
	t.Helper()
	for _, c := range []string{"autopod", "autopodctl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "./cmd/"+c)
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c, err, out)
		}
	}
}

// New builds a bed with n hosts (hosta, hostb, ...) and a client.
func New(t testing.TB, n int) *Bed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the test-bed needs root (network and mount namespaces)")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	b := &Bed{t: t, Dir: dir, Bin: filepath.Join(dir, "bin"), Shared: filepath.Join(dir, "shared"), client: "aptb-client"}
	os.MkdirAll(b.Shared, 0o755)
	Build(t, b.Bin)
	KdatCache(t)
	t.Cleanup(b.Close)
	b.cleanupNet() // leftovers of an interrupted run
	must(t, "ip", "link", "add", lanBridge, "type", "bridge")
	must(t, "ip", "link", "set", lanBridge, "up")
	for i := 0; i < n; i++ {
		b.addHost(t, i)
	}
	b.addNetns(t, b.client, "aptb-up-c")
	must(t, "ip", "-n", b.client, "addr", "add", clientAddr+"/24", "dev", "uplink")
	return b
}

// kdatPath is where CRIU keeps its cache of what the kernel can do.
const kdatPath = "/run/criu.kdat"

// KdatCache gives CRIU the cache of kernel features it keeps in
// /run/criu.kdat on every host whose /run is a tmpfs (any systemd host),
// for the rest of the test. On these machines /run is not a tmpfs: CRIU
// refuses to keep the cache there and probes the kernel again on every run
// (30-50 ms; a post-copy freeze holds three runs). The file is what the
// same CRIU writes on this kernel: `criu check` runs with a private tmpfs
// on /run and its cache is copied into the real /run, to be removed at
// cleanup. CRIU reads the cache without asking where it lies. Any cache
// already there is replaced first: one left by an interrupted run may
// describe a kernel this machine no longer runs.
func KdatCache(t testing.TB) {
	t.Helper()
	var st unix.Statfs_t
	if unix.Statfs("/run", &st) == nil && st.Type == unix.TMPFS_MAGIC {
		return // CRIU keeps it there itself
	}
	os.Remove(kdatPath)
	tmp := filepath.Join(t.TempDir(), "criu.kdat")
	script := fmt.Sprintf("mount -t tmpfs kdat /run && { %q check >/dev/null 2>&1; cp /run/criu.kdat %q; }", CriuPath(t), tmp)
	if out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script).CombinedOutput(); err != nil {
		t.Logf("CRIU runs without its kernel-feature cache: making it failed: %v %s", err, out)
		return
	}
	data, err := os.ReadFile(tmp)
	if err == nil {
		err = os.WriteFile(kdatPath+".autopod-test", data, 0o600)
	}
	if err == nil {
		err = os.Rename(kdatPath+".autopod-test", kdatPath)
	}
	if err != nil {
		t.Logf("CRIU runs without its kernel-feature cache: %v", err)
		return
	}
	t.Cleanup(func() { os.Remove(kdatPath) })
}

// addNetns creates a namespace with an "uplink" veth into the LAN bridge.
func (b *Bed) addNetns(t testing.TB, ns, outer string) {
	must(t, "ip", "netns", "add", ns)
	must(t, "ip", "link", "add", outer, "type", "veth", "peer", "name", "uplink", "netns", ns)
	must(t, "ip", "link", "set", outer, "master", lanBridge, "up")
	must(t, "ip", "-n", ns, "link", "set", "lo", "up")
	must(t, "ip", "-n", ns, "link", "set", "uplink", "up")
}

func (b *Bed) addHost(t testing.TB, i int) {
	letter := string(rune('a' + i))
	h := &Host{bed: b, Name: "host" + letter, Netns: "aptb-" + letter, Addr: fmt.Sprintf("%s%d", subnetPrefix, i+1),
		Dir: filepath.Join(b.Dir, "host"+letter)}
	h.PodsDir = filepath.Join(h.Dir, "pods")
	h.DataDir = filepath.Join(h.Dir, "data")
	for _, d := range []string{h.PodsDir, h.DataDir} {
		os.MkdirAll(d, 0o755)
	}
	b.addNetns(t, h.Netns, "aptb-up-"+letter)
	// The host's pod bridge carries its uplink, so its pods are on the LAN.
	must(t, "ip", "-n", h.Netns, "link", "add", "autopod0", "type", "bridge")
	must(t, "ip", "-n", h.Netns, "link", "set", "uplink", "master", "autopod0")
	// As the agent does (pods.EnsureBridge): a fixed bridge MAC, or it
	// changes as pod veths come and go and the other hosts lose this one.
	mac := strings.TrimSpace(must(t, "ip", "netns", "exec", h.Netns, "cat", "/sys/class/net/uplink/address"))
	must(t, "ip", "-n", h.Netns, "link", "set", "dev", "autopod0", "address", mac)
	must(t, "ip", "-n", h.Netns, "addr", "add", h.Addr+"/24", "dev", "autopod0")
	must(t, "ip", "-n", h.Netns, "link", "set", "autopod0", "up")

	// Stopped by its own cleanup, which runs before Bed.Close (registered
	// earlier): Close needs no bus, it signals the agents directly.
	h.Bus = testbus.Start(t, h.Dir)

	h.Config = filepath.Join(h.Dir, "autopod.toml")
	os.WriteFile(h.Config, []byte(fmt.Sprintf(`criu_path = %q
pods_dir = %q
state_dir = %q
log_dir = %q
bridge = "autopod0"
bridge_address = "%s/24"
peer_port = 7781
cgroup_root = "autopod-tb-%s"

# Tests start update cycles themselves; never let one install on this machine.
[update]
mode = "notify"
`, CriuPath(t), h.PodsDir, filepath.Join(h.Dir, "state"), filepath.Join(h.Dir, "log"), h.Addr, letter)), 0o644)
	b.Hosts = append(b.Hosts, h)
}

// Configure adds TOML lines to the host's autopod.toml, before its first
// table, so that top-level keys stay top-level; call it before StartAgent.
// Lines that start with a table header go at the end.
func (h *Host) Configure(t testing.TB, lines string) {
	t.Helper()
	data, err := os.ReadFile(h.Config)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if strings.HasPrefix(strings.TrimSpace(lines), "[") {
		s += "\n" + lines + "\n"
	} else if i := strings.Index(s, "\n["); i >= 0 {
		s = s[:i+1] + lines + "\n" + s[i+1:]
	} else {
		s += lines + "\n"
	}
	if err := os.WriteFile(h.Config, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ConfigureUpdate adds keys to the host's [update] table (the last one of
// its autopod.toml); a mode given replaces the test-bed's "notify".
func (h *Host) ConfigureUpdate(t testing.TB, lines string) {
	t.Helper()
	data, err := os.ReadFile(h.Config)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if strings.Contains(lines, "mode =") {
		s = strings.Replace(s, "mode = \"notify\"\n", "", 1)
	}
	if err := os.WriteFile(h.Config, []byte(s+lines+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StartAgent runs the host's agent inside its namespaces and waits until
// it answers on its bus.
func (h *Host) StartAgent(t testing.TB, env ...string) {
	t.Helper()
	logf, _ := os.OpenFile(filepath.Join(h.Dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	script := fmt.Sprintf("mount --bind %q %q && exec %q --config %q --log-level debug",
		h.DataDir, h.bed.Shared, filepath.Join(h.bed.Bin, "autopod"), h.Config)
	if h.ShmSize != "" {
		script = fmt.Sprintf("mount -t tmpfs -o size=%s autopod-tb-shm /dev/shm && %s", h.ShmSize, script)
	}
	// nsenter rather than `ip netns exec`: the latter remounts /sys, which
	// hides the cgroup hierarchies mounted below it.
	h.agent = exec.Command("nsenter", "--net=/run/netns/"+h.Netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	h.agent.Env = append(append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+h.Bus), env...)
	h.agent.Stdout, h.agent.Stderr = logf, logf
	if err := h.agent.Start(); err != nil {
		t.Fatal(err)
	}
	h.exited = make(chan struct{})
	go func(c *exec.Cmd, ch chan struct{}) { c.Wait(); logf.Close(); close(ch) }(h.agent, h.exited)
	waitFor(t, 30*time.Second, func() bool {
		select {
		case <-h.exited:
			t.Fatalf("%s: agent exited at start:\n%s", h.Name, h.AgentLog())
		default:
		}
		_, err := h.Ctl("status")
		return err == nil
	})
}

// Running reports whether the host's agent runs.
func (h *Host) Running() bool {
	if h.agent == nil {
		return false
	}
	select {
	case <-h.exited:
		return false
	default:
		return true
	}
}

// CgroupProcs lists the processes in the host's cgroups of a pod: a
// pod's processes, whatever its agent knows or says.
func (h *Host) CgroupProcs(pod string) []string {
	letter := strings.TrimPrefix(h.Netns, "aptb-")
	matches, _ := filepath.Glob("/sys/fs/cgroup/*/autopod-tb-" + letter + "/" + pod + "/cgroup.procs")
	seen := map[string]bool{}
	var out []string
	for _, m := range matches {
		data, _ := os.ReadFile(m)
		for _, f := range strings.Fields(string(data)) {
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	return out
}

// Exited is closed when the running agent has exited.
func (h *Host) Exited() <-chan struct{} { return h.exited }

// StopAgent stops the agent with SIGTERM (pods keep running).
func (h *Host) StopAgent() { h.signalAgent(syscall.SIGTERM) }

// KillAgent kills the agent with SIGKILL, as a crash would.
func (h *Host) KillAgent() { h.signalAgent(syscall.SIGKILL) }

func (h *Host) signalAgent(sig syscall.Signal) {
	if h.agent == nil {
		return
	}
	h.agent.Process.Signal(sig)
	<-h.exited
	h.agent = nil
}

// AgentLog returns what the host's agent logged.
func (h *Host) AgentLog() string {
	b, _ := os.ReadFile(filepath.Join(h.Dir, "agent.log"))
	return string(b)
}

// Ctl runs autopodctl against the host's bus.
func (h *Host) Ctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(h.bed.Bin, "autopodctl"), append([]string{"--bus", h.Bus}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustCtl is Ctl that fails the test on error.
func (h *Host) MustCtl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := h.Ctl(args...)
	if err != nil {
		t.Fatalf("%s: autopodctl %s: %v\n%s\n--- agent log:\n%s", h.Name, strings.Join(args, " "), err, out, lastLines(h.AgentLog(), 40))
	}
	return out
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// Pair pins every host's certificate on every other host.
func (b *Bed) Pair(t testing.TB) {
	t.Helper()
	certs := map[string]string{}
	for _, h := range b.Hosts {
		h.MustCtl(t, "peer", "init")
		pem := h.MustCtl(t, "peer", "cert")
		f := filepath.Join(h.Dir, "cert.pem")
		os.WriteFile(f, []byte(pem), 0o644)
		certs[h.Name] = f
	}
	for _, h := range b.Hosts {
		for _, o := range b.Hosts {
			if o != h {
				h.MustCtl(t, "peer", "add", o.Name, o.Addr+":7781", "--cert", certs[o.Name])
			}
		}
	}
}

// InClient runs fn on an OS thread inside the client namespace: sockets
// fn creates belong to the client host.
func (b *Bed) InClient(fn func() error) error { return InNetns(b.client, fn) }

// InNetns runs fn on an OS thread inside the named network namespace.
func InNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: it ends with the goroutine, so no
		// other goroutine ever runs in that namespace.
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Dial opens a TCP connection from the client host.
func (b *Bed) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := b.InClient(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// Close stops agents and pods and removes the namespaces.
func (b *Bed) Close() {
	for _, h := range b.Hosts {
		if h.agent != nil {
			h.StopAgent()
		}
		// Pods outlive agents by design: kill what is left in the host's cgroups.
		letter := strings.TrimPrefix(h.Netns, "aptb-")
		matches, _ := filepath.Glob("/sys/fs/cgroup/*/autopod-tb-" + letter + "/*/cgroup.procs")
		for _, m := range matches {
			data, _ := os.ReadFile(m)
			for _, f := range strings.Fields(string(data)) {
				var pid int
				fmt.Sscan(f, &pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	time.Sleep(200 * time.Millisecond)
	for _, h := range b.Hosts {
		letter := strings.TrimPrefix(h.Netns, "aptb-")
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/autopod-tb-" + letter + "/*")
		for _, d := range dirs {
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				os.Remove(d)
			}
		}
	}
	if b.t.Failed() {
		for _, h := range b.Hosts {
			b.t.Logf("--- %s agent log (last lines):\n%s", h.Name, lastLines(h.AgentLog(), 60))
		}
	}
	// AUTOPOD_TESTBED_LOGS=DIR keeps every agent's whole log
	// (DIR/TEST-hostX.log) and CRIU's logs (DIR/TEST-hostX-POD-NAME.log).
	if dir := os.Getenv("AUTOPOD_TESTBED_LOGS"); dir != "" {
		os.MkdirAll(dir, 0o755)
		name := strings.ReplaceAll(b.t.Name(), "/", "_")
		for _, h := range b.Hosts {
			os.WriteFile(filepath.Join(dir, name+"-"+h.Name+".log"), []byte(h.AgentLog()), 0o644)
			// and CRIU's logs of its pods' last runs
			logs, _ := filepath.Glob(filepath.Join(h.Dir, "state", "pods", "*", "criu-logs", "*.log"))
			for _, l := range logs {
				if data, err := os.ReadFile(l); err == nil {
					pod := filepath.Base(filepath.Dir(filepath.Dir(l)))
					os.WriteFile(filepath.Join(dir, name+"-"+h.Name+"-"+pod+"-"+filepath.Base(l)), data, 0o644)
				}
			}
		}
	}
	b.cleanupNet()
}

func (b *Bed) cleanupNet() {
	for _, ns := range []string{"aptb-a", "aptb-b", "aptb-c", "aptb-client"} {
		run("ip", "netns", "del", ns)
	}
	for _, l := range []string{"aptb-up-a", "aptb-up-b", "aptb-up-c", lanBridge} {
		run("ip", "link", "del", l)
	}
}
