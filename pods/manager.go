package pods

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/autopod/autopod/atomicfile"
	"golang.org/x/sys/unix"
)

// ManagerConfig configures the pod runtime. NewManager fills defaults.
type ManagerConfig struct {
	PodsDir       string // pod definitions (*.toml)
	StateDir      string // per-pod state, init copies, checkpoint images
	LogDir        string // console logs, one NAME.log per pod
	CriuPath      string
	Bridge        string       // default bridge for pods
	BridgeAddress netip.Prefix // the host's address on Bridge (pods' gateway)
	CgroupMount   string       // usually /sys/fs/cgroup
	CgroupName    string       // directory under each hierarchy, e.g. "autopod"
	InitBinary    string       // the autopod binary whose init stages pods run
	StopTimeout   time.Duration
	Log           *slog.Logger
	// Fault, for failure tests only, is called at named steps of
	// checkpoints and migrations (and with CRIU's notifications); an error
	// makes that step fail. Nil in normal operation.
	Fault func(step string) error
	// Criu is what the agent's probe found out about CRIU; nil makes
	// NewManager probe it.
	Criu *CriuInfo
	// MigrationStrategy is the strategy to migrate pods with: "auto" (the
	// default) or one of Strategies.
	MigrationStrategy string
	// MigrationTimeout is how long a migrating pod stays frozen here
	// waiting for its peer to answer — to apply the changed files, to take
	// the images, to confirm its restore — before the migration is given
	// up and the pod resumes here; the time to move the bytes at 1 MiB/s
	// comes on top. Zero means DefaultMigrationTimeout.
	MigrationTimeout time.Duration
}

// DefaultMigrationTimeout is ManagerConfig.MigrationTimeout's default:
// far above the seconds a restore takes, far below what clients of a
// frozen pod wait for.
const DefaultMigrationTimeout = time.Minute

func (c *ManagerConfig) fill() error {
	if c.PodsDir == "" || c.StateDir == "" || c.LogDir == "" || c.CriuPath == "" {
		return errors.New("pods: PodsDir, StateDir, LogDir and CriuPath are required")
	}
	if c.Bridge == "" {
		c.Bridge = "autopod0"
	}
	if c.CgroupMount == "" {
		c.CgroupMount = "/sys/fs/cgroup"
	}
	if c.CgroupName == "" {
		c.CgroupName = "autopod"
	}
	if c.InitBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		c.InitBinary = exe
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.MigrationTimeout == 0 {
		c.MigrationTimeout = DefaultMigrationTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// persisted is what survives an agent restart, in StateDir/pods/NAME/state.json.
type persisted struct {
	State      State     `json:"state"`
	Pid        int       `json:"pid,omitempty"`
	StartTime  uint64    `json:"start_time,omitempty"` // /proc/PID/stat field 22
	Since      time.Time `json:"since"`
	Restarts   int       `json:"restarts"`
	Checkpoint string    `json:"checkpoint,omitempty"`
	Error      string    `json:"error,omitempty"`
	Spec       *Spec     `json:"spec,omitempty"`      // the spec the running pod was started with
	InitHash   string    `json:"init_hash,omitempty"` // which init copy it runs

	// Home is the peer this pod belongs to when it was migrated in from
	// there ("" for the host's own pods, which are defined in PodsDir).
	Home string `json:"home,omitempty"`
	// Location is the peer a pod of this host was migrated to.
	Location string `json:"location,omitempty"`
	// Migration is set while a migration is in flight; after a crash it
	// tells the agent how to finish or undo it.
	Migration *migrationState `json:"migration,omitempty"`
	// LastTxn is the last migration this host committed as the source.
	LastTxn string `json:"last_txn,omitempty"`
}

type pod struct {
	spec     Spec
	invalid  error // the parse error, for pods whose file is bad
	st       persisted
	busy     bool  // a Start/Stop/Checkpoint/Restore is in progress
	stopping bool  // exit of the current process is expected: do not restart
	next     *Spec // a changed definition, applied at the next start
	exited   chan struct{}
}

// Manager runs, stops, checkpoints and restores pods. It is safe for
// concurrent use; operations on one pod are serialised (ErrBusy), different
// pods proceed in parallel.
type Manager struct {
	cfg      ManagerConfig
	cg       cgroups
	criu     criuRunner
	initHash string
	// criuVersion is recorded in manifests.
	criuVersion string

	mu   sync.Mutex
	pods map[string]*pod
	subs []func(Event)

	dialer     PeerDialer
	committed  map[string]bool // migrations committed as the source since start
	strategies StrategySupport
	// requests handles peer requests that are not about migrations (the
	// update cycle's questions); nil: none.
	requests func(ctx context.Context, conn MigrationConn, typ string, body json.RawMessage) (handled bool, err error)
	// received are the post-copy migrations in that completed since start.
	received map[string]bool
	// pageServers are the page servers of post-copy migrations out.
	pageServers map[string]pageServer
	// inHolds cut incoming pods off until their exposure (holdIncoming).
	inHolds map[string]*trafficHold
	// precopy holds the stop rules of pre-copy migrations out.
	precopy precopyPolicy

	// fault, set only by tests, is handed CRIU's notifications so a test
	// can make a real CRIU operation fail at a chosen step.
	fault func(step string) error
}

// NewManager prepares the runtime (directories, the init binary copy) but
// starts nothing; call Load.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:  cfg,
		cg:   cgroups{mount: cfg.CgroupMount, name: cfg.CgroupName},
		criu: criuRunner{path: cfg.CriuPath, yard: &cgroupYard{}},
		pods: map[string]*pod{},

		committed: map[string]bool{},
		fault:     cfg.Fault,
		precopy:   defaultPrecopyPolicy,
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "pods"), filepath.Join(cfg.StateDir, "init"), cfg.LogDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	h, err := m.installInit()
	if err != nil {
		return nil, fmt.Errorf("install pod init: %w", err)
	}
	m.initHash = h
	info := cfg.Criu
	if info == nil {
		probed := ProbeCriu(context.Background(), cfg.CriuPath)
		info = &probed
	}
	m.criuVersion = info.Version
	m.strategies = ProbeStrategies(*info)
	// Built now rather than inside the first freeze.
	if _, _, release, err := m.criu.yard.acquire(); err != nil {
		cfg.Log.Warn("CRIU will mount its own cgroups for every checkpoint and restore", "err", err)
	} else {
		release()
	}
	return m, nil
}

