//go:build roottest

// Package system runs the real autopod agent on a private dbus-daemon
// configured like the system bus, and drives it the way operators and
// tools do: autopodctl (tables and --json) and busctl. Run as root with
// `go test -tags roottest ./test/...` (make test-system).
package system

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autopod/autopod/test/testbus"

	"github.com/autopod/autopod/test/testbed"
)

const (
	bridge   = "apsys0"
	kvAddr   = "10.96.0.10"
	webAddr  = "10.96.0.11"
	peerPort = 17791
)

type podStatus struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	Pid        int    `json:"pid"`
	Address    string `json:"address"`
	File       string `json:"file"`
	Checkpoint string `json:"checkpoint"`
	Error      string `json:"error"`
}

type harness struct {
	t        *testing.T
	dir      string
	bin      string
	bus      string
	config   string
	agent    *exec.Cmd
	exited   chan struct{} // closed when agent has exited
	agentLog *os.File
}

func newHarness(t *testing.T) *harness {
	if os.Geteuid() != 0 {
		t.Fatal("the system tier must run as root")
	}
	dir := t.TempDir()
	// nobody must reach the bus socket for the authorisation checks.
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	h := &harness{t: t, dir: dir, bin: filepath.Join(dir, "bin")}
	testbed.Build(t, h.bin)
	h.bus = testbus.Start(t, dir)

	pods := filepath.Join(dir, "pods")
	os.MkdirAll(pods, 0o755)
	h.config = filepath.Join(dir, "autopod.toml")
	os.WriteFile(h.config, []byte(fmt.Sprintf(`criu_path = %q
pods_dir = %q
state_dir = %q
log_dir = %q
bridge = %q
bridge_address = "10.96.0.1/24"
peer_port = %d
cgroup_root = "autopod-systest"

[update]
mode = "notify"
`, testbed.CriuPath(t), pods, filepath.Join(dir, "state"), filepath.Join(dir, "log"), bridge, peerPort)), 0o644)
	os.WriteFile(filepath.Join(pods, "kv.toml"), []byte(fmt.Sprintf(`# redis, the key-value pod
command = "/usr/bin/redis-server"
args = ["--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--enable-debug-command", "yes"]
workdir = "/tmp"
restart = "on-failure"
[network]
address = "%s/24"
[limits]
memory = "512M"
`, kvAddr)), 0o644)
	os.WriteFile(filepath.Join(pods, "web.toml"), []byte(fmt.Sprintf(`# an HTTP server
command = "/usr/bin/python3"
args = ["-m", "http.server", "--bind", "0.0.0.0", "8080", "--directory", "/etc"]
hostname = "web"
[network]
address = "%s/24"
[limits]
pids = 64
cpu_weight = 50
`, webAddr)), 0o644)
	os.WriteFile(filepath.Join(pods, "broken.toml"), []byte(`command = "/bin/sleep"
args = ["1000"]
[limits]
memory = "lots"
`), 0o644)
	t.Cleanup(h.teardown)
	return h
}

func waitFor(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *harness) startAgent() {
	h.t.Helper()
	if h.agentLog == nil {
		h.agentLog, _ = os.Create(filepath.Join(h.dir, "agent.log"))
	}
	h.agent = exec.Command(filepath.Join(h.bin, "autopod"), "--config", h.config, "--log-level", "debug")
	h.agent.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+h.bus)
	h.agent.Stdout, h.agent.Stderr = h.agentLog, h.agentLog
	if err := h.agent.Start(); err != nil {
		h.t.Fatal(err)
	}
	exited := make(chan struct{})
	h.exited = exited
	go func(c *exec.Cmd) { c.Wait(); close(exited) }(h.agent)
	waitFor(h.t, 30*time.Second, func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(h.agentLog.Name())
			h.t.Fatalf("agent exited at start:\n%s", b)
		default:
		}
		_, err := h.ctl("status")
		return err == nil
	})
}

func (h *harness) stopAgent() {
	if h.agent == nil {
		return
	}
	h.agent.Process.Signal(syscall.SIGTERM)
	<-h.exited
	h.agent = nil
}

