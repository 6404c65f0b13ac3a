package cycle

// The states that change the host: Installing and Rebooting.

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// stepInstalling installs (or waits for apt, when the apt hook started
// the cycle), then decides whether the host must reboot.
func (m *Machine) stepInstalling(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	var plan Plan
	if r.Plan != nil {
		plan = *r.Plan
	}
	if r.Trigger == TriggerAptHook && r.External != nil {
		ext := r.External
		if !ext.Ended {
			deadline := ext.Begun.Add(m.pol.ExternalInstallTimeout)
			if now.Before(deadline) {
				return deadline, nil
			}
			err := fmt.Errorf("apt did not report the end of its run within %s of the apt hook", m.pol.ExternalInstallTimeout)
			return time.Time{}, m.transition(Returning, err.Error(), func(r *Record) { r.LastError = err.Error() })
		}
		if !ext.OK {
			err := fmt.Errorf("apt failed: %s", ext.Detail)
			return time.Time{}, m.transition(Returning, "installation failed: "+err.Error(), func(r *Record) { r.LastError = err.Error() })
		}
		return m.installed(ctx, plan)
	}
	if r.Attempts >= m.pol.MaxAttempts {
		return time.Time{}, m.transition(Returning, fmt.Sprintf("giving up after %d installation attempts (last error: %s)", r.Attempts, r.LastError), nil)
	}
	if err := m.update(func(r *Record) error { r.Attempts++; return nil }); err != nil {
		return time.Time{}, err
	}
	if len(plan.Updates) > 0 {
		actx, cancel := m.action(ctx, Installing, m.pol.InstallTimeout)
		err := m.cfg.Installer.Install(actx, plan.Updates)
		cancel()
		if err != nil {
			err = fmt.Errorf("install: %w", err)
			return time.Time{}, m.transition(Returning, "installation failed: "+err.Error(), func(r *Record) { r.LastError = err.Error() })
		}
	}
	return m.installed(ctx, plan)
}

// installed decides, after a successful installation, whether to reboot.
func (m *Machine) installed(ctx context.Context, plan Plan) (time.Time, error) {
	reboot := plan.RebootRequired
	for _, u := range plan.Updates {
		if u.Class == ClassKernel || u.Class == ClassBoot {
			reboot = true
		}
	}
	if !reboot {
		res, err := m.check(ctx)
		// When in doubt, reboot: the pods are away, so it costs little.
		reboot = err != nil || res.RebootRequired
		if !reboot {
			return time.Time{}, m.transition(Returning, "installed; no reboot required", nil)
		}
	}
	return time.Time{}, m.transition(Rebooting, "installed; reboot required", nil)
}

// stepRebooting reboots unless a block inhibitor holds the reboot back,
// and notices when a requested reboot does not happen.
func (m *Machine) stepRebooting(ctx context.Context, r *Record, now time.Time) (time.Time, error) {
	if r.BootID != "" {
		if cur, err := m.cfg.BootID(); err == nil && cur != r.BootID {
			return time.Time{}, m.transition(Returning, "the host rebooted", nil)
		}
		if deadline := r.RebootRequested.Add(m.pol.RebootTimeout); now.Before(deadline) {
			return deadline, nil
		}
		err := fmt.Errorf("the host did not reboot within %s of the reboot request", m.pol.RebootTimeout)
		if rerr := m.note(err.Error(), err, time.Time{}); rerr != nil {
			return time.Time{}, rerr
		}
		r = m.snapshot()
	}
	if r.Attempts >= m.pol.MaxAttempts {
		return time.Time{}, m.transition(Returning, fmt.Sprintf("giving up after %d reboot attempts (last error: %s); the pods come back to the old kernel", r.Attempts, r.LastError), nil)
	}
	if now.Before(r.RetryAt) {
		return r.RetryAt, nil
	}
	retry := now.Add(m.pol.RetryInterval)
	bctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	blockers, err := m.cfg.Inhibitor.Blockers(bctx)
	cancel()
	if err != nil {
		return retry, m.note("cannot list logind inhibitors", fmt.Errorf("list inhibitors: %w", err), retry)
	}
	if len(blockers) > 0 {
		who := make([]string, len(blockers))
		for i, b := range blockers {
			who[i] = b.String()
		}
		return retry, m.update(func(r *Record) error {
			r.Blockers = blockers
			r.Reason = "reboot blocked by inhibitor lock: " + strings.Join(who, "; ")
			r.RetryAt = retry
			return nil
		})
	}
	id, err := m.cfg.BootID()
	if err != nil {
		return retry, m.note("cannot read the boot ID", err, retry)
	}
	// Write down the boot ID first: whatever happens next, a restarted
	// agent can tell whether the reboot took place.
	err = m.update(func(r *Record) error {
		r.BootID, r.RebootRequested = id, now
		r.Attempts++
		r.Blockers, r.RetryAt = nil, time.Time{}
		r.Reason = fmt.Sprintf("reboot requested (%s)", m.pol.RebootMethod)
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	rctx, cancel := context.WithTimeout(ctx, rebootCallTimeout)
	err = m.cfg.Rebooter.Reboot(rctx, m.pol.RebootMethod)
	cancel()
	if err != nil {
		err = fmt.Errorf("reboot: %w", err)
		return retry, m.update(func(r *Record) error {
			r.BootID, r.RebootRequested = "", time.Time{}
			r.LastError, r.Reason, r.RetryAt = err.Error(), err.Error(), retry
			return nil
		})
	}
	return now.Add(m.pol.RebootTimeout), nil
}
