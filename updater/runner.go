package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/autopod/autopod/osthread"
)

// Command is one run of a package tool.
type Command struct {
	Name string
	Args []string
	// Env is added to the environment; the ExecRunner always sets LC_ALL=C first, so the
	// parsers see untranslated output.
	Env []string
}

func (c Command) String() string {
	return strings.Join(append([]string{c.Name}, c.Args...), " ")
}

// Result is what a command printed and how it exited.
type Result struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// Runner runs package tools. Exiting non-zero is not an error for a Runner (dnf
// check-update exits 100 when there are updates): err is only for a command that could
// not run or finish, such as a missing binary, a signal or a cancelled context.
type Runner interface {
	Run(ctx context.Context, c Command) (Result, error)
}

// ExecRunner runs commands on this host with exec.CommandContext.
type ExecRunner struct {
	// Nice, when not 0, is the commands' nice value, with the shortest
	// scheduler slice (they and their children start with both).
	Nice int
}

// CheckNice is the nice value of the detector's commands by default (with
// the shortest slice): a check is background work and must not take the
// CPU from the pods. At the agent's start, apt-get --simulate took 2.7 s
// of CPU on two cores and stretched a post-copy migration running
// meanwhile from 0.6 s to 2.2 s.
const CheckNice = 19

// waitDelay bounds how long Run waits for output after the context ends and the tool
// was killed: apt's download methods are its children and keep the pipes open.
const waitDelay = 5 * time.Second

// Run implements Runner.
func (r ExecRunner) Run(ctx context.Context, c Command) (Result, error) {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), c.Env...)
	cmd.WaitDelay = waitDelay
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := startNiced(cmd, r.Nice)
	if err == nil {
		err = cmd.Wait()
	}
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return res, fmt.Errorf("%s: %w", c, ctxErr)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		res.ExitCode = exitErr.ExitCode()
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("%s: %w", c, err)
	}
	return res, nil
}

// startNiced starts cmd with nice value nice and the shortest scheduler
// slice (osthread.Yielding), so that it gives way at once to the work it
// shares the CPUs with; nice 0 starts it as this process. The child takes
// its scheduling from the thread that starts it, so the start runs on a
// thread of its own whose scheduling is set first, and which ends after
// it.
func startNiced(cmd *exec.Cmd, nice int) error {
	if nice == 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	osthread.Doomed(func() {
		// 0 is the calling thread: Linux keeps scheduling per thread.
		if err := osthread.Yielding(0, nice); err != nil {
			errc <- fmt.Errorf("%s: set nice %d: %w", cmd.Path, nice, err)
			return
		}
		errc <- cmd.Start()
	})
	return <-errc
}

// CommandError is a package tool that failed: it exited with a code that means
// failure, or printed what the parser cannot read. Stderr is the tool's own account.
type CommandError struct {
	Command  string
	ExitCode int
	Stderr   string
	// Err is the cause when the output, not the exit code, was wrong.
	Err error
}

// maxStderr caps the tool output kept in an error: enough for apt's and dnf's "E:" and
// "Error:" lines, not a whole download log.
const maxStderr = 4096

func newCommandError(c Command, res Result, cause error) *CommandError {
	s := strings.TrimSpace(string(res.Stderr))
	if len(s) > maxStderr {
		s = "…" + s[len(s)-maxStderr:]
	}
	return &CommandError{Command: c.String(), ExitCode: res.ExitCode, Stderr: s, Err: cause}
}

func (e *CommandError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: exit status %d", e.Command, e.ExitCode)
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Stderr != "" {
		fmt.Fprintf(&b, "; stderr: %s", e.Stderr)
	}
	return b.String()
}

func (e *CommandError) Unwrap() error { return e.Err }
