package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"time"
)

// ReasonKind says which signal asks for a reboot.
type ReasonKind string

const (
	// ReasonRebootRequiredFile: /run/reboot-required exists (Debian, Ubuntu).
	ReasonRebootRequiredFile ReasonKind = "reboot-required-file"
	// ReasonNeedsRestarting: `dnf needs-restarting -r` lists core packages updated
	// since boot.
	ReasonNeedsRestarting ReasonKind = "needs-restarting"
	// ReasonNewerKernel: an installed kernel is newer than the running one.
	ReasonNewerKernel ReasonKind = "newer-kernel"
)

// Reason is one signal that the host needs a reboot.
type Reason struct {
	Kind     ReasonKind
	Detail   string
	Packages []string // the packages behind it, where the signal names them
}

func (r Reason) String() string { return string(r.Kind) + ": " + r.Detail }

// Report is the state of pending updates on the host.
type Report struct {
	Backend Backend
	// Updates are what the package manager would install, upgrade or remove now.
	Updates []Update
	// RebootRequired is set when updates already installed need a reboot; Reasons say
	// which signals said so.
	RebootRequired bool
	Reasons        []Reason
	RunningKernel  string // uname -r
	NewestKernel   string // release of the newest installed kernel; "" if none was found
	Checked        time.Time
}

// ByClass returns the pending updates of class c.
func (r *Report) ByClass(c Class) []Update {
	var us []Update
	for _, u := range r.Updates {
		if u.Class == c {
			us = append(us, u)
		}
	}
	return us
}

// Options configure a Detector. The zero value detects on this host with the real
// tools.
type Options struct {
	// Backend is "" to pick by the tools installed (DetectBackend), or Apt or Dnf.
	Backend Backend
	// Refresh fetches the repositories' metadata first (apt-get update, dnf makecache
	// --refresh). Off, detection only reads what is cached and never touches the
	// network: dnf runs with -C, and fails if it has no cache yet.
	Refresh bool
	// Runner runs the tools; nil is ExecRunner at CheckNice.
	Runner Runner
	// Env is added to every command's environment (APT_CONFIG for a private apt).
	Env []string
	// Extra arguments for each tool, placed before its command: a private apt
	// configuration (-o Dir::State=…), dpkg's --admindir=, dnf's -c CONF --installroot=,
	// rpm's --root=.
	AptArgs, DpkgArgs, DnfArgs, RPMArgs []string
	// RebootRequiredFile defaults to /run/reboot-required, RebootRequiredPkgsFile to
	// RebootRequiredFile with ".pkgs" appended.
	RebootRequiredFile, RebootRequiredPkgsFile string
	// BootDir is where kernels are installed (vmlinuz-RELEASE); default /boot.
	BootDir string
	// Uname tells the running kernel; nil is SystemUname.
	Uname func() (Uname, error)
	// Now stamps the report; nil is time.Now.
	Now func() time.Time
	// Log receives a debug line per command; nil discards.
	Log *slog.Logger

	lookPath func(string) (string, error) // for tests of the backend choice
}

