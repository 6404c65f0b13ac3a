package agent

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/autopod/autopod/peer"
	"github.com/autopod/autopod/pods"
)

// ---- fake PodManager ---------------------------------------------------------

// fakeManager is an in-memory PodManager. Like a real manager it notifies
// subscribers while holding its lock, so an AgentObject that called back
// into the manager from its callback would deadlock the test.
type fakeManager struct {
	mu    sync.Mutex
	pods  map[string]pods.Status
	errs  map[string]error // returned by every operation on that pod
	subs  []func(pods.Event)
	calls []string

	// If cpGate is set, Checkpoint signals cpStarted and waits for cpGate.
	cpGate    chan struct{}
	cpStarted chan struct{}

	// If migrateGate is set, Migrate signals migrateStarted after its first
	// progress report and waits for migrateGate.
	migrateGate    chan struct{}
	migrateStarted chan struct{}
}

var fakeSince = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func newFakeManager() *fakeManager {
	return &fakeManager{
		pods: map[string]pods.Status{
			"web": {Name: "web", State: pods.StateRunning, Pid: 4242, Address: "10.77.0.10/24",
				File: "/etc/autopod/pods/web.toml", Since: fakeSince, Restarts: 1},
			"db": {Name: "db", State: pods.StateStopped, File: "/etc/autopod/pods/db.toml"},
			"bad": {Name: "bad", State: pods.StateInvalid, File: "/etc/autopod/pods/bad.toml",
				Error: "line 3: unknown key \"comand\""},
		},
		errs: map[string]error{},
	}
}

func (m *fakeManager) List(context.Context) []pods.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Deliberately unsorted: map order.
	return slices.Collect(maps.Values(m.pods))
}

func (m *fakeManager) Get(_ context.Context, name string) (pods.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.errs[name]; err != nil {
		return pods.Status{}, err
	}
	st, ok := m.pods[name]
	if !ok {
		return pods.Status{}, fmt.Errorf("pod %q: %w", name, pods.ErrNotFound)
	}
	return st, nil
}

// transition records the call and moves the pod through states, notifying
// subscribers of each.
func (m *fakeManager) transition(call, name string, states ...pods.State) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, call+" "+name)
	if err := m.errs[name]; err != nil {
		return err
	}
	st, ok := m.pods[name]
	if !ok {
		return fmt.Errorf("pod %q: %w", name, pods.ErrNotFound)
	}
	for _, s := range states {
		st.State = s
		m.pods[name] = st
		for _, fn := range m.subs {
			fn(pods.Event{Name: name, State: s})
		}
	}
	return nil
}

func (m *fakeManager) Start(_ context.Context, name string) error {
	return m.transition("Start", name, pods.StateStarting, pods.StateRunning)
}

func (m *fakeManager) Stop(_ context.Context, name string) error {
	return m.transition("Stop", name, pods.StateStopped)
}

func (m *fakeManager) Restore(_ context.Context, name string) error {
	return m.transition("Restore", name, pods.StateRestoring, pods.StateRunning)
}

func (m *fakeManager) Checkpoint(ctx context.Context, name string, opts pods.CheckpointOptions) (pods.CheckpointResult, error) {
	m.mu.Lock()
	gate, started := m.cpGate, m.cpStarted
	m.mu.Unlock()
	if gate != nil {
		close(started)
		select {
		case <-gate:
		case <-ctx.Done():
			return pods.CheckpointResult{}, ctx.Err()
		}
	}
	final := pods.StateCheckpointed
	if opts.LeaveRunning {
		final = pods.StateRunning
	}
	if err := m.transition(fmt.Sprintf("Checkpoint(leave=%v)", opts.LeaveRunning), name, pods.StateCheckpointing, final); err != nil {
		return pods.CheckpointResult{}, err
	}
	return pods.CheckpointResult{Dir: "/var/lib/autopod/checkpoints/" + name + "/1", Bytes: 12 << 20, Duration: time.Second}, nil
}

func (m *fakeManager) Subscribe(fn func(pods.Event)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.subs = append(m.subs, fn)
}

// emit notifies subscribers of ev, optionally adding or removing a pod.
func (m *fakeManager) emit(ev pods.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, fn := range m.subs {
		fn(ev)
	}
}

func (m *fakeManager) addPod(st pods.Status) {
	m.mu.Lock()
	m.pods[st.Name] = st
	m.mu.Unlock()
}

func (m *fakeManager) setErr(name string, err error) {
	m.mu.Lock()
	m.errs[name] = err
	m.mu.Unlock()
}

func (m *fakeManager) callLog() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

// ---- fake Migrator -------------------------------------------------------------
//
// fakeManager is also the Migrator. A migration reports the phases of a
// real one, some of them twice in a row (as a Migrator that reports every
// chunk does), and leaves the pod "migrated" with its Location set.

// fakeMigration is what every successful fake migration returns.
var fakeMigration = pods.MigrationResult{
	FileBytes: 1 << 20, ImageBytes: 100 << 20,
	Frozen: 812 * time.Millisecond, Total: 1900 * time.Millisecond,
}

// fakePhases are the progress reports of one fake migration, in order,
// as (phase, bytes) with bytes relative to the migration's start.
var fakePhases = []struct {
	phase string
	bytes int64
}{
	{pods.PhaseOffer, 0},
	{pods.PhaseFiles, 0},
	{pods.PhaseFiles, 512 << 10},
	{pods.PhaseFiles, 1 << 20},
	{pods.PhaseFreeze, 1 << 20},
	{pods.PhaseDump, 1 << 20},
	{pods.PhaseImages, 1 << 20},
	{pods.PhaseImages, 50 << 20},
	{pods.PhaseImages, 101 << 20},
	{pods.PhaseRestore, 101 << 20},
	{pods.PhaseCommit, 101 << 20},
	{pods.PhaseDone, 101 << 20},
}

// wantPhases is fakePhases without repeats: what a listener must see.
func wantPhases() []string {
	var out []string
	for _, p := range fakePhases {
		if len(out) == 0 || out[len(out)-1] != p.phase {
			out = append(out, p.phase)
		}
	}
	return out
}

// MigrateWith refuses pre-copy as a host without dirty-memory tracking
// does; otherwise it records the call and migrates as Migrate.
func (m *fakeManager) MigrateWith(ctx context.Context, name, peerName string, opts pods.MigrateOptions, progress func(pods.MigrationProgress)) (pods.MigrationResult, error) {
	m.mu.Lock()
	m.calls = append(m.calls, "MigrateWith "+name+" "+peerName+" "+opts.Strategy)
	m.mu.Unlock()
	if opts.Strategy == pods.StrategyPreCopy {
		return pods.MigrationResult{}, fmt.Errorf("migrate %s: %w pre-copy cannot run on this host: no dirty tracking", name, pods.ErrStrategy)
	}
	return m.Migrate(ctx, name, peerName, progress)
}

