package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier reports the agent's life cycle to systemd (sd_notify(3)): READY=1 once
// the agent serves, STATUS= for each phase, STOPPING=1 on shutdown and the watchdog
// keep-alive. Outside systemd, and as a zero value, every method does nothing, so
// callers never ask whether they run under systemd.
type Notifier struct {
	socket   string        // NOTIFY_SOCKET as handed to this process; "" = no systemd
	watchdog time.Duration // WatchdogSec= granted to this process; 0 = no watchdog
	log      *slog.Logger
}

// NewNotifier builds a Notifier from the environment systemd set up (NOTIFY_SOCKET,
// WATCHDOG_USEC, WATCHDOG_PID) and removes those variables from the environment:
// nothing the agent starts (criu, the package manager, pods) should inherit them,
// or a pod's own sd_notify-aware daemon (redis with "supervised auto", say) would
// report to the agent's service manager as if it were the agent.
//
// Because NOTIFY_SOCKET is gone afterwards, the Notifier keeps the socket path and
// sends the datagrams itself rather than through daemon.SdNotify, which reads the
// variable on every call.
func NewNotifier(log *slog.Logger) (*Notifier, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	socket := os.Getenv("NOTIFY_SOCKET")
	if err := os.Unsetenv("NOTIFY_SOCKET"); err != nil {
		return nil, fmt.Errorf("unset NOTIFY_SOCKET: %w", err)
	}
	// SdWatchdogEnabled also returns 0 when WATCHDOG_PID names another process: the
	// variables were then inherited from a parent that is the one being watched.
	interval, err := daemon.SdWatchdogEnabled(true)
	if err != nil {
		return nil, fmt.Errorf("read systemd watchdog settings: %w", err)
	}
	return &Notifier{socket: socket, watchdog: interval, log: log}, nil
}

// Ready tells systemd that start-up is complete; status (may be empty) is shown by
// `systemctl status`. Call it only once the bus name is owned and the peer listener
// serves: units ordered after autopod.service rely on both.
func (n *Notifier) Ready(status string) error {
	state := daemon.SdNotifyReady
	if status != "" {
		// One datagram, so systemd never shows a ready agent with a stale status.
		state += "\nSTATUS=" + status
	}
	return n.send(state)
}

// Status sets the one-line status `systemctl status autopod` shows.
func (n *Notifier) Status(status string) error {
	return n.send("STATUS=" + status)
}

// Stopping tells systemd that the agent has begun to shut down, so that the unit
// shows as deactivating (not running) while the agent finishes what it was doing.
func (n *Notifier) Stopping() error {
	return n.send(daemon.SdNotifyStopping)
}

// RunWatchdog sends WATCHDOG=1 at half the interval systemd gave (WatchdogSec=),
// the margin sd_watchdog_enabled(3) recommends, until ctx is done. Without a
// watchdog it returns at once. A failed ping is logged, not fatal: the next one may
// get through, and if none do, systemd restarts the agent, which is the point.
func (n *Notifier) RunWatchdog(ctx context.Context) {
	if n == nil || n.socket == "" || n.watchdog <= 0 {
		return
	}
	tick := time.NewTicker(n.watchdog / 2)
	defer tick.Stop()
	for {
		if err := n.send(daemon.SdNotifyWatchdog); err != nil {
			n.log.Warn("systemd watchdog ping failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// send writes one datagram to the notification socket, as sd_notify(3) does. A
// leading "@" names an abstract socket, which Go's net package maps for us.
func (n *Notifier) send(state string) error {
	if n == nil || n.socket == "" {
		return nil
	}
	addr := &net.UnixAddr{Name: n.socket, Net: "unixgram"}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("sd_notify %q: %w", firstLine(state), err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %q: %w", firstLine(state), err)
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
