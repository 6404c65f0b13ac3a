package logind

// Fakes of logind's Manager and systemd's Manager that own the real names
// on the test bus. They implement only what the client calls, with the
// behaviour logind and systemd show on the wire: Inhibit hands out the
// write end of a pipe and the lock lives until every copy of it is closed
// (the fake sees EOF on the read end), as logind's FIFO does.

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

type fakeLogind struct {
	conn *dbus.Conn

	mu        sync.Mutex
	static    []inhibitorWire // locks of other programs
	locks     []*fakeLock     // locks handed out by Inhibit, until released
	handedOut []*fakeLock     // every lock handed out, released or not
	unsent    []*os.File      // the fake's copies of descriptors it replied with
	calls     []string
	canReboot string
	rebootErr *dbus.Error

	// If inhibitGate is set, Inhibit signals inhibitStarted and waits for
	// the gate before it answers.
	inhibitGate    chan struct{}
	inhibitStarted chan struct{}
}

type fakeLock struct {
	wire     inhibitorWire
	released chan struct{} // closed on EOF: every copy of the write end is closed
}

// startFakeLogind exports the fake on its own connection and takes
// org.freedesktop.login1.
func startFakeLogind(t *testing.T, addr string) *fakeLogind {
	t.Helper()
	f := &fakeLogind{conn: connect(t, addr), canReboot: "yes"}
	if err := f.conn.Export(f, LoginPath, LoginInterface); err != nil {
		t.Fatal(err)
	}
	own(t, f.conn, LoginName)
	t.Cleanup(f.dropSent)
	return f
}

func own(t *testing.T, conn *dbus.Conn, name string) {
	t.Helper()
	reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request %s: reply %v, %v", name, reply, err)
	}
}

// ListInhibitors implements the D-Bus method.
func (f *fakeLogind) ListInhibitors() ([]inhibitorWire, *dbus.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.static)
	for _, l := range f.locks {
		out = append(out, l.wire)
	}
	return out, nil
}

// Inhibit implements the D-Bus method. Like logind 252 it knows only the
// modes block and delay, and it records the caller's uid and pid as the
// bus daemon reports them.
func (f *fakeLogind) Inhibit(sender dbus.Sender, what, who, why, mode string) (dbus.UnixFD, *dbus.Error) {
	f.mu.Lock()
	gate, started := f.inhibitGate, f.inhibitStarted
	f.mu.Unlock()
	if gate != nil {
		close(started)
		<-gate
	}
	if mode != ModeBlock && mode != ModeDelay {
		return -1, dbus.NewError("org.freedesktop.DBus.Error.InvalidArgs", []any{"Invalid mode specification " + mode})
	}
	var uid, pid uint32
	bus := f.conn.BusObject()
	if err := bus.Call("org.freedesktop.DBus.GetConnectionUnixUser", 0, string(sender)).Store(&uid); err != nil {
		return -1, dbus.MakeFailedError(err)
	}
	if err := bus.Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, string(sender)).Store(&pid); err != nil {
		return -1, dbus.MakeFailedError(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return -1, dbus.MakeFailedError(err)
	}
	fd := dbus.UnixFD(w.Fd()) // before dropSent can see w
	l := &fakeLock{wire: inhibitorWire{What: what, Who: who, Why: why, Mode: mode, UID: uid, PID: pid}, released: make(chan struct{})}
	f.mu.Lock()
	f.locks = append(f.locks, l)
	f.handedOut = append(f.handedOut, l)
	// godbus sends the descriptor after this method returns and never
	// closes it; dropSent closes the fake's copy once the client has the
	// reply (logind's sd-bus closes its copy right after sending).
	f.unsent = append(f.unsent, w)
	f.mu.Unlock()
	go func() {
		_, _ = io.Copy(io.Discard, r)
		r.Close()
		f.mu.Lock()
		f.locks = slices.DeleteFunc(f.locks, func(x *fakeLock) bool { return x == l })
		f.mu.Unlock()
		close(l.released)
	}()
	return fd, nil
}

// Reboot implements the D-Bus method.
func (f *fakeLogind) Reboot(interactive bool) *dbus.Error {
	return f.record(fmt.Sprintf("Reboot %t", interactive))
}

// RebootWithFlags implements the D-Bus method.
func (f *fakeLogind) RebootWithFlags(flags uint64) *dbus.Error {
	return f.record(fmt.Sprintf("RebootWithFlags %d", flags))
}

// CanReboot implements the D-Bus method.
func (f *fakeLogind) CanReboot() (string, *dbus.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.canReboot, nil
}

func (f *fakeLogind) record(call string) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	return f.rebootErr
}

// The helpers below are unexported, so godbus does not export them.

// configure changes the fake's behaviour under its lock: its methods run
// on godbus's goroutines.
func (f *fakeLogind) configure(fn func(f *fakeLogind)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// dropSent closes the fake's copies of the descriptors it sent. Call it
// only once the client has received the reply.
func (f *fakeLogind) dropSent() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.unsent {
		w.Close()
	}
	f.unsent = nil
}

// handedOutFor returns the lock taken with who, live or already released.
func (f *fakeLogind) handedOutFor(t *testing.T, who string) *fakeLock {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.handedOut {
		if l.wire.Who == who {
			return l
		}
	}
	t.Fatalf("fake logind handed out no lock for %q", who)
	return nil
}

// lockFor returns the live lock taken with who.
func (f *fakeLogind) lockFor(t *testing.T, who string) *fakeLock {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.locks {
		if l.wire.Who == who {
			return l
		}
	}
	t.Fatalf("fake logind holds no lock for %q", who)
	return nil
}

func (f *fakeLogind) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// waitReleased fails the test unless the lock is released within 10 s.
func waitReleased(t *testing.T, l *fakeLock) {
	t.Helper()
	select {
	case <-l.released:
	case <-time.After(10 * time.Second):
		t.Fatalf("lock %+v still held after 10 s", l.wire)
	}
}

// fakeSystemd is systemd's Manager, as far as KExec uses it.
type fakeSystemd struct {
	mu    sync.Mutex
	calls []string
}

func startFakeSystemd(t *testing.T, addr string) *fakeSystemd {
	t.Helper()
	f := &fakeSystemd{}
	conn := connect(t, addr)
	if err := conn.Export(f, SystemdPath, SystemdInterface); err != nil {
		t.Fatal(err)
	}
	own(t, conn, SystemdName)
	return f
}

// StartUnit implements the D-Bus method.
func (f *fakeSystemd) StartUnit(name, mode string) (dbus.ObjectPath, *dbus.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "StartUnit "+name+" "+mode)
	return dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", len(f.calls))), nil
}

func (f *fakeSystemd) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}