func (m *fakeManager) Migrate(ctx context.Context, name, peerName string, progress func(pods.MigrationProgress)) (pods.MigrationResult, error) {
	m.mu.Lock()
	m.calls = append(m.calls, "Migrate "+name+" "+peerName)
	gate, started := m.migrateGate, m.migrateStarted
	err := m.migrateCheck(name, peerName)
	m.mu.Unlock()
	if err != nil {
		return pods.MigrationResult{}, err
	}
	report := func(phase string, n int64) {
		progress(pods.MigrationProgress{Pod: name, Peer: peerName, Phase: phase, Bytes: n})
	}
	for i, p := range fakePhases {
		report(p.phase, p.bytes)
		if i == 0 && gate != nil {
			close(started)
			select {
			case <-gate:
			case <-ctx.Done():
				report(pods.PhaseRollback, 0)
				return pods.MigrationResult{}, fmt.Errorf("migrate %s: %w", name, ctx.Err())
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.pods[name]
	st.State, st.Pid, st.Location = pods.StateMigrated, 0, peerName
	m.pods[name] = st
	for _, fn := range m.subs {
		fn(pods.Event{Name: name, State: pods.StateMigrated})
	}
	res := fakeMigration
	res.Pod, res.Peer = name, peerName
	return res, nil
}

// migrateCheck is Migrate's refusal, with m.mu held. The peer "refuser"
// refuses every pod, the peer "ghost" is not pinned, and m.errs applies.
func (m *fakeManager) migrateCheck(name, peerName string) error {
	if err := m.errs[name]; err != nil {
		return err
	}
	st, ok := m.pods[name]
	switch {
	case !ok:
		return fmt.Errorf("pod %q: %w", name, pods.ErrNotFound)
	case peerName == "ghost":
		return fmt.Errorf("migrate %s: dial: %w %q", name, peer.ErrUnknownPeer, peerName)
	case peerName == "refuser":
		return fmt.Errorf("migrate %s to %s: %w: criu 3.19 is older than this host's 4.1", name, peerName, pods.ErrPeerRefused)
	case st.State == pods.StateMigrated:
		return fmt.Errorf("pod %s: %w %s", name, pods.ErrMigrated, st.Location)
	case st.State != pods.StateRunning:
		return fmt.Errorf("pod %s: %w", name, pods.ErrNotRunning)
	}
	return nil
}

// Evacuate migrates the running pods in name order, as the real one does.
func (m *fakeManager) Evacuate(ctx context.Context, peerName string, progress func(pods.MigrationProgress)) ([]pods.MigrationResult, error) {
	var names []string
	for _, st := range m.List(ctx) {
		if st.State == pods.StateRunning {
			names = append(names, st.Name)
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

// Return brings back every migrated pod, reporting the phases of the
// incoming side. A pod in m.errs stays away.
func (m *fakeManager) Return(_ context.Context, progress func(pods.MigrationProgress)) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "Return")
	var back []string
	var errs []error
	// Map order on purpose: the agent sorts.
	for name, st := range m.pods {
		if st.State != pods.StateMigrated {
			continue
		}
		if err := m.errs[name]; err != nil {
			errs = append(errs, fmt.Errorf("return %s from %s: %w", name, st.Location, err))
			continue
		}
		for _, phase := range []string{pods.PhaseImages, pods.PhaseRestore, pods.PhaseDone} {
			progress(pods.MigrationProgress{Pod: name, Peer: st.Location, Phase: phase, Bytes: 7 << 20})
		}
		st.State, st.Pid, st.Location = pods.StateRunning, 5151, ""
		m.pods[name] = st
		back = append(back, name)
	}
	return back, errors.Join(errs...)
}

// ---- fake PeerRegistry -----------------------------------------------------------

// fakePeers is an in-memory PeerRegistry with the peer package's errors.
type fakePeers struct {
	mu       sync.Mutex
	certPEM  string // this host's; "" before InitIdentity
	serial   int    // identities created, to tell a forced re-init apart
	peers    map[string]PeerInfo
	calls    []string
	listFail error // returned by ListPeers if set
}

func newFakePeers() *fakePeers {
	return &fakePeers{peers: map[string]PeerInfo{}}
}

const fakeCertHeader = "-----BEGIN CERTIFICATE-----\n"

// fakeFingerprint stands in for peer.Fingerprint: stable for a certificate.
func fakeFingerprint(certPEM string) string {
	var sum uint32
	for _, c := range []byte(certPEM) {
		sum = sum*31 + uint32(c)
	}
	return fmt.Sprintf("SHA256:%08x", sum)
}

func (p *fakePeers) InitIdentity(force bool) (string, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("InitIdentity(force=%v)", force))
	if p.certPEM != "" && !force {
		return "", "", fmt.Errorf("%w in /var/lib/autopod/peer (cert.pem exists); replacing it breaks every peer that pinned this host's certificate", peer.ErrIdentityExists)
	}
	p.serial++
	p.certPEM = fmt.Sprintf("%sTUlJQ%d\n-----END CERTIFICATE-----\n", fakeCertHeader, p.serial)
	return p.certPEM, fakeFingerprint(p.certPEM), nil
}

func (p *fakePeers) Identity() (string, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.certPEM == "" {
		return "", "", fmt.Errorf("%w in /var/lib/autopod/peer: run `autopodctl peer init`", peer.ErrNoIdentity)
	}
	return p.certPEM, fakeFingerprint(p.certPEM), nil
}

func (p *fakePeers) AddPeer(name, address string, certPEM []byte) (PeerInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, "AddPeer "+name+" "+address)
	if !strings.HasPrefix(string(certPEM), fakeCertHeader) {
		return PeerInfo{}, fmt.Errorf("add peer %q: certificate of peer %q: no PEM certificate found (want -----BEGIN CERTIFICATE-----)", name, name)
	}
	if !strings.Contains(address, ":") {
		address += ":7781"
	}
	info := PeerInfo{Name: name, Address: address, Fingerprint: fakeFingerprint(string(certPEM))}
	p.peers[name] = info
	return info, nil
}

func (p *fakePeers) RemovePeer(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, "RemovePeer "+name)
	if _, ok := p.peers[name]; !ok {
		return fmt.Errorf("%w %q", peer.ErrUnknownPeer, name)
	}
	delete(p.peers, name)
	return nil
}

func (p *fakePeers) ListPeers() ([]PeerInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.listFail != nil {
		return nil, p.listFail
	}
	return slices.Collect(maps.Values(p.peers)), nil // unsorted: the agent sorts
}

func (p *fakePeers) callLog() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// ---- harness -------------------------------------------------------------------

var testInfo = StatusInfo{
	Version: "1.2.3-test",
	Criu: CriuInfo{
		Path:     "/opt/autopod-criu/sbin/criu",
		Version:  "4.1",
		Features: map[string]bool{"mem_dirty_track": true, "lazy_pages": false},
	},
}

type harness struct {
	bus   *testBus
	mgr   *fakeManager
	peers *fakePeers
	obj   *AgentObject
	cli   *dbus.Conn
	agent dbus.BusObject
}

// newHarness serves an AgentObject over a fake manager, which is also its
// Migrator, and a fake peer registry on a private bus, under the real
// name, and connects a client.
func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessMigration(t, true)
}

