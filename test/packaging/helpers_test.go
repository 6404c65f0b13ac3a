//go:build roottest

package packaging

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// run runs a command and returns its combined output; a failure is fatal and
// shows the output. The command is logged with how long it took.
func run(t testing.TB, ctx context.Context, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, ctx, dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// runErr is run without the fatal error.
func runErr(t testing.TB, ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	return runLabeled(t, ctx, name+" "+shortArgs(args), dir, env, name, args...)
}

// runLabeled runs a command and logs it as label.
func runLabeled(t testing.TB, ctx context.Context, label, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	cmd.WaitDelay = 10 * time.Second
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s (%.1fs)", label, time.Since(start).Seconds())
	return buf.String(), err
}

func shortArgs(args []string) string {
	s := strings.Join(args, " ")
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

// requireTools fails with a way to get a missing tool: `make deps` installs
// every one of them.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("missing tools %v: run `make deps` (scripts/deps.sh installs debhelper, lintian, rpm, debootstrap, systemd-container)", missing)
	}
}

// timings collects how long each phase took, for the summary at the end.
type timings struct {
	mu    sync.Mutex
	start time.Time
	steps []string
	secs  []float64
}

func newTimings() *timings { return &timings{start: time.Now()} }

// track returns a function that records the phase's duration when called.
func (tm *timings) track(name string) func() {
	start := time.Now()
	return func() {
		tm.mu.Lock()
		defer tm.mu.Unlock()
		tm.steps = append(tm.steps, name)
		tm.secs = append(tm.secs, time.Since(start).Seconds())
	}
}

func (tm *timings) summary() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	var b strings.Builder
	b.WriteString("packaging tier timings:\n")
	for i, s := range tm.steps {
		fmt.Fprintf(&b, "  %-44s %7.1f s\n", s, tm.secs[i])
	}
	fmt.Fprintf(&b, "  %-44s %7.1f s\n", "total", time.Since(tm.start).Seconds())
	return b.String()
}

// copyTree copies src to dst with cp -a (dst must not exist).
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
}

// fileMode returns the permission bits and type letter of path ("d", "f",
// "l"), or "" if it does not exist.
func fileMode(path string) (os.FileMode, string) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, ""
	}
	switch {
	case fi.IsDir():
		return fi.Mode().Perm(), "d"
	case fi.Mode()&os.ModeSymlink != 0:
		return fi.Mode().Perm(), "l"
	default:
		return fi.Mode().Perm(), "f"
	}
}
