package logind

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestNewValidates(t *testing.T) {
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New(nil conn) succeeded")
	}
	if _, err := New(&dbus.Conn{}, Options{CallTimeout: -time.Second}); err == nil {
		t.Error("New with a negative timeout succeeded")
	}
	c, err := New(&dbus.Conn{}, Options{})
	if err != nil || c.timeout != DefaultCallTimeout {
		t.Errorf("New with zero options: timeout %v, err %v", c.timeout, err)
	}
}

func TestListInhibitorsAndBlockers(t *testing.T) {
	addr := startBus(t)
	f := startFakeLogind(t, addr)
	static := []inhibitorWire{
		{What: "shutdown:sleep", Who: "backup", Why: "nightly backup", Mode: "block", UID: 1000, PID: 4242},
		{What: "sleep", Who: "NetworkManager", Why: "tear down links", Mode: "delay", UID: 0, PID: 7},
		{What: "shutdown", Who: "packagekitd", Why: "installing", Mode: "block-weak", UID: 0, PID: 99},
		{What: "idle:handle-lid-switch", Who: "gnome", Why: "presentation", Mode: "block", UID: 1000, PID: 12},
		{What: "shutdown", Who: "unattended-upgr", Why: "finish install", Mode: "delay", UID: 0, PID: 55},
	}
	f.configure(func(f *fakeLogind) { f.static = static })
	c := newClient(t, addr, Options{})

	all, err := c.ListInhibitors(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 {
		t.Fatalf("ListInhibitors: %d locks, want 5: %+v", len(all), all)
	}
	if got := all[0]; !slices.Equal(got.What, []string{"shutdown", "sleep"}) || got.Who != "backup" ||
		got.Why != "nightly backup" || got.Mode != ModeBlock || got.UID != 1000 || got.PID != 4242 {
		t.Errorf("first lock decoded as %+v", got)
	}

	blockers, err := c.Blockers(testCtx(t), "shutdown")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, b := range blockers {
		lines = append(lines, b.String())
	}
	want := []string{"backup (pid 4242, uid 1000): nightly backup", "packagekitd (pid 99, uid 0): installing"}
	if !slices.Equal(lines, want) {
		t.Errorf("Blockers(shutdown) = %q, want %q", lines, want)
	}
}

func TestInhibitPassesDescriptorAndReleaseClosesIt(t *testing.T) {
	addr := startBus(t)
	f := startFakeLogind(t, addr)
	c := newClient(t, addr, Options{})
	ctx := testCtx(t)

	lock, err := c.Inhibit(ctx, "shutdown", "autopod", "migrating pods away", ModeDelay)
	if err != nil {
		t.Fatal(err)
	}
	f.dropSent() // the client has the reply, so the fake's copy may go
	fl := f.lockFor(t, "autopod")
	if fl.wire.PID != uint32(os.Getpid()) || fl.wire.UID != uint32(os.Getuid()) {
		t.Errorf("logind saw the lock as pid %d uid %d, want %d %d", fl.wire.PID, fl.wire.UID, os.Getpid(), os.Getuid())
	}
	flags, err := unix.FcntlInt(lock.f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("lock descriptor flags %#x, %v: want close-on-exec", flags, err)
	}

	delays, err := c.ListInhibitors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(delays) != 1 || delays[0].Mode != ModeDelay || !delays[0].Covers("shutdown") {
		t.Errorf("ListInhibitors while holding the lock: %+v", delays)
	}
	select {
	case <-fl.released:
		t.Fatal("lock released before Release")
	default:
	}

	if err := lock.Release(); err != nil {
		t.Fatal(err)
	}
	waitReleased(t, fl)
	if err := lock.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if err := (*Lock)(nil).Release(); err != nil {
		t.Errorf("Release of a nil lock: %v", err)
	}
	if rest, err := c.ListInhibitors(ctx); err != nil || len(rest) != 0 {
		t.Errorf("ListInhibitors after Release: %+v, %v", rest, err)
	}
}

func TestInhibitRefused(t *testing.T) {
	addr := startBus(t)
	startFakeLogind(t, addr)
	c := newClient(t, addr, Options{})
	_, err := c.Inhibit(testCtx(t), "shutdown", "autopod", "x", ModeBlockWeak)
	if err == nil {
		t.Fatal("Inhibit with a mode logind 252 lacks succeeded")
	}
	if errorName(err) != "org.freedesktop.DBus.Error.InvalidArgs" || !strings.Contains(err.Error(), "Inhibit") {
		t.Errorf("error %q (name %q): want InvalidArgs naming the method", err, errorName(err))
	}
}

// A lock logind grants after the caller gave up must not stay held.
func TestInhibitLateReplyIsReleased(t *testing.T) {
	addr := startBus(t)
	f := startFakeLogind(t, addr)
	gate, started := make(chan struct{}), make(chan struct{})
	f.configure(func(f *fakeLogind) { f.inhibitGate, f.inhibitStarted = gate, started })
	// The interceptor sees every message the client receives, before godbus
	// hands it on: the reply with the descriptor has then been sent.
	gotReply := make(chan struct{})
	c := newClient(t, addr, Options{CallTimeout: 200 * time.Millisecond}, dbus.WithIncomingInterceptor(func(m *dbus.Message) {
		if m.Type == dbus.TypeMethodReply && len(m.Body) == 1 {
			if _, ok := m.Body[0].(dbus.UnixFD); ok {
				close(gotReply)
			}
		}
	}))

	_, err := c.Inhibit(testCtx(t), "shutdown", "late", "x", ModeBlock)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "Inhibit") {
		t.Fatalf("Inhibit past the call timeout: %v, want a deadline error naming the method", err)
	}
	<-started
	close(gate)
	select {
	case <-gotReply:
	case <-time.After(10 * time.Second):
		t.Fatal("no reply to the late Inhibit")
	}
	f.dropSent()
	// The client may have released it already: look among all handed out.
	waitReleased(t, f.handedOutFor(t, "late"))
}