// installInit copies the autopod binary to StateDir/init/<sha256>, once.
// Pods run that immutable copy, so replacing /usr/bin/autopod (an upgrade)
// never changes a file a running or checkpointed pod maps.
func (m *Manager) installInit() (string, error) {
	f, err := os.Open(m.cfg.InitBinary)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))[:16]
	dst := m.initPath(sum)
	if _, err := os.Stat(dst); err == nil {
		return sum, nil
	}
	if _, err := f.Seek(0, 0); err != nil {
		return "", err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return "", err
	}
	return sum, atomicfile.WriteFile(dst, data, 0o755)
}

func (m *Manager) initPath(hash string) string {
	return filepath.Join(m.cfg.StateDir, "init", hash)
}
func (m *Manager) podDir(name string) string {
	return filepath.Join(m.cfg.StateDir, "pods", name)
}
func (m *Manager) logPath(name string) string { return filepath.Join(m.cfg.LogDir, name+".log") }

// Subscribe registers fn for every state change.
func (m *Manager) Subscribe(fn func(Event)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.subs = append(m.subs, fn)
}

// setState changes p's state, persists it and notifies subscribers.
// Called with m.mu held.
func (m *Manager) setState(p *pod, s State, errText string) {
	p.st.State, p.st.Error, p.st.Since = s, errText, time.Now().UTC()
	if err := m.persist(p); err != nil {
		m.cfg.Log.Error("persist pod state", "pod", p.spec.Name, "err", err)
	}
	ev := Event{Name: p.spec.Name, State: s, Error: errText}
	for _, fn := range m.subs {
		fn(ev)
	}
}

func (m *Manager) persist(p *pod) error {
	if p.invalid != nil {
		return nil
	}
	dir := m.podDir(p.spec.Name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	data, err := json.MarshalIndent(p.st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, "state.json"), data, 0o600)
}

func (m *Manager) readPersisted(name string) (persisted, bool) {
	var st persisted
	data, err := os.ReadFile(filepath.Join(m.podDir(name), "state.json"))
	if err != nil {
		return st, false
	}
	if err := json.Unmarshal(data, &st); err != nil {
		m.cfg.Log.Warn("ignoring unreadable pod state", "pod", name, "err", err)
		return persisted{}, false
	}
	return st, true
}

// Load reads the pod definitions, re-adopts pods that kept running while
// the agent was away, and starts the pods that should run. A bad file
// makes an "invalid" pod carrying the error; the others are served.
func (m *Manager) Load(ctx context.Context) []error {
	sweepPageServerGuards(ctx)
	return m.sync(ctx, true)
}

// Reload re-reads the pod definitions: new pods start, fixed ones leave the
// invalid state, changed ones take effect at their next start, and pods
// whose file is gone are forgotten unless they run.
func (m *Manager) Reload(ctx context.Context) []error {
	return m.sync(ctx, false)
}