// newHarnessMigration is newHarness; without migration it does not call
// SetMigration, as a daemon built without peers would not.
func newHarnessMigration(t *testing.T, migration bool) *harness {
	t.Helper()
	requireRoot(t)
	bus := startTestBus(t)
	srv := bus.connect(t)
	mgr := newFakeManager()
	peers := newFakePeers()
	obj := NewAgentObject(srv, mgr, testInfo, slog.New(slog.DiscardHandler))
	if migration {
		obj.SetMigration(mgr, peers)
	}
	if err := obj.Export(); err != nil {
		t.Fatalf("Export: %v", err)
	}
	t.Cleanup(func() { _ = obj.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := obj.Claim(ctx); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	cli := bus.connect(t)
	return &harness{bus: bus, mgr: mgr, peers: peers, obj: obj, cli: cli, agent: cli.Object(DBusName, DBusPath)}
}

func (h *harness) call(t *testing.T, method string, args ...any) *dbus.Call {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.agent.CallWithContext(ctx, DBusInterface+"."+method, 0, args...)
}

func wantDBusError(t *testing.T, err error, name string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", name)
	}
	if got := dbusErrorName(err); got != name {
		t.Fatalf("got error %q (%v), want %s", got, err, name)
	}
}

// ---- tests without a bus ---------------------------------------------------

func TestDBusErrorMapping(t *testing.T) {
	cases := []struct {
		err  error
		name string
	}{
		{pods.ErrNotFound, DBusErrNotFound},
		{fmt.Errorf("pod x: %w", pods.ErrNotFound), DBusErrNotFound},
		{fmt.Errorf("parse: %w", pods.ErrInvalid), DBusErrInvalid},
		{fmt.Errorf("x: %w", pods.ErrBusy), DBusErrBusy},
		{pods.ErrRunning, DBusErrAlreadyRunning},
		{pods.ErrNotRunning, DBusErrNotRunning},
		{pods.ErrNoCheckpoint, DBusErrNoCheckpoint},
		{fmt.Errorf("%w: StartPod requires root", errAccessDenied), DBusErrAccessDenied},
		{errors.New("criu dump: exit status 1"), DBusErrFailed},
		{context.DeadlineExceeded, DBusErrFailed},
		{fmt.Errorf("pod kv: %w hostb", pods.ErrMigrated), DBusErrMigrated},
		{fmt.Errorf("migrate kv to hostb: %w: no space left", pods.ErrPeerRefused), DBusErrPeerRefused},
		// The peer's reason may wrap a pod error; the refusal is the answer.
		{fmt.Errorf("migrate kv to hostb: %w: %w", pods.ErrPeerRefused, pods.ErrRunning), DBusErrPeerRefused},
		{fmt.Errorf("dial hostb: %w (is this host's certificate pinned there?)", peer.ErrRefused), DBusErrPeerRefused},
		{fmt.Errorf("migrate kv: %w %q", peer.ErrUnknownPeer, "hostz"), DBusErrUnknownPeer},
		{fmt.Errorf("%w in /var/lib/autopod/peer", peer.ErrNoIdentity), DBusErrNoIdentity},
		{fmt.Errorf("%w in /var/lib/autopod/peer", peer.ErrIdentityExists), DBusErrIdentityExists},
		{fmt.Errorf("%w: migration is not configured", errNotSupported), DBusErrNotSupported},
		// Evacuate joins the errors of several pods.
		{errors.Join(fmt.Errorf("a: %w", pods.ErrBusy), fmt.Errorf("b: %w", pods.ErrPeerRefused)), DBusErrPeerRefused},
	}
	for _, c := range cases {
		derr := dbusError(c.err)
		if derr.Name != c.name {
			t.Errorf("dbusError(%v).Name = %s, want %s", c.err, derr.Name, c.name)
		}
		if derr.Error() != c.err.Error() {
			t.Errorf("message %q, want the Go error text %q", derr.Error(), c.err.Error())
		}
	}
}

func TestCheckPodName(t *testing.T) {
	for _, bad := range []string{"", ".", "..", "a/b", "../etc", "x\x00"} {
		if err := checkPodName(bad); !errors.Is(err, pods.ErrInvalid) {
			t.Errorf("checkPodName(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	for _, good := range []string{"web", "web-1", "a.b", "WEB_2", "..x"} {
		if err := checkPodName(good); err != nil {
			t.Errorf("checkPodName(%q) = %v", good, err)
		}
	}
}

// TestIntrospectionComplete checks, without a bus, that every D-Bus method
// has named arguments and that Sender never shows as an argument.
func TestIntrospectionComplete(t *testing.T) {
	obj := NewAgentObject(nil, newFakeManager(), testInfo, nil)
	methods, err := namedMethods(obj)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ // name → in-signature / out-signature
		"ListPods":     "/a(ssisss)",
		"ListPodsJSON": "/s",
		"GetPod":       "s/a{sv}",
		"GetPodJSON":   "s/s",
		"StartPod":     "s/",
		"StopPod":      "s/",
		"Checkpoint":   "sb/st",
		"Restore":      "s/",
		"Status":       "/a{sv}",
		"Migrate":      "ss/ttt",
		"MigrateWith":  "ssa{sv}/ttt",
		"Evacuate":     "s/as",
		"Return":       "/as",
		"PeerInit":     "b/ss",
		"PeerCert":     "/ss",
		"PeerAdd":      "sss/s",
		"PeerRemove":   "s/",
		"ListPeers":    "/a(sss)",

		"UpdateStatusJSON":     "/s",
		"CheckUpdates":         "/a(sss)b",
		"StartUpdate":          "b/s",
		"StartUpdateNow":       "b/s",
		"Cancel":               "/",
		"ExternalInstallBegin": "sa(ss)/b",
		"WaitInstallReady":     "/",
		"ExternalInstallEnd":   "bs/",
	}
	got := map[string]string{}
	for _, m := range methods {
		var in, out string
		for _, a := range m.Args {
			if a.Name == "" {
				t.Errorf("%s has an unnamed argument", m.Name)
			}
			if a.Name == "sender" {
				t.Errorf("%s exposes the sender", m.Name)
			}
			if a.Direction == "in" {
				in += a.Type
			} else {
				out += a.Type
			}
		}
		got[m.Name] = in + "/" + out
	}
	if !maps.Equal(got, want) {
		t.Errorf("methods:\n got %v\nwant %v", got, want)
	}
}

// ---- tests against a real bus ----------------------------------------------

func TestDBusListPods(t *testing.T) {
	h := newHarness(t)
	var list []PodSummary
	if err := h.call(t, "ListPods").Store(&list); err != nil {
		t.Fatal(err)
	}
	want := []PodSummary{
		{Name: "bad", State: "invalid", Error: `line 3: unknown key "comand"`},
		{Name: "db", State: "stopped"},
		{Name: "web", State: "running", Pid: 4242, Address: "10.77.0.10/24", Since: "2025-03-04T05:06:07Z"},
	}
	if !slices.Equal(list, want) {
		t.Errorf("ListPods:\n got %+v\nwant %+v", list, want)
	}

	var js string
	if err := h.call(t, "ListPodsJSON").Store(&js); err != nil {
		t.Fatal(err)
	}
	var decoded []pods.Status
	if err := json.Unmarshal([]byte(js), &decoded); err != nil {
		t.Fatalf("ListPodsJSON is not JSON: %v\n%s", err, js)
	}
	if len(decoded) != 3 || decoded[2].Name != "web" || decoded[2].Restarts != 1 || !decoded[2].Since.Equal(fakeSince) {
		t.Errorf("ListPodsJSON = %+v", decoded)
	}
}

func TestDBusListPodsEmptyJSON(t *testing.T) {
	h := newHarness(t)
	h.mgr.mu.Lock()
	h.mgr.pods = map[string]pods.Status{}
	h.mgr.mu.Unlock()
	var js string
	if err := h.call(t, "ListPodsJSON").Store(&js); err != nil {
		t.Fatal(err)
	}
	if js != "[]" {
		t.Errorf("ListPodsJSON with no pods = %q, want []", js)
	}
}

func TestDBusGetPod(t *testing.T) {
	h := newHarness(t)
	var m map[string]dbus.Variant
	if err := h.call(t, "GetPod", "web").Store(&m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"name": "web", "state": "running", "pid": int32(4242), "address": "10.77.0.10/24",
		"file": "/etc/autopod/pods/web.toml", "since": "2025-03-04T05:06:07Z", "restarts": int32(1),
		"checkpoint": "", "error": "", "home": "", "location": "",
	}
	if len(m) != len(want) {
		t.Errorf("GetPod keys = %v, want %v", slices.Sorted(maps.Keys(m)), slices.Sorted(maps.Keys(want)))
	}
	for k, v := range want {
		if got := m[k].Value(); got != v {
			t.Errorf("GetPod[%s] = %#v, want %#v", k, got, v)
		}
	}

	var js string
	if err := h.call(t, "GetPodJSON", "web").Store(&js); err != nil {
		t.Fatal(err)
	}
	var st pods.Status
	if err := json.Unmarshal([]byte(js), &st); err != nil || st.Name != "web" || st.Pid != 4242 {
		t.Errorf("GetPodJSON = %s (%v)", js, err)
	}

	for _, method := range []string{"GetPod", "GetPodJSON"} {
		err := h.call(t, method, "nope").Err
		wantDBusError(t, err, DBusErrNotFound)
		if !strings.Contains(err.Error(), "no such pod") {
			t.Errorf("%s message = %q, want the Go error text", method, err)
		}
		wantDBusError(t, h.call(t, method, "").Err, DBusErrInvalid)
		wantDBusError(t, h.call(t, method, "../x").Err, DBusErrInvalid)
	}
}

func TestDBusMutators(t *testing.T) {
	h := newHarness(t)
	if err := h.call(t, "StopPod", "web").Err; err != nil {
		t.Fatalf("StopPod: %v", err)
	}
	if err := h.call(t, "StartPod", "db").Err; err != nil {
		t.Fatalf("StartPod: %v", err)
	}
	var dir string
	var size uint64
	if err := h.call(t, "Checkpoint", "db", true).Store(&dir, &size); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if dir != "/var/lib/autopod/checkpoints/db/1" || size != 12<<20 {
		t.Errorf("Checkpoint = %q, %d", dir, size)
	}
	if err := h.call(t, "Restore", "web").Err; err != nil {
		t.Fatalf("Restore: %v", err)
	}
	want := []string{"Stop web", "Start db", "Checkpoint(leave=true) db", "Restore web"}
	if got := h.mgr.callLog(); !slices.Equal(got, want) {
		t.Errorf("manager calls = %q, want %q", got, want)
	}
}

func TestDBusMutatorErrors(t *testing.T) {
	h := newHarness(t)
	cases := []struct {
		err  error
		name string
	}{
		{fmt.Errorf("pod web: %w", pods.ErrBusy), DBusErrBusy},
		{fmt.Errorf("pod web: %w", pods.ErrRunning), DBusErrAlreadyRunning},
		{fmt.Errorf("pod web: %w", pods.ErrNotRunning), DBusErrNotRunning},
		{fmt.Errorf("pod web: %w", pods.ErrNoCheckpoint), DBusErrNoCheckpoint},
		{fmt.Errorf("pod web: %w", pods.ErrInvalid), DBusErrInvalid},
		{errors.New("criu dump failed: Error (criu/cr-dump.c:1): oops"), DBusErrFailed},
	}
	for _, c := range cases {
		h.mgr.setErr("web", c.err)
		for _, call := range []struct {
			method string
			args   []any
		}{
			{"StartPod", []any{"web"}},
			{"StopPod", []any{"web"}},
			{"Checkpoint", []any{"web", false}},
			{"Restore", []any{"web"}},
		} {
			err := h.call(t, call.method, call.args...).Err
			wantDBusError(t, err, c.name)
			if err.Error() != c.err.Error() {
				t.Errorf("%s: message %q, want %q", call.method, err.Error(), c.err.Error())
			}
		}
	}
	h.mgr.setErr("web", nil)
	wantDBusError(t, h.call(t, "StartPod", "ghost").Err, DBusErrNotFound)
	wantDBusError(t, h.call(t, "StartPod", "").Err, DBusErrInvalid)
}

// TestDBusCheckpointDoesNotBlock holds a Checkpoint inside the manager and
// checks that other calls, including an authorised one, are served.
func TestDBusCheckpointDoesNotBlock(t *testing.T) {
	h := newHarness(t)
	gate, started := make(chan struct{}), make(chan struct{})
	h.mgr.mu.Lock()
	h.mgr.cpGate, h.mgr.cpStarted = gate, started
	h.mgr.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cpCall := h.agent.GoWithContext(ctx, DBusInterface+".Checkpoint", 0, make(chan *dbus.Call, 1), "web", false)
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("Checkpoint never reached the manager")
	}

	var list []PodSummary
	if err := h.call(t, "ListPods").Store(&list); err != nil {
		t.Fatalf("ListPods during Checkpoint: %v", err)
	}
	if err := h.call(t, "StartPod", "db").Err; err != nil {
		t.Fatalf("StartPod during Checkpoint: %v", err)
	}
	select {
	case <-cpCall.Done:
		t.Fatal("Checkpoint returned before it was released")
	default:
	}

	close(gate)
	select {
	case c := <-cpCall.Done:
		var dir string
		var size uint64
		if err := c.Store(&dir, &size); err != nil || dir == "" {
			t.Fatalf("Checkpoint = %q, %v", dir, err)
		}
	case <-ctx.Done():
		t.Fatal("Checkpoint did not finish")
	}
}

func TestDBusStatus(t *testing.T) {
	h := newHarness(t)
	var m map[string]dbus.Variant
	if err := h.call(t, "Status").Store(&m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"version": "1.2.3-test", "criu_path": "/opt/autopod-criu/sbin/criu",
		"criu_version": "4.1", "criu_error": "", "pods": uint32(3),
	}
	for k, v := range want {
		if got := m[k].Value(); got != v {
			t.Errorf("Status[%s] = %#v, want %#v", k, got, v)
		}
	}
	if sig := m["criu_features"].Signature().String(); sig != "a{sb}" {
		t.Errorf("criu_features has type %s, want a{sb}", sig)
	}
	features, _ := m["criu_features"].Value().(map[string]bool)
	if !maps.Equal(features, testInfo.Criu.Features) {
		t.Errorf("criu_features = %v", m["criu_features"])
	}
	if sig := m["migration_strategies"].Signature().String(); sig != "a{ss}" {
		t.Errorf("migration_strategies has type %s, want a{ss}", sig)
	}
	strategies, _ := m["migration_strategies"].Value().(map[string]string)
	if len(strategies) != 3 || strategies[pods.StrategyStopAndCopy] != "" {
		t.Errorf("migration_strategies = %v", strategies)
	}
	if len(m) != 7 {
		t.Errorf("Status keys = %v", slices.Sorted(maps.Keys(m)))
	}
}

func TestDBusProperties(t *testing.T) {
	h := newHarness(t)
	for name, want := range map[string]any{"Version": "1.2.3-test", "CriuVersion": "4.1", "PodCount": uint32(3)} {
		v, err := h.agent.GetProperty(DBusInterface + "." + name)
		if err != nil {
			t.Fatalf("Get %s: %v", name, err)
		}
		if v.Value() != want {
			t.Errorf("%s = %#v, want %#v", name, v.Value(), want)
		}
	}
	var all map[string]dbus.Variant
	if err := h.agent.Call("org.freedesktop.DBus.Properties.GetAll", 0, DBusInterface).Store(&all); err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(all)); !slices.Equal(got, []string{"CriuVersion", "NextWindow", "PendingUpdates", "PodCount", "RebootRequired", "State", "Version"}) {
		t.Errorf("GetAll keys = %v", got)
	}
	err := h.agent.SetProperty(DBusInterface+".PodCount", dbus.MakeVariant(uint32(9)))
	wantDBusError(t, err, "org.freedesktop.DBus.Properties.Error.ReadOnly")
}

