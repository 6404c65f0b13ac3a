package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/autopod/autopod/updater"
)

// Agent is what the hooks need from the autopod agent. autopodctl implements it
// over D-Bus, on the agent's cycle.Machine methods of the same names. Every method
// must return an error wrapping ErrNoBus when there is no system bus to connect
// to, and one wrapping ErrAgentUnreachable when the bus is there but the agent
// does not answer (not installed, masked, failed to start, timed out).
type Agent interface {
	// ExternalInstallBegin tells the agent that tool (apt or dnf) is about to
	// unpack pkgs. needed is false when none of them is one the agent's policy acts
	// on, or when the agent itself runs this install: the tool may go on at once.
	ExternalInstallBegin(ctx context.Context, tool updater.Backend, pkgs []Package) (needed bool, err error)
	// WaitInstallReady blocks until the pods are away and the tool may install
	// (nil), or the cycle ended without getting there (an error with the agent's
	// reason), or ctx ends. It calls progress with the cycle's state and reason
	// when they change, for the operator watching apt.
	WaitInstallReady(ctx context.Context, progress func(state, reason string)) error
	// ExternalInstallEnd tells the agent that the tool has finished; ok is false
	// when it failed (or gave up), detail says why. A no-op for the agent unless a
	// cycle waits for the tool.
	ExternalInstallEnd(ctx context.Context, ok bool, detail string) error
}

var (
	// ErrNoBus means that there is no system bus: not a running system (an image
	// build, a container without an init, an installer), where no agent runs pods.
	ErrNoBus = errors.New("no system bus")
	// ErrAgentUnreachable means that the system bus is there but the agent could
	// not be asked.
	ErrAgentUnreachable = errors.New("the autopod agent cannot be reached")
	// ErrRefused is wrapped by the error of a pre-install hook that must stop apt
	// or dnf; its message says why and what the operator can do.
	ErrRefused = errors.New("autopod stops the install")
)

// SkipEnv is the environment variable that turns the hooks off for one run:
// AUTOPOD_HOOK=skip apt-get ... (apt and dnf pass their environment to hooks).
const SkipEnv = "AUTOPOD_HOOK"

// SkipRequested reports whether the environment asks to skip the hooks.
func SkipRequested(getenv func(string) string) bool { return getenv(SkipEnv) == "skip" }

const (
	// DefaultTimeout bounds the wait for the pods to move away; the agent's own
	// evacuation_timeout and max_attempts normally end it first.
	DefaultTimeout = time.Hour
	// DefaultCallTimeout bounds the calls that announce and end an install. It
	// includes D-Bus activating the agent.
	DefaultCallTimeout = 2 * time.Minute
	// MaxInput bounds what a hook reads on stdin.
	MaxInput = 64 << 20
)

// Options configure a Runner.
type Options struct {
	// Agent is the autopod agent. Required.
	Agent Agent
	// Stderr receives the messages for the operator (apt and dnf show them;
	// unattended-upgrades and dnf-automatic log them). Default: discarded.
	Stderr io.Writer
	// Timeout bounds the wait for the pods to move away. Default DefaultTimeout.
	Timeout time.Duration
	// CallTimeout bounds announcing and ending an install. Default DefaultCallTimeout.
	CallTimeout time.Duration
	// Skip turns the hooks off (SkipRequested): they read their input and say so.
	Skip bool
	// Root is this host's root directory. apt runs that install into another root
	// (dpkg --root, --instdir, DPkg::Chroot-Directory: image builders) are not
	// announced, and the apt post-invoke hook reads ROOT/var/lib/dpkg/status.
	// Default "/"; tests use a private root.
	Root string
	// Chrooted reports whether the hook runs in a chroot, where apt changes
	// another system than the one whose pods the agent runs. Default: compares
	// "/" with /proc/1/root.
	Chrooted func() bool
}

func (o *Options) validate() error {
	if o.Agent == nil {
		return errors.New("hooks: Options.Agent is required")
	}
	if o.Timeout < 0 || o.CallTimeout < 0 {
		return errors.New("hooks: negative timeout")
	}
	if o.Root != "" && !filepath.IsAbs(o.Root) {
		return fmt.Errorf("hooks: Root %q is not an absolute path", o.Root)
	}
	return nil
}

// Runner runs the hooks: each method is one `autopodctl hook` subcommand. A method
// writes everything the operator should read to Options.Stderr itself (progress,
// warnings, and why it refuses and what to do), so autopodctl exits 0 when it
// returns nil and 1 otherwise, without printing the error again.
type Runner struct {
	o Options
}

// NewRunner checks o and fills in its defaults.
func NewRunner(o Options) (*Runner, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.Root == "" {
		o.Root = "/"
	}
	o.Root = filepath.Clean(o.Root)
	if o.Chrooted == nil {
		o.Chrooted = inChroot
	}
	return &Runner{o: o}, nil
}

func (r *Runner) say(format string, args ...any) {
	fmt.Fprintf(r.o.Stderr, "autopod: "+format+"\n", args...)
}