func (h *harness) teardown() {
	if h.agent != nil {
		for _, p := range h.pods() {
			if p.State == "running" {
				h.ctl("stop", p.Name)
			}
		}
		h.stopAgent()
	}
	exec.Command("ip", "link", "del", bridge).Run()
	if h.t.Failed() {
		b, _ := os.ReadFile(filepath.Join(h.dir, "agent.log"))
		h.t.Logf("agent log:\n%s", b)
	}
}

// ctl runs autopodctl against the test bus.
func (h *harness) ctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(h.bin, "autopodctl"), append([]string{"--bus", h.bus}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (h *harness) mustCtl(args ...string) string {
	h.t.Helper()
	out, err := h.ctl(args...)
	if err != nil {
		h.t.Fatalf("autopodctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (h *harness) pods() []podStatus {
	out, err := h.ctl("--json", "pods")
	if err != nil {
		h.t.Logf("autopodctl --json pods: %v: %s", err, out)
		return nil
	}
	var ps []podStatus
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		h.t.Fatalf("autopodctl --json pods: %v\n%s", err, out)
	}
	return ps
}

func (h *harness) pod(name string) podStatus {
	h.t.Helper()
	var p podStatus
	out := h.mustCtl("--json", "pod", name)
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		h.t.Fatalf("autopodctl --json pod %s: %v\n%s", name, err, out)
	}
	return p
}

// lineConn is one TCP connection speaking redis's inline protocol.
type lineConn struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *lineConn {
	t.Helper()
	mustRouteToBridge(t, addr)
	var c net.Conn
	var err error
	waitFor(t, 15*time.Second, func() bool {
		c, err = net.DialTimeout("tcp", addr, time.Second)
		return err == nil
	})
	return &lineConn{c: c, r: bufio.NewReader(c)}
}

func (l *lineConn) cmd(t *testing.T, line string) string {
	t.Helper()
	l.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(l.c, "%s\r\n", line); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	s, err := l.r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	s = strings.TrimRight(s, "\r\n")
	if strings.HasPrefix(s, "$") && s != "$-1" {
		v, err := l.r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimRight(v, "\r\n")
	}
	return s
}

func TestAgentEndToEnd(t *testing.T) {
	h := newHarness(t)
	h.startAgent()

	// status shows the CRIU the agent probed.
	var st struct {
		Version string
		Pods    int
		Criu    struct {
			Path, Version, Error string
			Features             map[string]bool
		}
	}
	if err := json.Unmarshal([]byte(h.mustCtl("--json", "status")), &st); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.Criu.Version, "4.") || st.Criu.Error != "" || !st.Criu.Features["network_lock_nftables"] || st.Pods != 3 {
		t.Fatalf("status: %+v", st)
	}
	t.Logf("status:\n%s", h.mustCtl("status"))

	// The bad file is reported with file, line and field; the good pods run.
	ps := map[string]podStatus{}
	waitFor(t, 20*time.Second, func() bool {
		for _, p := range h.pods() {
			ps[p.Name] = p
		}
		return ps["kv"].State == "running" && ps["web"].State == "running"
	})
	if b := ps["broken"]; b.State != "invalid" || !strings.Contains(b.Error, "broken.toml:4") || !strings.Contains(b.Error, "memory") {
		t.Fatalf("broken pod: %+v", b)
	}
	t.Logf("pods:\n%s", h.mustCtl("pods"))

	// Clients reach the pods at their own addresses.
	kv := dial(t, kvAddr+":6379")
	if r := kv.cmd(t, "SET greeting hello"); r != "+OK" {
		t.Fatal(r)
	}
	web := dial(t, webAddr+":8080")
	fmt.Fprintf(web.c, "GET /hostname HTTP/1.0\r\n\r\n")
	if line, _ := web.r.ReadString('\n'); !strings.Contains(line, "200") {
		t.Fatalf("web: %q", line)
	}
	web.c.Close()

	// Introspection shows the whole API.
	out, err := exec.Command("busctl", "--address="+h.bus, "introspect", "org.autopod.Agent1", "/org/autopod/Agent1").CombinedOutput()
	if err != nil {
		t.Fatalf("busctl introspect: %v\n%s", err, out)
	}
	for _, m := range []string{"ListPods", "GetPod", "StartPod", "StopPod", "Checkpoint", "Restore", "Status", "PodStateChanged"} {
		if !strings.Contains(string(out), "."+m) {
			t.Errorf("introspection lacks %s", m)
		}
	}

	// Not root: reading works, changing is refused.
	asNobody := func(args ...string) (string, error) {
		cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups",
			"busctl", "--address=" + h.bus}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := asNobody("call", "org.autopod.Agent1", "/org/autopod/Agent1", "org.autopod.Agent1", "ListPods"); err != nil {
		t.Fatalf("nobody ListPods: %v %s", err, out)
	}
	if out, err := asNobody("call", "org.autopod.Agent1", "/org/autopod/Agent1", "org.autopod.Agent1", "StopPod", "s", "kv"); err == nil || !strings.Contains(out, "ccess") {
		t.Fatalf("nobody StopPod: want access denied, got %v %s", err, out)
	}
	if p := h.pod("kv"); p.State != "running" {
		t.Fatalf("kv after refused stop: %+v", p)
	}

	// Checkpoint and restore through the CLI; the held connection survives.
	before := kv.cmd(t, "DEBUG DIGEST")
	t.Logf("checkpoint:\n%s", h.mustCtl("checkpoint", "kv"))
	if p := h.pod("kv"); p.State != "checkpointed" || p.Checkpoint == "" {
		t.Fatalf("after checkpoint: %+v", p)
	}
	if _, err := os.Stat(filepath.Join(h.pod("kv").Checkpoint, "manifest.json")); err != nil {
		t.Fatal(err)
	}
	t.Logf("restore:\n%s", h.mustCtl("restore", "kv"))
	if r := kv.cmd(t, "GET greeting"); r != "hello" {
		t.Fatalf("GET on the held connection after restore: %q", r)
	}
	if after := kv.cmd(t, "DEBUG DIGEST"); after != before {
		t.Fatalf("digest %s -> %s", before, after)
	}

	// The agent restarts; pods keep running and are re-adopted.
	pidBefore := h.pod("kv").Pid
	h.stopAgent()
	if r := kv.cmd(t, "PING"); r != "+PONG" {
		t.Fatalf("PING with the agent stopped: %q", r)
	}
	h.startAgent()
	if p := h.pod("kv"); p.State != "running" || p.Pid != pidBefore {
		t.Fatalf("after agent restart: %+v, want running pid %d", p, pidBefore)
	}
	// ...and can still checkpoint the adopted pod.
	h.mustCtl("checkpoint", "--leave-running", "kv")
	if r := kv.cmd(t, "PING"); r != "+PONG" {
		t.Fatalf("PING after leave-running checkpoint: %q", r)
	}

	// Errors are clear and exit codes distinct.
	if out, err := h.ctl("stop", "nosuchpod"); exitCode(err) != 1 || !strings.Contains(out, "nosuchpod") {
		t.Fatalf("stop nosuchpod: %v %s", err, out)
	}
	if out, err := h.ctl("frobnicate"); exitCode(err) != 2 {
		t.Fatalf("unknown command: %v %s", err, out)
	}

	// Stop leaves nothing behind.
	webPid := h.pod("web").Pid
	h.mustCtl("stop", "web")
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", webPid)); err == nil && !strings.Contains(string(b), ") Z ") {
		t.Fatalf("web init still alive: %s", b)
	}
	if err := exec.Command("ip", "link", "show", "ap-web").Run(); err == nil {
		t.Fatal("veth ap-web left behind")
	}
	matches, _ := filepath.Glob("/sys/fs/cgroup/*/autopod-systest/web")
	if len(matches) > 0 {
		t.Fatalf("cgroups left behind: %v", matches)
	}
}

// mustRouteToBridge refuses to send anything to addr unless the host
// routes it into the test's own bridge: a test must never reach an
// address outside the namespaces it made.
func mustRouteToBridge(t *testing.T, addr string) {
	t.Helper()
	host, _, _ := net.SplitHostPort(addr)
	out, err := exec.Command("ip", "route", "get", host).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "dev "+bridge+" ") {
		t.Fatalf("%s is not routed to the test bridge %s (%v): %s", host, bridge, err, out)
	}
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}
