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

	"github.com/autopod/autopod/cycle"
	"github.com/autopod/autopod/peer"
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
	DBusErrNotFound       = DBusInterface + ".Error.NotFound"            // pods.ErrNotFound
	DBusErrInvalid        = DBusInterface + ".Error.Invalid"             // pods.ErrInvalid, bad arguments
	DBusErrBusy           = DBusInterface + ".Error.Busy"                // pods.ErrBusy
	DBusErrAlreadyRunning = DBusInterface + ".Error.AlreadyRunning"      // pods.ErrRunning
	DBusErrNotRunning     = DBusInterface + ".Error.NotRunning"          // pods.ErrNotRunning
	DBusErrNoCheckpoint   = DBusInterface + ".Error.NoCheckpoint"        // pods.ErrNoCheckpoint
	DBusErrAccessDenied   = DBusInterface + ".Error.AccessDenied"        // caller is not root
	DBusErrMigrated       = DBusInterface + ".Error.Migrated"            // pods.ErrMigrated
	DBusErrPeerRefused    = DBusInterface + ".Error.PeerRefused"         // pods.ErrPeerRefused, peer.ErrRefused
	DBusErrUnknownPeer    = DBusInterface + ".Error.UnknownPeer"         // peer.ErrUnknownPeer
	DBusErrNoIdentity     = DBusInterface + ".Error.NoIdentity"          // peer.ErrNoIdentity
	DBusErrIdentityExists = DBusInterface + ".Error.IdentityExists"      // peer.ErrIdentityExists
	DBusErrNotSupported   = DBusInterface + ".Error.NotSupported"        // no Migrator or PeerRegistry configured
	DBusErrStrategy       = DBusInterface + ".Error.StrategyUnavailable" // pods.ErrStrategy: this host cannot run the migration strategy asked for
	DBusErrTooLate        = DBusInterface + ".Error.TooLate"             // cycle.ErrTooLate: the update cycle cannot be cancelled any more
	DBusErrNoUpdates      = DBusInterface + ".Error.NoUpdates"           // cycle.ErrNoUpdates, cycle.ErrNothingToCancel
	DBusErrAborted        = DBusInterface + ".Error.Aborted"             // cycle.ErrAborted: the cycle ended before the pods were away
	DBusErrFailed         = DBusInterface + ".Error.Failed"              // anything else
)

// ErrBusNameTaken is returned by Claim when another connection owns
// DBusName, which almost always means a second agent is running.
var ErrBusNameTaken = errors.New("D-Bus name already owned by another connection")

// errAccessDenied marks authorisation failures so that dbusError can map
// them; the D-Bus layer is the only place that authorises.
var errAccessDenied = errors.New("access denied")

// errInvalidArgument marks bad arguments that are not about a pod
// definition (pods.ErrInvalid is); both map to DBusErrInvalid.
var errInvalidArgument = errors.New("invalid argument")

// errNotSupported marks methods whose backend the daemon did not configure
// (see SetMigration).
var errNotSupported = errors.New("not supported by this agent")

// authTimeout bounds the bus round trip that finds a caller's uid. The bus
// daemon answers from memory, so a slow answer means the bus is in trouble
// and refusing is the safe outcome.
const authTimeout = 5 * time.Second

// flushTimeout bounds how long a migration method waits, after the
// Migrator returned, for its last MigrationProgress signals to be sent
// before it replies. Emitting is a local socket write; if it takes longer
// the reply goes out anyway and a listener may see late progress.
const flushTimeout = 5 * time.Second

// progressInterval is the least time between two MigrationProgress signals
// of one migration (pod and peer) in the same phase. A phase change is
// always sent at once, and byte counts are cumulative, so nothing but
// intermediate counts is skipped; it keeps a Migrator that reports every
// chunk from flooding the bus.
const progressInterval = 100 * time.Millisecond

// maxCertPEM bounds PeerAdd's certificate argument; a PEM certificate is
// a few KiB.
const maxCertPEM = 64 << 10

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

// PeerSummary is one element of ListPeers' reply, D-Bus type (sss). Field
// order is the wire order; do not reorder.
type PeerSummary struct {
	Name        string
	Address     string // host:port
	Fingerprint string
}

