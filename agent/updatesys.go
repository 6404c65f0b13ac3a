package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/autopod/autopod/atomicfile"
	"github.com/autopod/autopod/cycle"
	"github.com/autopod/autopod/fleetlock"
	"github.com/autopod/autopod/hooks"
	"github.com/autopod/autopod/logind"
	"github.com/autopod/autopod/pods"
	"github.com/autopod/autopod/updater"
)

// This file connects the update cycle (package cycle) to the real systems
// it drives: updater for detection, the pod runtime, the peers (the lease
// and the question whether they take the pods), systemd-logind, apt-get
// or dnf, and the reboot. docs/update-cycle.md has the contracts.

// CycleDetector is cycle.Detector over updater.Detector.
type CycleDetector struct{ D *updater.Detector }

// Check runs the package manager's detection and translates its report.
func (c CycleDetector) Check(ctx context.Context) (cycle.CheckResult, error) {
	r, err := c.D.Check(ctx)
	if err != nil {
		return cycle.CheckResult{}, err
	}
	res := cycle.CheckResult{At: r.Checked, RebootRequired: r.RebootRequired}
	for _, u := range r.Updates {
		if u.To == "" {
			continue // a removal installs nothing
		}
		res.Updates = append(res.Updates, cycle.Update{Name: u.Name, Version: u.To, Class: cycleClass(u.Class)})
	}
	for _, why := range r.Reasons {
		s := string(why.Kind) + ": " + why.Detail
		if len(why.Packages) > 0 {
			s += " (" + strings.Join(why.Packages, ", ") + ")"
		}
		res.Reasons = append(res.Reasons, s)
	}
	return res, nil
}

func cycleClass(c updater.Class) cycle.Class {
	switch c {
	case updater.ClassKernel:
		return cycle.ClassKernel
	case updater.ClassBootCritical:
		return cycle.ClassBoot
	}
	return cycle.ClassOther
}

// CyclePods is cycle.Pods over the pod runtime: this host's own pods,
// never the guests other hosts moved here.
type CyclePods struct {
	Mgr      *pods.Manager
	Progress func(pods.MigrationProgress)
	// Fault, for failure tests only, is called at the step "evacuate"
	// (see AUTOPOD_FAULT_INJECT).
	Fault func(step string) error
}

func (c CyclePods) fault(step string) error {
	if c.Fault == nil {
		return nil
	}
	return c.Fault(step)
}

// List reports this host's own pods and where each is.
func (c CyclePods) List(ctx context.Context) ([]cycle.Pod, error) {
	var out []cycle.Pod
	for _, s := range c.Mgr.List(ctx) {
		if s.Home != "" || s.State == pods.StateInvalid {
			continue
		}
		p := cycle.Pod{Name: s.Name, Memory: uint64(max(s.MemoryLimit, 0))}
		switch s.State {
		case pods.StateRunning, pods.StateMigrating, pods.StateCheckpointing:
			p.Running = true
		case pods.StateMigrated:
			p.Peer = s.Location
		case pods.StateCheckpointed:
			p.Checkpointed = true
		}
		out = append(out, p)
	}
	return out, nil
}

