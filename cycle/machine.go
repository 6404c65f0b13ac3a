package cycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/autopod/autopod/atomicfile"
)

// Errors the agent maps to D-Bus errors.
var (
	// ErrBusy: a cycle is running (Locked … Returning) and the request
	// needs an idle or waiting machine.
	ErrBusy = errors.New("an update cycle is running")
	// ErrTooLate: Cancel after the installation began; the cycle has to
	// finish (reboot and bring the pods back).
	ErrTooLate = errors.New("too late to cancel")
	// ErrNothingToCancel: Cancel with no cycle.
	ErrNothingToCancel = errors.New("no update cycle to cancel")
	// ErrNoUpdates: StartUpdate found nothing the policy acts on.
	ErrNoUpdates = errors.New("no pending updates the policy acts on")
	// ErrUpdating: AcceptPods on a host that is updating itself.
	ErrUpdating = errors.New("this host is updating itself")
	// ErrAborted: the cycle the apt hook waits for ended without
	// reaching Installing.
	ErrAborted = errors.New("the update cycle ended before the pods were moved away")
)

// DefaultStateFile is where the agent keeps the record.
const DefaultStateFile = "/var/lib/autopod/cycle.json"

// BootIDFile is the kernel's boot ID, which changes with every boot.
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// Timeouts for calls the policy has no key for: they only talk to local
// services or a lock server.
const (
	lockTimeout       = time.Minute
	rebootCallTimeout = time.Minute // the Reboot call itself, not the reboot
	serviceTimeout    = 2 * time.Minute
)

// Config is what New needs. Every interface is required; Clock, BootID,
// Notify and Log have defaults.
type Config struct {
	// StateFile is the record's path (DefaultStateFile in the agent). Its
	// directory must exist.
	StateFile string
	// ActiveFile, if set, exists exactly while a cycle is under way (any
	// state but Idle): a systemd path unit (PathExists=) starts the agent
	// at boot when it does, so that a cycle interrupted by its reboot
	// resumes and brings the pods back even where the service is not
	// enabled. It is created before the record leaves Idle and removed
	// after the record is back there.
	ActiveFile string
	// Policy is the [update] table; unset keys get their defaults.
	Policy Policy

	Detector  Detector
	Pods      Pods
	Peers     Peers
	Lock      Lock
	Inhibitor Inhibitor
	Installer Installer
	Rebooter  Rebooter

	// Clock defaults to the system clock.
	Clock Clock
	// BootID defaults to reading BootIDFile.
	BootID func() (string, error)
	// Notify, if set, hears of every transition.
	Notify Notifier
	Log    *slog.Logger
}

// Machine is the update cycle of one host. It is safe for concurrent use:
// the agent runs Run in one goroutine and calls the event methods
// (CheckUpdates, StartUpdate, Cancel, ExternalInstallBegin/End) and Status
// from D-Bus handlers.
type Machine struct {
	cfg     Config
	pol     Policy
	windows []window
	clock   Clock
	log     *slog.Logger

	// op admits one step or state-changing event at a time; a channel so
	// that waiting for it honours a context.
	op chan struct{}
	// Owned by whoever holds op:
	resumed   bool
	nextCheck time.Time
	delay     func() // releases the logind delay lock we hold, if any

	mu      sync.Mutex // guards the fields below
	rec     *Record
	changed chan struct{} // closed and replaced on every change
	notes   []Transition  // persisted, not yet handed to Notify
	act     struct {
		state  State
		cancel context.CancelFunc
	}

	notifyMu sync.Mutex // keeps notifications in order
	wake     chan struct{}
}

