package cycle

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The simulated fleet: hosts, pods with their live copies, the lease
// between hosts, logind inhibitors, package versions and boot IDs. Every
// fake dependency acts on it, and it records every broken rule as a
// violation, so the tests check the world, not what the machine says.

// crashPanic is how a fake "kills" the agent: the test driver recovers it
// and drops the Machine, as if the process died at that point.
type crashPanic struct{ at string }

const (
	kernelPkg = "linux-image-amd64"
	oldKernel = "6.1.0-1"
	newKernel = "6.1.0-2"
)

type world struct {
	t   testing.TB
	mu  sync.Mutex
	now time.Time

	hosts map[string]*host
	pods  map[string]*fpod
	lease string // holder of the fleet lease, "" when free
	// leaseDown makes the lock server unreachable.
	leaseDown bool

	violations []string

	// Crash injection: every fake call passes crash points; the crashAt-th
	// one (counting from 1) panics with crashPanic. 0 never crashes.
	points  int
	crashAt int
	trace   []string
	// onPoint, if set, runs at every crash point (outside the lock).
	onPoint func(host, at string)
}

type host struct {
	name     string
	peers    []string
	capacity uint64 // memory available for guests

	bootID    string
	boots     int
	running   string            // running kernel
	installed map[string]string // package → version
	available []Update          // what the repository offers

	blockers      []Blocker
	delay         map[int]string // logind delay locks autopod holds
	delaySeq      int
	rebootPending bool
	ignoreReboot  bool // reboot requests are accepted and nothing happens

	// fail[op] > 0 makes the next fail[op] calls of op fail.
	fail map[string]int
	// accept, when set, is the peer-side check of the machine on this
	// host (Machine.AcceptPods).
	accept func() error

	installs, reboots, evacuations int
}

type fpod struct {
	name, home string
	memory     uint64
	live       map[string]bool // hosts running a live copy
	saved      bool            // checkpointed on its home's disk
}

func newWorld(t testing.TB) *world {
	return &world{
		t:     t,
		now:   time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC),
		hosts: map[string]*host{},
		pods:  map[string]*fpod{},
	}
}

func (w *world) addHost(name string, capacity uint64, peers ...string) *host {
	h := &host{
		name: name, peers: peers, capacity: capacity,
		bootID: name + "-boot-0", running: oldKernel,
		installed: map[string]string{kernelPkg: oldKernel, "libc6": "2.36-8", "vim": "9.0"},
		delay:     map[int]string{}, fail: map[string]int{},
	}
	w.hosts[name] = h
	return h
}

// offer puts updates in the host's repository.
func (h *host) offer(us ...Update) { h.available = append(h.available, us...) }

func kernelUpdate() Update { return Update{Name: kernelPkg, Version: newKernel, Class: ClassKernel} }

func (w *world) addPod(name, home string, memory uint64) {
	w.pods[name] = &fpod{name: name, home: home, memory: memory, live: map[string]bool{home: true}}
}

func (w *world) violate(format string, args ...any) {
	w.violations = append(w.violations, fmt.Sprintf(format, args...))
}

// point is a crash point. It must be called without w.mu held.
func (w *world) point(h, at string) {
	w.mu.Lock()
	w.points++
	n := w.points
	w.trace = append(w.trace, h+":"+at)
	hook := w.onPoint
	w.mu.Unlock()
	if hook != nil {
		hook(h, at)
	}
	if n == w.crashAt {
		panic(crashPanic{at: h + ":" + at})
	}
}

// failing consumes one injected failure of op. Called with w.mu held.
func (hs *host) failing(op string) error {
	if hs.fail[op] > 0 {
		hs.fail[op]--
		return fmt.Errorf("injected failure of %s on %s", op, hs.name)
	}
	return nil
}

func (w *world) usedOn(h string) uint64 {
	var n uint64
	for _, p := range w.pods {
		if p.live[h] && p.home != h {
			n += p.memory
		}
	}
	return n
}

// refusal is the reason peer refuses pods of the given memory, or "".
// Called with w.mu held.
func (w *world) refusal(peer string, mem uint64) string {
	ph := w.hosts[peer]
	if ph == nil {
		return "unknown peer"
	}
	if ph.accept != nil {
		w.mu.Unlock()
		err := ph.accept()
		w.mu.Lock()
		if err != nil {
			return err.Error()
		}
	}
	if free := ph.capacity - w.usedOn(peer); mem > free {
		return fmt.Sprintf("not enough memory: pods need %d, %d free", mem, free)
	}
	return ""
}

