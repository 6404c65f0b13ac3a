package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/autopod/autopod/cycle"

	"github.com/godbus/dbus/v5"
)

// The agent's D-Bus names (agent.DBusName and friends). autopodctl does not
// import the agent package, which would link the whole daemon into the
// client; bus_test.go checks that the two agree.
const (
	agentBusName   = "org.autopod.Agent1"
	agentPath      = dbus.ObjectPath("/org/autopod/Agent1")
	agentInterface = "org.autopod.Agent1"
)

// unreachableError means no agent answered: the bus is down, or nothing
// owns the agent's name and activation could not start it (exit status 3).
type unreachableError struct {
	addr string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach the autopod agent on the bus at %s: %v", e.addr, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// agentClient makes the agent's D-Bus calls and turns their replies into
// plain Go values, so that nothing past this file sees a dbus.Variant.
type agentClient struct {
	addr    string
	conn    *dbus.Conn
	obj     dbus.BusObject
	signals *signalSink
}

// dialAgent connects to the bus at addr. ctx bounds the connection's whole
// life: when it ends, godbus closes the connection and any call in flight
// returns.
func dialAgent(ctx context.Context, addr string) (*agentClient, error) {
	sink := &signalSink{}
	conn, err := dbus.Connect(addr, dbus.WithContext(ctx), dbus.WithSignalHandler(sink))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to the bus at %s: %w", addr, ctx.Err())
		}
		return nil, &unreachableError{addr: addr, err: fmt.Errorf("cannot connect to the bus: %w", err)}
	}
	return &agentClient{addr: addr, conn: conn, obj: conn.Object(agentBusName, agentPath), signals: sink}, nil
}

// signalSink is the connection's signal handler. godbus calls
// DeliverSignal on the goroutine that reads the connection, for each
// message in the order it arrived, and only then looks at the next one; so
// every signal the agent sent before a method's reply has been delivered
// by the time the reply is. (godbus's default handler hands signals to a
// channel from another goroutine, which loses that order.)
type signalSink struct {
	mu sync.Mutex
	fn func(*dbus.Signal) // must not block; nil drops signals
}

func (s *signalSink) DeliverSignal(_, _ string, sig *dbus.Signal) {
	s.mu.Lock()
	fn := s.fn
	s.mu.Unlock()
	if fn != nil {
		fn(sig)
	}
}

func (s *signalSink) set(fn func(*dbus.Signal)) {
	s.mu.Lock()
	s.fn = fn
	s.mu.Unlock()
}

func (c *agentClient) Close() error { return c.conn.Close() }

// call invokes an org.autopod.Agent1 method and classifies its failure.
func (c *agentClient) call(ctx context.Context, method string, args ...any) *dbus.Call {
	call := c.obj.CallWithContext(ctx, agentInterface+"."+method, 0, args...)
	call.Err = c.classify(ctx, call.Err)
	return call
}

// classify wraps errors that mean "no agent" in unreachableError and
// replaces godbus's view of an expired deadline with the context's error.
func (c *agentClient) classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	name := dbusErrorName(err)
	switch {
	case name == "org.freedesktop.DBus.Error.ServiceUnknown",
		name == "org.freedesktop.DBus.Error.NameHasNoOwner",
		name == "org.freedesktop.DBus.Error.NoReply", // the agent vanished mid-call
		name == "org.freedesktop.DBus.Error.Disconnected",
		strings.HasPrefix(name, "org.freedesktop.DBus.Error.Spawn."), // activation failed
		strings.HasPrefix(name, "org.freedesktop.systemd1."),         // activation through systemd failed
		errors.Is(err, dbus.ErrClosed):
		return &unreachableError{addr: c.addr, err: err}
	}
	return err
}

// dbusErrorName returns the D-Bus error name inside err, or "".
func dbusErrorName(err error) string {
	var v dbus.Error
	if errors.As(err, &v) {
		return v.Name
	}
	var p *dbus.Error
	if errors.As(err, &p) && p != nil {
		return p.Name
	}
	return ""
}