// TestDBusSignals checks PodStateChanged for every event, in order, and
// PropertiesChanged when the number of pods changes.
func TestDBusSignals(t *testing.T) {
	h := newHarness(t)
	if err := h.cli.AddMatchSignal(dbus.WithMatchObjectPath(DBusPath)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 32)
	h.cli.Signal(ch)
	next := func() *dbus.Signal {
		t.Helper()
		for {
			select {
			case s := <-ch:
				if s.Path == DBusPath {
					return s
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no signal within 10s")
				return nil
			}
		}
	}

	if err := h.call(t, "StartPod", "db").Err; err != nil {
		t.Fatal(err)
	}
	for _, state := range []string{"starting", "running"} {
		s := next()
		if s.Name != DBusInterface+".PodStateChanged" {
			t.Fatalf("signal %s, want PodStateChanged", s.Name)
		}
		if want := []any{"db", state, ""}; !slices.Equal(s.Body, want) {
			t.Errorf("PodStateChanged%v, want %v", s.Body, want)
		}
	}

	h.mgr.emit(pods.Event{Name: "web", State: pods.StateFailed, Error: "exit status 3"})
	if s := next(); !slices.Equal(s.Body, []any{"web", "failed", "exit status 3"}) {
		t.Errorf("PodStateChanged%v", s.Body)
	}

	// A new pod file: the manager reports it, PodCount follows.
	h.mgr.addPod(pods.Status{Name: "cache", State: pods.StateStopped})
	h.mgr.emit(pods.Event{Name: "cache", State: pods.StateStopped})
	// The loop may still be refreshing PodCount after the previous event,
	// so PropertiesChanged can come before or after this PodStateChanged.
	byName := map[string]*dbus.Signal{}
	for range 2 {
		s := next()
		byName[s.Name] = s
	}
	if s := byName[DBusInterface+".PodStateChanged"]; s == nil || !slices.Equal(s.Body, []any{"cache", "stopped", ""}) {
		t.Errorf("PodStateChanged for the new pod: %v", s)
	}
	s := byName["org.freedesktop.DBus.Properties.PropertiesChanged"]
	if s == nil {
		t.Fatalf("no PropertiesChanged; got %v", byName)
	}
	changed, _ := s.Body[1].(map[string]dbus.Variant)
	if s.Body[0] != DBusInterface || changed["PodCount"].Value() != uint32(4) {
		t.Errorf("PropertiesChanged%v", s.Body)
	}
	v, err := h.agent.GetProperty(DBusInterface + ".PodCount")
	if err != nil || v.Value() != uint32(4) {
		t.Errorf("PodCount = %v, %v; want 4", v, err)
	}
}

// TestDBusIntrospectBusctl asks the real busctl what the object offers.
func TestDBusIntrospectBusctl(t *testing.T) {
	h := newHarness(t)
	out, stderr, err := h.bus.busctl(t, false, "introspect", DBusName, string(DBusPath), DBusInterface)
	if err != nil {
		t.Fatalf("busctl introspect: %v\n%s", err, stderr)
	}
	// Lines look like ".Checkpoint  method  sb  st  -".
	members := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && strings.HasPrefix(f[0], ".") {
			members[f[0][1:]] = f[1:]
		}
	}
	want := map[string][2]string{
		"ListPods":          {"method", "-"},
		"ListPodsJSON":      {"method", "-"},
		"GetPod":            {"method", "s"},
		"GetPodJSON":        {"method", "s"},
		"StartPod":          {"method", "s"},
		"StopPod":           {"method", "s"},
		"Checkpoint":        {"method", "sb"},
		"Restore":           {"method", "s"},
		"Status":            {"method", "-"},
		"Migrate":           {"method", "ss"},
		"MigrateWith":       {"method", "ssa{sv}"},
		"Evacuate":          {"method", "s"},
		"Return":            {"method", "-"},
		"PeerInit":          {"method", "b"},
		"PeerCert":          {"method", "-"},
		"PeerAdd":           {"method", "sss"},
		"PeerRemove":        {"method", "s"},
		"ListPeers":         {"method", "-"},
		"Version":           {"property", "s"},
		"CriuVersion":       {"property", "s"},
		"PodCount":          {"property", "u"},
		"PodStateChanged":   {"signal", "sss"},
		"MigrationProgress": {"signal", "ssst"},

		"UpdateStatusJSON":     {"method", "-"},
		"CheckUpdates":         {"method", "-"},
		"StartUpdate":          {"method", "b"},
		"StartUpdateNow":       {"method", "b"},
		"Cancel":               {"method", "-"},
		"ExternalInstallBegin": {"method", "sa(ss)"},
		"WaitInstallReady":     {"method", "-"},
		"ExternalInstallEnd":   {"method", "bs"},
		"State":                {"property", "s"},
		"PendingUpdates":       {"property", "a(sss)"},
		"RebootRequired":       {"property", "b"},
		"NextWindow":           {"property", "(tt)"},
		"UpdateStateChanged":   {"signal", "sss"},
	}
	for name, w := range want {
		f, ok := members[name]
		if !ok {
			t.Errorf("busctl introspect does not list %s:\n%s", name, out)
			continue
		}
		if f[0] != w[0] || f[1] != w[1] {
			t.Errorf("%s: busctl shows %v, want %s with signature %s", name, f, w[0], w[1])
		}
	}
	if len(members) != len(want) {
		t.Errorf("busctl lists %d members, want %d:\n%s", len(members), len(want), out)
	}
	if !strings.Contains(out, "1.2.3-test") {
		t.Errorf("busctl introspect does not show the Version value:\n%s", out)
	}

	// Argument names are only in the XML.
	xmlOut, stderr, err := h.bus.busctl(t, false, "introspect", "--xml-interface", DBusName, string(DBusPath))
	if err != nil {
		t.Fatalf("busctl introspect --xml-interface: %v\n%s", err, stderr)
	}
	var node introspect.Node
	if err := xml.Unmarshal([]byte(xmlOut), &node); err != nil {
		t.Fatalf("introspection XML: %v\n%s", err, xmlOut)
	}
	names := methodArgNames()
	for _, iface := range node.Interfaces {
		if iface.Name != DBusInterface {
			continue
		}
		for _, m := range iface.Methods {
			var got []string
			for _, a := range m.Args {
				got = append(got, a.Name)
			}
			if !slices.Equal(got, names[m.Name]) {
				t.Errorf("%s arguments %q, want %q", m.Name, got, names[m.Name])
			}
		}
		sigArgs := map[string]string{}
		for _, sig := range iface.Signals {
			var args []string
			for _, a := range sig.Args {
				args = append(args, a.Type+" "+a.Name)
			}
			sigArgs[sig.Name] = strings.Join(args, ", ")
		}
		wantSigs := map[string]string{
			"PodStateChanged":    "s name, s state, s error",
			"MigrationProgress":  "s pod, s peer, s phase, t bytes",
			"UpdateStateChanged": "s from, s to, s reason",
		}
		if !maps.Equal(sigArgs, wantSigs) {
			t.Errorf("signals %v, want %v", sigArgs, wantSigs)
		}
		return
	}
	t.Errorf("no %s interface in:\n%s", DBusInterface, xmlOut)
}

