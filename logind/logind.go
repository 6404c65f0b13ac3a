package logind

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// Bus names, paths and interfaces this package talks to.
const (
	LoginName      = "org.freedesktop.login1"
	LoginPath      = dbus.ObjectPath("/org/freedesktop/login1")
	LoginInterface = "org.freedesktop.login1.Manager"

	SystemdName      = "org.freedesktop.systemd1"
	SystemdPath      = dbus.ObjectPath("/org/freedesktop/systemd1")
	SystemdInterface = "org.freedesktop.systemd1.Manager"
)

// DefaultCallTimeout bounds a call when Options.CallTimeout is zero. It is
// sd-bus's own default method timeout; logind answers from memory, so
// anything slower means the bus or logind is stuck.
const DefaultCallTimeout = 25 * time.Second

// defaultKexecLoaded is where the kernel says whether a kexec kernel is
// loaded ("1") or not ("0"); it is absent without CONFIG_KEXEC.
const defaultKexecLoaded = "/sys/kernel/kexec_loaded"

// Errors callers branch on. Each is wrapped together with the D-Bus error
// it came from, so the bus's own words stay in the message.
var (
	// ErrLogindNotRunning: nobody owns org.freedesktop.login1 and the bus
	// could not activate it (a host or container without systemd-logind).
	ErrLogindNotRunning = errors.New("systemd-logind is not running")
	// ErrSystemdNotRunning: nobody owns org.freedesktop.systemd1, so
	// systemd is not the service manager of this system.
	ErrSystemdNotRunning = errors.New("systemd is not running as the service manager")
	// ErrAccessDenied: the bus policy, polkit or logind refused the call,
	// including logind refusing a reboot because of a block lock.
	ErrAccessDenied = errors.New("access denied")
	// ErrNoKexecKernel: KExec was asked for but no kexec kernel is loaded.
	ErrNoKexecKernel = errors.New("no kexec kernel loaded")
)

// Options configure a Client.
type Options struct {
	// CallTimeout bounds every D-Bus call on top of the caller's context.
	// Zero means DefaultCallTimeout.
	CallTimeout time.Duration
}

func (o *Options) validate() error {
	if o.CallTimeout < 0 {
		return fmt.Errorf("logind: negative call timeout %s", o.CallTimeout)
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	return nil
}

// Client calls logind and, for KExec, systemd on one connection. It is
// safe for concurrent use; it holds no state besides its configuration.
type Client struct {
	conn        *dbus.Conn
	timeout     time.Duration
	kexecLoaded string // path of kexec_loaded; tests point it elsewhere
}

// New returns a Client on conn, which must support Unix fd passing (any
// unix-socket bus connection does) for Inhibit to work.
func New(conn *dbus.Conn, opts Options) (*Client, error) {
	if conn == nil {
		return nil, errors.New("logind: nil D-Bus connection")
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	return &Client{conn: conn, timeout: opts.CallTimeout, kexecLoaded: defaultKexecLoaded}, nil
}

// login1 calls a method of the logind Manager and stores its results in
// out.
func (c *Client) login1(ctx context.Context, method string, args []any, out ...any) error {
	return c.call(ctx, LoginName, LoginPath, LoginInterface, method, args, out...)
}

func (c *Client) call(ctx context.Context, dest string, path dbus.ObjectPath, iface, method string, args []any, out ...any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	call := c.conn.Object(dest, path).CallWithContext(ctx, iface+"."+method, 0, args...)
	if call.Err != nil {
		return callError(dest, method, call.Err)
	}
	if err := call.Store(out...); err != nil {
		return fmt.Errorf("%s %s: unexpected reply: %w", dest, method, err)
	}
	return nil
}

// callError wraps a failed call's error with the method's name and, for
// the D-Bus errors callers branch on, the matching sentinel.
func callError(dest, method string, err error) error {
	switch name := errorName(err); name {
	case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
		notRunning := ErrLogindNotRunning
		if dest == SystemdName {
			notRunning = ErrSystemdNotRunning
		}
		return fmt.Errorf("%s %s: %w: %w", dest, method, notRunning, err)
	case "org.freedesktop.DBus.Error.AccessDenied", "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired":
		return fmt.Errorf("%s %s: %w: %w", dest, method, ErrAccessDenied, err)
	}
	return fmt.Errorf("%s %s: %w", dest, method, err)
}

// errorName returns the D-Bus error name inside err, or "".
func errorName(err error) string {
	var v dbus.Error
	if errors.As(err, &v) {
		return v.Name
	}
	var p *dbus.Error
	if errors.As(err, &p) && p != nil {
		return p.Name
	}
	return ""
}

// splitWhat splits a colon-separated "what" list as logind prints it,
// dropping empty elements.
func splitWhat(what string) []string {
	var out []string
	for w := range strings.SplitSeq(what, ":") {
		if w != "" {
			out = append(out, w)
		}
	}
	return out
}
