package cycle

import (
	"fmt"
	"time"
)

// Policy is the operator's update policy: the [update] table of
// /etc/autopod/autopod.toml. Zero values mean the defaults (WithDefaults);
// docs/update-cycle.md lists every key.
type Policy struct {
	// Windows are the maintenance windows ([[update.window]]). A cycle
	// started by the machine itself begins only inside one; none at all
	// means any time.
	Windows []Window `toml:"window"`
	// Updates is which updates the cycle acts on and installs.
	Updates UpdateSet `toml:"updates"`
	// Mode says whether the cycle starts by itself (automatic) or only
	// announces pending updates and waits for `autopodctl update`.
	Mode Mode `toml:"mode"`
	// RebootMethod is how the host reboots.
	RebootMethod RebootMethod `toml:"reboot_method"`
	// NoPeer is what to do when no peer can take the pods.
	NoPeer NoPeerAction `toml:"no_peer"`

	// CheckInterval is how often the machine asks the Detector while
	// idle or waiting.
	CheckInterval time.Duration `toml:"check_interval"`
	// RetryInterval is how long the machine waits before trying again
	// after the lease was busy, no peer took the pods, a block inhibitor
	// held the reboot, or pulling the pods back failed.
	RetryInterval time.Duration `toml:"retry_interval"`
	// EvacuationTimeout bounds one attempt at moving all pods away.
	EvacuationTimeout time.Duration `toml:"evacuation_timeout"`
	// ReturnTimeout bounds one attempt at pulling all pods back.
	ReturnTimeout time.Duration `toml:"return_timeout"`
	// InstallTimeout bounds one run of the Installer.
	InstallTimeout time.Duration `toml:"install_timeout"`
	// RebootTimeout is how long after a reboot request the host must have
	// rebooted (a new boot ID) before the request counts as failed.
	RebootTimeout time.Duration `toml:"reboot_timeout"`
	// ExternalInstallTimeout is how long, after the apt hook started the
	// cycle, the machine waits for apt to report the end of its run.
	ExternalInstallTimeout time.Duration `toml:"external_install_timeout"`
	// MaxAttempts bounds the attempts at evacuating, installing and
	// rebooting (including runs cut short by a crash) before the cycle
	// gives up and brings the pods home. Pulling pods back is retried
	// without limit.
	MaxAttempts int `toml:"max_attempts"`
}

// UpdateSet is which updates the cycle acts on.
type UpdateSet string

const (
	// UpdatesKernel: kernel and boot-critical packages (ClassKernel,
	// ClassBoot) and reboot-required signals.
	UpdatesKernel UpdateSet = "kernel"
	// UpdatesAll: every pending update.
	UpdatesAll UpdateSet = "all"
)

// Mode is whether the cycle starts by itself.
type Mode string

const (
	ModeAutomatic Mode = "automatic"
	ModeNotify    Mode = "notify"
)

// RebootMethod is how the host reboots.
type RebootMethod string

const (
	// RebootLogind: logind's Reboot, which honours inhibitor locks.
	RebootLogind RebootMethod = "logind"
	// RebootKexec: kexec straight into the new kernel, skipping firmware.
	RebootKexec RebootMethod = "kexec"
)

// NoPeerAction is what to do when no peer takes the pods.
type NoPeerAction string

const (
	// NoPeerWait: do not update; wait (in WaitingForWindow, lease
	// released) and try again after RetryInterval.
	NoPeerWait NoPeerAction = "wait"
	// NoPeerLocalCheckpoint: checkpoint the pods to local disk, install,
	// reboot and restore them on this host (as KUP did). The pods are
	// paused for the whole reboot.
	NoPeerLocalCheckpoint NoPeerAction = "local-checkpoint"
)

// DefaultPolicy is the policy of an [update] table with no keys: kernel
// updates, automatic, any time, logind reboot, wait when no peer.
func DefaultPolicy() Policy {
	return Policy{
		Updates:                UpdatesKernel,
		Mode:                   ModeAutomatic,
		RebootMethod:           RebootLogind,
		NoPeer:                 NoPeerWait,
		CheckInterval:          time.Hour,
		RetryInterval:          5 * time.Minute,
		EvacuationTimeout:      30 * time.Minute,
		ReturnTimeout:          30 * time.Minute,
		InstallTimeout:         time.Hour,
		RebootTimeout:          15 * time.Minute,
		ExternalInstallTimeout: 2 * time.Hour,
		MaxAttempts:            3,
	}
}

