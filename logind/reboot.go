package logind

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/godbus/dbus/v5"
)

// RebootFlags are the flags of RebootWithFlags (SD_LOGIND_* in
// org.freedesktop.login1(5)); both exist in systemd 252 and 257.
type RebootFlags uint64

const (
	// FlagCheckInhibitors makes logind refuse a privileged caller while a
	// lock blocks the reboot (SD_LOGIND_ROOT_CHECK_INHIBITORS). See the
	// package documentation for how 252 and 257 differ without it.
	FlagCheckInhibitors RebootFlags = 1 << 0
	// FlagKExec reboots into the loaded kexec kernel, or normally when
	// none is loaded (SD_LOGIND_KEXEC_REBOOT).
	FlagKExec RebootFlags = 1 << 1
)

// Reboot asks logind to reboot. interactive lets polkit ask the user for
// authentication; a daemon passes false. logind queues the reboot and
// answers at once, after the PrepareForShutdown(true) signal; delay locks
// then hold the shutdown for at most InhibitDelayMaxSec.
func (c *Client) Reboot(ctx context.Context, interactive bool) error {
	return c.login1(ctx, "Reboot", []any{interactive})
}

// RebootWithFlags is Reboot with logind's flags and without polkit
// interaction.
func (c *Client) RebootWithFlags(ctx context.Context, flags RebootFlags) error {
	return c.login1(ctx, "RebootWithFlags", []any{uint64(flags)})
}

// CanReboot reports whether the caller may reboot, as logind words it:
// "yes", "no", "challenge" (polkit would ask for authentication) or "na"
// (not available on this system).
func (c *Client) CanReboot(ctx context.Context) (string, error) {
	var answer string
	if err := c.login1(ctx, "CanReboot", nil, &answer); err != nil {
		return "", err
	}
	return answer, nil
}

// KExec asks systemd to start kexec.target with the job mode
// "replace-irreversibly", as `systemctl kexec` does when it bypasses
// logind: systemd stops every unit and jumps into the kernel that was
// loaded beforehand with kexec-tools (`kexec -l VMLINUZ --initrd=INITRD
// --reuse-cmdline`). No inhibitor lock is consulted; prefer
// RebootWithFlags(FlagKExec) when locks must be honoured.
//
// Without a loaded kernel systemd-shutdown would fall back to a normal
// reboot; KExec refuses instead, with ErrNoKexecKernel, so a caller that
// asked for kexec never reboots the slow way without knowing. It returns
// once the job is queued.
func (c *Client) KExec(ctx context.Context) error {
	if err := c.checkKexecLoaded(); err != nil {
		return fmt.Errorf("%s StartUnit kexec.target: %w", SystemdName, err)
	}
	var job dbus.ObjectPath
	return c.call(ctx, SystemdName, SystemdPath, SystemdInterface, "StartUnit",
		[]any{"kexec.target", "replace-irreversibly"}, &job)
}

// checkKexecLoaded reads the kernel's kexec_loaded flag.
func (c *Client) checkKexecLoaded() error {
	data, err := os.ReadFile(c.kexecLoaded)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s does not exist (kernel built without kexec support)", ErrNoKexecKernel, c.kexecLoaded)
	}
	if err != nil {
		return fmt.Errorf("read kexec state: %w", err)
	}
	switch v := strings.TrimSpace(string(data)); v {
	case "1":
		return nil
	case "0":
		return fmt.Errorf("%w: %s is 0 (load one first: kexec -l VMLINUZ --initrd=INITRD --reuse-cmdline)", ErrNoKexecKernel, c.kexecLoaded)
	default:
		return fmt.Errorf("read kexec state: %s holds %q, want 0 or 1", c.kexecLoaded, v)
	}
}