// TestDBusNonRootCaller checks that the policy lets anyone call the agent
// and that the agent itself refuses mutators to non-root callers.
func TestDBusNonRootCaller(t *testing.T) {
	h := newHarness(t)
	req := func(method string, args ...any) helperRequest {
		return helperRequest{Dest: DBusName, Path: string(DBusPath), Method: DBusInterface + "." + method, Args: args}
	}
	// PeerCert is open to all; it needs an identity to answer.
	if _, _, err := h.peers.InitIdentity(false); err != nil {
		t.Fatal(err)
	}
	h.peers.calls = nil
	mutators := []helperRequest{
		req("StartPod", "db"),
		req("StopPod", "web"),
		req("Checkpoint", "web", true),
		req("Restore", "web"),
		req("Migrate", "web", "hostb"),
		req("Evacuate", "hostb"),
		req("Return"),
		req("PeerInit", true),
		req("PeerAdd", "hostb", "10.0.0.2", fakeCertHeader+"x\n-----END CERTIFICATE-----\n"),
		req("PeerRemove", "hostb"),
	}
	readers := []helperRequest{
		req("ListPods"),
		req("ListPodsJSON"),
		req("Status"),
		req("GetPod", "web"),
		req("GetPodJSON", "web"),
		req("PeerCert"),
		req("ListPeers"),
		{Dest: DBusName, Path: string(DBusPath), Method: "org.freedesktop.DBus.Properties.Get", Args: []any{DBusInterface, "PodCount"}},
		{Dest: DBusName, Path: string(DBusPath), Method: "org.freedesktop.DBus.Introspectable.Introspect"},
		{Dest: DBusName, Path: string(DBusPath), Method: "org.freedesktop.DBus.Peer.Ping"},
	}
	results := h.bus.callAsNobody(t, append(slices.Clone(mutators), readers...)...)

	for i, m := range mutators {
		res := results[i]
		method := strings.TrimPrefix(m.Method, DBusInterface+".")
		if res.ErrorName != DBusErrAccessDenied {
			t.Errorf("%s as nobody: %+v, want %s", method, res, DBusErrAccessDenied)
		}
		if want := fmt.Sprintf("%s requires root (caller uid %d)", method, nobodyUID); !strings.Contains(res.Error, want) {
			t.Errorf("%s as nobody: message %q, want it to contain %q", method, res.Error, want)
		}
	}
	if got := h.mgr.callLog(); len(got) != 0 {
		t.Errorf("manager was called for a non-root caller: %q", got)
	}
	if got := h.peers.callLog(); len(got) != 0 {
		t.Errorf("peer registry was changed for a non-root caller: %q", got)
	}
	for i, r := range readers {
		if res := results[len(mutators)+i]; res.ErrorName != "" || res.Error != "" {
			t.Errorf("%s as nobody: %+v", r.Method, res)
		}
	}

	// The same through busctl, as a user would.
	out, stderr, err := h.bus.busctl(t, true, "call", DBusName, string(DBusPath), DBusInterface, "ListPods")
	if err != nil || !strings.HasPrefix(out, "a(ssisss) 3 ") {
		t.Errorf("busctl ListPods as nobody: %v\nstdout: %s\nstderr: %s", err, out, stderr)
	}
	_, stderr, err = h.bus.busctl(t, true, "call", DBusName, string(DBusPath), DBusInterface, "StopPod", "s", "web")
	if err == nil || !strings.Contains(stderr, "access denied: StopPod requires root") {
		t.Errorf("busctl StopPod as nobody: %v\nstderr: %s", err, stderr)
	}
}