func (o *Options) setDefaults() {
	if o.Runner == nil {
		o.Runner = ExecRunner{Nice: CheckNice}
	}
	if o.RebootRequiredFile == "" {
		o.RebootRequiredFile = DefaultRebootRequiredFile
	}
	if o.RebootRequiredPkgsFile == "" {
		o.RebootRequiredPkgsFile = o.RebootRequiredFile + ".pkgs"
	}
	if o.BootDir == "" {
		o.BootDir = "/boot"
	}
	if o.Uname == nil {
		o.Uname = SystemUname
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.lookPath == nil {
		o.lookPath = exec.LookPath
	}
}

func (o *Options) validate() error {
	if o.Backend != "" {
		return o.Backend.check()
	}
	return nil
}

// Detector finds pending updates and reboot signals. It holds no state between
// checks, so one Detector may run several Checks at once.
type Detector struct {
	o Options
}

// NewDetector fills o's defaults and picks the backend.
func NewDetector(o Options) (*Detector, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Backend == "" {
		b, err := detectBackend(o.lookPath)
		if err != nil {
			return nil, fmt.Errorf("updater: %w", err)
		}
		o.Backend = b
	}
	o.AptArgs = slices.Clone(o.AptArgs)
	o.DpkgArgs = slices.Clone(o.DpkgArgs)
	o.DnfArgs = slices.Clone(o.DnfArgs)
	o.RPMArgs = slices.Clone(o.RPMArgs)
	o.Env = slices.Clone(o.Env)
	return &Detector{o: o}, nil
}

// Backend is the backend the Detector uses.
func (d *Detector) Backend() Backend { return d.o.Backend }

// Check runs the package tools and returns what is pending. An error names the
// command and carries its stderr (a *CommandError).
func (d *Detector) Check(ctx context.Context) (*Report, error) {
	u, err := d.o.Uname()
	if err != nil {
		return nil, fmt.Errorf("updater: running kernel: %w", err)
	}
	r := &Report{Backend: d.o.Backend, RunningKernel: u.Release}
	var kernels []Kernel
	switch d.o.Backend {
	case Apt:
		kernels, err = d.checkApt(ctx, r)
	case Dnf:
		kernels, err = d.checkDnf(ctx, r)
	}
	if err != nil {
		return nil, err
	}

	boot, err := bootKernels(d.o.BootDir)
	if err != nil {
		return nil, err
	}
	newest, reasons := kernelReasons(d.o.Backend, u, mergeKernels(kernels, boot))
	r.NewestKernel = newest
	r.Reasons = append(r.Reasons, reasons...)

	fr, err := rebootRequiredReason(d.o.RebootRequiredFile, d.o.RebootRequiredPkgsFile)
	if err != nil {
		return nil, err
	}
	if fr != nil {
		r.Reasons = append(r.Reasons, *fr)
	}
	r.RebootRequired = len(r.Reasons) > 0
	r.Checked = d.o.Now()
	return r, nil
}

func (d *Detector) run(ctx context.Context, name string, extra []string, args ...string) (Command, Result, error) {
	c := Command{Name: name, Args: append(slices.Clone(extra), args...), Env: d.o.Env}
	start := time.Now()
	res, err := d.o.Runner.Run(ctx, c)
	d.o.Log.Debug("updater: ran", "command", c.String(), "exit", res.ExitCode, "took", time.Since(start), "err", err)
	if err != nil {
		return c, res, fmt.Errorf("updater: %w", err)
	}
	return c, res, nil
}

// failed wraps a tool's failure: a bad exit code (cause nil) or unreadable output.
func failed(c Command, res Result, cause error) error {
	return fmt.Errorf("updater: %w", newCommandError(c, res, cause))
}

func (d *Detector) checkApt(ctx context.Context, r *Report) ([]Kernel, error) {
	if d.o.Refresh {
		c, res, err := d.run(ctx, "apt-get", d.o.AptArgs, "-q", "update")
		if err != nil {
			return nil, err
		}
		if res.ExitCode != 0 {
			return nil, failed(c, res, nil)
		}
	}
	// Debug::NoLocking: a simulation changes nothing, so it needs no lock, and does not
	// wait for (or fail on) an apt or dpkg run in progress.
	c, res, err := d.run(ctx, "apt-get", d.o.AptArgs, "--simulate", "-o", "Debug::NoLocking=1", "dist-upgrade")
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return nil, failed(c, res, nil)
	}
	if r.Updates, err = ParseAptSimulate(res.Stdout); err != nil {
		return nil, failed(c, res, err)
	}

	c, res, err = d.run(ctx, "dpkg-query", d.o.DpkgArgs, "-W", "-f=${Package} ${Version} ${Status}\n", "linux-image-*")
	if err != nil {
		return nil, err
	}
	switch {
	case res.ExitCode == 1 && bytes.Contains(res.Stderr, []byte("no packages found matching")):
		return nil, nil
	case res.ExitCode != 0:
		return nil, failed(c, res, nil)
	}
	ks, err := ParseDpkgKernels(res.Stdout)
	if err != nil {
		return nil, failed(c, res, err)
	}
	return ks, nil
}

