// Package testbus runs a private dbus-daemon for tests, configured by
// test/dbus/system-bus.conf: the system bus's policy plus autopod's own
// (units/org.autopod.Agent1.conf), so tests exercise the real bus policy
// and credential passing rather than a mock of them.
package testbus

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Config is the absolute path of test/dbus/system-bus.conf.
func Config() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "dbus", "system-bus.conf")
}

// Start runs dbus-daemon with its socket at DIR/bus and its output in
// DIR/dbus-daemon.log (it warns there that it cannot raise its fd limit
// where root lacks CAP_SYS_RESOURCE), waits until it listens and returns
// its address. The daemon is stopped at the test's cleanup.
func Start(t testing.TB, dir string) string {
	t.Helper()
	return StartConfig(t, dir, Config())
}

// StartConfig is Start with another configuration file (one that includes
// Config() and adds policies of its own).
func StartConfig(t testing.TB, dir, config string) string {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed (apt-get install dbus-daemon, or scripts/deps.sh)")
	}
	logPath := filepath.Join(dir, "dbus-daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, daemon, "--config-file="+config,
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
	// The address is printed once the socket listens, so reading it is
	// also the readiness check.
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

// ShareableTempDir returns a temporary directory that other users can
// enter (t.TempDir's are 0700 at two levels), short enough for a socket
// path (108 bytes): tests connect to the bus as nobody too.
func ShareableTempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 80 {
		var err error
		if dir, err = os.MkdirTemp("", "apbus"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
