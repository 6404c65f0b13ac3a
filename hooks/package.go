package hooks

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/autopod/autopod/updater"
)

// Package is one step of what apt (dpkg) or dnf (rpm) is about to do to one package.
// apt announces a package once per dpkg step: an upgrade is an "upgrade" (unpack)
// and later a "configure" of the same package.
type Package struct {
	// Name without an architecture qualifier (libc6, not libc6:i386).
	Name string
	// Arch of the package after the step, or of the removed package; empty when
	// the protocol does not say (apt's versions 1 and 2).
	Arch string
	// OldVersion is the version installed before the step, NewVersion the one after
	// it; empty for none (a first install, a removal) or when the protocol does not
	// say. rpm versions are [EPOCH:]VERSION-RELEASE, the epoch written only when it
	// is not 0, as `rpm -q` writes them in the updater package.
	OldVersion, NewVersion string
	// Action is one of the Action constants.
	Action string
	// File is the .deb that dpkg unpacks (apt), else empty.
	File string
}

// The actions. ActionInstall … ActionReinstall and ActionUnpack bring a package's
// files onto the host: Unpacks reports them.
const (
	ActionInstall   = "install"   // a package that was not installed
	ActionUpgrade   = "upgrade"   // a newer version replaces the installed one
	ActionDowngrade = "downgrade" // an older version replaces the installed one
	ActionReinstall = "reinstall" // the same version again
	ActionUnpack    = "unpack"    // apt's version 1: a .deb is unpacked, versions unknown
	ActionConfigure = "configure" // apt: dpkg configures an unpacked package
	ActionRemove    = "remove"    // removed (apt: also purged; dnf: also obsoleted)
)

// ErrUnparsable means that the hook's input has a line the parser cannot read. It
// is never skipped: the skipped line could be the kernel.
var ErrUnparsable = errors.New("unparsable hook input")

// Unpacks reports whether the step brings new files of the package onto the host:
// an install, upgrade, downgrade, reinstall or (apt version 1) unpack.
func (p Package) Unpacks() bool {
	switch p.Action {
	case ActionInstall, ActionUpgrade, ActionDowngrade, ActionReinstall, ActionUnpack:
		return true
	}
	return false
}

// String is "name[:arch] old -> new (action)" for messages.
func (p Package) String() string {
	name := p.Name
	if p.Arch != "" {
		name += ":" + p.Arch
	}
	switch {
	case p.OldVersion != "" && p.NewVersion != "" && p.OldVersion != p.NewVersion:
		return fmt.Sprintf("%s %s -> %s (%s)", name, p.OldVersion, p.NewVersion, p.Action)
	case p.NewVersion != "":
		return fmt.Sprintf("%s %s (%s)", name, p.NewVersion, p.Action)
	case p.OldVersion != "":
		return fmt.Sprintf("%s %s (%s)", name, p.OldVersion, p.Action)
	}
	return fmt.Sprintf("%s (%s)", name, p.Action)
}

// Class is the updater's class of the package under backend b's naming.
func (p Package) Class(b updater.Backend) updater.Class { return updater.Classify(b, p.Name) }

// Unpacking returns the packages of pkgs whose step unpacks files (Unpacks), each
// name and arch once, in order: what the agent is told is about to be installed.
func Unpacking(pkgs []Package) []Package {
	var out []Package
	seen := map[string]bool{}
	for _, p := range pkgs {
		if !p.Unpacks() || seen[p.Name+":"+p.Arch] {
			continue
		}
		seen[p.Name+":"+p.Arch] = true
		out = append(out, p)
	}
	return out
}

// Kernels returns the packages of pkgs of class updater.ClassKernel whose step
// unpacks files: new kernels (or their metapackages) arriving.
func Kernels(b updater.Backend, pkgs []Package) []Package {
	var out []Package
	for _, p := range Unpacking(pkgs) {
		if p.Class(b) == updater.ClassKernel {
			out = append(out, p)
		}
	}
	return out
}

// isToken reports whether s is non-empty printable ASCII or UTF-8 without spaces:
// what a package name, version or architecture may be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return false
		}
	}
	return true
}

func unparsable(n int, line, why string) error {
	if len(line) > 200 {
		line = line[:200] + "…"
	}
	return fmt.Errorf("%w: line %d %q: %s", ErrUnparsable, n, line, why)
}

// names lists packages for messages: "a 1.0, b 2.0".
func names(pkgs []Package) string {
	var s []string
	for _, p := range pkgs {
		if p.NewVersion != "" {
			s = append(s, p.Name+" "+p.NewVersion)
		} else {
			s = append(s, p.Name)
		}
	}
	return strings.Join(s, ", ")
}
