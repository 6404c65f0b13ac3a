package cycle

import (
	"context"
	"fmt"
	"time"
)

// CheckUpdates asks the Detector now (D-Bus CheckUpdates). In Idle,
// updates the policy acts on start a cycle (UpdatePending); in
// UpdatePending and WaitingForWindow, nothing pending any more ends it.
func (m *Machine) CheckUpdates(ctx context.Context) (CheckResult, error) {
	if err := m.acquire(ctx); err != nil {
		return CheckResult{}, err
	}
	defer m.release()
	defer m.Wake()
	res, err := m.check(ctx)
	if err != nil {
		return res, err
	}
	switch m.snapshot().State {
	case Idle:
		err = m.considerCheck(res, "")
	case UpdatePending, WaitingForWindow:
		_, err = m.recheck(ctx)
	}
	return res, err
}

// StartOptions are StartUpdate's options (`autopodctl update`).
type StartOptions struct {
	// Now ignores the maintenance window (`--now`).
	Now bool
	// DryRun only returns the plan (`--dry-run`).
	DryRun bool
}

// StartUpdate starts a cycle (D-Bus StartUpdate): in notify mode this is
// the operator's go-ahead; with Now the window is ignored. It returns the
// plan as it stands at the call: the updates, the pods and the peer that
// would take them, when, and why. A dry run changes nothing. Starting
// while a cycle runs is ErrBusy; with nothing pending, ErrNoUpdates.
func (m *Machine) StartUpdate(ctx context.Context, opts StartOptions) (Plan, error) {
	if st := m.snapshot().State; st.Busy() && !opts.DryRun {
		return m.currentPlan(), fmt.Errorf("%w (state %s)", ErrBusy, st)
	}
	plan, err := m.Plan(ctx, opts.Now)
	if err != nil || opts.DryRun {
		return plan, err
	}
	if err := m.acquire(ctx); err != nil {
		return plan, err
	}
	defer m.release()
	defer m.Wake()
	trigger := TriggerWindow
	if opts.Now {
		trigger = TriggerNow
	}
	switch r := m.snapshot(); r.State {
	case Idle:
		res, err := m.check(ctx)
		if err != nil {
			return plan, err
		}
		if _, pending := m.pol.relevant(res); !pending {
			return plan, ErrNoUpdates
		}
		return plan, m.considerCheck(res, trigger)
	case UpdatePending, WaitingForWindow:
		if r.Trigger == TriggerAptHook || (r.Trigger == TriggerNow && !opts.Now) {
			return plan, nil // already starting without waiting
		}
		return plan, m.update(func(r *Record) error {
			r.Trigger, r.Dismissed, r.CancelRequested, r.RetryAt = trigger, "", false, time.Time{}
			return nil
		})
	default:
		return m.currentPlan(), fmt.Errorf("%w (state %s)", ErrBusy, r.State)
	}
}

func (m *Machine) currentPlan() Plan {
	if r := m.snapshot(); r.Plan != nil {
		return *r.Plan
	}
	return Plan{}
}