// AgentObject implements the org.autopod.Agent1 interface at DBusPath.
//
// Every exported method whose last result is *dbus.Error is a D-Bus method
// (godbus exports exactly those); the others (Export, Claim, Close,
// SetMigration) are for the daemon. godbus runs each incoming call on its own goroutine, so the
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
	update   UpdateCycle      // nil: the update methods are not supported
	migrator Migrator         // nil: Migrate, Evacuate and Return are not supported
	peers    PeerRegistry     // nil: the Peer* methods and ListPeers are not supported
	props    *prop.Properties // nil until Export
	exported bool
	closed   bool
	queue    []queued      // items not yet turned into signals
	wake     chan struct{} // capacity 1: "queue is not empty"
	done     chan struct{} // closed when the event loop has returned
}

// queued is one item of the event loop's queue: exactly one of event,
// progress and flushed is set.
type queued struct {
	event      *pods.Event
	progress   *pods.MigrationProgress
	transition *cycle.Transition
	flushed    chan struct{} // a barrier: closed when everything before it is sent
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

// SetMigration gives the object the backends of its migration and peer
// methods. The daemon calls it before Export; until it is called, or for a
// nil argument, those methods fail with DBusErrNotSupported. It is safe to
// call at any time: each call of a D-Bus method uses the values current
// when it starts.
func (a *AgentObject) SetMigration(m Migrator, p PeerRegistry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.migrator = m
	a.peers = p
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
		"home":       dbus.MakeVariant(st.Home),
		"location":   dbus.MakeVariant(st.Location),
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
		"version":              dbus.MakeVariant(a.info.Version),
		"criu_path":            dbus.MakeVariant(a.info.Criu.Path),
		"criu_version":         dbus.MakeVariant(a.info.Criu.Version),
		"criu_features":        dbus.MakeVariant(features),
		"criu_error":           dbus.MakeVariant(a.info.Criu.Error),
		"migration_strategies": dbus.MakeVariant(strategyMap(a.info.Criu)),
		"pods":                 dbus.MakeVariant(uint32(len(a.mgr.List(a.ctx)))),
	}, nil
}

// ---- migration and peers -------------------------------------------------
//
// Migrate, Evacuate and Return report their progress as MigrationProgress
// signals, and send their reply only after the last of those signals, so
// that a client that subscribed before calling sees every phase before the
// result.

// Migrate moves a running pod to a pinned peer and returns how long the
// pod was frozen, how long the whole migration took (both in
// microseconds) and how many bytes were sent. Root only. It can take
// minutes; the pod keeps running here if it fails.
func (a *AgentObject) Migrate(sender dbus.Sender, name, peerName string) (frozenUsec, totalUsec, bytes uint64, derr *dbus.Error) {
	var res pods.MigrationResult
	derr = a.run(sender, "Migrate", []any{"pod", name, "peer", peerName},
		func() error { return errors.Join(checkPodName(name), checkPeerName(peerName)) },
		func(ctx context.Context) error {
			m, err := a.migration()
			if err != nil {
				return err
			}
			defer a.flush()
			res, err = m.Migrate(ctx, name, peerName, a.onProgress)
			return err
		})
	if derr != nil {
		return 0, 0, 0, derr
	}
	return usec(res.Frozen), usec(res.Total), migratedBytes(res), nil
}

// MigrateWith is Migrate with options (a{sv}); the only one so far is
// "strategy" (s): "auto", "stop-and-copy", "post-copy" or "pre-copy",
// overriding migration_strategy for this migration. A strategy this host
// cannot run fails with DBusErrStrategy before anything moves; one the
// peer cannot run makes the peer refuse (DBusErrPeerRefused). Unknown
// options are refused (DBusErrInvalid), so that a client never believes
// an option it misspelt took effect.
func (a *AgentObject) MigrateWith(sender dbus.Sender, name, peerName string, options map[string]dbus.Variant) (frozenUsec, totalUsec, bytes uint64, derr *dbus.Error) {
	var res pods.MigrationResult
	var opts pods.MigrateOptions
	derr = a.run(sender, "MigrateWith", []any{"pod", name, "peer", peerName, "options", options},
		func() error {
			var err error
			opts, err = migrateOptions(options)
			return errors.Join(checkPodName(name), checkPeerName(peerName), err)
		},
		func(ctx context.Context) error {
			m, err := a.migration()
			if err != nil {
				return err
			}
			defer a.flush()
			res, err = m.MigrateWith(ctx, name, peerName, opts, a.onProgress)
			return err
		})
	if derr != nil {
		return 0, 0, 0, derr
	}
	return usec(res.Frozen), usec(res.Total), migratedBytes(res), nil
}

