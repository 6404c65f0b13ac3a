package cycle

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// step acts once in the current state; see Step.
func (m *Machine) step(ctx context.Context) (time.Time, error) {
	r := m.snapshot()
	now := m.clock.Now()
	if r.CancelRequested {
		if next, done, err := m.stepCancel(ctx, r); done {
			return next, err
		}
	}
	switch r.State {
	case Idle:
		return m.stepIdle(ctx, r, now)
	case UpdatePending:
		return m.stepPending(ctx, r, now)
	case WaitingForWindow:
		return m.stepWaiting(ctx, r, now)
	case Locked:
		return m.stepLocked(ctx, r, now)
	case Evacuating:
		return m.stepEvacuating(ctx, r, now)
	case Installing:
		return m.stepInstalling(ctx, r, now)
	case Rebooting:
		return m.stepRebooting(ctx, r, now)
	case Returning:
		return m.stepReturning(ctx, r, now)
	}
	return time.Time{}, fmt.Errorf("cycle: unknown state %q", r.State)
}

// stepCancel carries out an accepted Cancel. done is false when the state
// has nothing to undo here (the Evacuating → Installing edge turns into
// Returning by itself).
func (m *Machine) stepCancel(ctx context.Context, r *Record) (next time.Time, done bool, err error) {
	switch r.State {
	case UpdatePending, WaitingForWindow, Locked:
		if err := m.releaseLease(ctx); err != nil {
			retry := m.clock.Now().Add(m.pol.RetryInterval)
			return retry, true, m.note("cancelling: cannot release the fleet lease", err, retry)
		}
		return time.Time{}, true, m.transition(Idle, "cancelled", func(r *Record) {
			r.LeaseHeld = false
			r.Dismissed = dismissKey(r.Plan)
		})
	case Evacuating:
		return time.Time{}, true, m.transition(Returning, "cancelled", nil)
	}
	return time.Time{}, false, nil
}

// check asks the Detector and records the answer.
func (m *Machine) check(ctx context.Context) (CheckResult, error) {
	ctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	defer cancel()
	res, err := m.cfg.Detector.Check(ctx)
	m.nextCheck = m.clock.Now().Add(m.pol.CheckInterval)
	if err != nil {
		err = fmt.Errorf("check for updates: %w", err)
		m.log.Warn("update check failed", "err", err)
		return res, err
	}
	if res.At.IsZero() {
		res.At = m.clock.Now()
	}
	return res, m.update(func(r *Record) error {
		r.LastCheck = &res
		return nil
	})
}

// dismissKey identifies a plan's updates, for Cancel's dismissal.
func dismissKey(p *Plan) string {
	if p == nil {
		return ""
	}
	return updatesKey(p.Updates, p.RebootRequired)
}

func updatesKey(us []Update, reboot bool) string {
	parts := make([]string, 0, len(us)+1)
	for _, u := range us {
		parts = append(parts, u.Name+"="+u.Version)
	}
	slices.Sort(parts)
	if reboot {
		parts = append(parts, "reboot-required")
	}
	return strings.Join(parts, " ")
}

// pendingReason describes a check in words.
func pendingReason(us []Update, c CheckResult) string {
	var parts []string
	if len(us) > 0 {
		names := make([]string, len(us))
		for i, u := range us {
			names[i] = u.Name
		}
		parts = append(parts, fmt.Sprintf("%d update(s) pending: %s", len(us), strings.Join(names, ", ")))
	}
	if c.RebootRequired {
		why := "reboot required"
		if len(c.Reasons) > 0 {
			why += " (" + strings.Join(c.Reasons, "; ") + ")"
		}
		parts = append(parts, why)
	}
	return strings.Join(parts, "; ")
}

// considerCheck applies a check in Idle: updates the policy acts on start
// a cycle unless a Cancel dismissed exactly these.
func (m *Machine) considerCheck(res CheckResult, trigger Trigger) error {
	ups, pending := m.pol.relevant(res)
	r := m.snapshot()
	if r.State != Idle || !pending {
		return nil
	}
	if key := updatesKey(ups, res.RebootRequired); trigger == "" && key == r.Dismissed {
		return nil
	}
	return m.transition(UpdatePending, pendingReason(ups, res), func(r *Record) {
		r.Plan = &Plan{Updates: ups, RebootRequired: res.RebootRequired, Reasons: res.Reasons, RebootMethod: m.pol.RebootMethod}
		r.Trigger, r.Dismissed, r.LastError = trigger, "", ""
		if trigger == "" && m.pol.Mode == ModeNotify {
			r.Reason += "; mode is notify: run `autopodctl update` to install"
		}
	})
}