func (m *Manager) sync(ctx context.Context, initial bool) []error {
	specs, errs := LoadDir(m.cfg.PodsDir)
	seen := map[string]bool{}
	var toStart []string
	for _, e := range errs {
		m.cfg.Log.Error("invalid pod definition", "err", e)
		var se *SpecError
		if !errors.As(e, &se) {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(se.File), ".toml")
		seen[name] = true
		m.mu.Lock()
		if p, ok := m.pods[name]; ok && (p.busy || p.st.State == StateRunning) {
			p.next = nil
			m.cfg.Log.Warn("running pod's definition became invalid; it keeps running", "pod", name)
		} else {
			m.pods[name] = &pod{spec: Spec{Name: name, File: se.File}, invalid: e,
				st: persisted{State: StateInvalid, Error: e.Error(), Since: time.Now().UTC()}}
		}
		m.mu.Unlock()
	}
	for _, s := range specs {
		seen[s.Name] = true
		m.mu.Lock()
		p, known := m.pods[s.Name]
		if known && p.invalid == nil {
			if p.busy || p.st.State == StateRunning || p.st.State == StateCheckpointed {
				p.next = &s // takes effect at the next start
			} else {
				p.spec = s
			}
			m.mu.Unlock()
			continue
		}
		p = &pod{spec: s, st: persisted{State: StateStopped, Since: time.Now().UTC()}}
		st, hasState := m.readPersisted(s.Name)
		if hasState {
			p.st = st
			if st.Spec != nil && st.State != StateStopped && st.State != StateFailed {
				p.spec = *st.Spec // keep describing the pod as it runs
				p.next = &s
			}
		}
		m.pods[s.Name] = p
		m.mu.Unlock()
		if !initial || !hasState {
			if !hasState || p.st.State == StateStopped || p.st.State == StateFailed || p.st.State == StateInvalid {
				toStart = append(toStart, s.Name)
			}
			continue
		}
		if p.st.Migration != nil {
			m.recoverMigration(ctx, p)
			continue
		}
		switch p.st.State {
		case StateRunning, StateStarting, StateCheckpointing, StateRestoring:
			if m.adopt(p) {
				continue
			}
			if p.st.State == StateCheckpointing && p.st.Checkpoint != "" {
				// Died mid-checkpoint: the previous complete checkpoint stays usable.
				m.mu.Lock()
				m.setState(p, StateCheckpointed, "agent stopped during a checkpoint")
				m.mu.Unlock()
				continue
			}
			m.cfg.Log.Warn("pod was not running when the agent started", "pod", s.Name, "pid", p.st.Pid)
			m.cleanup(ctx, s.Name)
			if p.spec.Restart != RestartNo || p.st.State == StateStarting {
				toStart = append(toStart, s.Name)
			} else {
				m.mu.Lock()
				m.setState(p, StateFailed, "exited while the agent was not running")
				m.mu.Unlock()
			}
		}
	}
	if initial {
		for _, name := range m.loadGuests(ctx) {
			seen[name] = true
		}
	}
	m.mu.Lock()
	for name, p := range m.pods {
		if seen[name] || p.st.Home != "" {
			continue
		}
		if p.busy || p.st.State == StateRunning || p.st.State == StateCheckpointed {
			m.cfg.Log.Warn("pod definition removed; the pod stays until stopped", "pod", name)
			continue
		}
		delete(m.pods, name)
	}
	m.mu.Unlock()
	for _, name := range toStart {
		if err := m.Start(ctx, name); err != nil {
			m.cfg.Log.Error("start pod", "pod", name, "err", err)
			errs = append(errs, err)
		}
	}
	return errs
}

// loadGuests re-registers the pods that peers migrated here (they have
// state but no definition file on this host) and re-adopts them.
func (m *Manager) loadGuests(ctx context.Context) []string {
	ents, _ := os.ReadDir(filepath.Join(m.cfg.StateDir, "pods"))
	var names []string
	for _, e := range ents {
		name := e.Name()
		m.mu.Lock()
		_, known := m.pods[name]
		m.mu.Unlock()
		if known || !e.IsDir() {
			continue
		}
		st, ok := m.readPersisted(name)
		if !ok || st.Home == "" || st.Spec == nil {
			continue
		}
		p := &pod{spec: *st.Spec, st: st}
		m.mu.Lock()
		m.pods[name] = p
		m.mu.Unlock()
		names = append(names, name)
		if st.Migration != nil {
			m.recoverMigration(ctx, p)
			continue
		}
		if !m.adopt(p) {
			m.cfg.Log.Warn("guest pod from a peer died while the agent was away", "pod", name, "home", st.Home)
			m.cleanup(ctx, name)
			m.mu.Lock()
			m.setState(p, StateFailed, "exited while the agent was not running")
			m.mu.Unlock()
		}
	}
	return names
}

