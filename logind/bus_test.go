package logind

// A private dbus-daemon with the system bus's policy
// (test/dbus/system-bus.conf) plus systemd's policy for login1 and
// systemd1 (testdata/systemd-policy.conf), so that a fake logind can own
// its real name and the client's calls pass the same policy checks as on a
// host.

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/autopod/autopod/test/testbus"
)

// busConfig includes the two policies and gives the user running the test
// root's rights on both services, so that the tests also run unprivileged.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <include>%s</include>
  <include>%s</include>
  <policy user="%d">
    <allow own="org.freedesktop.login1"/>
    <allow send_destination="org.freedesktop.login1"/>
    <allow own="org.freedesktop.systemd1"/>
    <allow send_destination="org.freedesktop.systemd1"/>
  </policy>
</busconfig>
`

// startBus runs dbus-daemon, with logind's and systemd's bus policy added,
// until the test ends and returns its address.
func startBus(t *testing.T) string {
	t.Helper()
	dir := testbus.ShareableTempDir(t)
	policy, err := filepath.Abs(filepath.Join("testdata", "systemd-policy.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, busConfig, testbus.Config(), policy, os.Getuid()), 0o644); err != nil {
		t.Fatal(err)
	}
	return testbus.StartConfig(t, dir, conf)
}

// connect opens a connection to the bus, closed when the test ends.
func connect(t *testing.T, addr string, opts ...dbus.ConnOption) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(addr, opts...)
	if err != nil {
		t.Fatalf("connect to test bus: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// newClient connects a Client to the bus.
func newClient(t *testing.T, addr string, opts Options, connOpts ...dbus.ConnOption) *Client {
	t.Helper()
	c, err := New(connect(t, addr, connOpts...), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
