package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/autopod/autopod/cycle"
	"github.com/autopod/autopod/pods"
	"github.com/autopod/autopod/updater"
)

// UpdateCycle is what the D-Bus object needs from the update cycle.
// *UpdateService is the real one.
type UpdateCycle interface {
	Status() cycle.Status
	CheckUpdates(ctx context.Context) (cycle.CheckResult, error)
	StartUpdate(ctx context.Context, opts cycle.StartOptions) (cycle.Plan, error)
	Cancel(ctx context.Context) error
	// ExternalInstallBegin is the package manager's hook before it
	// installs pkgs: needed says whether autopod moves the pods away
	// first (then WaitInstallReady waits for that).
	ExternalInstallBegin(ctx context.Context, tool string, pkgs []HookPackage) (needed bool, err error)
	WaitInstallReady(ctx context.Context) error
	// ExternalInstallEnd is the hook after the package manager's run.
	ExternalInstallEnd(ctx context.Context, ok bool, detail string) error
}

// HookPackage is a package a package manager is about to install, as its
// hook reports it: (name, version) on the bus.
type HookPackage struct {
	Name    string
	Version string
}

// UpdateService is UpdateCycle over the cycle's machine.
type UpdateService struct {
	M       *cycle.Machine
	Backend updater.Backend
}

func (u *UpdateService) Status() cycle.Status { return u.M.Status() }
func (u *UpdateService) CheckUpdates(ctx context.Context) (cycle.CheckResult, error) {
	return u.M.CheckUpdates(ctx)
}
func (u *UpdateService) StartUpdate(ctx context.Context, opts cycle.StartOptions) (cycle.Plan, error) {
	return u.M.StartUpdate(ctx, opts)
}
func (u *UpdateService) Cancel(ctx context.Context) error { return u.M.Cancel(ctx) }

// ExternalInstallBegin classifies pkgs and, when the policy acts on one
// of them, starts (or joins) a cycle that moves the pods away.
func (u *UpdateService) ExternalInstallBegin(ctx context.Context, tool string, pkgs []HookPackage) (bool, error) {
	b := u.Backend
	if tool == string(updater.Apt) || tool == string(updater.Dnf) {
		b = updater.Backend(tool)
	}
	var ups []cycle.Update
	for _, p := range pkgs {
		ups = append(ups, cycle.Update{Name: p.Name, Version: p.Version, Class: cycleClass(updater.Classify(b, p.Name))})
	}
	return u.M.ExternalInstallBegin(ctx, ups)
}

func (u *UpdateService) WaitInstallReady(ctx context.Context) error {
	return u.M.WaitInstallReady(ctx)
}

func (u *UpdateService) ExternalInstallEnd(ctx context.Context, ok bool, detail string) error {
	return u.M.ExternalInstallEnd(ctx, ok, detail)
}

// SetUpdateCycle gives the object the update cycle behind its update
// methods and properties. Call it before Export.
func (a *AgentObject) SetUpdateCycle(u UpdateCycle) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.update = u
}

// OnTransition is the cycle's Notifier: a signal and fresh properties.
func (a *AgentObject) OnTransition(t cycle.Transition) {
	a.enqueue(queued{transition: &t})
}

// Progress is the migration progress callback for migrations the agent
// runs by itself (the update cycle's evacuation and return).
func (a *AgentObject) Progress(p pods.MigrationProgress) { a.onProgress(p) }

func (a *AgentObject) updateCycle() (UpdateCycle, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.update == nil {
		return nil, fmt.Errorf("%w: the update cycle is not configured in this agent", errNotSupported)
	}
	return a.update, nil
}

// UpdateEntry is one pending update on the bus: (name, version, class).
type UpdateEntry struct {
	Name    string
	Version string
	Class   string
}

// WindowTimes is NextWindow on the bus: start and end, microseconds since
// the epoch; 0 when unknown (no window: any time; end 0: no end).
type WindowTimes struct {
	Start uint64
	End   uint64
}

type updateProps struct {
	State          string
	PendingUpdates []UpdateEntry
	RebootRequired bool
	NextWindow     WindowTimes
}

func (a *AgentObject) updateProps() updateProps {
	a.mu.Lock()
	u := a.update
	a.mu.Unlock()
	return updatePropsOf(u)
}

// updatePropsOf computes the update properties of u (nil: none).
func updatePropsOf(u UpdateCycle) updateProps {
	p := updateProps{PendingUpdates: []UpdateEntry{}}
	if u == nil {
		return p
	}
	st := u.Status()
	p.State, p.RebootRequired = string(st.State), st.RebootRequired
	for _, up := range st.PendingUpdates {
		p.PendingUpdates = append(p.PendingUpdates, UpdateEntry{up.Name, up.Version, string(up.Class)})
	}
	p.NextWindow = WindowTimes{epochUsec(st.NextWindowStart), epochUsec(st.NextWindowEnd)}
	return p
}

func epochUsec(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(max(t.UnixMicro(), 0))
}