// recoverMigration finishes or undoes a migration that a crash or restart
// of the agent interrupted, so that exactly one copy of the pod lives on.
func (m *Manager) recoverMigration(ctx context.Context, p *pod) {
	mg := *p.st.Migration
	name, pid := p.spec.Name, p.st.Pid
	live := pid > 0 && alive(pid) && initCmdline(pid)
	if live {
		if t, err := procStartTime(pid); err != nil || t != p.st.StartTime {
			live = false
		}
	}
	log := m.cfg.Log.With("pod", name, "peer", mg.Peer, "txn", mg.Txn, "role", mg.Role, "phase", mg.Phase)
	m.mu.Lock()
	if live {
		p.exited = make(chan struct{})
	}
	m.mu.Unlock()
	if live {
		go m.watch(p, pid)
	}
	switch {
	case mg.Role == "out" && mg.Phase == "commit":
		// The decision was commit: the peer owns the pod; finish here.
		log.Info("finishing a committed migration after restart")
		m.mu.Lock()
		p.stopping = true
		ch := p.exited
		m.mu.Unlock()
		if live {
			m.killFrozen(name, pid, ch)
		} else {
			m.cleanup(ctx, name)
		}
		m.finishOut(p, mg.Txn, mg.Peer)
	case mg.Role == "out" && mg.Phase == "postcopy":
		m.clearOutgoing(ctx, name)
		// The peer may run the pod with all its memory, or have destroyed
		// an incomplete copy: only it knows. Until it says, this frozen
		// copy stays frozen and cut off.
		log.Warn("an outgoing post-copy migration was interrupted; asking the peer how it ended")
		go m.resolvePostcopy(p, mg.Txn, mg.Peer)
	case mg.Role == "out":
		// No commit decision was made: the source copy is the pod. Resume it.
		log.Warn("undoing an interrupted outgoing migration: resuming the pod here")
		if live {
			m.clearOutgoing(ctx, name)
			if p.spec.Network.Address.IsValid() {
				_ = setPortForwarding(ctx, hostVeth(name), true)
			}
			_ = releaseNetworkLock(ctx, pid)
			if err := m.cg.freeze(name, false); err != nil {
				log.Error("thaw pod", "err", err)
			}
			m.mu.Lock()
			p.st.Migration = nil
			m.setState(p, StateRunning, "resumed after an interrupted migration to "+mg.Peer)
			m.mu.Unlock()
			return
		}
		m.cleanup(ctx, name)
		m.mu.Lock()
		p.st.Migration = nil
		m.setState(p, StateFailed, "died during an interrupted migration to "+mg.Peer)
		m.mu.Unlock()
	case mg.Role == "in" && mg.Phase == "restored" && live:
		// Restored but never exposed: the source decides.
		log.Warn("incoming migration was interrupted after restore; asking the source")
		go m.resolveIncoming(p, mg.Txn, mg.Peer)
	default:
		// Incoming, not restored (or its copy died): nothing here is the pod.
		log.Warn("dropping an interrupted incoming migration")
		if live {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		m.cleanup(ctx, name)
		m.mu.Lock()
		p.st.Migration, p.st.Pid = nil, 0
		if p.st.Home != "" {
			delete(m.pods, name)
			os.RemoveAll(m.podDir(name))
		} else {
			m.setState(p, StateMigrated, "")
		}
		m.mu.Unlock()
	}
}

// adopt re-attaches to a pod whose init is still alive.
func (m *Manager) adopt(p *pod) bool {
	pid := p.st.Pid
	if pid <= 0 || !alive(pid) || !initCmdline(pid) {
		return false
	}
	if t, err := procStartTime(pid); err != nil || t != p.st.StartTime {
		return false
	}
	m.mu.Lock()
	p.exited = make(chan struct{})
	if p.st.State != StateRunning {
		m.setState(p, StateRunning, "")
	}
	m.mu.Unlock()
	m.cfg.Log.Info("re-adopted running pod", "pod", p.spec.Name, "pid", pid)
	go m.watch(p, pid)
	return true
}

// List returns every known pod, sorted by name.
func (m *Manager) List(ctx context.Context) []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.pods))
	for _, p := range m.pods {
		out = append(out, m.status(p))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns one pod's status.
func (m *Manager) Get(ctx context.Context, name string) (Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pods[name]
	if !ok {
		return Status{}, fmt.Errorf("%q: %w", name, ErrNotFound)
	}
	return m.status(p), nil
}

func (m *Manager) status(p *pod) Status {
	s := Status{Name: p.spec.Name, State: p.st.State, File: p.spec.File, Since: p.st.Since,
		Restarts: p.st.Restarts, Checkpoint: p.st.Checkpoint, Error: p.st.Error,
		Home: p.st.Home, Location: p.st.Location, MemoryLimit: p.spec.Limits.MemoryBytes}
	if p.st.State == StateRunning || p.st.State == StateCheckpointing || p.st.State == StateMigrating {
		s.Pid = p.st.Pid
	}
	if p.spec.Network.Address.IsValid() {
		s.Address = p.spec.Network.Address.Addr().String()
	}
	return s
}

// claim marks a pod busy for one operation after checking its state.
func (m *Manager) claim(name string, allowed ...State) (*pod, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pods[name]
	if !ok {
		return nil, fmt.Errorf("%q: %w", name, ErrNotFound)
	}
	if p.invalid != nil {
		return nil, p.invalid
	}
	if p.busy {
		return nil, fmt.Errorf("%q: %w", name, ErrBusy)
	}
	for _, s := range allowed {
		if p.st.State == s {
			p.busy = true
			return p, nil
		}
	}
	switch p.st.State {
	case StateRunning:
		return nil, fmt.Errorf("%q: %w", name, ErrRunning)
	case StateMigrated:
		return nil, fmt.Errorf("%q runs on %s (autopodctl return brings it back): %w", name, p.st.Location, ErrMigrated)
	default:
		return nil, fmt.Errorf("%q is %s: %w", name, p.st.State, ErrNotRunning)
	}
}

func (m *Manager) release(p *pod) {
	m.mu.Lock()
	p.busy = false
	m.mu.Unlock()
}

// Start launches a stopped (or failed) pod.
func (m *Manager) Start(ctx context.Context, name string) error {
	p, err := m.claim(name, StateStopped, StateFailed, StateCheckpointed)
	if err != nil {
		return err
	}
	defer m.release(p)
	return m.start(ctx, p)
}

func (m *Manager) start(ctx context.Context, p *pod) error {
	m.mu.Lock()
	if p.next != nil {
		p.spec, p.next = *p.next, nil
	}
	s := p.spec
	p.st.Spec, p.st.InitHash, p.st.Pid = &s, m.initHash, 0
	m.setState(p, StateStarting, "")
	m.mu.Unlock()
	launchSpec := s
	launchSpec.Network.Bridge = m.bridgeFor(s)
	pid, err := m.launch(ctx, launchSpec)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.setState(p, StateFailed, err.Error())
		return fmt.Errorf("start %s: %w", s.Name, err)
	}
	p.st.Pid = pid
	p.st.StartTime, _ = procStartTime(pid)
	p.stopping = false
	p.exited = make(chan struct{})
	m.setState(p, StateRunning, "")
	m.cfg.Log.Info("pod started", "pod", s.Name, "pid", pid, "address", s.Network.Address)
	go m.watch(p, pid)
	return nil
}

