package main

// End-to-end tests of the CLI against the real agent D-Bus object, served
// over a fake pod manager on a private dbus-daemon. The agent package's
// test helpers are not importable from here, so a minimal copy of the bus
// starter and the fake lives in this file.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/autopod/autopod/agent"
	"github.com/autopod/autopod/pods"
)

// startBus runs dbus-daemon from test/dbus/system-bus.conf with its socket
// in a temporary directory and returns the address.
func startBus(t *testing.T) string {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed (apt-get install dbus-daemon, or scripts/deps.sh)")
	}
	conf, err := filepath.Abs("../../test/dbus/system-bus.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "apctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, daemon, "--config-file="+conf,
		"--address=unix:path="+filepath.Join(dir, "bus"), "--nofork", "--nopidfile", "--print-address")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case addr := <-lines:
		if addr == "" {
			t.Fatalf("dbus-daemon: %s", stderr.String())
		}
		return addr
	case <-time.After(10 * time.Second):
		t.Fatalf("dbus-daemon did not start: %s", stderr.String())
		return ""
	}
}

// fakeManager is the least PodManager the CLI tests need.
type fakeManager struct {
	mu   sync.Mutex
	pods map[string]pods.Status
	errs map[string]error
}

func (m *fakeManager) List(context.Context) []pods.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []pods.Status
	for _, p := range m.pods {
		out = append(out, p)
	}
	return out
}

func (m *fakeManager) Get(_ context.Context, name string) (pods.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pods[name]
	if !ok {
		return p, fmt.Errorf("pod %q: %w", name, pods.ErrNotFound)
	}
	return p, nil
}

func (m *fakeManager) set(name string, state pods.State, pid int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.errs[name]; err != nil {
		return err
	}
	p, ok := m.pods[name]
	if !ok {
		return fmt.Errorf("pod %q: %w", name, pods.ErrNotFound)
	}
	p.State, p.Pid = state, pid
	m.pods[name] = p
	return nil
}

func (m *fakeManager) Start(_ context.Context, name string) error {
	return m.set(name, pods.StateRunning, 777)
}
func (m *fakeManager) Stop(_ context.Context, name string) error {
	return m.set(name, pods.StateStopped, 0)
}
func (m *fakeManager) Restore(_ context.Context, name string) error {
	return m.set(name, pods.StateRunning, 888)
}
func (m *fakeManager) Checkpoint(_ context.Context, name string, o pods.CheckpointOptions) (pods.CheckpointResult, error) {
	state, pid := pods.StateCheckpointed, 0
	if o.LeaveRunning {
		state, pid = pods.StateRunning, 4242
	}
	if err := m.set(name, state, pid); err != nil {
		return pods.CheckpointResult{}, err
	}
	return pods.CheckpointResult{Dir: "/var/lib/autopod/pods/" + name + "/checkpoints/20261130T040205.009385820Z", Bytes: 3 << 20}, nil
}
func (m *fakeManager) Subscribe(func(pods.Event)) {}

// cliHarness serves the agent object on a private bus.
type cliHarness struct {
	addr string
	mgr  *fakeManager
}

func newCLIHarness(t *testing.T) *cliHarness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bus policy lets only root own org.autopod.Agent1")
	}
	addr := startBus(t)
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	mgr := &fakeManager{
		pods: map[string]pods.Status{
			"web": {Name: "web", State: pods.StateRunning, Pid: 4242, Address: "10.77.0.10/24",
				File: "/etc/autopod/pods/web.toml", Since: time.Now().Add(-3 * time.Hour)},
			"db": {Name: "db", State: pods.StateStopped, File: "/etc/autopod/pods/db.toml"},
		},
		errs: map[string]error{},
	}
	obj := agent.NewAgentObject(conn, mgr, agent.StatusInfo{
		Version: "9.9.9",
		Criu:    agent.CriuInfo{Path: "/usr/sbin/criu", Version: "4.1", Features: map[string]bool{"mem_dirty_track": true}},
	}, slog.New(slog.DiscardHandler))
	if err := obj.Export(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = obj.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := obj.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	return &cliHarness{addr: addr, mgr: mgr}
}

// ctl runs autopodctl against the harness's bus, passed through the
// environment as a user's shell would.
func (h *cliHarness) ctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	env := func(k string) string {
		if k == "DBUS_SYSTEM_BUS_ADDRESS" {
			return h.addr
		}
		return ""
	}
	var out, errb bytes.Buffer
	code = run(context.Background(), args, env, &out, &errb)
	return code, out.String(), errb.String()
}

func TestAgentNamesMatch(t *testing.T) {
	if agentBusName != agent.DBusName || agentPath != agent.DBusPath || agentInterface != agent.DBusInterface {
		t.Fatal("autopodctl's D-Bus names differ from the agent's")
	}
	if agentInterface+".Error.AccessDenied" != agent.DBusErrAccessDenied {
		t.Fatal("AccessDenied error name differs")
	}
}

