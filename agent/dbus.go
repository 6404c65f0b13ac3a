package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/godbus/dbus/v5/prop"

	"github.com/autopod/autopod/pods"
)

// Names of the agent's D-Bus object on the system bus. They are API: the
// policy file, the activation file, autopodctl and docs/dbus-api.md all
// spell them out.
const (
	DBusName      = "org.autopod.Agent1"
	DBusPath      = dbus.ObjectPath("/org/autopod/Agent1")
	DBusInterface = "org.autopod.Agent1"
)

// D-Bus error names the agent's methods return. The message of each error
// is the Go error's text, so busctl users see the same words as the log.
const (
	DBusErrNotFound       = DBusInterface + ".Error.NotFound"       // pods.ErrNotFound
	DBusErrInvalid        = DBusInterface + ".Error.Invalid"        // pods.ErrInvalid, bad arguments
	DBusErrBusy           = DBusInterface + ".Error.Busy"           // pods.ErrBusy
	DBusErrAlreadyRunning = DBusInterface + ".Error.AlreadyRunning" // pods.ErrRunning
	DBusErrNotRunning     = DBusInterface + ".Error.NotRunning"     // pods.ErrNotRunning
	DBusErrNoCheckpoint   = DBusInterface + ".Error.NoCheckpoint"   // pods.ErrNoCheckpoint
	DBusErrAccessDenied   = DBusInterface + ".Error.AccessDenied"   // caller is not root
	DBusErrFailed         = DBusInterface + ".Error.Failed"         // anything else
)

// ErrBusNameTaken is returned by Claim when another connection owns
// DBusName, which almost always means a second agent is running.
var ErrBusNameTaken = errors.New("D-Bus name already owned by another connection")

// errAccessDenied marks authorisation failures so that dbusError can map
// them; the D-Bus layer is the only place that authorises.
var errAccessDenied = errors.New("access denied")

// authTimeout bounds the bus round trip that finds a caller's uid. The bus
// daemon answers from memory, so a slow answer means the bus is in trouble
// and refusing is the safe outcome.
const authTimeout = 5 * time.Second

// StatusInfo is what the agent's Status method and constant properties
// report besides the pods: fixed at start, so it needs no locking.
type StatusInfo struct {
	Version string
	Criu    CriuInfo
}

// PodSummary is one element of ListPods' reply, D-Bus type (ssisss).
// Field order is the wire order; do not reorder.
type PodSummary struct {
	Name    string
	State   string
	Pid     int32
	Address string
	Since   string // RFC 3339 in UTC, empty if unknown
	Error   string
}

// AgentObject implements the org.autopod.Agent1 interface at DBusPath.
//
// Every exported method whose last result is *dbus.Error is a D-Bus method
// (godbus exports exactly those); the others (Export, Claim, Close) are for
// the daemon. godbus runs each incoming call on its own goroutine, so the
// D-Bus methods hold no lock while they call the PodManager: a Checkpoint
// that takes minutes does not hold up ListPods or a StopPod of another pod.
type AgentObject struct {
	conn *dbus.Conn
	mgr  PodManager
	info StatusInfo
	log  *slog.Logger

	// ctx is the parent of every PodManager call made on behalf of a D-Bus
	// caller. It is not tied to the caller: a client that gives up waiting
	// must not abort a checkpoint half way. Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	props    *prop.Properties // nil until Export
	exported bool
	closed   bool
	queue    []pods.Event  // events not yet turned into signals
	wake     chan struct{} // capacity 1: "queue is not empty"
	done     chan struct{} // closed when the event loop has returned
}