// rootFS is the directory the pod sees as "/".
func rootFS(s Spec) string {
	if s.Root.Mode == RootDir {
		return s.Root.Path
	}
	return "/"
}

// launch creates the pod's namespaces, cgroups and network and waits until
// its init runs the workload. On failure nothing is left behind.
func (m *Manager) launch(ctx context.Context, s Spec) (pid int, err error) {
	uid, gid, groups, err := lookupUser(rootFS(s), s.User)
	if err != nil {
		return 0, err
	}
	dir := m.podDir(s.Name)
	staging := filepath.Join(dir, "staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return 0, err
	}
	if err := m.cg.create(s.Name, s.Limits); err != nil {
		return 0, err
	}
	if s.Network.Address.IsValid() {
		if err := m.ensureBridge(ctx, s.Network.Bridge); err != nil {
			m.cg.remove(s.Name)
			return 0, err
		}
	}
	logf, err := os.OpenFile(m.logPath(s.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- autopod: starting pod %s at %s\n", s.Name, time.Now().UTC().Format(time.RFC3339))
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer pr.Close()
	defer pw.Close()
	cmd := exec.Command(m.cfg.InitBinary, InitSetupArg)
	cmd.Args[0] = "autopod-init"
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pr}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid: true, // CRIU dumps a tree whose root leads its own session
		Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWUTS |
			unix.CLONE_NEWIPC | unix.CLONE_NEWNET,
	}
	if err := cmd.Start(); err != nil {
		m.cg.remove(s.Name)
		return 0, fmt.Errorf("start init: %w", err)
	}
	pid = cmd.Process.Pid
	_ = cmd.Process.Release() // watch() reaps it by pid
	pr.Close()
	defer func() {
		if err != nil {
			_ = unix.Kill(pid, unix.SIGKILL)
			waitExit(pid)
			m.cleanup(context.Background(), s.Name)
		}
	}()
	if err := m.cg.join(s.Name, pid); err != nil {
		return pid, err
	}
	if err := setupNetwork(ctx, s, pid); err != nil {
		return pid, err
	}
	cfg := initConfig{Spec: s, RootFS: rootFS(s), Staging: staging, InitFile: m.initPath(m.initHash),
		LogFile: m.logPath(s.Name), UID: uid, GID: gid, Groups: groups, HasNet: s.Network.Address.IsValid()}
	data, _ := json.Marshal(cfg)
	if _, err := pw.Write(data); err != nil {
		return pid, fmt.Errorf("hand configuration to init: %w", err)
	}
	pw.Close()
	// Wait for stage 2 to run the workload: then its signal handlers are
	// in place (a pid namespace's init ignores signals it has no handler
	// for, so an early SIGTERM would be lost) and the pod is really up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), InitRunArg) {
			if hasChildren(pid) {
				return pid, nil
			}
		}
		if !alive(pid) {
			return pid, fmt.Errorf("pod init exited during setup (%s); see %s", waitExit(pid), m.logPath(s.Name))
		}
		if time.Now().After(deadline) {
			return pid, fmt.Errorf("pod init did not finish setup in 10s; see %s", m.logPath(s.Name))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bridgeFor is the bridge a pod attaches to: its own, else the agent's.
func (m *Manager) bridgeFor(s Spec) string {
	if s.Network.Bridge != "" {
		return s.Network.Bridge
	}
	return m.cfg.Bridge
}

func (m *Manager) ensureBridge(ctx context.Context, bridge string) error {
	var addr netip.Prefix
	if bridge == m.cfg.Bridge {
		addr = m.cfg.BridgeAddress
	}
	return EnsureBridge(ctx, bridge, addr)
}

// cleanup removes what a pod leaves on the host once its processes are gone.
func (m *Manager) cleanup(ctx context.Context, name string) {
	for _, pid := range m.cg.procs(name) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	// Killed tasks of a frozen cgroup die only once it thaws; they run
	// no code of their own before that.
	_ = m.cg.freeze(name, false)
	// The veth goes first, and its filters with it: until then, a hold
	// cuts off what the dying copy sends (FINs, resets, sent again on
	// their timers).
	if err := removeVeth(ctx, name); err != nil {
		m.cfg.Log.Warn("remove veth", "pod", name, "err", err)
	}
	m.dropHolds(name)
	// Left by an incoming migration that did not finish (see tmpfs.go).
	if err := unmountTmpfsDirs(filepath.Join(m.podDir(name), "tmpfs")); err != nil {
		m.cfg.Log.Warn("detach the tmpfs of an incoming pod", "pod", name, "err", err)
	}
	if err := m.cg.remove(name); err != nil {
		m.cfg.Log.Warn("remove cgroups", "pod", name, "err", err)
	}
}

// watch waits for the pod's init to exit and applies the restart policy
// unless the exit was asked for (stop, checkpoint).
func (m *Manager) watch(p *pod, pid int) {
	how := waitExit(pid)
	m.mu.Lock()
	if p.st.Pid != pid {
		m.mu.Unlock()
		return
	}
	close(p.exited)
	if p.stopping || p.busy {
		m.mu.Unlock()
		return
	}
	name := p.spec.Name
	failed := how != "exit status 0"
	restart := p.spec.Restart == RestartAlways || (p.spec.Restart == RestartOnFailure && failed)
	m.cfg.Log.Warn("pod exited", "pod", name, "pid", pid, "how", how, "restart", restart)
	if !restart {
		st := StateStopped
		if failed {
			st = StateFailed
		}
		m.setState(p, st, "pod "+how)
		m.mu.Unlock()
		m.cleanup(context.Background(), name)
		return
	}
	delay := RestartDelay << min(p.st.Restarts, 6)
	if delay > MaxRestartDelay {
		delay = MaxRestartDelay
	}
	p.st.Restarts++
	p.busy = true
	m.setState(p, StateFailed, fmt.Sprintf("pod %s; restarting in %s", how, delay))
	m.mu.Unlock()
	m.cleanup(context.Background(), name)
	time.Sleep(delay)
	defer m.release(p)
	m.mu.Lock()
	cancelled := p.stopping
	m.mu.Unlock()
	if !cancelled {
		if err := m.start(context.Background(), p); err != nil {
			m.cfg.Log.Error("restart pod", "pod", name, "err", err)
		}
	}
}

// signalAndWait sends sig to the pod's init and waits up to d for it to exit.
func (m *Manager) signalAndWait(p *pod, sig unix.Signal, d time.Duration) bool {
	m.mu.Lock()
	pid, ch := p.st.Pid, p.exited
	m.mu.Unlock()
	if ch == nil {
		return true
	}
	_ = unix.Kill(pid, sig)
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop terminates a running pod: SIGTERM to its workload, SIGKILL to the
// whole pod after the stop timeout. Its cgroups and veth are removed.
func (m *Manager) Stop(ctx context.Context, name string) error {
	p, err := m.claim(name, StateRunning, StateFailed)
	if err != nil {
		return err
	}
	defer m.release(p)
	m.mu.Lock()
	p.stopping = true
	wasRunning := p.st.State == StateRunning
	m.mu.Unlock()
	if wasRunning {
		if !m.signalAndWait(p, unix.SIGTERM, m.cfg.StopTimeout) {
			m.cfg.Log.Warn("pod did not stop in time; killing it", "pod", name)
			if !m.signalAndWait(p, unix.SIGKILL, 10*time.Second) {
				return fmt.Errorf("stop %s: pod init %d does not die", name, p.st.Pid)
			}
		}
	}
	m.cleanup(ctx, name)
	m.mu.Lock()
	m.setState(p, StateStopped, "")
	m.mu.Unlock()
	return nil
}

// extMounts maps the pod's bind-mount targets to their host sources; CRIU
// treats them as external mounts, bound again from the sources on restore.
//
// The pod's /dev, a bind of the host's devtmpfs (buildMounts), is external
// too: CRIU would otherwise mount a devtmpfs afresh on restore and, when
// that superblock's device number differs from the dumping host's (another
// kernel, or only another boot order), look for an image of its contents
// that no dump writes and fail. The restore binds the host's /dev instead;
// the mounts below it (pts, shm, mqueue) are the pod's own and dumped.
func (m *Manager) extMounts(s Spec, initHash string) map[string]string {
	em := map[string]string{podInitPath: m.initPath(initHash), podLogPath: m.logPath(s.Name), "/dev": "/dev"}
	for _, b := range s.Mounts {
		em[b.Target] = b.Source
	}
	return em
}

// Checkpoint dumps a running pod with CRIU into a new image directory.
// Unless opts.LeaveRunning, the pod stops when the dump succeeds. On any
// failure the pod keeps running and its network is unlocked.
func (m *Manager) Checkpoint(ctx context.Context, name string, opts CheckpointOptions) (CheckpointResult, error) {
	var res CheckpointResult
	p, err := m.claim(name, StateRunning)
	if err != nil {
		return res, err
	}
	defer m.release(p)
	m.mu.Lock()
	s, pid, initHash, prev := p.spec, p.st.Pid, p.st.InitHash, p.st.Checkpoint
	m.mu.Unlock()
	if err := checkpointable(s); err != nil {
		return res, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	m.mu.Lock()
	p.stopping = !opts.LeaveRunning
	m.setState(p, StateCheckpointing, "")
	m.mu.Unlock()

	dir := filepath.Join(m.podDir(name), "checkpoints", time.Now().UTC().Format("20060102T150405.000000000Z"))
	workDir := filepath.Join(m.podDir(name), "criu-logs")
	for _, d := range []string{dir, workDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return res, m.checkpointFailed(ctx, p, dir, err)
		}
	}
	req := criuRequest{ImagesDir: dir, WorkDir: workDir, LogName: "dump.log", Pid: pid,
		LeaveRunning: opts.LeaveRunning, ExtMounts: m.extMounts(s, initHash)}
	if m.fault != nil {
		req.notify = faultNotify{fault: m.fault}
	}
	start := time.Now()
	if err := m.criu.Dump(ctx, req); err != nil {
		return res, m.checkpointFailed(ctx, p, dir, err)
	}
	res.Duration = time.Since(start)
	host, _ := os.Hostname()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	man := &Manifest{Pod: s, Created: time.Now().UTC(), Host: host, Kernel: unix.ByteSliceToString(uts.Release[:]),
		CriuVersion: m.criuVersion, InitPid: pid, LeftRunning: opts.LeaveRunning,
		Duration: res.Duration, InitHash: initHash}
	if err := WriteManifest(dir, man); err != nil {
		return res, m.checkpointFailed(ctx, p, dir, fmt.Errorf("write manifest: %w", err))
	}
	res.Dir, res.Bytes = dir, man.TotalBytes
	m.mu.Lock()
	ch := p.exited
	m.mu.Unlock()
	if !opts.LeaveRunning {
		select { // CRIU has killed the tree; let watch() reap it
		case <-ch:
		case <-time.After(10 * time.Second):
			m.cfg.Log.Warn("checkpointed pod did not exit", "pod", name)
		}
		m.cleanup(ctx, name)
	}
	m.mu.Lock()
	p.st.Checkpoint = dir
	if opts.LeaveRunning {
		p.stopping = false
		m.setState(p, StateRunning, "")
	} else {
		m.setState(p, StateCheckpointed, "")
	}
	m.mu.Unlock()
	if prev != "" && prev != dir {
		_ = os.RemoveAll(prev) // keep only the newest complete checkpoint
	}
	m.cfg.Log.Info("pod checkpointed", "pod", name, "dir", dir, "bytes", res.Bytes, "duration", res.Duration)
	return res, nil
}

// checkpointable refuses, before anything is frozen, pods that CRIU could
// not dump here. CRIU reads every task's rlimits with prlimit(2), which for
// a task of another user needs CAP_SYS_RESOURCE; some sandboxes give root
// every capability but that one.
func checkpointable(s Spec) error {
	uid, _, _, err := lookupUser(rootFS(s), s.User)
	if err != nil {
		return err
	}
	if uid != 0 && !hasCapability(unix.CAP_SYS_RESOURCE) {
		return fmt.Errorf("pod runs as uid %d and the agent lacks CAP_SYS_RESOURCE, which CRIU needs to read the rlimits of another user's processes: %w", uid, ErrNotCheckpointable)
	}
	return nil
}

// hasCapability reports whether this process has cap in its effective set.
func hasCapability(cp int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<uint(cp)) != 0
		}
	}
	return false
}