// WithDefaults returns p with every unset key (empty string, zero
// duration, zero MaxAttempts) set to DefaultPolicy's value.
func (p Policy) WithDefaults() Policy {
	d := DefaultPolicy()
	def := func(v *string, dv string) {
		if *v == "" {
			*v = dv
		}
	}
	def((*string)(&p.Updates), string(d.Updates))
	def((*string)(&p.Mode), string(d.Mode))
	def((*string)(&p.RebootMethod), string(d.RebootMethod))
	def((*string)(&p.NoPeer), string(d.NoPeer))
	for _, f := range []struct{ v, dv *time.Duration }{
		{&p.CheckInterval, &d.CheckInterval},
		{&p.RetryInterval, &d.RetryInterval},
		{&p.EvacuationTimeout, &d.EvacuationTimeout},
		{&p.ReturnTimeout, &d.ReturnTimeout},
		{&p.InstallTimeout, &d.InstallTimeout},
		{&p.RebootTimeout, &d.RebootTimeout},
		{&p.ExternalInstallTimeout, &d.ExternalInstallTimeout},
	} {
		if *f.v == 0 {
			*f.v = *f.dv
		}
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	return p
}

// PolicyError is a bad key in the [update] table. Key is the key's path
// below [update], e.g. "mode" or "window[1].start" (windows count from 0).
type PolicyError struct {
	Key string
	Msg string
}

func (e *PolicyError) Error() string { return "update." + e.Key + ": " + e.Msg }

// Validate checks p (after WithDefaults, empty values are errors too). The
// error is a *PolicyError naming the key.
func (p Policy) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &PolicyError{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	switch p.Updates {
	case UpdatesKernel, UpdatesAll:
	default:
		return bad("updates", `must be "kernel" or "all", got %q`, p.Updates)
	}
	switch p.Mode {
	case ModeAutomatic, ModeNotify:
	default:
		return bad("mode", `must be "automatic" or "notify", got %q`, p.Mode)
	}
	switch p.RebootMethod {
	case RebootLogind, RebootKexec:
	default:
		return bad("reboot_method", `must be "logind" or "kexec", got %q`, p.RebootMethod)
	}
	switch p.NoPeer {
	case NoPeerWait, NoPeerLocalCheckpoint:
	default:
		return bad("no_peer", `must be "wait" or "local-checkpoint", got %q`, p.NoPeer)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"check_interval", p.CheckInterval},
		{"retry_interval", p.RetryInterval},
		{"evacuation_timeout", p.EvacuationTimeout},
		{"return_timeout", p.ReturnTimeout},
		{"install_timeout", p.InstallTimeout},
		{"reboot_timeout", p.RebootTimeout},
		{"external_install_timeout", p.ExternalInstallTimeout},
	} {
		if d.v < time.Second {
			return bad(d.key, "must be a duration of at least 1s, such as \"30m\", got %s", d.v)
		}
	}
	if p.MaxAttempts < 1 {
		return bad("max_attempts", "must be at least 1, got %d", p.MaxAttempts)
	}
	for i, w := range p.Windows {
		if _, err := w.compile(); err != nil {
			err.Key = fmt.Sprintf("window[%d].%s", i, err.Key)
			return err
		}
	}
	return nil
}

// wants reports whether the policy acts on u.
func (p Policy) wants(u Update) bool {
	return p.Updates == UpdatesAll || u.Class == ClassKernel || u.Class == ClassBoot
}

// relevant is the part of a check the policy acts on: the updates it
// installs, and whether there is anything to do at all.
func (p Policy) relevant(c CheckResult) (updates []Update, pending bool) {
	for _, u := range c.Updates {
		if p.wants(u) {
			updates = append(updates, u)
		}
	}
	return updates, len(updates) > 0 || c.RebootRequired
}