// recheck, in UpdatePending and WaitingForWindow, refreshes the plan's
// updates, and goes back to Idle when nothing is pending any more. gone
// reports that.
func (m *Machine) recheck(ctx context.Context) (gone bool, err error) {
	res, err := m.check(ctx)
	if err != nil {
		return false, nil // keep the plan we have; the check is retried
	}
	ups, pending := m.pol.relevant(res)
	if !pending {
		return true, m.transition(Idle, "updates are no longer pending", nil)
	}
	return false, m.update(func(r *Record) error {
		if r.Plan != nil {
			r.Plan.Updates, r.Plan.RebootRequired, r.Plan.Reasons = ups, res.RebootRequired, res.Reasons
		}
		return nil
	})
}

// stepIdle asks the Detector every check_interval.
func (m *Machine) stepIdle(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	if now.Before(m.nextCheck) {
		return m.nextCheck, nil
	}
	res, err := m.check(ctx)
	if err != nil {
		return m.nextCheck, m.update(func(r *Record) error { r.LastError = err.Error(); return nil })
	}
	if err := m.considerCheck(res, ""); err != nil {
		return time.Time{}, err
	}
	if m.snapshot().State != Idle {
		return time.Time{}, nil
	}
	return m.nextCheck, nil
}

// stepPending goes on to wait for the window (automatic mode, or started
// by StartUpdate), straight for the lease (--now, apt hook), or stays
// (notify mode) until StartUpdate or until the updates are gone.
func (m *Machine) stepPending(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	switch {
	case r.Trigger == TriggerNow || r.Trigger == TriggerAptHook:
		return m.lockUp(ctx, r, now)
	case r.Trigger == TriggerWindow || m.pol.Mode == ModeAutomatic:
		start, _, _ := nextWindow(m.windows, now)
		reason := "no maintenance window is configured: starting now"
		if start.After(now) {
			reason = "waiting for the maintenance window at " + start.Format(time.RFC3339)
		}
		return time.Time{}, m.transition(WaitingForWindow, reason, func(r *Record) {
			if r.Trigger == "" {
				r.Trigger = TriggerWindow
			}
		})
	}
	// Notify mode: wait for StartUpdate, and notice when the updates go.
	if now.Before(m.nextCheck) {
		return m.nextCheck, nil
	}
	if _, err := m.recheck(ctx); err != nil {
		return time.Time{}, err
	}
	return m.nextCheck, nil
}

// stepWaiting waits for a window to open, then takes the lease.
func (m *Machine) stepWaiting(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	if r.Trigger == TriggerNow || r.Trigger == TriggerAptHook {
		return m.lockUp(ctx, r, now)
	}
	start, end, _ := nextWindow(m.windows, now)
	if start.After(now) {
		if !now.Before(m.nextCheck) {
			if gone, err := m.recheck(ctx); gone || err != nil {
				return time.Time{}, err
			}
		}
		if r.Plan != nil && (!r.Plan.When.Equal(start) || !r.Plan.WindowEnd.Equal(end)) {
			err := m.update(func(r *Record) error {
				r.Plan.When, r.Plan.WindowEnd = start, end
				r.Reason = "waiting for the maintenance window at " + start.Format(time.RFC3339)
				return nil
			})
			if err != nil {
				return time.Time{}, err
			}
		}
		return minTime(start, m.nextCheck), nil
	}
	return m.lockUp(ctx, r, now)
}

// lockUp takes the fleet lease and moves to Locked: from UpdatePending
// (now, apt hook) or WaitingForWindow (window open). The lease is taken
// before Locked is written; Resume releases a lease held outside
// Locked…Rebooting, which covers a crash in between.
func (m *Machine) lockUp(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	if now.Before(r.RetryAt) {
		return r.RetryAt, nil
	}
	if r.Trigger != TriggerAptHook {
		// Install what is pending now, not what was pending hours ago.
		if gone, err := m.recheck(ctx); gone || err != nil {
			return time.Time{}, err
		}
	}
	lctx, cancel := context.WithTimeout(ctx, lockTimeout)
	err := m.cfg.Lock.Acquire(lctx)
	cancel()
	if err != nil {
		retry := now.Add(m.pol.RetryInterval)
		return retry, m.note("waiting for the fleet lease: "+err.Error(), fmt.Errorf("acquire fleet lease: %w", err), retry)
	}
	err = m.transition(Locked, "took the fleet lease", func(r *Record) {
		r.LeaseHeld = true
		if r.Plan != nil && r.Plan.When.IsZero() {
			r.Plan.When = now
		}
	})
	if err != nil {
		// Not recorded: do not keep a lease the record does not know of.
		if rerr := m.releaseLease(ctx); rerr != nil {
			m.log.Warn("release fleet lease", "err", rerr)
		}
		return time.Time{}, err
	}
	return time.Time{}, nil
}

func (m *Machine) releaseLease(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, lockTimeout)
	defer cancel()
	if err := m.cfg.Lock.Release(ctx); err != nil {
		return fmt.Errorf("release fleet lease: %w", err)
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.IsZero() || (!a.IsZero() && a.Before(b)) {
		return a
	}
	return b
}