// migrateOptions reads MigrateWith's options.
func migrateOptions(options map[string]dbus.Variant) (pods.MigrateOptions, error) {
	var opts pods.MigrateOptions
	for _, k := range slices.Sorted(maps.Keys(options)) {
		v := options[k]
		switch k {
		case "strategy":
			s, ok := v.Value().(string)
			if !ok {
				return opts, fmt.Errorf("%w: option strategy must be a string (s), got %s", errInvalidArgument, v.Signature())
			}
			if !slices.Contains(pods.Strategies, s) {
				return opts, fmt.Errorf("%w: unknown migration strategy %q (want one of %s)", errInvalidArgument, s, strings.Join(pods.Strategies, ", "))
			}
			opts.Strategy = s
		default:
			return opts, fmt.Errorf("%w: unknown migration option %q (known: strategy)", errInvalidArgument, k)
		}
	}
	return opts, nil
}

// strategyMap says, for Status, which migration strategies this host can
// run: each maps to "" or to why it cannot.
func strategyMap(info CriuInfo) map[string]string {
	ss := pods.ProbeStrategies(info)
	out := map[string]string{}
	for _, s := range pods.Strategies {
		if s != pods.StrategyAuto {
			out[s] = ss.Unavailable[s]
		}
	}
	return out
}

func migratedBytes(res pods.MigrationResult) uint64 {
	return uint64(max(res.FileBytes, 0)) + uint64(max(res.ImageBytes, 0)) + uint64(max(res.PageBytes, 0)) + uint64(max(res.PreCopyBytes, 0))
}

// Evacuate migrates every running pod to a pinned peer and returns the
// names of the pods it moved, sorted. Root only. If any pod could not be
// moved the call fails; the message names the pods that were moved and
// why each other one was not.
func (a *AgentObject) Evacuate(sender dbus.Sender, peerName string) ([]string, *dbus.Error) {
	var moved []string
	derr := a.run(sender, "Evacuate", []any{"peer", peerName},
		func() error { return checkPeerName(peerName) },
		func(ctx context.Context) error {
			m, err := a.migration()
			if err != nil {
				return err
			}
			defer a.flush()
			res, err := m.Evacuate(ctx, peerName, a.onProgress)
			moved = make([]string, 0, len(res))
			for _, r := range res {
				moved = append(moved, r.Pod)
			}
			slices.Sort(moved)
			if err != nil {
				return fmt.Errorf("evacuate to %s (migrated: %s): %w", peerName, nameList(moved), err)
			}
			return nil
		})
	if derr != nil {
		return nil, derr
	}
	return moved, nil
}

// Return brings this host's pods that run on peers back home and returns
// their names, sorted; none is an empty array. Root only. If any pod could
// not be brought back the call fails; the message names those that were.
func (a *AgentObject) Return(sender dbus.Sender) ([]string, *dbus.Error) {
	var back []string
	derr := a.run(sender, "Return", nil, nil, func(ctx context.Context) error {
		m, err := a.migration()
		if err != nil {
			return err
		}
		defer a.flush()
		back, err = m.Return(ctx, a.onProgress)
		back = slices.Sorted(slices.Values(back))
		if back == nil {
			back = []string{}
		}
		if err != nil {
			return fmt.Errorf("return (returned: %s): %w", nameList(back), err)
		}
		return nil
	})
	if derr != nil {
		return nil, derr
	}
	return back, nil
}

// PeerInit creates this host's peer key and certificate and returns the
// certificate (PEM) and its fingerprint. With force it replaces an existing
// identity, which breaks every peer that pinned the old certificate.
// Root only.
func (a *AgentObject) PeerInit(sender dbus.Sender, force bool) (certPEM, fingerprint string, derr *dbus.Error) {
	derr = a.run(sender, "PeerInit", []any{"force", force}, nil, func(context.Context) error {
		r, err := a.peerRegistry()
		if err != nil {
			return err
		}
		certPEM, fingerprint, err = r.InitIdentity(force)
		return err
	})
	if derr != nil {
		return "", "", derr
	}
	return certPEM, fingerprint, nil
}

// PeerCert returns this host's certificate (PEM) and fingerprint, what
// other hosts pin with PeerAdd. Open to every user: the certificate is
// public.
func (a *AgentObject) PeerCert() (certPEM, fingerprint string, derr *dbus.Error) {
	r, err := a.peerRegistry()
	if err != nil {
		return "", "", dbusError(err)
	}
	certPEM, fingerprint, err = r.Identity()
	if err != nil {
		return "", "", dbusError(err)
	}
	return certPEM, fingerprint, nil
}