// NewAgentObject prepares the agent's D-Bus object on conn. Nothing is
// visible on the bus until Export, and the well-known name is only taken by
// Claim, so that no client can reach a half-built object.
func NewAgentObject(conn *dbus.Conn, mgr PodManager, info StatusInfo, log *slog.Logger) *AgentObject {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &AgentObject{
		conn:   conn,
		mgr:    mgr,
		info:   info,
		log:    log.With("component", "dbus"),
		ctx:    ctx,
		cancel: cancel,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
}

// Export registers the methods, the properties and the introspection data
// on the connection and starts turning pod events into signals.
func (a *AgentObject) Export() error {
	a.mu.Lock()
	if err := a.exportLocked(); err != nil {
		a.mu.Unlock()
		return err
	}
	go a.eventLoop()
	a.mu.Unlock()

	// Subscribe without holding mu: a manager may replay current states
	// from inside Subscribe, and onEvent takes mu. PodManager has no
	// Unsubscribe, so after Close the callback stays registered and drops
	// events (see onEvent).
	a.mgr.Subscribe(a.onEvent)
	return nil
}

// exportLocked does Export's work with a.mu held.
func (a *AgentObject) exportLocked() error {
	if a.closed {
		return errors.New("export D-Bus object: already closed")
	}
	if a.exported {
		return errors.New("export D-Bus object: already exported")
	}

	methods, err := namedMethods(a)
	if err != nil {
		return fmt.Errorf("export D-Bus object: %w", err)
	}
	propMap := a.propertyMap(uint32(len(a.mgr.List(a.ctx))))

	if err := a.conn.Export(a, DBusPath, DBusInterface); err != nil {
		return fmt.Errorf("export %s: %w", DBusInterface, err)
	}
	props, err := prop.Export(a.conn, DBusPath, propMap)
	if err != nil {
		a.unexport()
		return fmt.Errorf("export properties of %s: %w", DBusPath, err)
	}
	node := introspectionNode(methods, propMap)
	if err := a.conn.Export(introspect.NewIntrospectable(node), DBusPath, "org.freedesktop.DBus.Introspectable"); err != nil {
		a.unexport()
		return fmt.Errorf("export introspection of %s: %w", DBusPath, err)
	}
	a.props = props
	a.exported = true
	return nil
}

// Claim requests DBusName without queueing. The daemon calls it after
// Export, once everything a caller could reach is in place, and before it
// tells systemd it is ready (the unit is Type=dbus or notifies READY=1).
func (a *AgentObject) Claim(ctx context.Context) error {
	a.mu.Lock()
	ready := a.exported && !a.closed
	a.mu.Unlock()
	if !ready {
		return errors.New("claim D-Bus name: object is not exported")
	}

	var reply uint32
	err := a.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.RequestName", 0,
		DBusName, uint32(dbus.NameFlagDoNotQueue)).Store(&reply)
	if err != nil {
		if dbusErrorName(err) == "org.freedesktop.DBus.Error.AccessDenied" {
			return fmt.Errorf("request D-Bus name %s: %w (only root may own it, and the bus must have loaded the policy file %s.conf, normally in /usr/share/dbus-1/system.d)",
				DBusName, err, DBusName)
		}
		return fmt.Errorf("request D-Bus name %s: %w", DBusName, err)
	}
	switch dbus.RequestNameReply(reply) {
	case dbus.RequestNameReplyPrimaryOwner, dbus.RequestNameReplyAlreadyOwner:
		a.log.Info("D-Bus name acquired", "name", DBusName)
		return nil
	case dbus.RequestNameReplyExists:
		return fmt.Errorf("request D-Bus name %s: %w%s (is another autopod running?)",
			DBusName, ErrBusNameTaken, a.ownerDescription(ctx))
	default:
		return fmt.Errorf("request D-Bus name %s: unexpected reply %d", DBusName, reply)
	}
}

// ownerDescription names the process that holds DBusName, best effort, so
// that "name taken" tells the operator which process to look at.
func (a *AgentObject) ownerDescription(ctx context.Context) string {
	bus := a.conn.BusObject()
	var owner string
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, DBusName).Store(&owner); err != nil {
		return ""
	}
	var pid uint32
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixProcessID", 0, owner).Store(&pid); err != nil {
		return fmt.Sprintf(": owner is %s", owner)
	}
	return fmt.Sprintf(": owner is %s, pid %d", owner, pid)
}

// Close stops signal emission, cancels PodManager calls still running for
// D-Bus callers and removes the object from the connection. It does not
// release the name or close the connection: both belong to the daemon.
func (a *AgentObject) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	exported := a.exported
	a.queue = nil
	a.mu.Unlock()

	a.cancel()
	if exported {
		<-a.done
		a.unexport()
	}
	return nil
}

func (a *AgentObject) unexport() {
	for _, iface := range []string{DBusInterface, "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable"} {
		if err := a.conn.Export(nil, DBusPath, iface); err != nil {
			a.log.Warn("unexport", "interface", iface, "err", err)
		}
	}
}

// ---- D-Bus methods ----------------------------------------------------
//
// Argument names for introspection live in methodArgNames; Export refuses
// to run if a method here has no entry there.

