package cycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The states that move pods: Locked chooses the peer, Evacuating moves the
// pods away, Returning brings them back.

func (m *Machine) listPods(ctx context.Context) ([]Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	defer cancel()
	ps, err := m.cfg.Pods.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	return ps, nil
}

func running(ps []Pod) []Pod {
	var out []Pod
	for _, p := range ps {
		if p.Running {
			out = append(out, p)
		}
	}
	return out
}

// backToWaiting leaves Locked without doing anything: the lease is
// released first, then WaitingForWindow is written with a retry time.
func (m *Machine) backToWaiting(ctx context.Context, reason string, cause error, refusals []Refusal) (time.Time, error) {
	retry := m.clock.Now().Add(m.pol.RetryInterval)
	if err := m.releaseLease(ctx); err != nil {
		return retry, m.note(reason+"; and "+err.Error(), err, retry)
	}
	return time.Time{}, m.transition(WaitingForWindow, reason, func(r *Record) {
		r.LeaseHeld, r.RetryAt = false, retry
		if cause != nil {
			r.LastError = cause.Error()
		}
		if r.Plan != nil {
			r.Plan.Refusals = refusals
		}
	})
}

// stepLocked chooses where the pods go.
func (m *Machine) stepLocked(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	ps, err := m.listPods(ctx)
	if err != nil {
		return m.backToWaiting(ctx, "cannot list the pods: "+err.Error(), err, nil)
	}
	run := running(ps)
	plan := Plan{RebootMethod: m.pol.RebootMethod}
	if r.Plan != nil {
		plan = *r.Plan
	}
	plan.Peer, plan.Local, plan.Refusals, plan.Moves = "", false, nil, nil
	reason := "no pods to move"
	if len(run) > 0 {
		cctx, cancel := m.action(ctx, Locked, serviceTimeout)
		peer, err := m.cfg.Peers.Choose(cctx, run)
		cancel()
		if err != nil {
			var npe *NoPeerError
			if errors.As(err, &npe) {
				plan.Refusals = npe.Refusals
			}
			if m.pol.NoPeer == NoPeerWait {
				return m.backToWaiting(ctx, fmt.Sprintf("%v; no_peer = wait: retrying in %s", err, m.pol.RetryInterval), err, plan.Refusals)
			}
			plan.Local = true
			reason = fmt.Sprintf("%v; no_peer = local-checkpoint: checkpointing %d pod(s) to local disk", err, len(run))
		} else {
			plan.Peer = peer
			reason = fmt.Sprintf("moving %d pod(s) to %s", len(run), peer)
		}
		to := plan.Peer
		if plan.Local {
			to = LocalDisk
		}
		for _, p := range run {
			plan.Moves = append(plan.Moves, Move{Pod: p.Name, To: to})
		}
	}
	return time.Time{}, m.transition(Evacuating, reason, func(r *Record) { r.Plan = &plan })
}

// refreshMoves records where each planned pod is, from the pod runtime.
func refreshMoves(plan *Plan, ps []Pod) {
	if plan == nil {
		return
	}
	where := map[string]Pod{}
	for _, p := range ps {
		where[p.Name] = p
	}
	for i, mv := range plan.Moves {
		p, ok := where[mv.Pod]
		switch {
		case !ok:
			plan.Moves[i].Done = false
		case mv.To == LocalDisk:
			plan.Moves[i].Done = p.Checkpointed && !p.Running
		default:
			plan.Moves[i].Done = p.Peer == mv.To && !p.Running
		}
	}
}