// PeerAdd pins a peer: its name, its address (host or host:port) and its
// certificate (PEM). It returns the pinned fingerprint. Root only.
func (a *AgentObject) PeerAdd(sender dbus.Sender, name, address, certPEM string) (string, *dbus.Error) {
	var info PeerInfo
	derr := a.run(sender, "PeerAdd", []any{"peer", name, "address", address},
		func() error {
			switch {
			case name == "":
				return checkPeerName(name)
			case address == "":
				return fmt.Errorf("%w: peer address is empty", errInvalidArgument)
			case strings.TrimSpace(certPEM) == "":
				return fmt.Errorf("%w: peer certificate is empty", errInvalidArgument)
			case len(certPEM) > maxCertPEM:
				return fmt.Errorf("%w: peer certificate is %d bytes, more than the %d a certificate can be", errInvalidArgument, len(certPEM), maxCertPEM)
			}
			return nil
		},
		func(context.Context) error {
			r, err := a.peerRegistry()
			if err != nil {
				return err
			}
			info, err = r.AddPeer(name, address, []byte(certPEM))
			return err
		})
	if derr != nil {
		return "", derr
	}
	return info.Fingerprint, nil
}

// PeerRemove unpins a peer: from then on the agent neither sends to it nor
// accepts it. Root only.
func (a *AgentObject) PeerRemove(sender dbus.Sender, name string) *dbus.Error {
	return a.run(sender, "PeerRemove", []any{"peer", name},
		func() error { return checkPeerName(name) },
		func(context.Context) error {
			r, err := a.peerRegistry()
			if err != nil {
				return err
			}
			return r.RemovePeer(name)
		})
}