// readInput reads all of stdin, so that apt never writes into a closed pipe.
func readInput(stdin io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(stdin, MaxInput+1))
	if err != nil {
		return nil, fmt.Errorf("reading the hook's input: %w", err)
	}
	if len(b) > MaxInput {
		_, _ = io.Copy(io.Discard, stdin)
		return nil, fmt.Errorf("%w: more than %d bytes", ErrUnparsable, MaxInput)
	}
	return b, nil
}

// AptPreInstall is `autopodctl hook apt-pre-install` (DPkg::Pre-Install-Pkgs, with
// DPkg::Tools::Options::/usr/bin/autopodctl::Version "3"): stdin is apt's hook
// protocol (ParseAptHook). When dpkg is about to unpack packages into this host,
// it tells the agent and, if the agent starts a cycle, waits until the pods are
// away. It returns an error wrapping ErrRefused when apt must stop: the input
// cannot be read, a kernel is coming and the agent cannot be asked, or the pods
// did not get away (the agent gave up, Timeout passed, ctx ended).
func (r *Runner) AptPreInstall(ctx context.Context, stdin io.Reader) error {
	in, err := readInput(stdin)
	if err == nil && r.o.Skip {
		r.say("%s=skip: not asking the autopod agent; the pods stay on this host", SkipEnv)
		return nil
	}
	var h *AptHook
	if err == nil {
		h, err = ParseAptHook(bytes.NewReader(in))
	}
	if err != nil {
		return r.refuse(updater.Apt, "apt", "autopod cannot read what apt is about to do (%v)", err)
	}
	if root := h.TargetRoot(); root != r.o.Root {
		if len(Unpacking(h.Packages)) > 0 {
			r.say("%s installs into %s, not into this host: not asking the autopod agent", h.Frontend(), root)
		}
		return nil
	}
	return r.announce(ctx, updater.Apt, h.Frontend(), Unpacking(h.Packages))
}

// DnfPreTransaction is `autopodctl hook dnf-pre-transaction`, run by the dnf
// plugin's pre_transaction hook with the transaction on stdin (ParseDnfLines).
// It does what AptPreInstall does, for dnf; the plugin does not call it for an
// installroot other than this host.
func (r *Runner) DnfPreTransaction(ctx context.Context, stdin io.Reader) error {
	in, err := readInput(stdin)
	if err == nil && r.o.Skip {
		r.say("%s=skip: not asking the autopod agent; the pods stay on this host", SkipEnv)
		return nil
	}
	var pkgs []Package
	if err == nil {
		pkgs, err = ParseDnfLines(bytes.NewReader(in))
	}
	if err != nil {
		return r.refuse(updater.Dnf, "dnf", "autopod cannot read what dnf is about to do (%v)", err)
	}
	return r.announce(ctx, updater.Dnf, "dnf", Unpacking(pkgs))
}

// announce tells the agent about pkgs and waits for the pods to move away when it
// asks for that.
func (r *Runner) announce(ctx context.Context, tool updater.Backend, frontend string, pkgs []Package) error {
	if len(pkgs) == 0 {
		return nil // only removals and configuration: nothing new to boot into
	}
	if r.o.Chrooted() {
		r.say("%s runs in a chroot: not asking the autopod agent", frontend)
		return nil
	}
	kernels := Kernels(tool, pkgs)
	cctx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
	needed, err := r.o.Agent.ExternalInstallBegin(cctx, tool, pkgs)
	cancel()
	switch {
	case err != nil && errors.Is(err, ErrNoBus):
		r.say("warning: %v: this is not a running system (an image build or an installer?), so no pods run here; %s goes on", err, frontend)
		return nil
	case err != nil && len(kernels) == 0:
		r.say("warning: could not tell the autopod agent about %s (%v); none of them is a kernel, so %s goes on",
			short(pkgs), err, frontend)
		return nil
	case err != nil && errors.Is(err, ErrAgentUnreachable):
		return r.refuse(tool, frontend, "%s is about to install a new kernel (%s), but the autopod agent did not answer (%v), "+
			"so nobody would move this host's pods away before that kernel is booted", frontend, short(kernels), err)
	case err != nil:
		return r.refuse(tool, frontend, "%s is about to install a new kernel (%s), but the autopod agent refused to start an update cycle (%v)",
			frontend, short(kernels), err)
	case !needed:
		return nil
	}

	what := kernels
	if len(what) == 0 {
		what = pkgs
	}
	r.say("%s is about to install %s; waiting up to %s for autopod to move this host's pods to a peer "+
		"(interrupting %s now brings them back)", frontend, short(what), r.o.Timeout, frontend)
	wctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	last := ""
	err = r.o.Agent.WaitInstallReady(wctx, func(state, reason string) {
		if s := state + ": " + reason; s != last {
			last = s
			r.say("%s", s)
		}
	})
	if err == nil {
		r.say("the pods are away; %s goes on. autopod reboots the host when %s has finished, then brings the pods back", frontend, frontend)
		return nil
	}
	var why string
	switch {
	case ctx.Err() != nil:
		why = "interrupted while waiting for the pods to move away"
	case wctx.Err() != nil:
		why = fmt.Sprintf("the pods were not away within %s (%v)", r.o.Timeout, err)
	default:
		why = fmt.Sprintf("the pods could not be moved away (%v)", err)
	}
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.o.CallTimeout)
	defer cancel()
	if eerr := r.o.Agent.ExternalInstallEnd(ectx, false, frontend+"'s hook stopped it: "+why); eerr != nil {
		r.say("warning: could not tell the autopod agent that %s stops (%v)", frontend, eerr)
	}
	return r.refuse(tool, frontend, "%s; the pods that moved come back", why)
}