func (d *Detector) checkDnf(ctx context.Context, r *Report) ([]Kernel, error) {
	if d.o.Refresh {
		c, res, err := d.run(ctx, "dnf", d.o.DnfArgs, "-q", "makecache", "--refresh")
		if err != nil {
			return nil, err
		}
		if res.ExitCode != 0 {
			return nil, failed(c, res, nil)
		}
	}
	// -C: from the cache only. Refreshing is the step above; without -C, check-update
	// would refresh expired metadata on its own, from the network.
	c, res, err := d.run(ctx, "dnf", d.o.DnfArgs, "-C", "check-update")
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 && res.ExitCode != 100 {
		return nil, failed(c, res, nil)
	}
	if r.Updates, err = ParseDnfCheckUpdate(res.Stdout); err != nil {
		return nil, failed(c, res, err)
	}
	if (res.ExitCode == 100) != (len(r.Updates) > 0) {
		return nil, failed(c, res, fmt.Errorf("exit code %d but %d updates listed: %w", res.ExitCode, len(r.Updates), ErrUnparsable))
	}
	if err := d.fillRPMFrom(ctx, r.Updates); err != nil {
		return nil, err
	}

	c, res, err = d.run(ctx, "dnf", d.o.DnfArgs, "needs-restarting", "-r")
	if err != nil {
		return nil, err
	}
	nr, perr := ParseNeedsRestarting(res.Stdout)
	switch {
	case perr != nil:
		return nil, failed(c, res, perr)
	case res.ExitCode != 0 && res.ExitCode != 1, (res.ExitCode == 1) != nr.Reboot:
		return nil, failed(c, res, fmt.Errorf("exit code %d does not match the output: %w", res.ExitCode, ErrUnparsable))
	case nr.Reboot:
		r.Reasons = append(r.Reasons, Reason{
			Kind:     ReasonNeedsRestarting,
			Detail:   "dnf needs-restarting -r: core packages updated since boot",
			Packages: nr.Packages,
		})
	}

	c, res, err = d.run(ctx, "rpm", d.o.RPMArgs, "-q", "kernel-core", "--qf", "%{VERSION}-%{RELEASE}.%{ARCH}\n")
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 && !bytes.Contains(res.Stdout, []byte("is not installed")) {
		return nil, failed(c, res, nil)
	}
	ks, err := ParseRPMKernels(res.Stdout)
	if err != nil {
		return nil, failed(c, res, err)
	}
	return ks, nil
}

// fillRPMFrom sets From of the dnf updates to the installed versions: check-update only
// lists the new ones.
func (d *Detector) fillRPMFrom(ctx context.Context, us []Update) error {
	var names []string
	for _, u := range us {
		if u.From == "" && u.To != "" {
			names = append(names, u.Name+"."+u.Arch)
		}
	}
	if len(names) == 0 {
		return nil
	}
	args := append([]string{"-q", "--qf", "%{NAME} %{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n"}, names...)
	c, res, err := d.run(ctx, "rpm", d.o.RPMArgs, args...)
	if err != nil {
		return err
	}
	// rpm -q exits with the number of packages not installed (an obsoleting package
	// is new); it is an error only when rpm says so on stderr.
	if res.ExitCode != 0 && len(bytes.TrimSpace(res.Stderr)) > 0 {
		return failed(c, res, nil)
	}
	installed, err := ParseRPMInstalled(res.Stdout)
	if err != nil {
		return failed(c, res, err)
	}
	for i := range us {
		if us[i].From == "" && us[i].To != "" {
			us[i].From = installed[us[i].Name+"."+us[i].Arch]
		}
	}
	return nil
}

// bootKernels lists the kernels in dir; a missing dir has none.
func bootKernels(dir string) ([]Kernel, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("updater: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return KernelsFromBoot(names), nil
}
