package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fakeNotifySocket stands in for systemd's notification socket: a real unixgram socket
// whose path goes into NOTIFY_SOCKET, as systemd does for Type=notify services.
func fakeNotifySocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

func recvDatagram(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("waiting for a datagram: %v", err)
	}
	return string(buf[:n])
}

func expectNoDatagram(t *testing.T, conn *net.UnixConn, wait time.Duration) {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err == nil {
		t.Fatalf("unexpected datagram %q", buf[:n])
	}
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("reading: %v", err)
	}
}

func newTestNotifier(t *testing.T) *Notifier {
	t.Helper()
	n, err := NewNotifier(nil)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNotifierStates(t *testing.T) {
	sock := fakeNotifySocket(t)
	n := newTestNotifier(t)

	for _, v := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		if val, ok := os.LookupEnv(v); ok {
			t.Errorf("%s=%q still set after NewNotifier; children would inherit it", v, val)
		}
	}

	steps := []struct {
		send func() error
		want string
	}{
		{func() error { return n.Status("loading pods") }, "STATUS=loading pods"},
		{func() error { return n.Ready("serving 2 pods") }, "READY=1\nSTATUS=serving 2 pods"},
		{func() error { return n.Ready("") }, "READY=1"},
		{func() error { return n.Stopping() }, "STOPPING=1"},
	}
	for _, s := range steps {
		if err := s.send(); err != nil {
			t.Fatalf("sending %q: %v", s.want, err)
		}
		if got := recvDatagram(t, sock); got != s.want {
			t.Errorf("got datagram %q, want %q", got, s.want)
		}
	}
}

func TestNotifierWatchdog(t *testing.T) {
	sock := fakeNotifySocket(t)
	t.Setenv("WATCHDOG_USEC", "1000000") // WatchdogSec=1s: pings every 500ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	n := newTestNotifier(t)
	if n.watchdog != time.Second {
		t.Fatalf("watchdog interval %v, want 1s", n.watchdog)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.RunWatchdog(ctx)
	}()

	start := time.Now()
	for i := range 3 {
		if got := recvDatagram(t, sock); got != "WATCHDOG=1" {
			t.Fatalf("ping %d: got %q, want WATCHDOG=1", i, got)
		}
	}
	// The first ping is immediate and two more follow at 500ms each. Pinging at the
	// full interval would take 2s and be too late for systemd; the bounds leave room
	// for a loaded machine on both sides.
	if el := time.Since(start); el < 900*time.Millisecond || el > 1900*time.Millisecond {
		t.Errorf("3 pings took %v, want about 1s (one every WatchdogSec/2)", el)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunWatchdog did not return after cancel")
	}
	// Drain a ping that raced with cancel, then expect silence.
	_ = sock.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, _ = sock.Read(make([]byte, 64))
	expectNoDatagram(t, sock, 300*time.Millisecond)
}

// A watchdog meant for another process (WATCHDOG_PID inherited from a watched
// parent) or none at all: RunWatchdog must return at once and send nothing.
func TestNotifierWatchdogOff(t *testing.T) {
	for name, pid := range map[string]string{
		"unset":         "",
		"other process": strconv.Itoa(os.Getpid() + 1),
	} {
		t.Run(name, func(t *testing.T) {
			sock := fakeNotifySocket(t)
			if pid != "" {
				t.Setenv("WATCHDOG_USEC", "200000")
				t.Setenv("WATCHDOG_PID", pid)
			} else {
				unsetenvForTest(t, "WATCHDOG_USEC")
				unsetenvForTest(t, "WATCHDOG_PID")
			}
			n := newTestNotifier(t)
			returned := make(chan struct{})
			go func() {
				defer close(returned)
				n.RunWatchdog(t.Context())
			}()
			select {
			case <-returned:
			case <-time.After(5 * time.Second):
				t.Fatal("RunWatchdog without a watchdog did not return")
			}
			expectNoDatagram(t, sock, 150*time.Millisecond)
		})
	}
}

// Outside systemd everything is a no-op, even with a watchdog configured.
func TestNotifierWithoutSystemd(t *testing.T) {
	unsetenvForTest(t, "NOTIFY_SOCKET")
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	for _, n := range []*Notifier{newTestNotifier(t), {}, nil} {
		for _, err := range []error{n.Ready("x"), n.Status("x"), n.Stopping()} {
			if err != nil {
				t.Errorf("without NOTIFY_SOCKET: %v", err)
			}
		}
		n.RunWatchdog(t.Context()) // must return at once
	}
}

func TestNotifierBadWatchdog(t *testing.T) {
	fakeNotifySocket(t)
	t.Setenv("WATCHDOG_USEC", "soon")
	if _, err := NewNotifier(nil); err == nil {
		t.Fatal("NewNotifier accepted WATCHDOG_USEC=soon")
	}
}

// A Notifier whose socket has gone (systemd restarted, say) reports it.
func TestNotifierSocketGone(t *testing.T) {
	sock := fakeNotifySocket(t)
	n := newTestNotifier(t)
	sock.Close()
	if err := os.Remove(sock.LocalAddr().String()); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := n.Status("x"); err == nil {
		t.Fatal("Status to a missing socket succeeded")
	}
}

// unsetenvForTest removes v for the test and restores it afterwards.
func unsetenvForTest(t *testing.T, v string) {
	t.Helper()
	t.Setenv(v, "") // registers the restore
	os.Unsetenv(v)
}