// TestDBusPolicyLoaded checks that the test bus enforces
// units/org.autopod.Agent1.conf: a non-root process cannot own the name,
// and (TestDBusNonRootCaller) anyone can send to it, which the default
// system-bus policy alone would deny.
func TestDBusPolicyLoaded(t *testing.T) {
	requireRoot(t)
	bus := startTestBus(t)
	results := bus.callAsNobody(t,
		helperRequest{
			Dest: "org.freedesktop.DBus", Path: "/org/freedesktop/DBus",
			Method: "org.freedesktop.DBus.RequestName", Args: []any{DBusName, float64(dbus.NameFlagDoNotQueue)},
		},
		// Another name nobody may own: the default policy, for contrast.
		helperRequest{
			Dest: "org.freedesktop.DBus", Path: "/org/freedesktop/DBus",
			Method: "org.freedesktop.DBus.RequestName", Args: []any{"org.example.Other", float64(dbus.NameFlagDoNotQueue)},
		},
		// Without an owner nobody's call fails for lack of a recipient,
		// not for lack of permission.
		helperRequest{Dest: DBusName, Path: string(DBusPath), Method: DBusInterface + ".ListPods"},
	)
	for i, want := range []string{
		"org.freedesktop.DBus.Error.AccessDenied",
		"org.freedesktop.DBus.Error.AccessDenied",
		"org.freedesktop.DBus.Error.ServiceUnknown",
	} {
		if results[i].ErrorName != want {
			t.Errorf("call %d as nobody: %+v, want %s", i, results[i], want)
		}
	}
	if !strings.Contains(results[0].Error, DBusName) {
		t.Errorf("RequestName refusal does not name %s: %q", DBusName, results[0].Error)
	}

	// Root may own it: the policy's <policy user="root"> rule. Another
	// root-owned name stays denied by the default policy, which shows
	// that the allow comes from our file.
	root := bus.connect(t)
	reply, err := root.RequestName(DBusName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Errorf("RequestName as root = %v, %v", reply, err)
	}
	if _, err := root.RequestName("org.example.Other", dbus.NameFlagDoNotQueue); dbusErrorName(err) != "org.freedesktop.DBus.Error.AccessDenied" {
		t.Errorf("RequestName(org.example.Other) as root = %v, want AccessDenied from the default policy", err)
	}
}

func TestDBusClaimNameTaken(t *testing.T) {
	h := newHarness(t)
	second := NewAgentObject(h.bus.connect(t), newFakeManager(), testInfo, nil)
	if err := second.Export(); err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := second.Claim(ctx)
	if !errors.Is(err, ErrBusNameTaken) {
		t.Fatalf("second Claim = %v, want ErrBusNameTaken", err)
	}
	if !strings.Contains(err.Error(), "pid ") {
		t.Errorf("error does not name the owner's pid: %v", err)
	}
}

func TestDBusClaimBeforeExport(t *testing.T) {
	obj := NewAgentObject(nil, newFakeManager(), testInfo, nil)
	if err := obj.Claim(context.Background()); err == nil {
		t.Fatal("Claim before Export succeeded")
	}
}

// TestDBusClose checks that a closed object is gone from the bus and that
// events after Close are dropped rather than emitted or queued.
func TestDBusClose(t *testing.T) {
	h := newHarness(t)
	if err := h.obj.Close(); err != nil {
		t.Fatal(err)
	}
	// godbus answers for any path (it serves a default Introspectable), so
	// the object's absence shows as a missing interface.
	wantDBusError(t, h.call(t, "ListPods").Err, "org.freedesktop.DBus.Error.UnknownInterface")
	h.mgr.emit(pods.Event{Name: "web", State: pods.StateStopped})
	h.obj.mu.Lock()
	queued := len(h.obj.queue)
	h.obj.mu.Unlock()
	if queued != 0 {
		t.Errorf("%d events queued after Close", queued)
	}
	if err := h.obj.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// ---- migration and peers ------------------------------------------------------

// progressSignal is one MigrationProgress as a listener saw it.
type progressSignal struct {
	Pod, Peer, Phase string
	Bytes            uint64
	seq              dbus.Sequence
}

// watchProgress subscribes the harness's client to MigrationProgress.
func (h *harness) watchProgress(t *testing.T) chan *dbus.Signal {
	t.Helper()
	if err := h.cli.AddMatchSignal(dbus.WithMatchObjectPath(DBusPath), dbus.WithMatchInterface(DBusInterface),
		dbus.WithMatchMember("MigrationProgress")); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 256)
	h.cli.Signal(ch)
	return ch
}

// readProgress reads MigrationProgress signals until until(all so far)
// holds, and checks that each arrived before the reply whose sequence is
// reply: a client that subscribed first sees every phase before the result.
func readProgress(t *testing.T, ch chan *dbus.Signal, reply dbus.Sequence, until func([]progressSignal) bool) []progressSignal {
	t.Helper()
	var got []progressSignal
	timeout := time.After(10 * time.Second)
	for !until(got) {
		select {
		case s := <-ch:
			if s.Name != DBusInterface+".MigrationProgress" {
				continue
			}
			var p progressSignal
			if err := dbus.Store(s.Body, &p.Pod, &p.Peer, &p.Phase, &p.Bytes); err != nil {
				t.Fatalf("MigrationProgress%v: %v", s.Body, err)
			}
			p.seq = s.Sequence
			if reply != dbus.NoSequence && p.seq > reply {
				t.Errorf("MigrationProgress%v arrived after the reply", s.Body)
			}
			got = append(got, p)
		case <-timeout:
			t.Fatalf("MigrationProgress signals so far: %+v; want more", got)
		}
	}
	return got
}

// phasesOf returns pod's phases without consecutive repeats, and checks
// that its byte counts never go down.
func phasesOf(t *testing.T, sigs []progressSignal, pod string) []string {
	t.Helper()
	var phases []string
	var last uint64
	for _, s := range sigs {
		if s.Pod != pod {
			continue
		}
		if s.Bytes < last {
			t.Errorf("%s: bytes went down from %d to %d at %s", pod, last, s.Bytes, s.Phase)
		}
		last = s.Bytes
		if len(phases) == 0 || phases[len(phases)-1] != s.Phase {
			phases = append(phases, s.Phase)
		}
	}
	return phases
}

// doneFor is an until for readProgress: every pod in pods reached phase.
func doneFor(phase string, podNames ...string) func([]progressSignal) bool {
	return func(sigs []progressSignal) bool {
		for _, n := range podNames {
			if !slices.ContainsFunc(sigs, func(s progressSignal) bool { return s.Pod == n && s.Phase == phase }) {
				return false
			}
		}
		return true
	}
}

func TestDBusMigrate(t *testing.T) {
	h := newHarness(t)
	ch := h.watchProgress(t)

	call := h.call(t, "Migrate", "web", "hostb")
	var frozen, total, size uint64
	if err := call.Store(&frozen, &total, &size); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if frozen != 812000 || total != 1900000 || size != 101<<20 {
		t.Errorf("Migrate = frozen %d µs, total %d µs, %d bytes; want 812000, 1900000, %d", frozen, total, size, 101<<20)
	}
	sigs := readProgress(t, ch, call.ResponseSequence, doneFor(pods.PhaseDone, "web"))
	for _, s := range sigs {
		if s.Pod != "web" || s.Peer != "hostb" {
			t.Errorf("MigrationProgress %+v, want pod web, peer hostb", s)
		}
	}
	if got := phasesOf(t, sigs, "web"); !slices.Equal(got, wantPhases()) {
		t.Errorf("phases %q, want %q", got, wantPhases())
	}
	if last := sigs[len(sigs)-1]; last.Phase != pods.PhaseDone || last.Bytes != 101<<20 {
		t.Errorf("last MigrationProgress %+v, want done with %d bytes", last, 101<<20)
	}
	// Repeated reports within a phase cost at most one signal each.
	if len(sigs) > len(fakePhases) {
		t.Errorf("%d signals for %d reports", len(sigs), len(fakePhases))
	}

	st, err := h.mgr.Get(context.Background(), "web")
	if err != nil || st.State != pods.StateMigrated || st.Location != "hostb" {
		t.Errorf("web after Migrate: %+v, %v", st, err)
	}
	var m map[string]dbus.Variant
	if err := h.call(t, "GetPod", "web").Store(&m); err != nil || m["state"].Value() != "migrated" || m["location"].Value() != "hostb" {
		t.Errorf("GetPod(web) after Migrate = %v, %v", m, err)
	}
	if got, want := h.mgr.callLog(), []string{"Migrate web hostb"}; !slices.Equal(got, want) {
		t.Errorf("manager calls %q, want %q", got, want)
	}
}

