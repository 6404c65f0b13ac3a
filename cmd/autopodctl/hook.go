package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"github.com/autopod/autopod/hooks"
	"github.com/autopod/autopod/updater"
)

// The package managers' hooks (packaging/etc/apt/apt.conf.d/99autopod,
// the dnf plugin) run "autopodctl hook ...". The hooks package decides
// what to do (hooks/doc.go); this file gives it the agent.

// silentError is a failure already explained to the person (the hooks
// print their own message): report adds nothing.
type silentError struct{ err error }

func (e *silentError) Error() string { return e.err.Error() }
func (e *silentError) Unwrap() error { return e.err }

// hookAgent is hooks.Agent over D-Bus. It connects on first use: a hook
// that needs nothing from the agent (removals, skipped runs) never does.
type hookAgent struct {
	addr string
	// base outlives every call: godbus closes a connection when the
	// context it was made with ends, and the hooks bound each call with
	// a context of its own.
	base context.Context
	c    *agentClient
}

func (h *hookAgent) client(ctx context.Context) (*agentClient, error) {
	if h.c != nil {
		return h.c, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if path, ok := strings.CutPrefix(h.addr, "unix:path="); ok {
		path, _, _ = strings.Cut(path, ",") // ",guid=..." and other keys
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist", hooks.ErrNoBus, path)
		}
	}
	c, err := dialAgent(h.base, h.addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", hooks.ErrAgentUnreachable, err)
	}
	h.c = c
	return c, nil
}

func (h *hookAgent) close() {
	if h.c != nil {
		h.c.Close()
	}
}

// callErr maps "no agent on the bus" to hooks.ErrAgentUnreachable.
func callErr(err error) error {
	var u *unreachableError
	if errors.As(err, &u) {
		return fmt.Errorf("%w: %v", hooks.ErrAgentUnreachable, err)
	}
	return err
}

func (h *hookAgent) ExternalInstallBegin(ctx context.Context, tool updater.Backend, pkgs []hooks.Package) (bool, error) {
	c, err := h.client(ctx)
	if err != nil {
		return false, err
	}
	wire := make([]struct{ Name, Version string }, 0, len(pkgs))
	for _, p := range pkgs {
		wire = append(wire, struct{ Name, Version string }{p.Name, p.NewVersion})
	}
	var needed bool
	if err := c.call(ctx, "ExternalInstallBegin", string(tool), wire).Store(&needed); err != nil {
		return false, callErr(err)
	}
	return needed, nil
}

// WaitInstallReady waits for the agent, reporting the cycle's state as it
// changes (polled: the hook's output is for a person watching apt).
func (h *hookAgent) WaitInstallReady(ctx context.Context, progress func(state, reason string)) error {
	c, err := h.client(ctx)
	if err != nil {
		return err
	}
	call := c.obj.GoWithContext(ctx, agentInterface+".WaitInstallReady", 0, make(chan *dbus.Call, 1))
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	var last string
	for {
		select {
		case <-call.Done:
			return callErr(c.classify(ctx, call.Err))
		case <-tick.C:
			st, err := c.updateStatus(ctx)
			if err != nil || st == nil {
				continue
			}
			if now := string(st.State) + "\x00" + st.Reason; now != last && progress != nil {
				last = now
				progress(string(st.State), st.Reason)
			}
		}
	}
}

func (h *hookAgent) ExternalInstallEnd(ctx context.Context, ok bool, detail string) error {
	c, err := h.client(ctx)
	if err != nil {
		return err
	}
	return callErr(c.call(ctx, "ExternalInstallEnd", ok, detail).Err)
}

// runHook runs one hook sub-command; its messages go to stderr, which apt
// and dnf show (and unattended-upgrades and dnf-automatic log).
func runHook(ctx context.Context, opts options, addr string, stdin io.Reader, ew io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	defer stop()
	sub := strings.TrimPrefix(opts.command, "hook ")
	if sub != "apt-post-invoke" {
		if f, ok := stdin.(*os.File); ok && isTerminal(f) {
			return usagef("hook %s reads what the package manager sends on standard input; it is not for interactive use", sub)
		}
	}
	agent := &hookAgent{addr: addr, base: ctx}
	defer agent.close()
	// AUTOPOD_HOOK_ROOT, for tests only, makes a private dpkg root count as
	// this host's (installs into other roots are not announced).
	r, err := hooks.NewRunner(hooks.Options{Agent: agent, Stderr: ew, Skip: hooks.SkipRequested(os.Getenv), Timeout: opts.timeout,
		Root: os.Getenv("AUTOPOD_HOOK_ROOT")})
	if err != nil {
		return err
	}
	switch sub {
	case "apt-pre-install":
		err = r.AptPreInstall(ctx, stdin)
	case "apt-post-invoke":
		err = r.AptPostInvoke(ctx)
	case "dnf-pre-transaction":
		err = r.DnfPreTransaction(ctx, stdin)
	case "dnf-post-transaction":
		err = r.DnfPostTransaction(ctx, !opts.failed, stdin)
	default:
		return usagef("unknown hook %q", sub)
	}
	if err != nil {
		return &silentError{err}
	}
	return nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