// Cancel stops the cycle (D-Bus Cancel) while nothing has been installed
// yet: up to and including Evacuating. It records the request durably and
// interrupts a running evacuation; the next step (Run wakes at once)
// brings any moved pods back, releases the lease and goes Idle. The
// updates it cancelled are dismissed: the machine starts again on its own
// only for different updates (or after StartUpdate). From Installing on,
// it returns ErrTooLate: the cycle must finish to bring the pods home on a
// consistent system.
func (m *Machine) Cancel(ctx context.Context) error {
	err := m.update(func(r *Record) error {
		switch {
		case r.State == Idle:
			return ErrNothingToCancel
		case !r.State.Cancellable():
			return fmt.Errorf("%w: the cycle is %s (installation started); it will finish and bring the pods back", ErrTooLate, r.State)
		}
		r.CancelRequested = true
		r.Reason = "cancel requested"
		return nil
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	if m.act.cancel != nil && m.act.state.Cancellable() {
		m.act.cancel()
	}
	m.mu.Unlock()
	m.Wake()
	return nil
}

// ExternalInstallBegin is the apt hook (DPkg::Pre-Install-Pkgs): apt or
// unattended-upgrades is about to install updates. needed is false when
// none of them is one the policy acts on, or when autopod itself runs this
// apt (its own Installing state): apt may go ahead at once. Otherwise the
// cycle starts (or, when it is already Locked or Evacuating, switches to
// waiting for apt instead of installing itself), ignoring the window and
// notify mode, and the hook should call WaitInstallReady before letting
// apt go on. ErrBusy while the host is rebooting or pulling pods back.
func (m *Machine) ExternalInstallBegin(ctx context.Context, updates []Update) (needed bool, err error) {
	var ups []Update
	for _, u := range updates {
		if m.pol.wants(u) {
			ups = append(ups, u)
		}
	}
	now := m.clock.Now()
	adopt := func(r *Record) {
		r.Trigger = TriggerAptHook
		if r.External == nil || r.External.Ended {
			r.External = &External{Begun: now}
		}
		r.CancelRequested, r.Dismissed = false, "" // apt installs anyway: better with the pods away
		if r.Plan == nil {
			r.Plan = &Plan{RebootMethod: m.pol.RebootMethod}
		}
		r.Plan.Updates = mergeUpdates(r.Plan.Updates, ups)
		r.Plan.Reasons = append(r.Plan.Reasons, "apt is installing "+updatesKey(ups, false))
	}

	r := m.snapshot()
	switch r.State {
	case Installing:
		return r.Trigger == TriggerAptHook, nil
	case Rebooting, Returning:
		return false, fmt.Errorf("%w (state %s): try again when the cycle has ended", ErrBusy, r.State)
	case Locked, Evacuating:
		if len(ups) == 0 {
			return false, nil
		}
		err := m.update(func(r *Record) error {
			if r.State != Locked && r.State != Evacuating {
				return fmt.Errorf("%w (state %s)", ErrBusy, r.State)
			}
			if r.CancelRequested {
				return fmt.Errorf("%w: the cycle is being cancelled and brings the pods back; try again when it has ended", ErrBusy)
			}
			adopt(r)
			return nil
		})
		return err == nil, err
	}
	if len(ups) == 0 {
		return false, nil
	}
	if err := m.acquire(ctx); err != nil {
		return false, err
	}
	defer m.release()
	defer m.Wake()
	switch st := m.snapshot().State; st {
	case Idle:
		return true, m.transition(UpdatePending, "apt is about to install "+updatesKey(ups, false), func(r *Record) {
			adopt(r)
			r.LastError = ""
		})
	case UpdatePending, WaitingForWindow, Locked, Evacuating:
		return true, m.update(func(r *Record) error { adopt(r); return nil })
	case Installing:
		return m.snapshot().Trigger == TriggerAptHook, nil
	default:
		return false, fmt.Errorf("%w (state %s)", ErrBusy, st)
	}
}

func mergeUpdates(have, add []Update) []Update {
	out := append([]Update(nil), have...)
	for _, u := range add {
		found := false
		for i := range out {
			if out[i].Name == u.Name {
				out[i], found = u, true
			}
		}
		if !found {
			out = append(out, u)
		}
	}
	return out
}

// WaitInstallReady blocks until the pods are away and apt may install
// (nil), or the cycle the apt hook started ended without getting there
// (an error wrapping ErrAborted with the reason), or ctx ends.
func (m *Machine) WaitInstallReady(ctx context.Context) error {
	s, err := m.Wait(ctx, func(s Status) bool {
		return s.State == Installing || s.State == Returning || s.State == Idle || s.State == Rebooting
	})
	if err != nil {
		return fmt.Errorf("waiting for autopod to move the pods away (state %s: %s): %w", s.State, s.Reason, err)
	}
	if s.State == Installing {
		return nil
	}
	msg := s.Reason
	if s.LastError != "" {
		msg = s.LastError
	}
	return fmt.Errorf("%w (state %s): %s", ErrAborted, s.State, msg)
}

// ExternalInstallEnd is the apt hook after apt's run (DPkg::Post-Invoke):
// ok says whether apt succeeded, detail is its message. It is a no-op
// unless a cycle the apt hook started is waiting for it.
func (m *Machine) ExternalInstallEnd(ctx context.Context, ok bool, detail string) error {
	waiting := func(r *Record) bool {
		return r.Trigger == TriggerAptHook && r.External != nil && !r.External.Ended &&
			r.State != Idle && r.State != Rebooting && r.State != Returning
	}
	if !waiting(m.snapshot()) {
		return nil
	}
	defer m.Wake()
	return m.update(func(r *Record) error {
		if waiting(r) {
			r.External.Ended, r.External.OK, r.External.Detail = true, ok, detail
		}
		return nil
	})
}