// ListPods returns every pod, sorted by name.
func (a *AgentObject) ListPods() ([]PodSummary, *dbus.Error) {
	list := a.listSorted()
	out := make([]PodSummary, 0, len(list))
	for _, st := range list {
		out = append(out, PodSummary{
			Name:    st.Name,
			State:   string(st.State),
			Pid:     int32(st.Pid),
			Address: st.Address,
			Since:   formatSince(st.Since),
			Error:   st.Error,
		})
	}
	return out, nil
}

// ListPodsJSON returns every pod as a JSON array of pods.Status, for tools
// that would rather not decode D-Bus structs; it carries every field.
func (a *AgentObject) ListPodsJSON() (string, *dbus.Error) {
	b, err := json.Marshal(a.listSorted())
	if err != nil {
		return "", dbusError(fmt.Errorf("encode pod list: %w", err))
	}
	return string(b), nil
}

// GetPod returns one pod's status as a dictionary; see docs/dbus-api.md
// for the keys. Every key is always present so that clients need no
// per-key existence checks.
func (a *AgentObject) GetPod(name string) (map[string]dbus.Variant, *dbus.Error) {
	st, derr := a.get(name)
	if derr != nil {
		return nil, derr
	}
	return map[string]dbus.Variant{
		"name":       dbus.MakeVariant(st.Name),
		"state":      dbus.MakeVariant(string(st.State)),
		"pid":        dbus.MakeVariant(int32(st.Pid)),
		"address":    dbus.MakeVariant(st.Address),
		"file":       dbus.MakeVariant(st.File),
		"since":      dbus.MakeVariant(formatSince(st.Since)),
		"restarts":   dbus.MakeVariant(int32(st.Restarts)),
		"checkpoint": dbus.MakeVariant(st.Checkpoint),
		"error":      dbus.MakeVariant(st.Error),
	}, nil
}

// GetPodJSON returns one pod's status as a JSON pods.Status.
func (a *AgentObject) GetPodJSON(name string) (string, *dbus.Error) {
	st, derr := a.get(name)
	if derr != nil {
		return "", derr
	}
	b, err := json.Marshal(st)
	if err != nil {
		return "", dbusError(fmt.Errorf("encode pod %s: %w", name, err))
	}
	return string(b), nil
}

// StartPod starts a stopped or failed pod. Root only.
func (a *AgentObject) StartPod(sender dbus.Sender, name string) *dbus.Error {
	return a.mutate(sender, "StartPod", name, func(ctx context.Context) error {
		return a.mgr.Start(ctx, name)
	})
}

// StopPod stops a running pod. Root only.
func (a *AgentObject) StopPod(sender dbus.Sender, name string) *dbus.Error {
	return a.mutate(sender, "StopPod", name, func(ctx context.Context) error {
		return a.mgr.Stop(ctx, name)
	})
}

// Checkpoint dumps a running pod with CRIU and returns the image directory
// and its size in bytes. Root only. It can take minutes; callers should
// use a long method-call timeout (busctl --timeout=5min).
func (a *AgentObject) Checkpoint(sender dbus.Sender, name string, leaveRunning bool) (string, uint64, *dbus.Error) {
	var res pods.CheckpointResult
	derr := a.mutate(sender, "Checkpoint", name, func(ctx context.Context) error {
		var err error
		res, err = a.mgr.Checkpoint(ctx, name, pods.CheckpointOptions{LeaveRunning: leaveRunning})
		return err
	})
	if derr != nil {
		return "", 0, derr
	}
	return res.Dir, uint64(max(res.Bytes, 0)), nil
}

// Restore restores a pod from its newest checkpoint. Root only.
func (a *AgentObject) Restore(sender dbus.Sender, name string) *dbus.Error {
	return a.mutate(sender, "Restore", name, func(ctx context.Context) error {
		return a.mgr.Restore(ctx, name)
	})
}

// Status describes the agent: its version, its CRIU and how many pods it
// knows. Keys are documented in docs/dbus-api.md.
func (a *AgentObject) Status() (map[string]dbus.Variant, *dbus.Error) {
	features := make(map[string]bool, len(a.info.Criu.Features))
	maps.Copy(features, a.info.Criu.Features)
	return map[string]dbus.Variant{
		"version":       dbus.MakeVariant(a.info.Version),
		"criu_path":     dbus.MakeVariant(a.info.Criu.Path),
		"criu_version":  dbus.MakeVariant(a.info.Criu.Version),
		"criu_features": dbus.MakeVariant(features),
		"criu_error":    dbus.MakeVariant(a.info.Criu.Error),
		"pods":          dbus.MakeVariant(uint32(len(a.mgr.List(a.ctx)))),
	}, nil
}