// checkPods checks that every pod has at most one live copy and is not
// lost (no live copy and no checkpoint).
func (w *world) checkPods(when string) {
	for _, name := range slices.Sorted(maps.Keys(w.pods)) {
		p := w.pods[name]
		switch n := len(p.live); {
		case n > 1:
			w.violate("%s: pod %s runs %d times: %v", when, name, n, slices.Sorted(maps.Keys(p.live)))
		case n == 0 && !p.saved:
			w.violate("%s: pod %s is lost", when, name)
		}
	}
}

// rebootHost reboots h: live copies on it die, autopod's process dies
// (the caller drops the Machine), the boot ID changes and the installed
// kernel runs.
func (w *world) rebootHost(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.hosts[name]
	h.rebootPending = false
	h.boots++
	h.bootID = fmt.Sprintf("%s-boot-%d", name, h.boots)
	h.running = h.installed[kernelPkg]
	clear(h.delay)
	for _, p := range w.pods {
		if p.live[name] {
			delete(p.live, name)
			w.violate("reboot of %s killed pod %s", name, p.name)
		}
	}
	w.now = w.now.Add(time.Minute)
	w.checkPods("after reboot of " + name)
}

// fake implements every dependency for one host.
type fake struct {
	w *world
	h string
}

func (f fake) host() *host { return f.w.hosts[f.h] }

func (f fake) Now() time.Time {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return f.w.now
}

func (f fake) BootID() (string, error) {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return f.host().bootID, nil
}

func (f fake) Check(ctx context.Context) (CheckResult, error) {
	f.w.point(f.h, "check")
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	h := f.host()
	if err := h.failing("check"); err != nil {
		return CheckResult{}, err
	}
	var res CheckResult
	for _, u := range h.available {
		if h.installed[u.Name] != u.Version {
			res.Updates = append(res.Updates, u)
		}
	}
	if h.running != h.installed[kernelPkg] {
		res.RebootRequired = true
		res.Reasons = []string{"/run/reboot-required: " + kernelPkg}
	}
	return res, nil
}

func (f fake) List(ctx context.Context) ([]Pod, error) {
	f.w.point(f.h, "list")
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	if err := f.host().failing("list"); err != nil {
		return nil, err
	}
	var out []Pod
	for _, name := range slices.Sorted(maps.Keys(f.w.pods)) {
		p := f.w.pods[name]
		if p.home != f.h {
			continue
		}
		pod := Pod{Name: name, Running: p.live[f.h], Checkpointed: p.saved, Memory: p.memory}
		for h := range p.live {
			if h != f.h {
				pod.Peer = h
			}
		}
		out = append(out, pod)
	}
	return out, nil
}

// ownPods lists the names of f's pods for which sel holds, sorted. Called
// with w.mu held.
func (f fake) ownPods(sel func(*fpod) bool) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(f.w.pods)) {
		if p := f.w.pods[name]; p.home == f.h && sel(p) {
			out = append(out, name)
		}
	}
	return out
}

// migrating checks the rules of every pod move. Called with w.mu held.
func (f fake) migrating(op string) {
	if len(f.host().delay) == 0 {
		f.w.violate("%s on %s without a logind delay lock", op, f.h)
	}
}

func (f fake) Evacuate(ctx context.Context, peer string) error {
	f.w.point(f.h, "evacuate")
	f.w.mu.Lock()
	f.migrating("evacuate")
	f.host().evacuations++
	names := f.ownPods(func(p *fpod) bool { return p.live[f.h] })
	f.w.mu.Unlock()
	var errs []error
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		f.w.mu.Lock()
		p := f.w.pods[name]
		err := f.host().failing("evacuate")
		if err == nil {
			if why := f.w.refusal(peer, p.memory); why != "" {
				err = fmt.Errorf("%s refused %s: %s", peer, name, why)
			}
		}
		if err == nil && p.live[f.h] {
			// The pod runtime's two-phase commit: all or nothing.
			delete(p.live, f.h)
			p.live[peer] = true
		}
		f.w.checkPods("evacuate")
		f.w.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
		f.w.point(f.h, "evacuate:"+name)
	}
	return errors.Join(errs...)
}