// refreshUpdateProps sets the update properties that changed.
func (a *AgentObject) refreshUpdateProps() {
	a.mu.Lock()
	props := a.props
	a.mu.Unlock()
	if props == nil {
		return
	}
	u := a.updateProps()
	for name, v := range map[string]any{"State": u.State, "PendingUpdates": u.PendingUpdates, "RebootRequired": u.RebootRequired, "NextWindow": u.NextWindow} {
		if cur, err := props.Get(DBusInterface, name); err == nil && fmt.Sprint(cur.Value()) == fmt.Sprint(dbus.MakeVariant(v).Value()) {
			continue
		}
		if err := setProp(props, name, v); err != nil {
			a.log.Warn("update property", "name", name, "err", err)
		}
	}
}

// UpdateStatusJSON returns the update cycle's whole state as JSON: the
// state and why, pending updates, reboot-required, the next window, the
// lease, blockers, the plan, the last error and recent transitions.
func (a *AgentObject) UpdateStatusJSON() (string, *dbus.Error) {
	u, err := a.updateCycle()
	if err != nil {
		return "", dbusError(err)
	}
	data, err := json.Marshal(u.Status())
	if err != nil {
		return "", dbusError(err)
	}
	return string(data), nil
}

// CheckUpdates asks the package manager now and returns what is pending.
func (a *AgentObject) CheckUpdates(sender dbus.Sender) ([]UpdateEntry, bool, *dbus.Error) {
	var res cycle.CheckResult
	derr := a.run(sender, "CheckUpdates", nil, nil, func(ctx context.Context) error {
		u, err := a.updateCycle()
		if err != nil {
			return err
		}
		res, err = u.CheckUpdates(ctx)
		return err
	})
	if derr != nil {
		return nil, false, derr
	}
	a.refreshUpdateProps()
	out := []UpdateEntry{}
	for _, up := range res.Updates {
		out = append(out, UpdateEntry{up.Name, up.Version, string(up.Class)})
	}
	return out, res.RebootRequired, nil
}

// StartUpdate starts an update cycle that waits for the maintenance
// window (in notify mode, the operator's go-ahead), or with dry_run only
// returns the plan. The plan is JSON.
func (a *AgentObject) StartUpdate(sender dbus.Sender, dryRun bool) (string, *dbus.Error) {
	return a.startUpdate(sender, "StartUpdate", cycle.StartOptions{DryRun: dryRun})
}

// StartUpdateNow is StartUpdate ignoring the maintenance window.
func (a *AgentObject) StartUpdateNow(sender dbus.Sender, dryRun bool) (string, *dbus.Error) {
	return a.startUpdate(sender, "StartUpdateNow", cycle.StartOptions{DryRun: dryRun, Now: true})
}

func (a *AgentObject) startUpdate(sender dbus.Sender, method string, opts cycle.StartOptions) (string, *dbus.Error) {
	var plan cycle.Plan
	derr := a.run(sender, method, []any{"dry_run", opts.DryRun}, nil, func(ctx context.Context) error {
		u, err := a.updateCycle()
		if err != nil {
			return err
		}
		plan, err = u.StartUpdate(ctx, opts)
		return err
	})
	if derr != nil {
		return "", derr
	}
	data, err := json.Marshal(plan)
	if err != nil {
		return "", dbusError(err)
	}
	return string(data), nil
}

// Cancel stops the update cycle before it installs: the pods come home and
// the lease is released. After the installation began, TooLate.
func (a *AgentObject) Cancel(sender dbus.Sender) *dbus.Error {
	return a.run(sender, "Cancel", nil, nil, func(ctx context.Context) error {
		u, err := a.updateCycle()
		if err != nil {
			return err
		}
		return u.Cancel(ctx)
	})
}

// ExternalInstallBegin is called by apt's and dnf's hooks (tool "apt" or
// "dnf") before they install packages (name, version). needed: the policy
// acts on one of them, and an update cycle now moves the pods away; the
// hook then calls WaitInstallReady before it lets the install go on.
func (a *AgentObject) ExternalInstallBegin(sender dbus.Sender, tool string, packages []HookPackage) (bool, *dbus.Error) {
	var needed bool
	derr := a.run(sender, "ExternalInstallBegin", []any{"tool", tool, "packages", len(packages)}, nil, func(ctx context.Context) error {
		u, err := a.updateCycle()
		if err != nil {
			return err
		}
		needed, err = u.ExternalInstallBegin(ctx, tool, packages)
		return err
	})
	return needed, derr
}

// WaitInstallReady returns once the pods are away and the package manager
// may install; it fails (Aborted) when the cycle ended without moving
// them. UpdateStateChanged signals tell how it goes meanwhile.
func (a *AgentObject) WaitInstallReady(sender dbus.Sender) *dbus.Error {
	return a.run(sender, "WaitInstallReady", nil, nil, func(ctx context.Context) error {
		u, err := a.updateCycle()
		if err != nil {
			return err
		}
		return u.WaitInstallReady(ctx)
	})
}

// ExternalInstallEnd is called by the hooks after the package manager ran.
func (a *AgentObject) ExternalInstallEnd(sender dbus.Sender, ok bool, detail string) *dbus.Error {
	return a.run(sender, "ExternalInstallEnd", []any{"ok", ok}, nil, func(ctx context.Context) error {
		u, err := a.updateCycle()
		if err != nil {
			return err
		}
		return u.ExternalInstallEnd(ctx, ok, detail)
	})
}
