package cycle

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Plan works out what a cycle started now would do, without doing any of
// it: which updates, which pods go to which peer (Peers.Choose reserves
// nothing), when (now, or the next window) and why. While a cycle runs it
// returns that cycle's plan. StartUpdate with DryRun returns this.
func (m *Machine) Plan(ctx context.Context, now bool) (Plan, error) {
	if r := m.snapshot(); r.State.Busy() && r.Plan != nil {
		p := *r.Plan
		p.Reasons = append(p.Reasons[:len(p.Reasons):len(p.Reasons)], fmt.Sprintf("a cycle is running: %s since %s (%s)", r.State, r.Since.Format(time.RFC3339), r.Reason))
		return p, nil
	}
	cctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	res, err := m.cfg.Detector.Check(cctx)
	cancel()
	if err != nil {
		return Plan{}, fmt.Errorf("check for updates: %w", err)
	}
	ups, pending := m.pol.relevant(res)
	p := Plan{Updates: ups, RebootRequired: res.RebootRequired, RebootMethod: m.pol.RebootMethod}
	p.Reasons = append(p.Reasons, res.Reasons...)
	if !pending {
		p.Reasons = append(p.Reasons, fmt.Sprintf("nothing to do: no pending updates with updates = %q, and no reboot required", m.pol.Updates))
		return p, nil
	}
	p.Reasons = append(p.Reasons, pendingReason(ups, res))
	t := m.clock.Now()
	if now {
		p.When = t
		p.Reasons = append(p.Reasons, "started now: the maintenance window is ignored")
	} else {
		start, end, _ := nextWindow(m.windows, t)
		p.When, p.WindowEnd = start, end
		switch {
		case len(m.windows) == 0:
			p.Reasons = append(p.Reasons, "no maintenance window is configured: any time")
		case start.After(t):
			p.Reasons = append(p.Reasons, "waits for the maintenance window at "+start.Format(time.RFC3339))
		default:
			p.Reasons = append(p.Reasons, "inside the maintenance window until "+end.Format(time.RFC3339))
		}
		if m.pol.Mode == ModeNotify {
			p.Reasons = append(p.Reasons, "mode = notify: nothing starts until `autopodctl update`")
		}
	}
	ps, err := m.listPods(ctx)
	if err != nil {
		return p, err
	}
	run := running(ps)
	if len(run) == 0 {
		p.Reasons = append(p.Reasons, "no pods run here: nothing to move")
		return p, nil
	}
	cctx, cancel = context.WithTimeout(ctx, serviceTimeout)
	peer, err := m.cfg.Peers.Choose(cctx, run)
	cancel()
	to := peer
	if err != nil {
		var npe *NoPeerError
		if errors.As(err, &npe) {
			p.Refusals = npe.Refusals
		}
		if m.pol.NoPeer == NoPeerWait {
			p.Reasons = append(p.Reasons, fmt.Sprintf("%v; no_peer = wait: the cycle would wait and ask again every %s", err, m.pol.RetryInterval))
			to = ""
		} else {
			p.Local, to = true, LocalDisk
			p.Reasons = append(p.Reasons, fmt.Sprintf("%v; no_peer = local-checkpoint: the pods are checkpointed to disk and restored after the reboot (paused meanwhile)", err))
		}
	} else {
		p.Peer = peer
		p.Reasons = append(p.Reasons, fmt.Sprintf("%s takes the pods", peer))
	}
	for _, pod := range run {
		p.Moves = append(p.Moves, Move{Pod: pod.Name, To: to})
	}
	return p, nil
}