func (f fake) Return(ctx context.Context) error {
	f.w.point(f.h, "return")
	f.w.mu.Lock()
	f.migrating("return")
	names := f.ownPods(func(p *fpod) bool { return len(p.live) > 0 && !p.live[f.h] })
	f.w.mu.Unlock()
	var errs []error
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		f.w.mu.Lock()
		p := f.w.pods[name]
		err := f.host().failing("return")
		if err == nil {
			clear(p.live)
			p.live[f.h] = true
		}
		f.w.checkPods("return")
		f.w.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
		f.w.point(f.h, "return:"+name)
	}
	return errors.Join(errs...)
}

func (f fake) CheckpointLocal(ctx context.Context, names []string) error {
	f.w.point(f.h, "checkpoint")
	for _, name := range names {
		f.w.mu.Lock()
		f.migrating("checkpoint")
		err := f.host().failing("checkpoint")
		if p := f.w.pods[name]; err == nil && p != nil && p.live[f.h] {
			p.saved = true
			delete(p.live, f.h)
		}
		f.w.mu.Unlock()
		if err != nil {
			return err
		}
		f.w.point(f.h, "checkpoint:"+name)
	}
	return nil
}

func (f fake) RestoreLocal(ctx context.Context, names []string) error {
	f.w.point(f.h, "restore")
	for _, name := range names {
		f.w.mu.Lock()
		f.migrating("restore")
		err := f.host().failing("restore")
		if p := f.w.pods[name]; err == nil && p != nil && p.saved {
			// Deliberately naive: restoring a pod that runs elsewhere makes
			// a second copy, which checkPods reports.
			p.saved = false
			p.live[f.h] = true
		}
		f.w.checkPods("restore")
		f.w.mu.Unlock()
		if err != nil {
			return err
		}
		f.w.point(f.h, "restore:"+name)
	}
	return nil
}

func (f fake) Choose(ctx context.Context, pods []Pod) (string, error) {
	f.w.point(f.h, "choose")
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	var mem uint64
	for _, p := range pods {
		mem += p.Memory
	}
	var refusals []Refusal
	for _, peer := range f.host().peers {
		why := f.w.refusal(peer, mem)
		if why == "" {
			return peer, nil
		}
		refusals = append(refusals, Refusal{Peer: peer, Reason: why})
	}
	return "", &NoPeerError{Refusals: refusals}
}

func (f fake) Acquire(ctx context.Context) error {
	f.w.point(f.h, "acquire")
	f.w.mu.Lock()
	if f.w.leaseDown {
		f.w.mu.Unlock()
		return errors.New("lock server unreachable")
	}
	if f.w.lease != "" && f.w.lease != f.h {
		holder := f.w.lease
		f.w.mu.Unlock()
		return fmt.Errorf("lease held by %s", holder)
	}
	f.w.lease = f.h
	f.w.mu.Unlock()
	f.w.point(f.h, "acquire:after")
	return nil
}

func (f fake) Release(ctx context.Context) error {
	f.w.point(f.h, "release")
	f.w.mu.Lock()
	if f.w.leaseDown {
		f.w.mu.Unlock()
		return errors.New("lock server unreachable")
	}
	if f.w.lease == f.h {
		f.w.lease = ""
	}
	f.w.mu.Unlock()
	f.w.point(f.h, "release:after")
	return nil
}

func (f fake) Delay(ctx context.Context, why string) (func(), error) {
	f.w.point(f.h, "delay")
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	h := f.host()
	if err := h.failing("delay"); err != nil {
		return nil, err
	}
	h.delaySeq++
	id := h.delaySeq
	h.delay[id] = why
	return func() {
		f.w.mu.Lock()
		defer f.w.mu.Unlock()
		delete(h.delay, id)
	}, nil
}

func (f fake) Blockers(ctx context.Context) ([]Blocker, error) {
	f.w.point(f.h, "blockers")
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return slices.Clone(f.host().blockers), nil
}

func (f fake) Install(ctx context.Context, updates []Update) error {
	f.w.point(f.h, "install")
	f.w.mu.Lock()
	h := f.host()
	if err := h.failing("install"); err != nil {
		f.w.mu.Unlock()
		return err
	}
	f.w.install(f.h, updates, "autopod's installer")
	f.w.mu.Unlock()
	f.w.point(f.h, "install:after")
	return nil
}

// install installs updates on host h, checking it is safe. Called with
// w.mu held.
func (w *world) install(name string, updates []Update, who string) {
	h := w.hosts[name]
	for _, p := range w.pods {
		if p.home == name && p.live[name] {
			w.violate("%s installed packages on %s while pod %s runs there", who, name, p.name)
		}
	}
	if w.lease != name {
		w.violate("%s installed packages on %s without the fleet lease (holder %q)", who, name, w.lease)
	}
	for _, u := range updates {
		h.installed[u.Name] = u.Version
	}
	h.installs++
}