// ---- helpers for the methods -------------------------------------------

func (a *AgentObject) listSorted() []pods.Status {
	list := a.mgr.List(a.ctx)
	if list == nil {
		list = []pods.Status{} // JSON "[]", not "null"
	}
	slices.SortFunc(list, func(x, y pods.Status) int { return strings.Compare(x.Name, y.Name) })
	return list
}

func (a *AgentObject) get(name string) (pods.Status, *dbus.Error) {
	if err := checkPodName(name); err != nil {
		return pods.Status{}, dbusError(err)
	}
	st, err := a.mgr.Get(a.ctx, name)
	if err != nil {
		return pods.Status{}, dbusError(err)
	}
	return st, nil
}

// mutate authorises the caller, runs op and logs the outcome: every
// state-changing method goes through it so none can skip the uid check.
func (a *AgentObject) mutate(sender dbus.Sender, method, name string, op func(context.Context) error) *dbus.Error {
	uid, err := a.authorize(sender, method)
	if err != nil {
		a.log.Warn("refused D-Bus call", "method", method, "pod", name, "sender", string(sender), "err", err)
		return dbusError(err)
	}
	if err := checkPodName(name); err != nil {
		return dbusError(err)
	}
	start := time.Now()
	err = op(a.ctx)
	log := a.log.With("method", method, "pod", name, "uid", uid, "duration", time.Since(start))
	if err != nil {
		log.Warn("D-Bus call failed", "err", err)
		return dbusError(err)
	}
	log.Info("D-Bus call done")
	return nil
}

// authorize returns the caller's uid if it is root. The uid comes from the
// bus daemon, which learned it from the socket's credentials; nothing the
// caller sends can forge it. Any doubt refuses.
func (a *AgentObject) authorize(sender dbus.Sender, method string) (uint32, error) {
	if sender == "" {
		return 0, fmt.Errorf("%w: %s: caller has no bus name", errAccessDenied, method)
	}
	ctx, cancel := context.WithTimeout(a.ctx, authTimeout)
	defer cancel()
	var uid uint32
	err := a.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixUser", 0, string(sender)).Store(&uid)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: cannot determine the caller's uid: %v", errAccessDenied, method, err)
	}
	if uid != 0 {
		return uid, fmt.Errorf("%w: %s requires root (caller uid %d)", errAccessDenied, method, uid)
	}
	return uid, nil
}

// checkPodName rejects names that cannot be the base name of a pod file
// (/etc/autopod/pods/NAME.toml). Anything else is for the manager to judge,
// so that the D-Bus layer never hides a pod the manager knows.
func checkPodName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: pod name is empty", pods.ErrInvalid)
	case name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: pod name %q is not a file name", pods.ErrInvalid, name)
	}
	return nil
}

// dbusError maps err to the D-Bus error a caller can branch on. The
// message is the Go error text, with the wrapping context intact.
func dbusError(err error) *dbus.Error {
	name := DBusErrFailed
	switch {
	case errors.Is(err, errAccessDenied):
		name = DBusErrAccessDenied
	case errors.Is(err, pods.ErrNotFound):
		name = DBusErrNotFound
	case errors.Is(err, pods.ErrInvalid):
		name = DBusErrInvalid
	case errors.Is(err, pods.ErrBusy):
		name = DBusErrBusy
	case errors.Is(err, pods.ErrRunning):
		name = DBusErrAlreadyRunning
	case errors.Is(err, pods.ErrNotRunning):
		name = DBusErrNotRunning
	case errors.Is(err, pods.ErrNoCheckpoint):
		name = DBusErrNoCheckpoint
	}
	return dbus.NewError(name, []any{err.Error()})
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

func formatSince(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// ---- events, signals and properties ------------------------------------

// onEvent is the PodManager subscription. It must not block and must not
// call back into the manager (which may hold its own lock while notifying),
// so it only queues; eventLoop does the work. The queue is unbounded on
// purpose: dropping an event would lose a state change for every listener.
func (a *AgentObject) onEvent(ev pods.Event) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.queue = append(a.queue, ev)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default: // a wake-up is already pending; it will see this event
	}
}