// agentStatus is the reply of Status, shaped for --json.
type agentStatus struct {
	Version string   `json:"version"`
	Criu    criuInfo `json:"criu"`
	Pods    uint32   `json:"pods"`
	// Strategies maps each migration strategy to "" (this host can run
	// it) or to why it cannot; absent from agents that predate it.
	Strategies map[string]string `json:"migration_strategies,omitempty"`
	// Update is the update cycle (the agent's UpdateStatusJSON); nil when
	// the agent runs without one.
	Update *cycle.Status `json:"update,omitempty"`
}

type criuInfo struct {
	Path     string          `json:"path"`
	Version  string          `json:"version"`
	Features map[string]bool `json:"features"`
	Error    string          `json:"error,omitempty"`
}

func (c *agentClient) status(ctx context.Context) (agentStatus, error) {
	var m map[string]dbus.Variant
	if err := c.call(ctx, "Status").Store(&m); err != nil {
		return agentStatus{}, err
	}
	st := agentStatus{
		Version: variantString(m, "version"),
		Criu: criuInfo{
			Path:     variantString(m, "criu_path"),
			Version:  variantString(m, "criu_version"),
			Features: map[string]bool{},
			Error:    variantString(m, "criu_error"),
		},
	}
	if f, ok := m["criu_features"].Value().(map[string]bool); ok {
		st.Criu.Features = f
	}
	if s, ok := m["migration_strategies"].Value().(map[string]string); ok {
		st.Strategies = s
	}
	if n, ok := m["pods"].Value().(uint32); ok {
		st.Pods = n
	}
	return st, nil
}

func (c *agentClient) version(ctx context.Context) (string, error) {
	var v dbus.Variant
	err := c.obj.CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, agentInterface, "Version").Store(&v)
	if err = c.classify(ctx, err); err != nil {
		return "", err
	}
	s, _ := v.Value().(string)
	return s, nil
}

// podRow is one line of ListPods.
type podRow struct {
	Name    string
	State   string
	Pid     int32
	Address string
	Since   time.Time // zero if unknown
	Error   string
}

func (c *agentClient) listPods(ctx context.Context) ([]podRow, error) {
	// Field order is the wire signature (ssisss).
	var wire []struct {
		Name, State string
		Pid         int32
		Address     string
		Since       string
		Error       string
	}
	if err := c.call(ctx, "ListPods").Store(&wire); err != nil {
		return nil, err
	}
	rows := make([]podRow, 0, len(wire))
	for _, w := range wire {
		rows = append(rows, podRow{
			Name: w.Name, State: w.State, Pid: w.Pid, Address: w.Address,
			Since: parseSince(w.Since), Error: w.Error,
		})
	}
	return rows, nil
}

func (c *agentClient) listPodsJSON(ctx context.Context) (string, error) {
	var s string
	err := c.call(ctx, "ListPodsJSON").Store(&s)
	return s, err
}

// podInfo is the reply of GetPod.
type podInfo struct {
	Name       string
	State      string
	Pid        int32
	Address    string
	File       string
	Since      time.Time
	Restarts   int32
	Checkpoint string
	Error      string
	Home       string // the host a guest pod belongs to
	Location   string // the peer this host's pod runs on
}

func (c *agentClient) getPod(ctx context.Context, name string) (podInfo, error) {
	var m map[string]dbus.Variant
	if err := c.call(ctx, "GetPod", name).Store(&m); err != nil {
		return podInfo{}, err
	}
	return podInfo{
		Name:       variantString(m, "name"),
		State:      variantString(m, "state"),
		Pid:        variantInt32(m, "pid"),
		Address:    variantString(m, "address"),
		File:       variantString(m, "file"),
		Since:      parseSince(variantString(m, "since")),
		Restarts:   variantInt32(m, "restarts"),
		Checkpoint: variantString(m, "checkpoint"),
		Error:      variantString(m, "error"),
		Home:       variantString(m, "home"),
		Location:   variantString(m, "location"),
	}, nil
}

func (c *agentClient) getPodJSON(ctx context.Context, name string) (string, error) {
	var s string
	err := c.call(ctx, "GetPodJSON", name).Store(&s)
	return s, err
}