// refuse writes why apt or dnf stops and what the operator can do, on one line
// (the dnf plugin repeats the last line in its error), and returns the error that
// makes autopodctl fail.
func (r *Runner) refuse(tool updater.Backend, frontend, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	pm := "dpkg"
	if tool == updater.Dnf {
		pm = "rpm"
	}
	r.say("%s. %s stops here, before %s runs; try again later, or install without autopod: %s=skip %s ...",
		msg, frontend, pm, SkipEnv, frontend)
	return fmt.Errorf("%w: %s", ErrRefused, msg)
}

// AptPostInvoke is `autopodctl hook apt-post-invoke` (DPkg::Post-Invoke, which apt
// runs after every dpkg run, whether dpkg failed or not, with nothing on stdin). It
// tells the agent that apt's dpkg run has ended; ok is false when a kernel or
// boot-critical package is left unfinished in dpkg's status (a failed postinst),
// detail names what dpkg did not finish. It never fails apt: problems are warnings,
// and the error it returns is only for autopodctl's exit code.
func (r *Runner) AptPostInvoke(ctx context.Context) error {
	if r.o.Skip || r.o.Chrooted() {
		return nil
	}
	ok, detail := true, ""
	if f, err := os.Open(filepath.Join(r.o.Root, "var/lib/dpkg/status")); err != nil {
		detail = fmt.Sprintf("could not read dpkg's status: %v", err)
	} else {
		states, err := ParseDpkgStatus(f)
		f.Close()
		if err != nil {
			detail = fmt.Sprintf("could not read dpkg's status: %v", err)
		}
		ok, detail = aptOutcome(states, detail)
	}
	return r.end(ctx, ok, detail)
}

// aptOutcome judges a dpkg run from the status it left.
func aptOutcome(states []DpkgState, detail string) (ok bool, _ string) {
	ok = true
	var bad []string
	for _, s := range Unsettled(states) {
		if c := updater.Classify(updater.Apt, s.Name); c == updater.ClassKernel || c == updater.ClassBootCritical {
			ok = false
		}
		bad = append(bad, s.Name+" "+s.Status)
	}
	if len(bad) > 0 {
		d := "dpkg left packages unfinished: " + strings.Join(bad, ", ")
		if detail != "" {
			d = detail + "; " + d
		}
		detail = d
	}
	return ok, detail
}

// DnfPostTransaction is `autopodctl hook dnf-post-transaction [--failed]`. The dnf
// plugin runs it after the rpm transaction (its transaction hook); with --failed
// (ok false) when rpm failed on some packages, which it writes on stdin as for
// DnfPreTransaction, or, with nothing on stdin, at dnf's exit when the transaction
// it announced never ran to its end. Like AptPostInvoke it never fails dnf.
func (r *Runner) DnfPostTransaction(ctx context.Context, ok bool, stdin io.Reader) error {
	in, _ := readInput(stdin)
	if r.o.Skip || r.o.Chrooted() {
		return nil
	}
	detail := ""
	if !ok {
		detail = "dnf exited before its transaction finished"
		if pkgs, err := ParseDnfLines(bytes.NewReader(in)); err == nil && len(pkgs) > 0 {
			detail = "rpm failed on " + short(pkgs)
		}
	}
	return r.end(ctx, ok, detail)
}

func (r *Runner) end(ctx context.Context, ok bool, detail string) error {
	cctx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
	defer cancel()
	if err := r.o.Agent.ExternalInstallEnd(cctx, ok, detail); err != nil {
		if !errors.Is(err, ErrNoBus) {
			r.say("warning: could not tell the autopod agent that the install has ended (%v)", err)
		}
		return fmt.Errorf("telling the autopod agent that the install has ended: %w", err)
	}
	return nil
}

// short lists up to five packages for a message.
func short(pkgs []Package) string {
	const max = 5
	if len(pkgs) <= max {
		return names(pkgs)
	}
	return fmt.Sprintf("%s and %d more", names(pkgs[:max]), len(pkgs)-max)
}

// inChroot reports whether this process's root differs from PID 1's. When
// /proc/1/root cannot be read (no /proc, not root) it says no.
func inChroot() bool {
	a, err1 := os.Stat("/")
	b, err2 := os.Stat("/proc/1/root/")
	if err1 != nil || err2 != nil {
		return false
	}
	return !os.SameFile(a, b)
}