// ListPeers returns the pinned peers, sorted by name. Open to every user.
func (a *AgentObject) ListPeers() ([]PeerSummary, *dbus.Error) {
	r, err := a.peerRegistry()
	if err != nil {
		return nil, dbusError(err)
	}
	list, err := r.ListPeers()
	if err != nil {
		return nil, dbusError(err)
	}
	out := make([]PeerSummary, 0, len(list))
	for _, p := range list {
		out = append(out, PeerSummary{Name: p.Name, Address: p.Address, Fingerprint: p.Fingerprint})
	}
	slices.SortFunc(out, func(x, y PeerSummary) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
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

// mutate is run for a method whose subject is one pod, whose name it checks.
func (a *AgentObject) mutate(sender dbus.Sender, method, name string, op func(context.Context) error) *dbus.Error {
	return a.run(sender, method, []any{"pod", name}, func() error { return checkPodName(name) }, op)
}

// run authorises the caller, checks the arguments (check may be nil), runs
// op and logs the outcome with attrs (key-value pairs naming the call's
// subject): every state-changing method goes through it so none can skip
// the uid check.
func (a *AgentObject) run(sender dbus.Sender, method string, attrs []any, check func() error, op func(context.Context) error) *dbus.Error {
	uid, err := a.authorize(sender, method)
	if err != nil {
		a.log.Warn("refused D-Bus call", append([]any{"method", method, "sender", string(sender), "err", err}, attrs...)...)
		return dbusError(err)
	}
	if check != nil {
		if err := check(); err != nil {
			return dbusError(err)
		}
	}
	start := time.Now()
	err = op(a.ctx)
	log := a.log.With("method", method).With(attrs...).With("uid", uid, "duration", time.Since(start))
	if err != nil {
		log.Warn("D-Bus call failed", "err", err)
		return dbusError(err)
	}
	log.Info("D-Bus call done")
	return nil
}

// migration returns the Migrator, or an error for DBusErrNotSupported.
func (a *AgentObject) migration() (Migrator, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.migrator == nil {
		return nil, fmt.Errorf("%w: migration is not configured in this agent", errNotSupported)
	}
	return a.migrator, nil
}

// peerRegistry returns the PeerRegistry, or an error for
// DBusErrNotSupported.
func (a *AgentObject) peerRegistry() (PeerRegistry, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.peers == nil {
		return nil, fmt.Errorf("%w: peers are not configured in this agent", errNotSupported)
	}
	return a.peers, nil
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

// checkPeerName rejects only the empty name: the peer registry judges the
// rest, and its "unknown peer" is the better message.
func checkPeerName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: peer name is empty", errInvalidArgument)
	}
	return nil
}

// nameList is names for a message: "a, b", or "none".
func nameList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// usec converts a duration to whole microseconds, negative ones to 0.
func usec(d time.Duration) uint64 {
	return uint64(max(d, 0) / time.Microsecond)
}

// dbusError maps err to the D-Bus error a caller can branch on. The
// message is the Go error text, with the wrapping context intact.
//
// The order matters for errors that wrap several sentinels: a migration
// the peer refused may wrap the peer's reason, and an Evacuate joins the
// errors of several pods; the peer-related names come first because they
// say where to look.
func dbusError(err error) *dbus.Error {
	name := DBusErrFailed
	switch {
	case errors.Is(err, errAccessDenied):
		name = DBusErrAccessDenied
	case errors.Is(err, errNotSupported):
		name = DBusErrNotSupported
	case errors.Is(err, peer.ErrUnknownPeer):
		name = DBusErrUnknownPeer
	case errors.Is(err, pods.ErrStrategy):
		name = DBusErrStrategy
	case errors.Is(err, pods.ErrPeerRefused), errors.Is(err, peer.ErrRefused), errors.Is(err, peer.ErrCertificateMismatch), errors.Is(err, peer.ErrUnpinnedPeer):
		name = DBusErrPeerRefused
	case errors.Is(err, peer.ErrNoIdentity):
		name = DBusErrNoIdentity
	case errors.Is(err, peer.ErrIdentityExists):
		name = DBusErrIdentityExists
	case errors.Is(err, pods.ErrMigrated):
		name = DBusErrMigrated
	case errors.Is(err, pods.ErrNotFound):
		name = DBusErrNotFound
	case errors.Is(err, pods.ErrInvalid), errors.Is(err, errInvalidArgument):
		name = DBusErrInvalid
	case errors.Is(err, pods.ErrBusy), errors.Is(err, cycle.ErrBusy), errors.Is(err, cycle.ErrUpdating):
		name = DBusErrBusy
	case errors.Is(err, cycle.ErrTooLate):
		name = DBusErrTooLate
	case errors.Is(err, cycle.ErrNoUpdates), errors.Is(err, cycle.ErrNothingToCancel):
		name = DBusErrNoUpdates
	case errors.Is(err, cycle.ErrAborted):
		name = DBusErrAborted
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
	a.enqueue(queued{event: &ev})
}

// onProgress is the progress callback given to the Migrator. Like onEvent
// it only queues. A report for the same pod, peer and phase as the last
// item still waiting in the queue replaces that item's byte count instead
// of queueing another, so a burst of reports costs one signal.
func (a *AgentObject) onProgress(p pods.MigrationProgress) {
	a.mu.Lock()
	if n := len(a.queue); !a.closed && n > 0 {
		if last := a.queue[n-1].progress; last != nil && last.Pod == p.Pod && last.Peer == p.Peer && last.Phase == p.Phase {
			last.Bytes = p.Bytes
			a.mu.Unlock()
			return
		}
	}
	a.mu.Unlock()
	a.enqueue(queued{progress: &p})
}

// enqueue adds an item for eventLoop; after Close it drops it (a barrier
// is released at once).
func (a *AgentObject) enqueue(item queued) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		if item.flushed != nil {
			close(item.flushed)
		}
		return
	}
	a.queue = append(a.queue, item)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default: // a wake-up is already pending; it will see this item
	}
}

// flush waits until eventLoop has sent every signal queued before it, or
// flushTimeout, or Close. Migration methods call it before they reply, so
// that their last progress signals reach a listener before the reply.
func (a *AgentObject) flush() {
	done := make(chan struct{})
	a.enqueue(queued{flushed: done})
	timer := time.NewTimer(flushTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		a.log.Warn("MigrationProgress signals not sent in time; replying anyway", "timeout", flushTimeout)
	case <-a.ctx.Done():
	}
}