func (f fake) Reboot(ctx context.Context, method RebootMethod) error {
	f.w.point(f.h, "reboot")
	f.w.mu.Lock()
	h := f.host()
	if err := h.failing("reboot"); err != nil {
		f.w.mu.Unlock()
		return err
	}
	for _, b := range h.blockers {
		f.w.violate("reboot of %s requested past block inhibitor %s", f.h, b)
	}
	if len(h.delay) > 0 {
		f.w.violate("reboot of %s requested while autopod holds its delay lock", f.h)
	}
	if f.w.lease != f.h {
		f.w.violate("reboot of %s without the fleet lease (holder %q)", f.h, f.w.lease)
	}
	h.reboots++
	if !h.ignoreReboot {
		h.rebootPending = true
	}
	f.w.mu.Unlock()
	f.w.point(f.h, "reboot:after")
	return nil
}

// node is one host's agent: the machine (nil while "dead"), its state
// directory and what its notifier heard.
type node struct {
	w     *world
	h     string
	dir   string
	pol   Policy
	m     *Machine
	heard []Transition
	// crashes counts the times the agent died (not reboots).
	crashes int
	// crashStates are the persisted states the agent died in.
	crashStates []State
}

func newNode(w *world, name string, pol Policy) *node {
	n := &node{w: w, h: name, dir: stateDir(w.t), pol: pol}
	w.hosts[name].accept = func() error {
		if n.m == nil {
			return errors.New("agent not running")
		}
		return n.m.AcceptPods()
	}
	return n
}

// stateDir is a directory for a node's record: on tmpfs when there is
// one, because the tests write the record thousands of times and fsync on
// a shared disk would dominate their run time. The record still goes
// through atomicfile (temporary file, rename) exactly as in production.
func stateDir(t testing.TB) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "autopod-cycle-test-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

func (n *node) stateFile() string { return filepath.Join(n.dir, "cycle.json") }

func (n *node) activeFile() string { return filepath.Join(n.dir, "cycle-active") }

func (n *node) config() Config {
	f := fake{n.w, n.h}
	return Config{
		StateFile: n.stateFile(), ActiveFile: n.activeFile(), Policy: n.pol,
		Detector: f, Pods: f, Peers: f, Lock: f, Inhibitor: f, Installer: f, Rebooter: f,
		Clock: f, BootID: f.BootID,
		Notify: func(t Transition) {
			n.heard = append(n.heard, t)
			n.w.point(n.h, "persisted:"+string(t.To))
		},
	}
}

// guard runs fn, turning a crashPanic into the agent's death.
func (n *node) guard(fn func()) (crashed bool) {
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(crashPanic); !ok {
				panic(v)
			}
			crashed = true
			n.die()
		}
	}()
	fn()
	return false
}

// die drops the machine as a killed process would: its logind locks go
// with it, the record on disk stays.
func (n *node) die() {
	n.crashes++
	n.m = nil
	n.w.mu.Lock()
	clear(n.w.hosts[n.h].delay)
	n.w.mu.Unlock()
	if r, err := loadRecord(n.stateFile(), time.Time{}); err == nil {
		n.crashStates = append(n.crashStates, r.State)
		// A host that goes down now must start its agent at boot.
		if _, err := os.Stat(n.activeFile()); r.State != Idle && err != nil {
			n.w.t.Errorf("%s: crashed in %s without the active marker: %v", n.h, r.State, err)
		}
	} else {
		n.w.t.Errorf("%s: record unreadable after a crash: %v", n.h, err)
	}
}

// start builds a new machine from the state directory and resumes it.
func (n *node) start() {
	m, err := New(n.config())
	if err != nil {
		n.w.t.Fatalf("%s: New: %v", n.h, err)
	}
	n.m = m
	n.guard(func() {
		if err := m.Resume(context.Background()); err != nil {
			n.w.t.Logf("%s: Resume: %v", n.h, err)
			return
		}
		n.checkStable("after resume")
	})
}