// Evacuate migrates every own pod running here to peer.
func (c CyclePods) Evacuate(ctx context.Context, peer string) error {
	if err := c.fault("evacuate"); err != nil {
		return err
	}
	list, _ := c.List(ctx)
	var errs []error
	for _, p := range list {
		if !p.Running {
			continue
		}
		if _, err := c.Mgr.Migrate(ctx, p.Name, peer, c.Progress); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Return pulls this host's pods back from the peers they run on.
func (c CyclePods) Return(ctx context.Context) error {
	_, err := c.Mgr.Return(ctx, c.Progress)
	return err
}

// CheckpointLocal checkpoints the named pods to disk and stops them.
func (c CyclePods) CheckpointLocal(ctx context.Context, names []string) error {
	if err := c.fault("evacuate"); err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		st, err := c.Mgr.Get(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st.State != pods.StateRunning {
			continue
		}
		if _, err := c.Mgr.Checkpoint(ctx, n, pods.CheckpointOptions{}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RestoreLocal restores the named pods from their checkpoints here.
func (c CyclePods) RestoreLocal(ctx context.Context, names []string) error {
	var errs []error
	for _, n := range names {
		st, err := c.Mgr.Get(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st.State == pods.StateRunning {
			continue
		}
		if err := c.Mgr.Restore(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ---- peers: who takes the pods, and the lease -----------------------------

// Peer requests of the update cycle (answered by UpdatePeerService).
const (
	reqCanTake      = "update-can-take"
	reqLeaseAcquire = "update-lease-acquire"
	reqLeaseRelease = "update-lease-release"
)

type canTakeReq struct {
	Pods   []string `json:"pods"`
	Memory uint64   `json:"memory"` // the sum of the pods' memory limits
}
type peerAnswer struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// peerDialer is how the cycle's adapters reach peers.
type peerDialer interface {
	DialPeer(ctx context.Context, name string) (pods.MigrationConn, error)
	ListPeers() ([]PeerInfo, error)
}

// peerNames returns the configured peers in order, or every pinned peer.
func peerNames(d peerDialer, configured []string) ([]string, error) {
	if len(configured) > 0 {
		return configured, nil
	}
	infos, err := d.ListPeers()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range infos {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	return names, nil
}

// ask sends one request to a peer and reads its answer.
func ask(ctx context.Context, d peerDialer, peer, typ string, body any) (peerAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := d.DialPeer(ctx, peer)
	if err != nil {
		return peerAnswer{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := conn.Send(typ, body); err != nil {
		return peerAnswer{}, err
	}
	var a peerAnswer
	if err := conn.Expect(typ+"-answer", &a); err != nil {
		return peerAnswer{}, err
	}
	return a, nil
}

// CyclePeers is cycle.Peers: it asks each peer in turn.
type CyclePeers struct {
	Dialer     peerDialer
	Configured []string
}

// Choose returns the first peer that takes all of pods.
func (c CyclePeers) Choose(ctx context.Context, list []cycle.Pod) (string, error) {
	names, err := peerNames(c.Dialer, c.Configured)
	if err != nil {
		return "", err
	}
	req := canTakeReq{}
	for _, p := range list {
		req.Pods = append(req.Pods, p.Name)
		req.Memory += p.Memory
	}
	var refusals []cycle.Refusal
	for _, n := range names {
		a, err := ask(ctx, c.Dialer, n, reqCanTake, req)
		switch {
		case err != nil:
			refusals = append(refusals, cycle.Refusal{Peer: n, Reason: err.Error()})
		case !a.OK:
			refusals = append(refusals, cycle.Refusal{Peer: n, Reason: a.Reason})
		default:
			return n, nil
		}
	}
	return "", &cycle.NoPeerError{Refusals: refusals}
}

// LeaseStore is this host's side of the lease between peers: which peer
// it granted the lease to (at most one), kept durably so that neither a
// crash nor the reboot forgets it.
type LeaseStore struct {
	path string
	mu   sync.Mutex
}

type leaseFile struct {
	Holder string    `json:"holder"` // the peer this host let update
	Since  time.Time `json:"since"`
}

// NewLeaseStore keeps the lease in path.
func NewLeaseStore(path string) *LeaseStore { return &LeaseStore{path: path} }

func (s *LeaseStore) read() (leaseFile, error) {
	var l leaseFile
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	return l, json.Unmarshal(data, &l)
}

func (s *LeaseStore) write(l leaseFile) error {
	data, _ := json.Marshal(l)
	return atomicfile.WriteFile(s.path, data, 0o600)
}

// Holder returns the peer holding the lease this host granted, "" if none.
func (s *LeaseStore) Holder() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, _ := s.read()
	return l.Holder
}

// grant gives the lease to peer unless another peer holds it or busy (this
// host's own cycle holds it) says no.
func (s *LeaseStore) grant(peer string, busy func() error) peerAnswer {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, err := s.read()
	if err != nil {
		return peerAnswer{Reason: "cannot read the lease: " + err.Error()}
	}
	if l.Holder != "" && l.Holder != peer {
		return peerAnswer{Reason: "the lease is held by " + l.Holder}
	}
	if err := busy(); err != nil {
		return peerAnswer{Reason: err.Error()}
	}
	if l.Holder == peer {
		return peerAnswer{OK: true}
	}
	if err := s.write(leaseFile{Holder: peer, Since: time.Now().UTC()}); err != nil {
		return peerAnswer{Reason: "cannot record the lease: " + err.Error()}
	}
	return peerAnswer{OK: true}
}

func (s *LeaseStore) release(peer string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, err := s.read()
	if err != nil {
		return err
	}
	if l.Holder != peer {
		return nil
	}
	return s.write(leaseFile{})
}

// CycleLock is cycle.Lock: the lease from every peer (two peers never
// update at once), and a FleetLock server's lock when one is configured.
type CycleLock struct {
	Dialer     peerDialer
	Configured []string
	Store      *LeaseStore
	Fleet      *fleetlock.Client // nil: none
}

// Acquire takes the lease from every peer; a peer that does not answer
// refuses (it may be rebooting).
func (c CycleLock) Acquire(ctx context.Context) error {
	if h := c.Store.Holder(); h != "" {
		return fmt.Errorf("this host let %s update first; it has not given the lease back", h)
	}
	names, err := peerNames(c.Dialer, c.Configured)
	if err != nil {
		return err
	}
	var got []string
	for _, n := range names {
		a, err := ask(ctx, c.Dialer, n, reqLeaseAcquire, struct{}{})
		if err == nil && !a.OK {
			err = errors.New(a.Reason)
		}
		if err != nil {
			for _, g := range got {
				_, _ = ask(context.Background(), c.Dialer, g, reqLeaseRelease, struct{}{})
			}
			return fmt.Errorf("lease from %s: %w", n, err)
		}
		got = append(got, n)
	}
	if c.Fleet != nil {
		if err := c.Fleet.Lock(ctx); err != nil {
			for _, g := range got {
				_, _ = ask(context.Background(), c.Dialer, g, reqLeaseRelease, struct{}{})
			}
			return err
		}
	}
	return nil
}

// Release gives the lease back to every peer (and the FleetLock server).
func (c CycleLock) Release(ctx context.Context) error {
	names, err := peerNames(c.Dialer, c.Configured)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		a, err := ask(ctx, c.Dialer, n, reqLeaseRelease, struct{}{})
		if err == nil && !a.OK {
			err = errors.New(a.Reason)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("release the lease at %s: %w", n, err))
		}
	}
	if c.Fleet != nil {
		if err := c.Fleet.Unlock(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// UpdatePeerService answers the update cycle's peer requests.
type UpdatePeerService struct {
	Store *LeaseStore
	// Accept says whether this host takes pods now (nil: yes), i.e. its
	// own cycle is not running.
	Accept func() error
	// MemAvailable reads /proc/meminfo's MemAvailable (tests replace it).
	MemAvailable func() (uint64, error)
	Log          *slog.Logger
}

// Handle is a pods.Manager request handler.
func (s *UpdatePeerService) Handle(ctx context.Context, conn pods.MigrationConn, typ string, body json.RawMessage) (bool, error) {
	peer := conn.PeerName()
	busy := func() error {
		if s.Accept == nil {
			return nil
		}
		return s.Accept()
	}
	var a peerAnswer
	switch typ {
	case reqCanTake:
		var req canTakeReq
		if err := json.Unmarshal(body, &req); err != nil {
			return true, err
		}
		a = s.canTake(req, busy)
	case reqLeaseAcquire:
		a = s.Store.grant(peer, busy)
	case reqLeaseRelease:
		if err := s.Store.release(peer); err != nil {
			a = peerAnswer{Reason: err.Error()}
		} else {
			a = peerAnswer{OK: true}
		}
	default:
		return false, nil
	}
	if s.Log != nil {
		s.Log.Info("update cycle request from peer", "peer", peer, "request", typ, "ok", a.OK, "reason", a.Reason)
	}
	return true, conn.Send(typ+"-answer", a)
}

func (s *UpdatePeerService) canTake(req canTakeReq, busy func() error) peerAnswer {
	if err := busy(); err != nil {
		return peerAnswer{Reason: err.Error()}
	}
	mem := s.MemAvailable
	if mem == nil {
		mem = memAvailable
	}
	if req.Memory > 0 {
		avail, err := mem()
		if err != nil {
			return peerAnswer{Reason: "cannot read the free memory: " + err.Error()}
		}
		if avail < req.Memory+req.Memory/10 {
			return peerAnswer{Reason: fmt.Sprintf("not enough memory: the pods may use %d MiB, %d MiB available", req.Memory>>20, avail>>20)}
		}
	}
	return peerAnswer{OK: true}
}

// memAvailable returns MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no MemAvailable in /proc/meminfo")
}

// ---- logind -----------------------------------------------------------------

// CycleInhibitor is cycle.Inhibitor over systemd-logind. Where logind does
// not run (containers without systemd, the test-bed) there is nothing to
// inhibit: Delay and Blockers say so in the log and succeed.
type CycleInhibitor struct {
	Client *logind.Client // nil: no logind
	Log    *slog.Logger
}

// Delay takes a delay lock on shutdown and sleep.
func (c CycleInhibitor) Delay(ctx context.Context, why string) (func(), error) {
	if c.Client == nil {
		return func() {}, nil
	}
	l, err := c.Client.Inhibit(ctx, "shutdown:sleep", "autopod", why, logind.ModeDelay)
	if errors.Is(err, logind.ErrLogindNotRunning) {
		c.Log.Warn("systemd-logind is not running: no delay lock held while the pods move", "why", why)
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	return func() { _ = l.Release() }, nil
}

// Blockers lists the block-mode shutdown locks.
func (c CycleInhibitor) Blockers(ctx context.Context) ([]cycle.Blocker, error) {
	if c.Client == nil {
		return nil, nil
	}
	list, err := c.Client.Blockers(ctx, "shutdown")
	if errors.Is(err, logind.ErrLogindNotRunning) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []cycle.Blocker
	for _, i := range list {
		out = append(out, cycle.Blocker{Who: i.Who, Why: i.Why, What: strings.Join(i.What, ":"), PID: i.PID, UID: i.UID})
	}
	return out, nil
}

// ---- installing and rebooting ----------------------------------------------

// EnvInstalling is set for the package manager autopod runs itself, so
// that its own hooks know not to ask the agent.
const EnvInstalling = "AUTOPOD_INSTALLING"

// CycleInstaller is cycle.Installer: apt-get or dnf, non-interactive.
type CycleInstaller struct {
	Backend   updater.Backend
	AptConfig string // APT_CONFIG for apt-get, "" for the system's
	Log       *slog.Logger
}

// Install installs or upgrades the named packages.
func (c CycleInstaller) Install(ctx context.Context, updates []cycle.Update) error {
	if len(updates) == 0 {
		return nil
	}
	var names []string
	for _, u := range updates {
		names = append(names, u.Name)
	}
	// Its own hooks let this install through without asking the agent.
	env := append(os.Environ(), EnvInstalling+"=1", hooks.SkipEnv+"=skip", "DEBIAN_FRONTEND=noninteractive")
	switch c.Backend {
	case updater.Apt:
		if c.AptConfig != "" {
			env = append(env, "APT_CONFIG="+c.AptConfig)
		} else if err := c.run(ctx, env, "dpkg", "--configure", "-a"); err != nil {
			return err
		}
		// A run left by a stopped agent may still hold the lock: wait.
		args := append([]string{"-y", "-o", "DPkg::Lock::Timeout=1800", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", "install"}, names...)
		return c.run(ctx, env, "apt-get", args...)
	case updater.Dnf:
		return c.run(ctx, env, "dnf", append([]string{"-y", "install"}, names...)...)
	}
	return fmt.Errorf("no package manager to install with (backend %q)", c.Backend)
}

// run runs the package manager and waits for it, or for ctx. It is never
// killed: a package manager stopped half way leaves a broken system, and
// when the agent stops (an upgrade of autopod itself restarts it from this
// very apt run) the run must go on; KillMode=process leaves it alone, and
// the resumed cycle runs the install again, which waits for dpkg's lock.
func (c CycleInstaller) run(ctx context.Context, env []string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		c.Log.Warn("no longer waiting for the package manager; it goes on", "command", name, "pid", cmd.Process.Pid)
		return fmt.Errorf("%s (pid %d) still runs: %w", name, cmd.Process.Pid, ctx.Err())
	}
	c.Log.Info("package manager ran", "command", name+" "+strings.Join(args, " "), "duration", time.Since(start), "err", err)
	if err != nil {
		tail := out.String()
		if len(tail) > 4000 {
			tail = "…" + tail[len(tail)-4000:]
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(tail))
	}
	return nil
}

// CycleRebooter is cycle.Rebooter: through logind, or, for tests that
// cannot reboot, a command (AUTOPOD_TEST_REBOOT).
type CycleRebooter struct {
	Client  *logind.Client // nil: no logind
	Command string         // sh -c COMMAND instead of logind
	// DpkgLock is dpkg's frontend lock ("" on hosts without dpkg): no
	// reboot while apt still holds it. unattended-upgrades installs in
	// steps, and apt's post-invoke hook, which ends an apt-triggered
	// install for the cycle, runs after each step.
	DpkgLock string
	Log      *slog.Logger
}

// Reboot asks for the reboot, once no package manager is at work.
func (c CycleRebooter) Reboot(ctx context.Context, method cycle.RebootMethod) error {
	if c.DpkgLock != "" {
		for {
			pid, held, err := hooks.LockHolder(c.DpkgLock)
			if err != nil || !held {
				break
			}
			c.Log.Info("waiting for the package manager to finish before the reboot", "lock", c.DpkgLock, "pid", pid)
			select {
			case <-ctx.Done():
				return fmt.Errorf("the package manager (pid %d) still holds %s: %w", pid, c.DpkgLock, ctx.Err())
			case <-time.After(2 * time.Second):
			}
		}
	}
	if c.Command != "" {
		c.Log.Warn("rebooting with the test command instead of logind", "command", c.Command)
		cmd := exec.Command("sh", "-c", c.Command)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Start() // it may well kill this agent
	}
	if c.Client == nil {
		return errors.New("cannot reboot: no connection to systemd-logind")
	}
	if method == cycle.RebootKexec {
		if err := loadKexecKernel(ctx); err != nil {
			return err
		}
		return c.Client.RebootWithFlags(ctx, logind.FlagCheckInhibitors|logind.FlagKExec)
	}
	// Check inhibitors ourselves too: logind before 257 lets root through
	// block locks.
	return c.Client.RebootWithFlags(ctx, logind.FlagCheckInhibitors)
}

// loadKexecKernel loads the newest installed kernel for kexec.
func loadKexecKernel(ctx context.Context) error {
	if _, err := exec.LookPath("kexec"); err != nil {
		return errors.New("reboot_method is kexec but kexec-tools is not installed")
	}
	out, err := exec.CommandContext(ctx, "sh", "-c", `k=$(ls -1v /boot/vmlinuz-* | tail -n 1); v=${k#/boot/vmlinuz-}; kexec -l "$k" --initrd="/boot/initrd.img-$v" --reuse-cmdline`).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kexec -l: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// syncBuffer is a bytes.Buffer safe for a child's stdout and stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
