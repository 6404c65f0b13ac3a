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
type ExecRunner struct{}

// waitDelay bounds how long Run waits for output after the context ends and the tool
// was killed: apt's download methods are its children and keep the pipes open.
const waitDelay = 5 * time.Second

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, c Command) (Result, error) {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), c.Env...)
	cmd.WaitDelay = waitDelay
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
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