func TestRebootAndCanReboot(t *testing.T) {
	addr := startBus(t)
	f := startFakeLogind(t, addr)
	c := newClient(t, addr, Options{})
	ctx := testCtx(t)

	if answer, err := c.CanReboot(ctx); err != nil || answer != "yes" {
		t.Errorf("CanReboot = %q, %v", answer, err)
	}
	if err := c.Reboot(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.RebootWithFlags(ctx, FlagCheckInhibitors|FlagKExec); err != nil {
		t.Fatal(err)
	}
	if got, want := f.recorded(), []string{"Reboot false", "RebootWithFlags 3"}; !slices.Equal(got, want) {
		t.Errorf("logind saw %q, want %q", got, want)
	}

	f.configure(func(f *fakeLogind) {
		f.rebootErr = dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"Access denied to root due to active block inhibitor"})
	})
	err := c.RebootWithFlags(ctx, FlagCheckInhibitors)
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "RebootWithFlags") ||
		!strings.Contains(err.Error(), "active block inhibitor") {
		t.Errorf("refused reboot: %v, want ErrAccessDenied with logind's reason", err)
	}
}

func TestKExec(t *testing.T) {
	addr := startBus(t)
	c := newClient(t, addr, Options{})
	ctx := testCtx(t)
	dir := t.TempDir()
	c.kexecLoaded = filepath.Join(dir, "kexec_loaded")

	// Before any systemd: the kernel check comes first, then the bus.
	if err := c.KExec(ctx); !errors.Is(err, ErrNoKexecKernel) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("KExec without kexec_loaded: %v", err)
	}
	if err := os.WriteFile(c.kexecLoaded, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.KExec(ctx); !errors.Is(err, ErrNoKexecKernel) || !strings.Contains(err.Error(), "kexec -l") {
		t.Errorf("KExec with kexec_loaded 0: %v", err)
	}
	if err := os.WriteFile(c.kexecLoaded, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.KExec(ctx); !errors.Is(err, ErrSystemdNotRunning) || !strings.Contains(err.Error(), "StartUnit") {
		t.Errorf("KExec without systemd on the bus: %v", err)
	}

	f := startFakeSystemd(t, addr)
	if err := c.KExec(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := f.recorded(), []string{"StartUnit kexec.target replace-irreversibly"}; !slices.Equal(got, want) {
		t.Errorf("systemd saw %q, want %q", got, want)
	}
}

func TestLogindNotRunning(t *testing.T) {
	addr := startBus(t)
	c := newClient(t, addr, Options{})
	ctx := testCtx(t)
	calls := map[string]func() error{
		"ListInhibitors": func() error { _, err := c.ListInhibitors(ctx); return err },
		"Inhibit":        func() error { _, err := c.Inhibit(ctx, "shutdown", "a", "b", ModeDelay); return err },
		"Reboot":         func() error { return c.Reboot(ctx, false) },
		"CanReboot":      func() error { _, err := c.CanReboot(ctx); return err },
		"GetNameOwner":   func() error { _, err := c.WatchPrepareForShutdown(ctx); return err },
	}
	for method, call := range calls {
		err := call()
		if !errors.Is(err, ErrLogindNotRunning) {
			t.Errorf("%s: %v, want ErrLogindNotRunning", method, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, method) || !strings.Contains(msg, "systemd-logind is not running") {
			t.Errorf("%s: message %q should name the method and say logind is not running", method, msg)
		}
	}
}

func TestWatchPrepareForShutdown(t *testing.T) {
	addr := startBus(t)
	f := startFakeLogind(t, addr)
	conn := connect(t, addr)
	c, err := New(conn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Another user of the connection subscribes to everything logind's
	// interface says, from anyone: the watcher must still only take
	// logind's own signals.
	if err := conn.AddMatchSignal(dbus.WithMatchInterface(LoginInterface)); err != nil {
		t.Fatal(err)
	}
	other := make(chan *dbus.Signal, 16)
	conn.Signal(other)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	ch, err := c.WatchPrepareForShutdown(ctx)
	if err != nil {
		t.Fatal(err)
	}

	impostor := connect(t, addr)
	if err := impostor.Emit(LoginPath, LoginInterface+".PrepareForShutdown", true); err != nil {
		t.Fatal(err)
	}
	// Once the other user has the impostor's signal, so has the watcher:
	// godbus hands each signal to every channel in turn, in order.
	select {
	case <-other:
	case <-time.After(10 * time.Second):
		t.Fatal("the impostor's signal never reached the connection")
	}
	if err := f.conn.Emit(LoginPath, LoginInterface+".PrepareForShutdown", false); err != nil {
		t.Fatal(err)
	}
	// Had the watcher taken the impostor's "true", it would come first.
	if v := receive(t, ch); v {
		t.Fatal("the watcher took PrepareForShutdown(true) from a connection that is not logind")
	}
	if err := f.conn.Emit(LoginPath, LoginInterface+".PrepareForShutdown", true); err != nil {
		t.Fatal(err)
	}
	if v := receive(t, ch); !v {
		t.Fatal("PrepareForShutdown(true) arrived as false")
	}

	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("value after cancel")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}

func receive(t *testing.T, ch <-chan bool) bool {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("no PrepareForShutdown within 10 s")
		return false
	}
}
