package logind

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// Inhibitor modes (the mode argument of Inhibit and Inhibitor.Mode).
const (
	ModeBlock     = "block"
	ModeDelay     = "delay"
	ModeBlockWeak = "block-weak" // systemd 257 and later
)

// Inhibitor is one lock as ListInhibitors reports it.
type Inhibitor struct {
	What []string // operations it covers: "shutdown", "sleep", "idle", "handle-…"
	Who  string   // the program that holds it, as it described itself
	Why  string
	Mode string // ModeBlock, ModeDelay or ModeBlockWeak
	UID  uint32
	PID  uint32
}

// Covers reports whether the lock applies to the operation what
// ("shutdown" covers reboot, power-off, halt and kexec).
func (i Inhibitor) Covers(what string) bool {
	return slices.Contains(i.What, what)
}

// String renders the lock for status output and error messages:
// `who (pid N, uid N): why`.
func (i Inhibitor) String() string {
	return fmt.Sprintf("%s (pid %d, uid %d): %s", i.Who, i.PID, i.UID, i.Why)
}

// inhibitorWire is one element of ListInhibitors' a(ssssuu); field order
// is the wire order.
type inhibitorWire struct {
	What, Who, Why, Mode string
	UID, PID             uint32
}

// ListInhibitors returns every inhibitor lock logind holds, in logind's
// order.
func (c *Client) ListInhibitors(ctx context.Context) ([]Inhibitor, error) {
	var wire []inhibitorWire
	if err := c.login1(ctx, "ListInhibitors", nil, &wire); err != nil {
		return nil, err
	}
	out := make([]Inhibitor, 0, len(wire))
	for _, w := range wire {
		out = append(out, Inhibitor{What: splitWhat(w.What), Who: w.Who, Why: w.Why, Mode: w.Mode, UID: w.UID, PID: w.PID})
	}
	return out, nil
}

// Blockers returns the locks that block (rather than delay) the operation
// what, e.g. "shutdown". Weak blocks are included: they stop unprivileged
// callers, and on 257 privileged ones that ask to be stopped.
func (c *Client) Blockers(ctx context.Context, what string) ([]Inhibitor, error) {
	all, err := c.ListInhibitors(ctx)
	if err != nil {
		return nil, err
	}
	var out []Inhibitor
	for _, i := range all {
		if (i.Mode == ModeBlock || i.Mode == ModeBlockWeak) && i.Covers(what) {
			out = append(out, i)
		}
	}
	return out, nil
}

// Lock is an inhibitor lock this process holds: logind keeps it for as
// long as any copy of the file descriptor it handed out is open. A delay
// lock is how a program gets time to act on PrepareForShutdown(true):
// logind waits until the lock is released, i.e. until the descriptor is
// closed, or until InhibitDelayMaxSec has passed.
//
// The descriptor is close-on-exec (Go receives descriptors with
// MSG_CMSG_CLOEXEC), so programs the agent starts never inherit the lock.
type Lock struct {
	What, Who, Why, Mode string

	mu sync.Mutex
	f  *os.File // nil once released
}

// Release closes the descriptor, which releases the lock. It is safe to
// call more than once, from several goroutines and on a nil *Lock; only
// the first call closes anything.
func (l *Lock) Release() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("release %s lock on %s: %w", l.Mode, l.What, err)
	}
	return nil
}

// Inhibit takes an inhibitor lock. what is a colon-separated list
// ("shutdown", "sleep:shutdown"), mode one of the Mode constants.
//
// If ctx ends before logind answers, Inhibit returns ctx's error, and a
// lock logind grants afterwards is released as soon as its descriptor
// arrives: a late reply never leaves a lock held by nobody's code.
func (c *Client) Inhibit(ctx context.Context, what, who, why, mode string) (*Lock, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	// No context on the call itself: godbus drops a reply that comes after
	// the call's context ended, descriptor and all, and that descriptor
	// would hold the lock until this process exits.
	call := c.conn.Object(LoginName, LoginPath).Go(LoginInterface+".Inhibit", 0, make(chan *dbus.Call, 1),
		what, who, why, mode)
	select {
	case <-call.Done:
	case <-ctx.Done():
		go func() {
			<-call.Done // godbus completes every call, at the latest when the connection closes
			closeReceivedFDs(call)
		}()
		return nil, fmt.Errorf("%s Inhibit: %w", LoginName, ctx.Err())
	}
	if call.Err != nil {
		return nil, callError(LoginName, "Inhibit", call.Err)
	}
	var fd dbus.UnixFD
	if err := call.Store(&fd); err != nil {
		closeReceivedFDs(call)
		return nil, fmt.Errorf("%s Inhibit: unexpected reply: %w", LoginName, err)
	}
	return &Lock{What: what, Who: who, Why: why, Mode: mode, f: os.NewFile(uintptr(fd), "logind-inhibitor")}, nil
}

// closeReceivedFDs closes every descriptor in a reply nobody will use.
func closeReceivedFDs(call *dbus.Call) {
	if call.Err != nil {
		return
	}
	for _, v := range call.Body {
		if fd, ok := v.(dbus.UnixFD); ok {
			_ = unix.Close(int(fd))
		}
	}
}