// New loads the record from cfg.StateFile (a missing file is a fresh Idle
// machine). Call Resume (or Run, which does) before anything else acts.
func New(cfg Config) (*Machine, error) {
	if cfg.StateFile == "" {
		return nil, errors.New("cycle: StateFile is required")
	}
	for _, d := range []struct {
		name string
		v    any
	}{
		{"Detector", cfg.Detector}, {"Pods", cfg.Pods}, {"Peers", cfg.Peers}, {"Lock", cfg.Lock},
		{"Inhibitor", cfg.Inhibitor}, {"Installer", cfg.Installer}, {"Rebooter", cfg.Rebooter},
	} {
		if d.v == nil {
			return nil, fmt.Errorf("cycle: %s is required", d.name)
		}
	}
	pol := cfg.Policy.WithDefaults()
	if err := pol.Validate(); err != nil {
		return nil, err
	}
	ws, err := compileWindows(pol.Windows)
	if err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.BootID == nil {
		cfg.BootID = ReadBootID
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	rec, err := loadRecord(cfg.StateFile, cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	m := &Machine{
		cfg: cfg, pol: pol, windows: ws, clock: cfg.Clock, log: cfg.Log,
		op:      make(chan struct{}, 1),
		rec:     rec,
		changed: make(chan struct{}),
		wake:    make(chan struct{}, 1),
	}
	// The marker follows the record (a record from an older agent, or a
	// marker left by a crash between the two writes).
	if rec.State == Idle {
		m.markIdle()
	} else if err := m.markActive(rec); err != nil {
		m.log.Warn("the agent may not start at boot to resume this cycle", "err", err)
	}
	return m, nil
}

// ReadBootID reads BootIDFile.
func ReadBootID() (string, error) {
	b, err := os.ReadFile(BootIDFile)
	if err != nil {
		return "", fmt.Errorf("read boot ID: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Policy is the policy in force, defaults filled in.
func (m *Machine) Policy() Policy { return m.pol }

// Status is the record plus what the D-Bus properties show.
type Status struct {
	Record
	// PendingUpdates are the updates the policy acts on: the running
	// cycle's, or else those of the latest check.
	PendingUpdates []Update `json:"pending_updates"`
	RebootRequired bool     `json:"reboot_required"`
	// NextWindow is the window that is open now or opens next; End is
	// zero when there is no window (any time is maintenance time).
	NextWindowStart time.Time `json:"next_window_start,omitzero"`
	NextWindowEnd   time.Time `json:"next_window_end,omitzero"`
}

// Status returns a copy of the machine's state.
func (m *Machine) Status() Status {
	m.mu.Lock()
	r := m.rec.clone()
	m.mu.Unlock()
	s := Status{Record: *r}
	if r.Plan != nil {
		s.PendingUpdates, s.RebootRequired = r.Plan.Updates, r.Plan.RebootRequired
	} else if r.LastCheck != nil {
		s.PendingUpdates, _ = m.pol.relevant(*r.LastCheck)
		s.RebootRequired = r.LastCheck.RebootRequired
	}
	if s.PendingUpdates == nil {
		s.PendingUpdates = []Update{}
	}
	// A kernel update plans a reboot before anything says one is required
	// (/run/reboot-required comes with the installation): once the machine
	// reboots, it is.
	if r.State == Rebooting {
		s.RebootRequired = true
	}
	s.NextWindowStart, s.NextWindowEnd, _ = nextWindow(m.windows, m.clock.Now())
	return s
}

// Wait blocks until cond holds for the status (checked at once and after
// every change) or ctx ends.
func (m *Machine) Wait(ctx context.Context, cond func(Status) bool) (Status, error) {
	for {
		m.mu.Lock()
		ch := m.changed
		m.mu.Unlock()
		if s := m.Status(); cond(s) {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return m.Status(), ctx.Err()
		}
	}
}

// AcceptPods is for the peer server: it refuses a peer's evacuation while
// this host runs its own cycle (Locked … Returning).
func (m *Machine) AcceptPods() error {
	m.mu.Lock()
	st := m.rec.State
	m.mu.Unlock()
	if st.Busy() {
		return fmt.Errorf("%w (update cycle state %s)", ErrUpdating, st)
	}
	return nil
}

// Wake makes Run step at once rather than at its next deadline. The agent
// calls it when something the machine waits for may have changed (package
// metadata, logind inhibitors, a peer's state).
func (m *Machine) Wake() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// maxSleep bounds Run's sleeps, so a clock jump (suspend, NTP) is noticed.
const maxSleep = time.Minute

// Run resumes the machine and steps it until ctx ends. Errors of a step are
// logged and the step is retried after the policy's retry interval.
func (m *Machine) Run(ctx context.Context) error {
	for {
		next, err := m.Step(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			m.log.Error("update cycle step failed", "state", m.Status().State, "err", err)
			next = m.clock.Now().Add(m.pol.RetryInterval)
		}
		if next.IsZero() {
			continue
		}
		d := next.Sub(m.clock.Now())
		if d <= 0 {
			continue
		}
		t := time.NewTimer(min(d, maxSleep))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-m.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// Step resumes the machine if that has not happened yet, then acts once in
// the current state: it takes at most one transition, or starts or checks
// the one action the state waits for. next is when Step wants to run again
// (zero: at once). A failed action is an edge of the diagram, not an
// error; err is for what the machine could not handle (the record could not
// be written, an illegal transition).
func (m *Machine) Step(ctx context.Context) (next time.Time, err error) {
	if err := m.acquire(ctx); err != nil {
		return time.Time{}, err
	}
	defer m.release()
	if !m.resumed {
		if err := m.resume(ctx); err != nil {
			return m.clock.Now().Add(m.pol.RetryInterval), err
		}
	}
	return m.step(ctx)
}

func (m *Machine) acquire(ctx context.Context) error {
	select {
	case m.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Machine) release() { <-m.op }

// snapshot is a copy of the record.
func (m *Machine) snapshot() *Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rec.clone()
}

// update changes the record durably: fn edits a copy, the copy is written,
// and only then does it replace the record in memory. An error from fn
// leaves everything as it was.
func (m *Machine) update(fn func(r *Record) error) error {
	m.mu.Lock()
	r := m.rec.clone()
	if err := fn(r); err != nil {
		m.mu.Unlock()
		return err
	}
	if r.State != Idle {
		if err := m.markActive(r); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	if err := saveRecord(m.cfg.StateFile, r); err != nil {
		m.mu.Unlock()
		return err
	}
	if r.State == Idle {
		m.markIdle()
	}
	m.rec = r
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	return nil
}

// markActive creates ActiveFile (durably) if it is missing.
func (m *Machine) markActive(r *Record) error {
	if m.cfg.ActiveFile == "" {
		return nil
	}
	if _, err := os.Stat(m.cfg.ActiveFile); err == nil {
		return nil
	}
	msg := fmt.Sprintf("autopod: an update cycle is under way (%s since %s); see autopodctl status\n", r.State, r.Since.Format(time.RFC3339))
	if err := atomicfile.WriteFile(m.cfg.ActiveFile, []byte(msg), 0o644); err != nil {
		return fmt.Errorf("mark the update cycle active: %w", err)
	}
	return nil
}

// markIdle removes ActiveFile; failing that only costs a start at boot.
func (m *Machine) markIdle() {
	if m.cfg.ActiveFile == "" {
		return
	}
	if err := os.Remove(m.cfg.ActiveFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("cannot remove the update cycle's marker", "file", m.cfg.ActiveFile, "err", err)
	}
}

// flush hands persisted transitions to Notify, in order.
func (m *Machine) flush() {
	if m.cfg.Notify == nil {
		m.mu.Lock()
		m.notes = nil
		m.mu.Unlock()
		return
	}
	m.notifyMu.Lock()
	defer m.notifyMu.Unlock()
	for {
		m.mu.Lock()
		notes := m.notes
		m.notes = nil
		m.mu.Unlock()
		if len(notes) == 0 {
			return
		}
		for _, t := range notes {
			m.cfg.Notify(t)
		}
	}
}

// transition moves to the state to, durably, after fn (if any) edits the
// record. A cancelled cycle never goes on to Installing: that edge turns
// into Returning under the same lock Cancel takes.
// Transitions happen only under op, so notifications queue in order.
func (m *Machine) transition(to State, reason string, fn func(r *Record)) error {
	var t Transition
	err := m.update(func(r *Record) error {
		if to == Installing && r.CancelRequested {
			to, reason = Returning, "cancelled"
		}
		if err := checkTransition(r.State, to); err != nil {
			return err
		}
		now := m.clock.Now()
		r.History = append(r.History, Transition{At: now, From: r.State, To: to, Reason: reason})
		if n := len(r.History); n > maxHistory {
			r.History = r.History[n-maxHistory:]
		}
		r.State, r.Since, r.Reason = to, now, reason
		r.Attempts, r.RetryAt, r.Blockers = 0, time.Time{}, nil
		if fn != nil {
			fn(r)
		}
		if to == Idle {
			r.Plan, r.Trigger, r.External, r.CancelRequested = nil, "", nil, false
			r.BootID, r.RebootRequested = "", time.Time{}
		}
		t = r.History[len(r.History)-1]
		return nil
	})
	if err != nil {
		return err
	}
	m.log.Info("update cycle", "from", t.From, "to", t.To, "reason", t.Reason)
	m.mu.Lock()
	m.notes = append(m.notes, t)
	m.mu.Unlock()
	m.flush()
	return nil
}

// note records a reason (and optionally an error and a retry time)
// without a transition.
func (m *Machine) note(reason string, err error, retryAt time.Time) error {
	return m.update(func(r *Record) error {
		r.Reason = reason
		if err != nil {
			r.LastError = err.Error()
		}
		r.RetryAt = retryAt
		return nil
	})
}

// action is the context for an outside action of the current state, with
// its timeout; Cancel interrupts it when the state is cancellable.
func (m *Machine) action(ctx context.Context, st State, timeout time.Duration) (context.Context, context.CancelFunc) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	m.mu.Lock()
	m.act.state, m.act.cancel = st, cancel
	m.mu.Unlock()
	return actx, func() {
		m.mu.Lock()
		m.act.cancel = nil
		m.mu.Unlock()
		cancel()
	}
}

// holdDelay takes autopod's logind delay lock, once.
func (m *Machine) holdDelay(ctx context.Context, why string) error {
	if m.delay != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	defer cancel()
	rel, err := m.cfg.Inhibitor.Delay(ctx, why)
	if err != nil {
		return fmt.Errorf("take logind delay lock: %w", err)
	}
	m.delay = rel
	return nil
}

func (m *Machine) dropDelay() {
	if m.delay != nil {
		m.delay()
		m.delay = nil
	}
}
