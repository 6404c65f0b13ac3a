package updater

import (
	"errors"
	"fmt"
	"os/exec"
)

// Backend is a family of package tools.
type Backend string

const (
	// Apt is apt-get and dpkg (Debian, Ubuntu).
	Apt Backend = "apt"
	// Dnf is dnf and rpm (Fedora, RHEL and its rebuilds).
	Dnf Backend = "dnf"
)

// ErrNoBackend means that neither dpkg with apt-get nor rpm with dnf is installed.
var ErrNoBackend = errors.New("no supported package manager found (need dpkg and apt-get, or rpm and dnf)")

func (b Backend) valid() bool { return b == Apt || b == Dnf }

// backendTools are the programs that make a host an apt or a dnf host, in the order
// DetectBackend tries them. apt comes first: Debian packages rpm, dnf and
// createrepo-c as ordinary tools (the development hosts have them for the tests), while
// an RPM distribution with dpkg and apt-get installed is not known to us.
var backendTools = []struct {
	backend Backend
	tools   []string
}{
	{Apt, []string{"dpkg", "dpkg-query", "apt-get"}},
	{Dnf, []string{"rpm", "dnf"}},
}

// DetectBackend picks the backend by which tools exist in PATH.
func DetectBackend() (Backend, error) {
	return detectBackend(exec.LookPath)
}

func detectBackend(lookPath func(string) (string, error)) (Backend, error) {
	for _, bt := range backendTools {
		found := true
		for _, t := range bt.tools {
			if _, err := lookPath(t); err != nil {
				found = false
				break
			}
		}
		if found {
			return bt.backend, nil
		}
	}
	return "", ErrNoBackend
}

func (b Backend) check() error {
	if !b.valid() {
		return fmt.Errorf("updater: unknown backend %q (want %q or %q)", string(b), Apt, Dnf)
	}
	return nil
}