func TestCLIAgainstAgent(t *testing.T) {
	h := newCLIHarness(t)

	code, out, errOut := h.ctl(t, "pods")
	if code != exitOK {
		t.Fatalf("pods: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME ") ||
		strings.Join(strings.Fields(lines[1]), " ") != "db stopped - - -" ||
		strings.Join(strings.Fields(lines[2]), " ") != "web running 4242 10.77.0.10/24 3h" {
		t.Errorf("pods:\n%s", out)
	}

	code, out, _ = h.ctl(t, "--json", "list")
	var list []pods.Status
	if code != exitOK || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[1].Name != "web" {
		t.Errorf("--json list: exit %d\n%s", code, out)
	}

	code, out, _ = h.ctl(t, "status")
	if code != exitOK || !strings.Contains(out, "Agent version:  9.9.9\n") || !strings.Contains(out, "CRIU features:  mem_dirty_track\n") ||
		!strings.Contains(out, "Pods:           2\n") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	code, out, _ = h.ctl(t, "status", "--json")
	var st agentStatus
	if code != exitOK || json.Unmarshal([]byte(out), &st) != nil || st.Version != "9.9.9" || st.Pods != 2 || !st.Criu.Features["mem_dirty_track"] {
		t.Errorf("status --json: exit %d\n%s", code, out)
	}

	code, out, _ = h.ctl(t, "pod", "web")
	if code != exitOK || !strings.Contains(out, "State:       running\n") || !strings.Contains(out, "(3h ago)") {
		t.Errorf("pod web: exit %d\n%s", code, out)
	}
	code, out, _ = h.ctl(t, "--json", "pod", "web")
	var p pods.Status
	if code != exitOK || json.Unmarshal([]byte(out), &p) != nil || p.Pid != 4242 {
		t.Errorf("--json pod web: exit %d\n%s", code, out)
	}

	code, out, _ = h.ctl(t, "start", "db")
	if code != exitOK || out != "started db: running, pid 777\n" {
		t.Errorf("start db: exit %d %q", code, out)
	}
	code, out, _ = h.ctl(t, "stop", "db", "--json")
	if code != exitOK || json.Unmarshal([]byte(out), &p) != nil || p.State != pods.StateStopped {
		t.Errorf("stop db --json: exit %d\n%s", code, out)
	}
	code, out, _ = h.ctl(t, "checkpoint", "web", "--leave-running")
	if code != exitOK || out != "checkpointed web: 3.0 MiB in /var/lib/autopod/pods/web/checkpoints/20261130T040205.009385820Z (pod left running)\n" {
		t.Errorf("checkpoint: exit %d %q", code, out)
	}
	code, out, _ = h.ctl(t, "--json", "checkpoint", "web")
	var cp checkpointResult
	if code != exitOK || json.Unmarshal([]byte(out), &cp) != nil || cp.Bytes != 3<<20 || cp.Dir == "" || cp.LeaveRunning {
		t.Errorf("--json checkpoint: exit %d\n%s", code, out)
	}
	code, out, _ = h.ctl(t, "restore", "web")
	if code != exitOK || out != "restored web: running, pid 888\n" {
		t.Errorf("restore: exit %d %q", code, out)
	}

	code, out, _ = h.ctl(t, "version")
	if code != exitOK || !strings.Contains(out, "autopod    9.9.9\n") {
		t.Errorf("version: exit %d\n%s", code, out)
	}
}

func TestCLIErrors(t *testing.T) {
	h := newCLIHarness(t)

	code, out, errOut := h.ctl(t, "pod", "ghost")
	if code != exitFailed || out != "" || errOut != "autopodctl: pod \"ghost\": no such pod\n" {
		t.Errorf("pod ghost: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	h.mgr.mu.Lock()
	h.mgr.errs["web"] = fmt.Errorf("pod web: %w", pods.ErrBusy)
	h.mgr.mu.Unlock()
	code, _, errOut = h.ctl(t, "stop", "web")
	if code != exitFailed || errOut != "autopodctl: pod web: pod is busy with another operation\n" {
		t.Errorf("stop busy: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = h.ctl(t, "--json", "checkpoint", "web")
	if code != exitFailed || !strings.HasPrefix(errOut, "autopodctl: pod web: pod is busy") {
		t.Errorf("checkpoint busy: exit %d, stderr %q", code, errOut)
	}
}

// TestCLINoAgent: a bus without an agent is "not reachable" (exit 3).
func TestCLINoAgent(t *testing.T) {
	addr := startBus(t)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"--bus", addr, "pods"}, noEnv, &out, &errb)
	if code != exitUnreachable || !strings.Contains(errb.String(), "systemctl start autopod") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"--bus", addr, "--json", "version"}, noEnv, &out, &errb)
	var v versionInfo
	if code != exitUnreachable || json.Unmarshal(out.Bytes(), &v) != nil || v.Autopodctl == "" || v.Agent != "" {
		t.Errorf("version without agent: exit %d, stdout %q", code, out.String())
	}
}

// TestCLITimeout: a deadline that has passed is reported as a timeout
// (exit 1), not as an unreachable agent.
func TestCLITimeout(t *testing.T) {
	h := newCLIHarness(t)
	code, _, errOut := h.ctl(t, "--timeout", "1ns", "pods")
	if code != exitFailed || !strings.Contains(errOut, "no answer from the agent within 1ns") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
