package logind

// A private dbus-daemon with the system bus's policy
// (test/dbus/system-bus.conf) plus systemd's policy for login1 and
// systemd1 (testdata/systemd-policy.conf), so that a fake logind can own
// its real name and the client's calls pass the same policy checks as on a
// host.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// startBus runs dbus-daemon until the test ends and returns its address.
// It is testbus.Start with another configuration file.
func startBus(t *testing.T) string {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed (apt-get install dbus-daemon, or scripts/deps.sh)")
	}
	dir := testbus.ShareableTempDir(t)
	policy, err := filepath.Abs(filepath.Join("testdata", "systemd-policy.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, busConfig, testbus.Config(), policy, os.Getuid()), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "dbus-daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, daemon, "--config-file="+conf,
		"--address=unix:path="+filepath.Join(dir, "bus"), "--nofork", "--nopidfile", "--print-address")
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start dbus-daemon: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		logf.Close()
	})
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case addr := <-lines:
		if addr == "" {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("dbus-daemon printed no address: %s", b)
		}
		return addr
	case <-time.After(10 * time.Second):
		b, _ := os.ReadFile(logPath)
		t.Fatalf("dbus-daemon did not start in 10s: %s", b)
		return ""
	}
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