// stepEvacuating moves the pods away, holding the logind delay lock.
func (m *Machine) stepEvacuating(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	if r.Attempts >= m.pol.MaxAttempts {
		return time.Time{}, m.transition(Returning, fmt.Sprintf("giving up after %d evacuation attempts (last error: %s)", r.Attempts, r.LastError), nil)
	}
	// Count the attempt before acting, so a crash during it counts too.
	if err := m.update(func(r *Record) error { r.Attempts++; return nil }); err != nil {
		return time.Time{}, err
	}
	plan := r.Plan
	if plan == nil {
		plan = &Plan{}
	}
	var names []string
	for _, mv := range plan.Moves {
		names = append(names, mv.Pod)
	}
	var aerr error
	if len(names) > 0 {
		why := "autopod is moving pods to " + plan.Peer
		if plan.Local {
			why = "autopod is checkpointing pods to disk"
		}
		if err := m.holdDelay(ctx, why); err != nil {
			aerr = err
		} else {
			actx, cancel := m.action(ctx, Evacuating, m.pol.EvacuationTimeout)
			if plan.Local {
				aerr = m.cfg.Pods.CheckpointLocal(actx, names)
			} else {
				aerr = m.cfg.Pods.Evacuate(actx, plan.Peer)
			}
			cancel()
			m.dropDelay()
		}
	}
	ps, lerr := m.listPods(ctx)
	var here []string
	for _, p := range running(ps) {
		here = append(here, p.Name)
	}
	fail := func(reason string, err error) (time.Time, error) {
		return time.Time{}, m.transition(Returning, reason, func(r *Record) {
			if r.Plan != nil && lerr == nil {
				refreshMoves(r.Plan, ps)
			}
			if err != nil {
				r.LastError = err.Error()
			}
		})
	}
	switch {
	case m.snapshot().CancelRequested:
		return fail("cancelled", nil)
	case aerr != nil:
		return fail("evacuation failed: "+aerr.Error(), aerr)
	case lerr != nil:
		return fail("evacuation: "+lerr.Error(), lerr)
	case len(here) > 0:
		err := fmt.Errorf("pods still running on this host after the evacuation: %s", strings.Join(here, ", "))
		return fail(err.Error(), err)
	}
	reason := "no pods to move"
	if len(names) > 0 {
		reason = fmt.Sprintf("%d pod(s) moved to %s", len(names), plan.Peer)
		if plan.Local {
			reason = fmt.Sprintf("%d pod(s) checkpointed to local disk", len(names))
		}
	}
	return time.Time{}, m.transition(Installing, reason, func(r *Record) { refreshMoves(r.Plan, ps) })
}

// stepReturning pulls the pods back; only with every pod home does it
// release the lease and go Idle.
func (m *Machine) stepReturning(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	if now.Before(r.RetryAt) {
		return r.RetryAt, nil
	}
	retry := now.Add(m.pol.RetryInterval)
	if !r.LeaseHeld {
		// Resume could not re-take the lease (lock server unreachable):
		// keep peers from starting their cycle while our pods are on them,
		// if we can. Returning goes on either way.
		lctx, cancel := context.WithTimeout(ctx, lockTimeout)
		err := m.cfg.Lock.Acquire(lctx)
		cancel()
		if err == nil {
			if err := m.setLeaseHeld(true); err != nil {
				return time.Time{}, err
			}
		}
	}
	plan := r.Plan
	if plan == nil {
		plan = &Plan{}
	}
	var local []string
	for _, mv := range plan.Moves {
		if mv.To == LocalDisk {
			local = append(local, mv.Pod)
		}
	}
	ps, err := m.listPods(ctx)
	if err == nil && len(away(ps, local)) > 0 {
		if err = m.holdDelay(ctx, "autopod is bringing its pods back"); err == nil {
			actx, cancel := m.action(ctx, Returning, m.pol.ReturnTimeout)
			if len(local) > 0 {
				err = m.cfg.Pods.RestoreLocal(actx, local)
			}
			if err == nil {
				err = m.cfg.Pods.Return(actx)
			}
			cancel()
			m.dropDelay()
		}
		var lerr error
		ps, lerr = m.listPods(ctx)
		err = errors.Join(err, lerr)
	}
	if left := away(ps, local); err != nil || len(left) > 0 {
		if err == nil {
			err = fmt.Errorf("pods still away: %s", strings.Join(left, ", "))
		}
		return retry, m.update(func(r *Record) error {
			r.Attempts++
			r.LastError = err.Error()
			r.Reason = fmt.Sprintf("bringing the pods back failed (attempt %d), retrying at %s: %v", r.Attempts, retry.Format(time.RFC3339), err)
			r.RetryAt = retry
			if r.Plan != nil && ps != nil {
				refreshMoves(r.Plan, ps)
			}
			return nil
		})
	}
	// Every pod is home. Release the lease before writing Idle: a crash in
	// between leaves Returning, which releases it again.
	if err := m.releaseLease(ctx); err != nil {
		return retry, m.note("all pods are home; "+err.Error(), err, retry)
	}
	return time.Time{}, m.transition(Idle, "all pods are home", func(r *Record) { r.LeaseHeld = false })
}

// away lists this host's pods that are not home: migrated to a peer, or
// checkpointed by this cycle (local names) and not running.
func away(ps []Pod, local []string) []string {
	var out []string
	for _, p := range ps {
		if p.Running {
			continue
		}
		if p.Peer != "" || (p.Checkpointed && slices.Contains(local, p.Name)) {
			out = append(out, p.Name)
		}
	}
	return out
}