func (a *AgentObject) eventLoop() {
	defer close(a.done)
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.wake:
		}
		a.mu.Lock()
		batch := a.queue
		a.queue = nil
		a.mu.Unlock()
		for _, ev := range batch {
			if err := a.conn.Emit(DBusPath, DBusInterface+".PodStateChanged", ev.Name, string(ev.State), ev.Error); err != nil {
				a.log.Warn("emit PodStateChanged", "pod", ev.Name, "state", ev.State, "err", err)
			}
		}
		// Pods appear and disappear with their files; any event may be the
		// first sign of that, and List is cheap.
		a.refreshPodCount()
	}
}

func (a *AgentObject) refreshPodCount() {
	n := uint32(len(a.mgr.List(a.ctx)))
	a.mu.Lock()
	props := a.props
	a.mu.Unlock()
	if props == nil {
		return
	}
	if cur, ok := props.GetMust(DBusInterface, "PodCount").(uint32); ok && cur == n {
		return // unchanged: no PropertiesChanged
	}
	if err := setProp(props, "PodCount", n); err != nil {
		a.log.Warn("update PodCount", "err", err)
	}
}

// setProp updates a read-only property and emits PropertiesChanged.
// prop's only setter that bypasses the Writable check is SetMust, which
// panics when the signal cannot be sent (a closing connection); that must
// not take the daemon down, so the panic becomes an error.
func setProp(p *prop.Properties, name string, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("set property %s: %v", name, r)
		}
	}()
	p.SetMust(DBusInterface, name, v)
	return nil
}

func (a *AgentObject) propertyMap(podCount uint32) prop.Map {
	return prop.Map{
		DBusInterface: {
			"Version":     {Value: a.info.Version, Emit: prop.EmitConst},
			"CriuVersion": {Value: a.info.Criu.Version, Emit: prop.EmitConst},
			"PodCount":    {Value: podCount, Emit: prop.EmitTrue},
		},
	}
}

// ---- introspection -------------------------------------------------------

// methodArgNames names every argument of every D-Bus method, inputs then
// outputs, in signature order. introspect.Methods derives names and types
// from the Go methods but cannot know argument names; Export checks that
// this table and the methods agree, so neither can drift.
func methodArgNames() map[string][]string {
	return map[string][]string{
		"ListPods":     {"pods"},
		"ListPodsJSON": {"json"},
		"GetPod":       {"name", "pod"},
		"GetPodJSON":   {"name", "json"},
		"StartPod":     {"name"},
		"StopPod":      {"name"},
		"Checkpoint":   {"name", "leave_running", "dir", "bytes"},
		"Restore":      {"name"},
		"Status":       {"status"},
	}
}

// signals describes what eventLoop emits.
func signals() []introspect.Signal {
	return []introspect.Signal{{
		Name: "PodStateChanged",
		Args: []introspect.Arg{
			{Name: "name", Type: "s"},
			{Name: "state", Type: "s"},
			{Name: "error", Type: "s"},
		},
	}}
}

// namedMethods is introspect.Methods(v) with argument names filled in,
// sorted by name for a stable XML document.
func namedMethods(v any) ([]introspect.Method, error) {
	names := methodArgNames()
	methods := introspect.Methods(v)
	for i := range methods {
		m := &methods[i]
		argNames, ok := names[m.Name]
		if !ok {
			return nil, fmt.Errorf("method %s has no entry in methodArgNames", m.Name)
		}
		if len(argNames) != len(m.Args) {
			return nil, fmt.Errorf("method %s has %d arguments but methodArgNames names %d", m.Name, len(m.Args), len(argNames))
		}
		for j := range m.Args {
			m.Args[j].Name = argNames[j]
		}
		delete(names, m.Name)
	}
	if len(names) > 0 {
		return nil, fmt.Errorf("methodArgNames names methods that do not exist: %v", slices.Sorted(maps.Keys(names)))
	}
	slices.SortFunc(methods, func(x, y introspect.Method) int { return strings.Compare(x.Name, y.Name) })
	return methods, nil
}

func introspectionNode(methods []introspect.Method, props prop.Map) *introspect.Node {
	var properties []introspect.Property
	for _, name := range slices.Sorted(maps.Keys(props[DBusInterface])) {
		properties = append(properties, props[DBusInterface][name].Introspection(name))
	}
	return &introspect.Node{
		Name: string(DBusPath),
		Interfaces: []introspect.Interface{
			{
				Name:       DBusInterface,
				Methods:    methods,
				Signals:    signals(),
				Properties: properties,
			},
			prop.IntrospectData,
		},
	}
}
