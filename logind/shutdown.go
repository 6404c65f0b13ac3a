package logind

import (
	"context"

	"github.com/godbus/dbus/v5"
)

// WatchPrepareForShutdown subscribes to logind's PrepareForShutdown
// signal: true when a shutdown (reboot, power-off, halt, kexec) begins,
// false when one was cancelled. A program that must act first takes a
// delay lock beforehand and releases it when done (see Lock).
//
// The returned channel carries the newest value: if the reader falls
// behind, older values are replaced, never queued. It is closed after ctx
// ends, once the subscription is removed. The connection's other signal
// users are unaffected: signals that are not logind's are ignored here.
func (c *Client) WatchPrepareForShutdown(ctx context.Context) (<-chan bool, error) {
	owner, err := c.loginOwner(ctx)
	if err != nil {
		return nil, err
	}
	match := []dbus.MatchOption{
		dbus.WithMatchSender(LoginName),
		dbus.WithMatchObjectPath(LoginPath),
		dbus.WithMatchInterface(LoginInterface),
		dbus.WithMatchMember("PrepareForShutdown"),
	}
	// The signal channel is registered before the match, so that no
	// signal the bus routes to us once the match exists is missed.
	signals := make(chan *dbus.Signal, 16)
	c.conn.Signal(signals)
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	err = c.conn.AddMatchSignalContext(actx, match...)
	cancel()
	if err != nil {
		c.conn.RemoveSignal(signals)
		return nil, callError(LoginName, "AddMatch PrepareForShutdown", err)
	}

	out := make(chan bool, 1)
	go func() {
		defer close(out)
		defer func() {
			c.conn.RemoveSignal(signals)
			// ctx is over; the removal gets its own, short deadline.
			rctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			defer cancel()
			_ = c.conn.RemoveMatchSignalContext(rctx, match...)
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case sig, ok := <-signals:
				if !ok {
					return // the connection was closed
				}
				v, mine := c.shutdownSignal(ctx, sig, &owner)
				if mine {
					sendLatest(out, v)
				}
			}
		}
	}()
	return out, nil
}

// shutdownSignal decodes sig if it is logind's PrepareForShutdown. The
// connection's signal channels see every signal any match admits, so the
// sender is checked against logind's unique name, looked up again once
// when it differs (logind was restarted).
func (c *Client) shutdownSignal(ctx context.Context, sig *dbus.Signal, owner *string) (start, ok bool) {
	if sig.Path != LoginPath || sig.Name != LoginInterface+".PrepareForShutdown" || len(sig.Body) != 1 {
		return false, false
	}
	start, ok = sig.Body[0].(bool)
	if !ok {
		return false, false
	}
	if sig.Sender != *owner {
		current, err := c.loginOwner(ctx)
		if err != nil || sig.Sender != current {
			return false, false
		}
		*owner = current
	}
	return start, true
}

// loginOwner returns the unique bus name that owns LoginName.
func (c *Client) loginOwner(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var owner string
	err := c.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, LoginName).Store(&owner)
	if err != nil {
		return "", callError(LoginName, "GetNameOwner", err)
	}
	return owner, nil
}

// sendLatest puts v into ch (capacity 1), replacing a value the reader
// has not taken yet. Only one goroutine sends on ch.
func sendLatest(ch chan bool, v bool) {
	select {
	case <-ch:
	default:
	}
	ch <- v
}