func (a *AgentObject) eventLoop() {
	defer close(a.done)
	// The last MigrationProgress sent for each migration (pod and peer)
	// within progressInterval.
	type migrationKey struct{ pod, peer string }
	type sent struct {
		phase string
		at    time.Time
	}
	lastSent := map[migrationKey]sent{}
	for {
		select {
		case <-a.ctx.Done():
			a.releaseBarriers()
			return
		case <-a.wake:
		}
		a.mu.Lock()
		batch := a.queue
		a.queue = nil
		a.mu.Unlock()
		podEvents := false
		for _, item := range batch {
			switch {
			case item.event != nil:
				ev := item.event
				podEvents = true
				if err := a.conn.Emit(DBusPath, DBusInterface+".PodStateChanged", ev.Name, string(ev.State), ev.Error); err != nil {
					a.log.Warn("emit PodStateChanged", "pod", ev.Name, "state", ev.State, "err", err)
				}
			case item.progress != nil:
				p := item.progress
				now := time.Now()
				for k, v := range lastSent {
					if now.Sub(v.at) >= progressInterval {
						delete(lastSent, k)
					}
				}
				key := migrationKey{p.Pod, p.Peer}
				if last, ok := lastSent[key]; ok && last.phase == p.Phase {
					continue // same phase, just sent: a later signal carries the count
				}
				lastSent[key] = sent{phase: p.Phase, at: now}
				if err := a.conn.Emit(DBusPath, DBusInterface+".MigrationProgress", p.Pod, p.Peer, p.Phase, uint64(max(p.Bytes, 0))); err != nil {
					a.log.Warn("emit MigrationProgress", "pod", p.Pod, "peer", p.Peer, "phase", p.Phase, "err", err)
				}
			case item.transition != nil:
				tr := item.transition
				if err := a.conn.Emit(DBusPath, DBusInterface+".UpdateStateChanged", string(tr.From), string(tr.To), tr.Reason); err != nil {
					a.log.Warn("emit UpdateStateChanged", "to", tr.To, "err", err)
				}
				a.refreshUpdateProps()
			case item.flushed != nil:
				close(item.flushed)
			}
		}
		// Pods appear and disappear with their files; any event may be the
		// first sign of that, and List is cheap.
		if podEvents {
			a.refreshPodCount()
		}
	}
}

// releaseBarriers closes the barriers left in the queue when the loop
// stops, so that no flush waits for a loop that is gone.
func (a *AgentObject) releaseBarriers() {
	a.mu.Lock()
	batch := a.queue
	a.queue = nil
	a.mu.Unlock()
	for _, item := range batch {
		if item.flushed != nil {
			close(item.flushed)
		}
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

// propertyMap is called with a.mu held.
func (a *AgentObject) propertyMap(podCount uint32) prop.Map {
	u := updatePropsOf(a.update)
	return prop.Map{
		DBusInterface: {
			"Version":        {Value: a.info.Version, Emit: prop.EmitConst},
			"CriuVersion":    {Value: a.info.Criu.Version, Emit: prop.EmitConst},
			"PodCount":       {Value: podCount, Emit: prop.EmitTrue},
			"State":          {Value: u.State, Emit: prop.EmitTrue},
			"PendingUpdates": {Value: u.PendingUpdates, Emit: prop.EmitTrue},
			"RebootRequired": {Value: u.RebootRequired, Emit: prop.EmitTrue},
			"NextWindow":     {Value: u.NextWindow, Emit: prop.EmitTrue},
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
		"Migrate":      {"name", "peer", "frozen_usec", "total_usec", "bytes"},
		"MigrateWith":  {"name", "peer", "options", "frozen_usec", "total_usec", "bytes"},
		"Evacuate":     {"peer", "migrated"},
		"Return":       {"returned"},
		"PeerInit":     {"force", "cert_pem", "fingerprint"},
		"PeerCert":     {"cert_pem", "fingerprint"},
		"PeerAdd":      {"name", "address", "cert_pem", "fingerprint"},
		"PeerRemove":   {"name"},
		"ListPeers":    {"peers"},

		"UpdateStatusJSON":     {"json"},
		"CheckUpdates":         {"updates", "reboot_required"},
		"StartUpdate":          {"dry_run", "plan_json"},
		"StartUpdateNow":       {"dry_run", "plan_json"},
		"Cancel":               {},
		"ExternalInstallBegin": {"tool", "packages", "needed"},
		"WaitInstallReady":     {},
		"ExternalInstallEnd":   {"ok", "detail"},
	}
}

// signals describes what eventLoop emits.
func signals() []introspect.Signal {
	return []introspect.Signal{
		{
			Name: "PodStateChanged",
			Args: []introspect.Arg{
				{Name: "name", Type: "s"},
				{Name: "state", Type: "s"},
				{Name: "error", Type: "s"},
			},
		},
		{
			Name: "UpdateStateChanged",
			Args: []introspect.Arg{
				{Name: "from", Type: "s"},
				{Name: "to", Type: "s"},
				{Name: "reason", Type: "s"},
			},
		},
		{
			Name: "MigrationProgress",
			Args: []introspect.Arg{
				{Name: "pod", Type: "s"},
				{Name: "peer", Type: "s"},
				{Name: "phase", Type: "s"},
				{Name: "bytes", Type: "t"},
			},
		},
	}
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
