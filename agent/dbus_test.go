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
	obj   *AgentObject
	cli   *dbus.Conn
	agent dbus.BusObject
}

// newHarness serves an AgentObject over a fake manager on a private bus,
// under the real name, and connects a client.
func newHarness(t *testing.T) *harness {
	t.Helper()
	requireRoot(t)
	bus := startTestBus(t)
	srv := bus.connect(t)
	mgr := newFakeManager()
	obj := NewAgentObject(srv, mgr, testInfo, slog.New(slog.DiscardHandler))
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
	return &harness{bus: bus, mgr: mgr, obj: obj, cli: cli, agent: cli.Object(DBusName, DBusPath)}
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
		"checkpoint": "", "error": "",
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
	if len(m) != 6 {
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
	if got := slices.Sorted(maps.Keys(all)); !slices.Equal(got, []string{"CriuVersion", "PodCount", "Version"}) {
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
		"ListPods":        {"method", "-"},
		"ListPodsJSON":    {"method", "-"},
		"GetPod":          {"method", "s"},
		"GetPodJSON":      {"method", "s"},
		"StartPod":        {"method", "s"},
		"StopPod":         {"method", "s"},
		"Checkpoint":      {"method", "sb"},
		"Restore":         {"method", "s"},
		"Status":          {"method", "-"},
		"Version":         {"property", "s"},
		"CriuVersion":     {"property", "s"},
		"PodCount":        {"property", "u"},
		"PodStateChanged": {"signal", "sss"},
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
	mutators := []helperRequest{
		req("StartPod", "db"),
		req("StopPod", "web"),
		req("Checkpoint", "web", true),
		req("Restore", "web"),
	}
	readers := []helperRequest{
		req("ListPods"),
		req("ListPodsJSON"),
		req("Status"),
		req("GetPod", "web"),
		req("GetPodJSON", "web"),
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
