package cycle

import (
	"context"
	"fmt"
	"time"
)

// Resume reconciles the recorded state with the world after the agent
// started (after a reboot, a crash or an upgrade of autopod). Run and Step
// call it first; the agent may call it earlier so that Status is right
// before it exports the D-Bus object. What it does in each state:
//
//   - Idle, UpdatePending, WaitingForWindow: release the fleet lease (a
//     crash may have come between taking it and writing Locked).
//   - Locked: take the lease again; if another host has it, back to
//     WaitingForWindow.
//   - Evacuating, Installing, Rebooting: take the lease again; if that
//     fails, Returning (never install or reboot without it). Evacuating
//     also records where each pod is; the next step moves the rest (or,
//     after MaxAttempts, brings them back). Installing runs the Installer
//     again, or keeps waiting for apt.
//   - Rebooting: a boot ID other than the recorded one means the reboot
//     happened: Returning. Otherwise the next step checks inhibitors and
//     requests the reboot again, or waits out the reboot timeout.
//   - Returning: take the lease if possible; the next step pulls the pods
//     back.
//
// The logind delay lock needs no reconciling: it died with the old
// process.
func (m *Machine) Resume(ctx context.Context) error {
	if err := m.acquire(ctx); err != nil {
		return err
	}
	defer m.release()
	if m.resumed {
		return nil
	}
	return m.resume(ctx)
}

func (m *Machine) resume(ctx context.Context) error {
	r := m.snapshot()
	m.nextCheck = time.Time{}
	m.log.Info("update cycle resumes", "state", r.State, "since", r.Since)

	if r.State == Rebooting && r.BootID != "" {
		if cur, err := m.cfg.BootID(); err == nil && cur != r.BootID {
			if err := m.transition(Returning, fmt.Sprintf("the host rebooted (boot ID %s → %s)", r.BootID, cur), nil); err != nil {
				return err
			}
			r = m.snapshot()
		}
	}

	switch {
	case r.State.HoldsLease():
		lctx, cancel := context.WithTimeout(ctx, lockTimeout)
		err := m.cfg.Lock.Acquire(lctx)
		cancel()
		if err != nil {
			err = fmt.Errorf("fleet lease lost while %s: %w", r.State, err)
			if r.State == Locked {
				if _, serr := m.backToWaiting(ctx, err.Error(), err, nil); serr != nil {
					return serr
				}
			} else if terr := m.transition(Returning, err.Error(), func(r *Record) {
				r.LeaseHeld, r.LastError = false, err.Error()
			}); terr != nil {
				return terr
			}
		} else if err := m.setLeaseHeld(true); err != nil {
			return err
		}
	case r.State == Returning:
		lctx, cancel := context.WithTimeout(ctx, lockTimeout)
		err := m.cfg.Lock.Acquire(lctx)
		cancel()
		if err != nil {
			m.log.Warn("returning without the fleet lease", "err", err)
		}
		if err := m.setLeaseHeld(err == nil); err != nil {
			return err
		}
	default:
		if err := m.releaseLease(ctx); err != nil {
			return err
		}
		if err := m.setLeaseHeld(false); err != nil {
			return err
		}
	}

	if r := m.snapshot(); r.State == Evacuating && r.Plan != nil {
		if ps, err := m.listPods(ctx); err == nil {
			if err := m.update(func(r *Record) error { refreshMoves(r.Plan, ps); return nil }); err != nil {
				return err
			}
		}
	}
	m.resumed = true
	return nil
}

func (m *Machine) setLeaseHeld(held bool) error {
	if m.snapshot().LeaseHeld == held {
		return nil
	}
	return m.update(func(r *Record) error { r.LeaseHeld = held; return nil })
}
