package main

// End-to-end tests of the CLI against the real agent D-Bus object, served
// over a fake pod manager on a private dbus-daemon. The agent package's
// test helpers are not importable from here, so a minimal copy of the bus
// starter and the fake lives in this file.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autopod/autopod/test/testbus"

	"github.com/godbus/dbus/v5"

	"github.com/autopod/autopod/agent"
	"github.com/autopod/autopod/peer"
	"github.com/autopod/autopod/pods"
)

// startBus runs dbus-daemon from test/dbus/system-bus.conf with its socket
// in a temporary directory and returns the address.
func startBus(t *testing.T) string {
	t.Helper()
	return testbus.Start(t, testbus.ShareableTempDir(t))
}

// fakeManager is the least PodManager the CLI tests need; it is also
// the Migrator.
type fakeManager struct {
	mu   sync.Mutex
	pods map[string]pods.Status
	errs map[string]error
	// noise is reported before a migration's own progress, as another
	// client's concurrent migration would be.
	noise []pods.MigrationProgress
	// strategies are those MigrateWith was asked for, in order.
	strategies []string
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

// fakeFileBytes and fakeImageBytes add up to 110.3 MiB.
const (
	fakeFileBytes  = 1 << 20
	fakeImageBytes = 115_657_523 - fakeFileBytes
)

// MigrateWith refuses pre-copy as a host without dirty-memory tracking
// does, records the strategy asked for, and migrates as Migrate.
func (m *fakeManager) MigrateWith(ctx context.Context, name, peerName string, opts pods.MigrateOptions, progress func(pods.MigrationProgress)) (pods.MigrationResult, error) {
	m.mu.Lock()
	m.strategies = append(m.strategies, opts.Strategy)
	m.mu.Unlock()
	if opts.Strategy == pods.StrategyPreCopy {
		return pods.MigrationResult{}, fmt.Errorf("migrate %s: %w pre-copy cannot run on this host: the kernel does not track dirty memory", name, pods.ErrStrategy)
	}
	return m.Migrate(ctx, name, peerName, progress)
}

func (m *fakeManager) Migrate(_ context.Context, name, peerName string, progress func(pods.MigrationProgress)) (pods.MigrationResult, error) {
	m.mu.Lock()
	noise := m.noise
	err := m.errs[name]
	st, ok := m.pods[name]
	m.mu.Unlock()
	switch {
	case err != nil:
		return pods.MigrationResult{}, err
	case !ok:
		return pods.MigrationResult{}, fmt.Errorf("pod %q: %w", name, pods.ErrNotFound)
	case peerName == "ghost":
		return pods.MigrationResult{}, fmt.Errorf("migrate %s: %w %q", name, peer.ErrUnknownPeer, peerName)
	case st.State != pods.StateRunning:
		return pods.MigrationResult{}, fmt.Errorf("pod %s: %w", name, pods.ErrNotRunning)
	}
	for _, p := range noise {
		progress(p)
	}
	for _, p := range []struct {
		phase string
		n     int64
	}{
		{pods.PhaseOffer, 0},
		{pods.PhaseFiles, 0},
		{pods.PhaseFiles, 0}, // a repeat: printed once
		{pods.PhaseFreeze, fakeFileBytes},
		{pods.PhaseDump, fakeFileBytes},
		{pods.PhaseImages, fakeFileBytes},
		{pods.PhaseRestore, fakeFileBytes + fakeImageBytes},
		{pods.PhaseCommit, fakeFileBytes + fakeImageBytes},
		{pods.PhaseDone, fakeFileBytes + fakeImageBytes},
	} {
		progress(pods.MigrationProgress{Pod: name, Peer: peerName, Phase: p.phase, Bytes: p.n})
	}
	if err := m.setMigrated(name, peerName); err != nil {
		return pods.MigrationResult{}, err
	}
	return pods.MigrationResult{Pod: name, Peer: peerName, FileBytes: fakeFileBytes, ImageBytes: fakeImageBytes,
		Frozen: 812 * time.Millisecond, Total: 1903 * time.Millisecond}, nil
}

func (m *fakeManager) setMigrated(name, peerName string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pods[name]
	p.State, p.Pid, p.Location = pods.StateMigrated, 0, peerName
	m.pods[name] = p
	return nil
}

func (m *fakeManager) Evacuate(ctx context.Context, peerName string, progress func(pods.MigrationProgress)) ([]pods.MigrationResult, error) {
	var names []string
	for _, p := range m.List(ctx) {
		if p.State == pods.StateRunning {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	var res []pods.MigrationResult
	var errs []error
	for _, n := range names {
		r, err := m.Migrate(ctx, n, peerName, progress)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res = append(res, r)
	}
	return res, errors.Join(errs...)
}

func (m *fakeManager) Return(_ context.Context, progress func(pods.MigrationProgress)) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var back []string
	for _, name := range slices.Sorted(maps.Keys(m.pods)) {
		p := m.pods[name]
		if p.State != pods.StateMigrated {
			continue
		}
		for _, phase := range []string{pods.PhaseOffer, pods.PhaseImages, pods.PhaseRestore, pods.PhaseDone} {
			progress(pods.MigrationProgress{Pod: name, Peer: p.Location, Phase: phase, Bytes: 3 << 20})
		}
		p.State, p.Pid, p.Location = pods.StateRunning, 999, ""
		m.pods[name] = p
		back = append(back, name)
	}
	return back, nil
}

// fakePeers is the least PeerRegistry the CLI tests need, with the peer
// package's errors.
type fakePeers struct {
	mu     sync.Mutex
	cert   string
	serial int
	peers  map[string]agent.PeerInfo
}

const testCertPEM = "-----BEGIN CERTIFICATE-----\nTUlJQmZ6Q0NBU1dnQXdJQkFnSVJBTA==\n-----END CERTIFICATE-----\n"

func (p *fakePeers) InitIdentity(force bool) (string, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cert != "" && !force {
		return "", "", fmt.Errorf("%w in /var/lib/autopod/peer (key.pem and cert.pem exist); replacing it breaks every peer that pinned this host's certificate", peer.ErrIdentityExists)
	}
	p.serial++
	p.cert = strings.Replace(testCertPEM, "TUlJ", fmt.Sprintf("TUlJ%d", p.serial), 1)
	return p.cert, fingerprintOf(p.cert), nil
}

func (p *fakePeers) Identity() (string, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cert == "" {
		return "", "", fmt.Errorf("%w in /var/lib/autopod/peer; run `autopodctl peer init`", peer.ErrNoIdentity)
	}
	return p.cert, fingerprintOf(p.cert), nil
}

func (p *fakePeers) AddPeer(name, address string, certPEM []byte) (agent.PeerInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !strings.Contains(string(certPEM), "-----BEGIN CERTIFICATE-----") {
		return agent.PeerInfo{}, fmt.Errorf("add peer %q: certificate of peer %q: no PEM certificate found (want -----BEGIN CERTIFICATE-----)", name, name)
	}
	if !strings.Contains(address, ":") {
		address += ":7781"
	}
	info := agent.PeerInfo{Name: name, Address: address, Fingerprint: fingerprintOf(string(certPEM))}
	p.peers[name] = info
	return info, nil
}

func (p *fakePeers) RemovePeer(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.peers[name]; !ok {
		return fmt.Errorf("%w %q", peer.ErrUnknownPeer, name)
	}
	delete(p.peers, name)
	return nil
}

func (p *fakePeers) ListPeers() ([]agent.PeerInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Collect(maps.Values(p.peers)), nil
}

// fingerprintOf is the peer package's fingerprint form over the PEM text
// (the real one hashes the DER): enough to tell certificates apart.
func fingerprintOf(certPEM string) string {
	sum := sha256.Sum256([]byte(certPEM))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// cliHarness serves the agent object on a private bus.
type cliHarness struct {
	addr  string
	mgr   *fakeManager
	peers *fakePeers
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
	peers := &fakePeers{peers: map[string]agent.PeerInfo{}}
	obj.SetMigration(mgr, peers)
	if err := obj.Export(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = obj.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := obj.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	return &cliHarness{addr: addr, mgr: mgr, peers: peers}
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
	for name, want := range map[string]string{
		"AccessDenied": agent.DBusErrAccessDenied, "UnknownPeer": agent.DBusErrUnknownPeer,
		"IdentityExists": agent.DBusErrIdentityExists,
	} {
		if agentInterface+".Error."+name != want {
			t.Fatalf("%s error name differs", name)
		}
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
	// A migration subscribes to progress first; that, too, finds no agent.
	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"--bus", addr, "migrate", "kv", "--to", "hostb"}, noEnv, &out, &errb)
	if code != exitUnreachable || out.Len() != 0 {
		t.Errorf("migrate without agent: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
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

func TestCLIMigrate(t *testing.T) {
	h := newCLIHarness(t)
	h.mgr.mu.Lock()
	h.mgr.pods["kv"] = pods.Status{Name: "kv", State: pods.StateRunning, Pid: 31, Address: "10.77.0.11/24"}
	// Another client's migration, at the same time: not this command's.
	h.mgr.noise = []pods.MigrationProgress{
		{Pod: "other", Peer: "hostb", Phase: pods.PhaseFiles, Bytes: 9},
		{Pod: "kv", Peer: "hostc", Phase: pods.PhaseFiles, Bytes: 9},
	}
	h.mgr.mu.Unlock()

	code, out, errOut := h.ctl(t, "migrate", "kv", "--to", "hostb")
	want := "" +
		"kv → hostb: offer 0 B\n" +
		"kv → hostb: files 0 B\n" +
		"kv → hostb: freeze 1.0 MiB\n" +
		"kv → hostb: dump 1.0 MiB\n" +
		"kv → hostb: images 1.0 MiB\n" +
		"kv → hostb: restore 110.3 MiB\n" +
		"kv → hostb: commit 110.3 MiB\n" +
		"kv → hostb: done 110.3 MiB\n" +
		"migrated kv to hostb: frozen 812 ms, total 1.9 s, 110.3 MiB\n"
	if code != exitOK || out != want || errOut != "" {
		t.Errorf("migrate: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", code, errOut, out, want)
	}
	code, out, _ = h.ctl(t, "pod", "kv")
	if code != exitOK || !strings.Contains(out, "State:       migrated\n") || !strings.Contains(out, "Location:    hostb\n") {
		t.Errorf("pod kv after migrate: exit %d\n%s", code, out)
	}

	// --json: the result document only.
	code, out, _ = h.ctl(t, "--json", "migrate", "web", "--to=hostb")
	var res migrateResult
	dec := json.NewDecoder(strings.NewReader(out))
	if code != exitOK || dec.Decode(&res) != nil || dec.More() ||
		res != (migrateResult{Pod: "web", Peer: "hostb", FrozenUsec: 812000, TotalUsec: 1903000, Bytes: 115_657_523}) {
		t.Errorf("--json migrate: exit %d\n%s", code, out)
	}

	// Errors: the agent's message, the exit status, a hint where one helps.
	code, out, errOut = h.ctl(t, "migrate", "db", "--to", "ghost")
	if code != exitFailed || out != "" || !strings.HasPrefix(errOut, "autopodctl: migrate db: unknown peer \"ghost\"\n") ||
		!strings.Contains(errOut, "peer list") {
		t.Errorf("migrate to ghost: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = h.ctl(t, "migrate", "db", "--to", "hostb")
	if code != exitFailed || errOut != "autopodctl: pod db: pod is not running\n" {
		t.Errorf("migrate stopped pod: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = h.ctl(t, "migrate", "web")
	if code != exitUsage || !strings.Contains(errOut, "migrate needs option --to") {
		t.Errorf("migrate without --to: exit %d, stderr %q", code, errOut)
	}
}

func TestCLIMigrateStrategy(t *testing.T) {
	if !slices.Equal(strategies, pods.Strategies) {
		t.Fatalf("--strategy takes %q, the agent knows %q", strategies, pods.Strategies)
	}
	h := newCLIHarness(t)
	code, out, errOut := h.ctl(t, "migrate", "web", "--to", "hostb", "--strategy", "pre-copy")
	if code != exitFailed || out != "" || errOut != "autopodctl: migrate web: migration strategy pre-copy cannot run on this host: the kernel does not track dirty memory\n" {
		t.Errorf("--strategy pre-copy: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = h.ctl(t, "--json", "migrate", "web", "--to", "hostb", "--strategy", "stop-and-copy")
	var res migrateResult
	if code != exitOK || json.Unmarshal([]byte(out), &res) != nil || res.Strategy != "stop-and-copy" || res.Bytes != 115_657_523 {
		t.Errorf("--strategy stop-and-copy: exit %d\n%s", code, out)
	}
	h.mgr.mu.Lock()
	got := slices.Clone(h.mgr.strategies)
	h.mgr.mu.Unlock()
	if want := []string{"pre-copy", "stop-and-copy"}; !slices.Equal(got, want) {
		t.Errorf("MigrateWith strategies %q, want %q", got, want)
	}
}

func TestCLIEvacuateAndReturn(t *testing.T) {
	h := newCLIHarness(t)
	h.mgr.mu.Lock()
	h.mgr.pods["kv"] = pods.Status{Name: "kv", State: pods.StateRunning, Pid: 31}
	h.mgr.mu.Unlock()

	code, out, errOut := h.ctl(t, "evacuate", "--to", "hostb")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != exitOK || len(lines) != 17 || lines[0] != "kv → hostb: offer 0 B" || lines[8] != "web → hostb: offer 0 B" ||
		lines[16] != "evacuated 2 pods to hostb: kv, web" {
		t.Errorf("evacuate: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	code, out, _ = h.ctl(t, "evacuate", "--to", "hostb")
	if code != exitOK || out != "evacuated no pods to hostb: none is running\n" {
		t.Errorf("second evacuate: exit %d %q", code, out)
	}

	code, out, errOut = h.ctl(t, "return")
	want := "" +
		"kv ← hostb: offer 3.0 MiB\n" +
		"kv ← hostb: images 3.0 MiB\n" +
		"kv ← hostb: restore 3.0 MiB\n" +
		"kv ← hostb: done 3.0 MiB\n" +
		"web ← hostb: offer 3.0 MiB\n" +
		"web ← hostb: images 3.0 MiB\n" +
		"web ← hostb: restore 3.0 MiB\n" +
		"web ← hostb: done 3.0 MiB\n" +
		"returned 2 pods: kv, web\n"
	if code != exitOK || out != want {
		t.Errorf("return: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", code, errOut, out, want)
	}
	code, out, _ = h.ctl(t, "return", "--json")
	if code != exitOK || strings.Join(strings.Fields(out), " ") != `{ "returned": [] }` {
		t.Errorf("return --json with nothing away: exit %d %q", code, out)
	}
	code, out, _ = h.ctl(t, "--json", "evacuate", "--to", "hostb")
	var ev evacuateResult
	if code != exitOK || json.Unmarshal([]byte(out), &ev) != nil || ev.Peer != "hostb" || !slices.Equal(ev.Migrated, []string{"kv", "web"}) {
		t.Errorf("--json evacuate: exit %d\n%s", code, out)
	}
}

func TestCLIPeers(t *testing.T) {
	h := newCLIHarness(t)

	code, out, errOut := h.ctl(t, "peer", "cert")
	if code != exitFailed || out != "" || !strings.Contains(errOut, "no peer identity") || !strings.Contains(errOut, "autopodctl peer init") {
		t.Errorf("peer cert before init: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	code, out, errOut = h.ctl(t, "peer", "init")
	cert, fp, _ := h.peers.Identity()
	if code != exitOK || out != cert || errOut != "fingerprint: "+fp+"\n" {
		t.Errorf("peer init: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = h.ctl(t, "peer", "init")
	if code != exitFailed || !strings.Contains(errOut, "peer identity already exists") || !strings.Contains(errOut, "--force replaces it") {
		t.Errorf("second peer init: exit %d, stderr %q", code, errOut)
	}
	code, out, _ = h.ctl(t, "peer", "init", "--force", "--json")
	var id peerIdentity
	if code != exitOK || json.Unmarshal([]byte(out), &id) != nil || id.Fingerprint == fp || !strings.HasPrefix(id.CertPEM, "-----BEGIN CERTIFICATE-----\n") {
		t.Errorf("peer init --force --json: exit %d\n%s", code, out)
	}
	code, out, errOut = h.ctl(t, "peer", "cert")
	if code != exitOK || out != id.CertPEM || errOut != "fingerprint: "+id.Fingerprint+"\n" {
		t.Errorf("peer cert: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	dir := t.TempDir()
	certFile := filepath.Join(dir, "hostb.pem")
	if err := os.WriteFile(certFile, []byte(testCertPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = h.ctl(t, "peer", "add", "hostb", "192.0.2.2", "--cert", certFile)
	if want := "added peer hostb at 192.0.2.2:7781, fingerprint " + fingerprintOf(testCertPEM) + "\n"; code != exitOK || out != want {
		t.Errorf("peer add: exit %d, stderr %q, stdout %q, want %q", code, errOut, out, want)
	}
	code, out, _ = h.ctl(t, "--json", "peer", "add", "hosta", "[fd00::1]:7000", "--cert="+certFile)
	var row peerRow
	if code != exitOK || json.Unmarshal([]byte(out), &row) != nil || row != (peerRow{"hosta", "[fd00::1]:7000", fingerprintOf(testCertPEM)}) {
		t.Errorf("--json peer add: exit %d\n%s", code, out)
	}
	code, _, errOut = h.ctl(t, "peer", "add", "hostc", "192.0.2.3", "--cert", filepath.Join(dir, "missing.pem"))
	if code != exitFailed || !strings.Contains(errOut, "read the peer's certificate: open ") || !strings.Contains(errOut, "no such file") {
		t.Errorf("peer add with a missing file: exit %d, stderr %q", code, errOut)
	}
	junk := filepath.Join(dir, "junk.pem")
	_ = os.WriteFile(junk, []byte("hello\n"), 0o644)
	code, _, errOut = h.ctl(t, "peer", "add", "hostc", "192.0.2.3", "--cert", junk)
	if code != exitFailed || !strings.Contains(errOut, "no PEM certificate found") {
		t.Errorf("peer add with junk: exit %d, stderr %q", code, errOut)
	}

	code, out, _ = h.ctl(t, "peer", "list")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != exitOK || len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME ADDRESS FINGERPRINT" ||
		strings.Join(strings.Fields(lines[1]), " ") != "hosta [fd00::1]:7000 "+fingerprintOf(testCertPEM) ||
		strings.Join(strings.Fields(lines[2]), " ") != "hostb 192.0.2.2:7781 "+fingerprintOf(testCertPEM) {
		t.Errorf("peer list: exit %d\n%s", code, out)
	}
	code, out, _ = h.ctl(t, "peer", "remove", "hostb")
	if code != exitOK || out != "removed peer hostb\n" {
		t.Errorf("peer remove: exit %d %q", code, out)
	}
	code, _, errOut = h.ctl(t, "peer", "rm", "hostb")
	if code != exitFailed || !strings.HasPrefix(errOut, "autopodctl: unknown peer \"hostb\"\n") {
		t.Errorf("peer rm of an unknown peer: exit %d, stderr %q", code, errOut)
	}
	code, out, _ = h.ctl(t, "peer", "ls", "--json")
	var rows []peerRow
	if code != exitOK || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 || rows[0].Name != "hosta" {
		t.Errorf("peer ls --json: exit %d\n%s", code, out)
	}
	h.ctl(t, "peer", "remove", "hosta")
	code, out, _ = h.ctl(t, "--json", "peer", "list")
	if code != exitOK || strings.TrimSpace(out) != "[]" {
		t.Errorf("--json peer list with none: exit %d %q", code, out)
	}
}