func TestDBusMigrateErrors(t *testing.T) {
	h := newHarness(t)
	cases := []struct {
		pod, peer, errName, msg string
	}{
		{"web", "ghost", DBusErrUnknownPeer, `migrate web: dial: unknown peer "ghost"`},
		{"web", "refuser", DBusErrPeerRefused, "migrate web to refuser: peer refused the migration: criu 3.19 is older than this host's 4.1"},
		{"db", "hostb", DBusErrNotRunning, "pod db: pod is not running"},
		{"nope", "hostb", DBusErrNotFound, `pod "nope": no such pod`},
		{"", "hostb", DBusErrInvalid, "invalid pod definition: pod name is empty"},
		{"web", "", DBusErrInvalid, "invalid argument: peer name is empty"},
		{"../web", "hostb", DBusErrInvalid, `pod name "../web" is not a file name`},
	}
	for _, c := range cases {
		err := h.call(t, "Migrate", c.pod, c.peer).Err
		wantDBusError(t, err, c.errName)
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Migrate(%q, %q): message %q, want it to contain %q", c.pod, c.peer, err.Error(), c.msg)
		}
	}
	h.mgr.setErr("web", fmt.Errorf("pod web: %w", pods.ErrBusy))
	wantDBusError(t, h.call(t, "Migrate", "web", "hostb").Err, DBusErrBusy)

	// A pod that already runs on a peer.
	h.mgr.setErr("web", nil)
	h.mgr.addPod(pods.Status{Name: "away", State: pods.StateMigrated, Location: "hostc"})
	err := h.call(t, "Migrate", "away", "hostb").Err
	wantDBusError(t, err, DBusErrMigrated)
	if !strings.Contains(err.Error(), "pod runs on a peer hostc") {
		t.Errorf("message %q", err)
	}
}

func TestDBusMigrateWith(t *testing.T) {
	h := newHarness(t)
	opts := map[string]dbus.Variant{"strategy": dbus.MakeVariant("stop-and-copy")}
	var frozen, total, size uint64
	if err := h.call(t, "MigrateWith", "web", "hostb", opts).Store(&frozen, &total, &size); err != nil {
		t.Fatalf("MigrateWith: %v", err)
	}
	if frozen != 812000 || size != 101<<20 {
		t.Errorf("MigrateWith = frozen %d µs, %d bytes", frozen, size)
	}
	if got, want := h.mgr.callLog(), []string{"MigrateWith web hostb stop-and-copy", "Migrate web hostb"}; !slices.Equal(got, want) {
		t.Errorf("manager calls %q, want %q", got, want)
	}
	// No options: the configured strategy.
	h.mgr.addPod(pods.Status{Name: "kv", State: pods.StateRunning, Pid: 7})
	if err := h.call(t, "MigrateWith", "kv", "hostb", map[string]dbus.Variant{}).Err; err != nil {
		t.Fatalf("MigrateWith without options: %v", err)
	}
	if log := h.mgr.callLog(); !slices.Contains(log, "MigrateWith kv hostb ") {
		t.Errorf("manager calls %q", log)
	}

	cases := []struct {
		name    string
		opts    map[string]dbus.Variant
		errName string
		msg     string
	}{
		{"unknown strategy", map[string]dbus.Variant{"strategy": dbus.MakeVariant("teleport")}, DBusErrInvalid, `unknown migration strategy "teleport"`},
		{"strategy not a string", map[string]dbus.Variant{"strategy": dbus.MakeVariant(uint32(1))}, DBusErrInvalid, "option strategy must be a string"},
		{"unknown option", map[string]dbus.Variant{"stratgey": dbus.MakeVariant("pre-copy")}, DBusErrInvalid, `unknown migration option "stratgey"`},
		{"strategy this host cannot run", map[string]dbus.Variant{"strategy": dbus.MakeVariant("pre-copy")}, DBusErrStrategy, "migration strategy pre-copy cannot run on this host: no dirty tracking"},
	}
	for _, c := range cases {
		err := h.call(t, "MigrateWith", "web", "hostb", c.opts).Err
		wantDBusError(t, err, c.errName)
		if err != nil && !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: message %q, want it to contain %q", c.name, err.Error(), c.msg)
		}
	}
}

// TestDBusMigrateDoesNotBlock holds a migration after its first phase:
// its progress is already on the bus, and other calls are served.
func TestDBusMigrateDoesNotBlock(t *testing.T) {
	h := newHarness(t)
	gate, started := make(chan struct{}), make(chan struct{})
	h.mgr.mu.Lock()
	h.mgr.migrateGate, h.mgr.migrateStarted = gate, started
	h.mgr.mu.Unlock()
	ch := h.watchProgress(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mig := h.agent.GoWithContext(ctx, DBusInterface+".Migrate", 0, make(chan *dbus.Call, 1), "web", "hostb")
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("Migrate never reached the Migrator")
	}
	first := readProgress(t, ch, dbus.NoSequence, doneFor(pods.PhaseOffer, "web"))
	if first[0].Phase != pods.PhaseOffer {
		t.Errorf("first signal %+v", first[0])
	}
	if err := h.call(t, "StopPod", "web").Err; err != nil { // the fake does not lock pods
		t.Fatalf("StopPod during Migrate: %v", err)
	}
	var peers []PeerSummary
	if err := h.call(t, "ListPeers").Store(&peers); err != nil {
		t.Fatalf("ListPeers during Migrate: %v", err)
	}
	select {
	case <-mig.Done:
		t.Fatal("Migrate returned before it was released")
	default:
	}
	close(gate)
	select {
	case c := <-mig.Done:
		if c.Err != nil {
			t.Fatalf("Migrate: %v", c.Err)
		}
		rest := readProgress(t, ch, c.ResponseSequence, doneFor(pods.PhaseDone, "web"))
		if got := phasesOf(t, append(first, rest...), "web"); !slices.Equal(got, wantPhases()) {
			t.Errorf("phases %q, want %q", got, wantPhases())
		}
	case <-ctx.Done():
		t.Fatal("Migrate did not finish")
	}
}

func TestDBusEvacuateAndReturn(t *testing.T) {
	h := newHarness(t)
	h.mgr.addPod(pods.Status{Name: "kv", State: pods.StateRunning, Pid: 99})
	ch := h.watchProgress(t)

	call := h.call(t, "Evacuate", "hostb")
	var moved []string
	if err := call.Store(&moved); err != nil {
		t.Fatalf("Evacuate: %v", err)
	}
	if !slices.Equal(moved, []string{"kv", "web"}) {
		t.Errorf("Evacuate = %q, want [kv web]", moved)
	}
	sigs := readProgress(t, ch, call.ResponseSequence, doneFor(pods.PhaseDone, "kv", "web"))
	for _, pod := range []string{"kv", "web"} {
		if got := phasesOf(t, sigs, pod); !slices.Equal(got, wantPhases()) {
			t.Errorf("%s phases %q", pod, got)
		}
	}

	// Nothing left to move: an empty array, not an error.
	if err := h.call(t, "Evacuate", "hostb").Store(&moved); err != nil || moved == nil || len(moved) != 0 {
		t.Errorf("second Evacuate = %q, %v; want []", moved, err)
	}

	call = h.call(t, "Return")
	var back []string
	if err := call.Store(&back); err != nil {
		t.Fatalf("Return: %v", err)
	}
	if !slices.Equal(back, []string{"kv", "web"}) {
		t.Errorf("Return = %q, want [kv web] (sorted)", back)
	}
	sigs = readProgress(t, ch, call.ResponseSequence, doneFor(pods.PhaseDone, "kv", "web"))
	for _, s := range sigs {
		if s.Peer != "hostb" {
			t.Errorf("Return progress %+v, want peer hostb", s)
		}
	}
	if err := h.call(t, "Return").Store(&back); err != nil || back == nil || len(back) != 0 {
		t.Errorf("second Return = %q, %v; want []", back, err)
	}
	wantDBusError(t, h.call(t, "Evacuate", "").Err, DBusErrInvalid)
	wantDBusError(t, h.call(t, "Evacuate", "ghost").Err, DBusErrUnknownPeer)
}