// checkpointResult is what the checkpoint command reports; also its
// --json document.
type checkpointResult struct {
	Name         string `json:"name"`
	Dir          string `json:"dir"`
	Bytes        uint64 `json:"bytes"`
	LeaveRunning bool   `json:"leave_running"`
}

func (c *agentClient) checkpoint(ctx context.Context, name string, leaveRunning bool) (checkpointResult, error) {
	res := checkpointResult{Name: name, LeaveRunning: leaveRunning}
	err := c.call(ctx, "Checkpoint", name, leaveRunning).Store(&res.Dir, &res.Bytes)
	return res, err
}

// action runs one of the argument-only mutators: StartPod, StopPod, Restore.
func (c *agentClient) action(ctx context.Context, method, name string) error {
	return c.call(ctx, method, name).Err
}

// ---- migration ---------------------------------------------------------------

// migrationProgress is one MigrationProgress signal.
type migrationProgress struct {
	Pod, Peer, Phase string
	Bytes            uint64
}

// progressWatch collects the agent's MigrationProgress signals, in order,
// for the goroutine that prints them.
type progressWatch struct {
	mu      sync.Mutex
	pending []migrationProgress
	wake    chan struct{} // capacity 1: "pending is not empty"
}

func (w *progressWatch) add(p migrationProgress) {
	w.mu.Lock()
	w.pending = append(w.pending, p)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *progressWatch) take() []migrationProgress {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pending
	w.pending = nil
	return p
}

// watchProgress subscribes to the MigrationProgress signals of the agent
// that owns the name now. The match rule names the agent's unique name, so
// that no other connection can feed autopodctl progress; the call to the
// agent's Peer.Ping first starts the agent if it is activatable.
func (c *agentClient) watchProgress(ctx context.Context) (*progressWatch, error) {
	if err := c.classify(ctx, c.obj.CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0).Err); err != nil {
		return nil, err
	}
	var owner string
	err := c.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, agentBusName).Store(&owner)
	if err = c.classify(ctx, err); err != nil {
		return nil, err
	}
	w := &progressWatch{wake: make(chan struct{}, 1)}
	c.signals.set(func(sig *dbus.Signal) {
		if sig.Sender != owner || sig.Path != agentPath || sig.Name != agentInterface+".MigrationProgress" {
			return
		}
		var p migrationProgress
		if dbus.Store(sig.Body, &p.Pod, &p.Peer, &p.Phase, &p.Bytes) == nil {
			w.add(p)
		}
	})
	err = c.conn.AddMatchSignalContext(ctx,
		dbus.WithMatchSender(owner),
		dbus.WithMatchObjectPath(agentPath),
		dbus.WithMatchInterface(agentInterface),
		dbus.WithMatchMember("MigrationProgress"))
	if err = c.classify(ctx, err); err != nil {
		return nil, fmt.Errorf("subscribe to MigrationProgress: %w", err)
	}
	return w, nil
}

// callWithProgress makes a call and, while it runs, passes every progress
// report from w to show, on this goroutine. Reports the agent sent before
// its reply are all shown before callWithProgress returns (see
// signalSink). With a nil w it is call.
func (c *agentClient) callWithProgress(ctx context.Context, w *progressWatch, show func(migrationProgress), method string, args ...any) *dbus.Call {
	if w == nil {
		return c.call(ctx, method, args...)
	}
	call := c.obj.GoWithContext(ctx, agentInterface+"."+method, 0, make(chan *dbus.Call, 1), args...)
	for {
		select {
		case <-w.wake:
			for _, p := range w.take() {
				show(p)
			}
		case <-call.Done:
			for _, p := range w.take() {
				show(p)
			}
			call.Err = c.classify(ctx, call.Err)
			return call
		}
	}
}

// migrateResult is what the migrate command reports; also its --json
// document.
type migrateResult struct {
	Pod        string `json:"pod"`
	Peer       string `json:"peer"`
	FrozenUsec uint64 `json:"frozen_usec"`
	TotalUsec  uint64 `json:"total_usec"`
	Bytes      uint64 `json:"bytes"`
	Strategy   string `json:"strategy,omitempty"` // as asked for with --strategy
}