// step runs one Step (starting the agent if it is dead) and performs a
// requested reboot. It returns when the machine wants to run again.
func (n *node) step() time.Time {
	if n.m == nil {
		n.start()
		if n.m == nil {
			return time.Time{}
		}
	}
	var next time.Time
	var err error
	if !n.guard(func() { next, err = n.m.Step(context.Background()) }) {
		if err != nil {
			n.w.t.Logf("%s: Step: %v", n.h, err)
			var te *TransitionError
			if errors.As(err, &te) {
				n.w.t.Errorf("%s: %v", n.h, err)
			}
		}
		n.checkStable("after step in " + string(n.m.Status().State))
	}
	n.w.mu.Lock()
	pending := n.w.hosts[n.h].rebootPending
	n.w.mu.Unlock()
	if pending {
		if n.m != nil {
			n.m = nil // the process dies with the host
		}
		n.w.rebootHost(n.h)
		return time.Time{}
	}
	return next
}

// checkStable checks what must hold whenever the machine is between
// steps: the lease held exactly in Locked…Rebooting (either way in
// Returning), the record agreeing, no delay lock left, pods home in Idle.
func (n *node) checkStable(when string) {
	s := n.m.Status()
	w := n.w
	w.mu.Lock()
	defer w.mu.Unlock()
	held := w.lease == n.h
	switch {
	case s.State.HoldsLease() && !held:
		w.violate("%s %s: state %s without the fleet lease (holder %q)", n.h, when, s.State, w.lease)
	case !s.State.HoldsLease() && s.State != Returning && held:
		w.violate("%s %s: state %s but holds the fleet lease", n.h, when, s.State)
	}
	// In Returning the record is the last thing the lock told us.
	if s.LeaseHeld != held && !w.leaseDown && s.State != Returning {
		w.violate("%s %s: record says lease held = %v, lock says %v", n.h, when, s.LeaseHeld, held)
	}
	if d := w.hosts[n.h].delay; len(d) > 0 {
		w.violate("%s %s: delay lock left held: %v", n.h, when, d)
	}
	if !s.State.Busy() {
		for _, p := range w.pods {
			if p.home == n.h && (!p.live[n.h] || p.saved) {
				w.violate("%s %s: %s but pod %s is not home (live %v, saved %v)", n.h, when, s.State, p.name, p.live, p.saved)
			}
		}
	}
	w.checkPods(n.h + " " + when)
}

// settle steps the nodes round-robin, moving the clock to the earliest
// wake-up when nobody can move, until done holds. act, if set, runs at
// the start of every round (an outside actor such as apt).
func settle(t testing.TB, w *world, done func() bool, act func(), nodes ...*node) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if act != nil {
			act()
		}
		if done() {
			return
		}
		var wake time.Time
		for _, n := range nodes {
			next := n.step()
			if next.IsZero() || !next.After(n.w.now) {
				wake = w.now
				continue
			}
			if wake.IsZero() || next.Before(wake) {
				wake = next
			}
		}
		if act != nil {
			act() // the actor gets its turn before time moves on
		}
		w.mu.Lock()
		if wake.After(w.now) {
			w.now = wake
		}
		w.mu.Unlock()
	}
	var states []string
	for _, n := range nodes {
		if n.m != nil {
			s := n.m.Status()
			states = append(states, fmt.Sprintf("%s: %s (%s; last error %q)", n.h, s.State, s.Reason, s.LastError))
		}
	}
	t.Fatalf("did not settle after 2000 rounds: %s", strings.Join(states, "; "))
}

func (w *world) assertNoViolations(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.violations) > 0 {
		t.Fatalf("%d violation(s):\n  %s", len(w.violations), strings.Join(w.violations, "\n  "))
	}
}

// home asserts every pod runs once, at home, and nothing is held.
func (w *world) assertAllHome(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(w.pods)) {
		p := w.pods[name]
		if len(p.live) != 1 || !p.live[p.home] || p.saved {
			t.Errorf("pod %s: live on %v, saved %v; want live only on %s", name, slices.Sorted(maps.Keys(p.live)), p.saved, p.home)
		}
	}
	if w.lease != "" {
		t.Errorf("fleet lease still held by %s", w.lease)
	}
	for _, h := range w.hosts {
		if len(h.delay) > 0 {
			t.Errorf("%s: delay lock still held: %v", h.name, h.delay)
		}
	}
}

// states lists the To of transitions, starting with the first From.
func states(ts []Transition) []State {
	if len(ts) == 0 {
		return nil
	}
	out := []State{ts[0].From}
	for _, t := range ts {
		out = append(out, t.To)
	}
	return out
}

func stateList(s string) []State {
	var out []State
	for _, f := range strings.Fields(s) {
		out = append(out, State(f))
	}
	return out
}