// checkpointFailed restores a consistent state after a failed dump: the pod
// runs on (CRIU thaws it), its network lock is removed, the partial image
// directory is deleted.
func (m *Manager) checkpointFailed(ctx context.Context, p *pod, dir string, cause error) error {
	_ = os.RemoveAll(dir)
	m.mu.Lock()
	pid := p.st.Pid
	m.mu.Unlock()
	if alive(pid) {
		if err := releaseNetworkLock(ctx, pid); err != nil {
			m.cfg.Log.Error("release network lock after failed checkpoint", "pod", p.spec.Name, "err", err)
			cause = errors.Join(cause, fmt.Errorf("release network lock: %w", err))
		}
		m.mu.Lock()
		p.stopping = false
		m.setState(p, StateRunning, "checkpoint failed: "+firstLine(cause.Error()))
		m.mu.Unlock()
	} else {
		m.mu.Lock()
		m.setState(p, StateFailed, "pod died during a failed checkpoint: "+firstLine(cause.Error()))
		m.mu.Unlock()
		m.cleanup(ctx, p.spec.Name)
	}
	return fmt.Errorf("checkpoint %s: %w", p.spec.Name, cause)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// Restore brings a checkpointed pod back from its newest image directory:
// same inner pids, address, memory, open files and TCP connections. On
// failure the images are kept and the error quotes CRIU.
func (m *Manager) Restore(ctx context.Context, name string) error {
	p, err := m.claim(name, StateCheckpointed, StateStopped, StateFailed)
	if err != nil {
		return err
	}
	defer m.release(p)
	m.mu.Lock()
	dir, prevState, prevErr := p.st.Checkpoint, p.st.State, p.st.Error
	m.mu.Unlock()
	if dir == "" {
		return fmt.Errorf("%q: %w", name, ErrNoCheckpoint)
	}
	man, err := VerifyImages(dir)
	if err != nil {
		return fmt.Errorf("restore %s: %w", name, err)
	}
	s := man.Pod
	if _, err := os.Stat(m.initPath(man.InitHash)); err != nil {
		return fmt.Errorf("restore %s: the pod's init %s is missing: %w", name, man.InitHash, err)
	}
	m.mu.Lock()
	m.setState(p, StateRestoring, "")
	m.mu.Unlock()
	pid, err := m.restore(ctx, s, man, dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		p.st.State, p.st.Error = prevState, prevErr
		m.setState(p, prevState, "restore failed: "+firstLine(err.Error()))
		return fmt.Errorf("restore %s: %w", name, err)
	}
	p.spec = s
	p.st.Spec, p.st.InitHash, p.st.Pid = &s, man.InitHash, pid
	p.st.StartTime, _ = procStartTime(pid)
	p.stopping = false
	p.exited = make(chan struct{})
	m.setState(p, StateRunning, "")
	go m.watch(p, pid)
	m.cfg.Log.Info("pod restored", "pod", name, "pid", pid, "from", dir)
	return nil
}

func (m *Manager) restore(ctx context.Context, s Spec, man Manifest, dir string) (pid int, err error) {
	if err := m.cg.create(s.Name, s.Limits); err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			m.cleanup(context.Background(), s.Name)
		}
	}()
	req := criuRequest{ImagesDir: dir, WorkDir: filepath.Join(m.podDir(s.Name), "criu-logs"), LogName: "restore.log",
		Root: rootFS(s), ExtMounts: m.extMounts(s, man.InitHash), CgroupRoot: m.cg.relPath(s.Name), CgroupControllers: m.cg.controllers()}
	if s.Network.Address.IsValid() {
		if err := m.ensureBridge(ctx, m.bridgeFor(s)); err != nil {
			return 0, err
		}
		_ = removeVeth(ctx, s.Name)
		req.Veth, req.Bridge = hostVeth(s.Name), m.bridgeFor(s)
	}
	if f, err := os.OpenFile(m.logPath(s.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640); err == nil {
		fmt.Fprintf(f, "--- autopod: restoring pod %s from %s at %s\n", s.Name, dir, time.Now().UTC().Format(time.RFC3339))
		f.Close()
	}
	if err := os.MkdirAll(req.WorkDir, 0o700); err != nil {
		return 0, err
	}
	if m.fault != nil {
		req.notify = faultNotify{fault: m.fault}
	}
	pid, err = m.criu.Restore(ctx, req)
	if err != nil {
		return 0, err
	}
	if s.Network.Address.IsValid() {
		// CRIU enslaves the host end; make sure it is up, with the qdisc
		// a migration's traffic hold needs (addClsact: here, where the
		// link may be up already, it can cost a frame, not in a freeze).
		if err := addClsact(ctx, req.Veth); err != nil {
			m.cfg.Log.Warn("add clsact qdisc", "pod", s.Name, "err", err)
		}
		if _, err := run(ctx, "ip", "link", "set", req.Veth, "up"); err != nil {
			m.cfg.Log.Warn("bring veth up", "pod", s.Name, "err", err)
		}
	}
	return pid, nil
}