// migrate calls Migrate, or MigrateWith when a strategy is given, so that
// a plain migrate works with agents that predate MigrateWith.
func (c *agentClient) migrate(ctx context.Context, w *progressWatch, show func(migrationProgress), name, peerName, strategy string) (migrateResult, error) {
	res := migrateResult{Pod: name, Peer: peerName, Strategy: strategy}
	var call *dbus.Call
	if strategy == "" {
		call = c.callWithProgress(ctx, w, show, "Migrate", name, peerName)
	} else {
		options := map[string]dbus.Variant{"strategy": dbus.MakeVariant(strategy)}
		call = c.callWithProgress(ctx, w, show, "MigrateWith", name, peerName, options)
	}
	err := call.Store(&res.FrozenUsec, &res.TotalUsec, &res.Bytes)
	return res, err
}

// evacuateResult is the evacuate command's --json document.
type evacuateResult struct {
	Peer     string   `json:"peer"`
	Migrated []string `json:"migrated"`
}

func (c *agentClient) evacuate(ctx context.Context, w *progressWatch, show func(migrationProgress), peerName string) (evacuateResult, error) {
	res := evacuateResult{Peer: peerName}
	err := c.callWithProgress(ctx, w, show, "Evacuate", peerName).Store(&res.Migrated)
	if res.Migrated == nil {
		res.Migrated = []string{}
	}
	return res, err
}

// returnResult is the return command's --json document.
type returnResult struct {
	Returned []string `json:"returned"`
}

func (c *agentClient) returnPods(ctx context.Context, w *progressWatch, show func(migrationProgress)) (returnResult, error) {
	var res returnResult
	err := c.callWithProgress(ctx, w, show, "Return").Store(&res.Returned)
	if res.Returned == nil {
		res.Returned = []string{}
	}
	return res, err
}

// ---- peers ---------------------------------------------------------------------

// peerIdentity is this host's certificate; the --json document of peer
// init and peer cert.
type peerIdentity struct {
	CertPEM     string `json:"cert_pem"`
	Fingerprint string `json:"fingerprint"`
}

func (c *agentClient) peerInit(ctx context.Context, force bool) (peerIdentity, error) {
	var id peerIdentity
	err := c.call(ctx, "PeerInit", force).Store(&id.CertPEM, &id.Fingerprint)
	return id, err
}

func (c *agentClient) peerCert(ctx context.Context) (peerIdentity, error) {
	var id peerIdentity
	err := c.call(ctx, "PeerCert").Store(&id.CertPEM, &id.Fingerprint)
	return id, err
}

// peerRow is one pinned peer: an element of ListPeers, the --json
// document of peer add, and an element of peer list's.
type peerRow struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	Fingerprint string `json:"fingerprint"`
}

func (c *agentClient) peerAdd(ctx context.Context, name, address, certPEM string) (string, error) {
	var fp string
	err := c.call(ctx, "PeerAdd", name, address, certPEM).Store(&fp)
	return fp, err
}

func (c *agentClient) peerRemove(ctx context.Context, name string) error {
	return c.call(ctx, "PeerRemove", name).Err
}

func (c *agentClient) listPeers(ctx context.Context) ([]peerRow, error) {
	// Field order is the wire signature (sss).
	var wire []struct{ Name, Address, Fingerprint string }
	if err := c.call(ctx, "ListPeers").Store(&wire); err != nil {
		return nil, err
	}
	rows := make([]peerRow, 0, len(wire))
	for _, w := range wire {
		rows = append(rows, peerRow{Name: w.Name, Address: w.Address, Fingerprint: w.Fingerprint})
	}
	return rows, nil
}

// variantString and variantInt32 read an a{sv} entry, tolerating absent
// keys so that an older or newer agent degrades to empty fields.
func variantString(m map[string]dbus.Variant, key string) string {
	s, _ := m[key].Value().(string)
	return s
}

func variantInt32(m map[string]dbus.Variant, key string) int32 {
	n, _ := m[key].Value().(int32)
	return n
}

func parseSince(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t
}