// TestDBusEvacuatePartial: the pods that moved are named in the error of
// a partly failed Evacuate or Return, whose name is that of the failure.
func TestDBusEvacuatePartial(t *testing.T) {
	h := newHarness(t)
	h.mgr.addPod(pods.Status{Name: "kv", State: pods.StateRunning, Pid: 99})
	h.mgr.setErr("kv", fmt.Errorf("pod kv: %w", pods.ErrBusy))
	err := h.call(t, "Evacuate", "hostb").Err
	wantDBusError(t, err, DBusErrBusy)
	if want := "evacuate to hostb (migrated: web): pod kv: pod is busy"; !strings.Contains(err.Error(), want) {
		t.Errorf("message %q, want it to contain %q", err, want)
	}

	h.mgr.setErr("kv", nil)
	h.mgr.addPod(pods.Status{Name: "kv", State: pods.StateMigrated, Location: "hostb"})
	h.mgr.setErr("web", errors.New("connection reset by peer"))
	err = h.call(t, "Return").Err
	wantDBusError(t, err, DBusErrFailed)
	if want := "return (returned: kv): return web from hostb: connection reset by peer"; err == nil || err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

func TestDBusPeers(t *testing.T) {
	h := newHarness(t)
	err := h.call(t, "PeerCert").Err
	wantDBusError(t, err, DBusErrNoIdentity)
	if !strings.Contains(err.Error(), "autopodctl peer init") {
		t.Errorf("PeerCert without identity: %q", err)
	}

	var cert, fp string
	if err := h.call(t, "PeerInit", false).Store(&cert, &fp); err != nil {
		t.Fatalf("PeerInit: %v", err)
	}
	if !strings.HasPrefix(cert, "-----BEGIN CERTIFICATE-----\n") || fp != fakeFingerprint(cert) {
		t.Errorf("PeerInit = %q, %q", cert, fp)
	}
	wantDBusError(t, h.call(t, "PeerInit", false).Err, DBusErrIdentityExists)
	var cert2, fp2 string
	if err := h.call(t, "PeerInit", true).Store(&cert2, &fp2); err != nil || fp2 == fp {
		t.Errorf("PeerInit(force) = %q, %v; want a new identity", fp2, err)
	}
	var cert3, fp3 string
	if err := h.call(t, "PeerCert").Store(&cert3, &fp3); err != nil || cert3 != cert2 || fp3 != fp2 {
		t.Errorf("PeerCert = %q, %q, %v; want the forced identity", cert3, fp3, err)
	}

	var list []PeerSummary
	if err := h.call(t, "ListPeers").Store(&list); err != nil || list == nil || len(list) != 0 {
		t.Errorf("ListPeers with none = %v, %v", list, err)
	}
	certB := fakeCertHeader + "QkI=\n-----END CERTIFICATE-----\n"
	certA := fakeCertHeader + "QUE=\n-----END CERTIFICATE-----\n"
	var fpB string
	if err := h.call(t, "PeerAdd", "hostb", "10.0.0.2", certB).Store(&fpB); err != nil || fpB != fakeFingerprint(certB) {
		t.Errorf("PeerAdd hostb = %q, %v", fpB, err)
	}
	if err := h.call(t, "PeerAdd", "hosta", "[fd00::1]:7000", certA).Err; err != nil {
		t.Errorf("PeerAdd hosta: %v", err)
	}
	if err := h.call(t, "ListPeers").Store(&list); err != nil {
		t.Fatal(err)
	}
	want := []PeerSummary{
		{Name: "hosta", Address: "[fd00::1]:7000", Fingerprint: fakeFingerprint(certA)},
		{Name: "hostb", Address: "10.0.0.2:7781", Fingerprint: fpB},
	}
	if !slices.Equal(list, want) {
		t.Errorf("ListPeers:\n got %+v\nwant %+v", list, want)
	}
	out, stderr, err := h.bus.busctl(t, true, "call", DBusName, string(DBusPath), DBusInterface, "ListPeers")
	if err != nil || !strings.HasPrefix(out, `a(sss) 2 "hosta" "[fd00::1]:7000" `) {
		t.Errorf("busctl ListPeers as nobody: %v\n%s%s", err, out, stderr)
	}

	// Arguments the agent checks, and the registry's own refusals.
	for _, c := range []struct {
		args    []any
		errName string
	}{
		{[]any{"", "10.0.0.3", certA}, DBusErrInvalid},
		{[]any{"hostc", "", certA}, DBusErrInvalid},
		{[]any{"hostc", "10.0.0.3", " \n"}, DBusErrInvalid},
		{[]any{"hostc", "10.0.0.3", strings.Repeat("A", maxCertPEM+1)}, DBusErrInvalid},
		{[]any{"hostc", "10.0.0.3", "not a certificate"}, DBusErrFailed},
	} {
		wantDBusError(t, h.call(t, "PeerAdd", c.args...).Err, c.errName)
	}

	if err := h.call(t, "PeerRemove", "hostb").Err; err != nil {
		t.Errorf("PeerRemove: %v", err)
	}
	err = h.call(t, "PeerRemove", "hostb").Err
	wantDBusError(t, err, DBusErrUnknownPeer)
	if err.Error() != `unknown peer "hostb"` {
		t.Errorf("message %q", err)
	}
	wantDBusError(t, h.call(t, "PeerRemove", "").Err, DBusErrInvalid)
	if err := h.call(t, "ListPeers").Store(&list); err != nil || len(list) != 1 || list[0].Name != "hosta" {
		t.Errorf("ListPeers after remove = %+v, %v", list, err)
	}

	h.peers.mu.Lock()
	h.peers.listFail = errors.New("peer store /var/lib/autopod/peers.json: unexpected end of JSON input")
	h.peers.mu.Unlock()
	wantDBusError(t, h.call(t, "ListPeers").Err, DBusErrFailed)
}

// TestDBusMigrationNotSupported: without SetMigration the methods exist
// (introspection does not depend on configuration) and say why they fail.
func TestDBusMigrationNotSupported(t *testing.T) {
	h := newHarnessMigration(t, false)
	for _, c := range []struct {
		method string
		args   []any
		msg    string
	}{
		{"Migrate", []any{"web", "hostb"}, "migration is not configured"},
		{"Evacuate", []any{"hostb"}, "migration is not configured"},
		{"Return", nil, "migration is not configured"},
		{"PeerInit", []any{false}, "peers are not configured"},
		{"PeerCert", nil, "peers are not configured"},
		{"PeerAdd", []any{"hostb", "10.0.0.2", fakeCertHeader}, "peers are not configured"},
		{"PeerRemove", []any{"hostb"}, "peers are not configured"},
		{"ListPeers", nil, "peers are not configured"},
	} {
		err := h.call(t, c.method, c.args...).Err
		wantDBusError(t, err, DBusErrNotSupported)
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: message %q, want it to contain %q", c.method, err, c.msg)
		}
	}
	if got := h.mgr.callLog(); len(got) != 0 {
		t.Errorf("manager calls %q", got)
	}
}

// TestProgressQueue checks, without a bus, that reports of one phase
// waiting in the queue collapse into one, and that phase changes, other
// pods and pod events keep their place.
func TestProgressQueue(t *testing.T) {
	obj := NewAgentObject(nil, newFakeManager(), testInfo, nil)
	report := func(pod, phase string, n int64) {
		obj.onProgress(pods.MigrationProgress{Pod: pod, Peer: "hostb", Phase: phase, Bytes: n})
	}
	report("kv", pods.PhaseFiles, 0)
	report("kv", pods.PhaseFiles, 10)
	report("kv", pods.PhaseFiles, 20)
	report("web", pods.PhaseFiles, 5)
	report("kv", pods.PhaseFiles, 30)
	report("kv", pods.PhaseImages, 40)
	obj.onEvent(pods.Event{Name: "kv", State: pods.StateMigrated})
	report("kv", pods.PhaseImages, 50)

	var got []string
	obj.mu.Lock()
	for _, q := range obj.queue {
		switch {
		case q.progress != nil:
			got = append(got, fmt.Sprintf("%s %s %d", q.progress.Pod, q.progress.Phase, q.progress.Bytes))
		case q.event != nil:
			got = append(got, "event "+q.event.Name+" "+string(q.event.State))
		}
	}
	obj.mu.Unlock()
	want := []string{"kv files 20", "web files 5", "kv files 30", "kv images 40", "event kv migrated", "kv images 50"}
	if !slices.Equal(got, want) {
		t.Errorf("queue %q, want %q", got, want)
	}

	// After Close nothing is queued and a flush does not wait.
	_ = obj.Close()
	report("kv", pods.PhaseDone, 60)
	start := time.Now()
	obj.flush()
	if d := time.Since(start); d > time.Second {
		t.Errorf("flush after Close took %v", d)
	}
	obj.mu.Lock()
	defer obj.mu.Unlock()
	if len(obj.queue) != 0 {
		t.Errorf("%d items queued after Close", len(obj.queue))
	}
}
