package updater

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// ParseDnfCheckUpdate reads the stdout of `dnf check-update` (whose exit code says
// whether there is anything: 100 updates, 0 none, 1 error; the caller checks it):
//
//	Last metadata expiration check: 0:00:01 ago on Mon Nov 30 05:42:21 2026.
//
//	kernel-core.x86_64                     6.2.0-1                 updates
//	a-name-too-long-for-the-terminal.x86_64
//	                                       1.1-1                   updates
//	Obsoleting Packages
//	newtool.noarch                         2.0-1                   updates
//	    oldtool.noarch                     1.0-1                   @updates
//
// Download progress and the metadata line are skipped. A name.arch too long for the
// terminal (only on a terminal) has a line of its own, its version and repository
// follow on the next. Under "Obsoleting Packages" each package is followed by the
// installed packages it obsoletes (indented, repository "@…"): the first is a new
// install (no From), the others removals (no To). The versions listed are the new ones:
// From of an upgrade is left empty here, the Detector fills it from rpm.
func ParseDnfCheckUpdate(out []byte) ([]Update, error) {
	var updates []Update
	seen := map[string]bool{}
	obsoleting := false
	pending := "" // a name.arch whose version and repository are on the next line
	pendingIndented := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		raw := strings.TrimRight(sc.Text(), "\r \t")
		line := strings.TrimSpace(raw)
		fields := strings.Fields(line)
		indented := raw != line
		if pending != "" {
			if len(fields) != 2 {
				return nil, lineError("dnf check-update", n, raw)
			}
			fields = append([]string{pending}, fields...)
			indented = pendingIndented
			pending = ""
		} else {
			switch {
			case line == "",
				strings.HasPrefix(line, "Last metadata expiration check:"),
				strings.HasPrefix(line, "Security:"),
				strings.Contains(line, " | "): // "updates  2.9 MB/s | 3.0 kB  00:00"
				continue
			case line == "Obsoleting Packages":
				obsoleting = true
				continue
			case len(fields) == 1 && isNameArch(fields[0]):
				pending, pendingIndented = fields[0], indented
				continue
			}
		}
		if len(fields) != 3 || !isNameArch(fields[0]) || !isToken(fields[1]) || !isToken(fields[2]) {
			return nil, lineError("dnf check-update", n, raw)
		}
		name, arch := splitNameArch(fields[0])
		u := Update{Name: name, Arch: arch, To: fields[1], Class: Classify(Dnf, name)}
		if obsoleting && indented {
			// An installed package that the one above obsoletes.
			u.From, u.To = fields[1], ""
		}
		key := fields[0] + " " + u.From + " " + u.To
		if seen[key] {
			// dnf may list an obsoleting package both as an update and under
			// "Obsoleting Packages".
			continue
		}
		seen[key] = true
		updates = append(updates, u)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading dnf check-update output: %w", err)
	}
	if pending != "" {
		return nil, fmt.Errorf("dnf check-update output ends after %q: %w", pending, ErrUnparsable)
	}
	return updates, nil
}

// isNameArch reports whether s looks like dnf's "name.arch".
func isNameArch(s string) bool {
	i := strings.LastIndexByte(s, '.')
	return isToken(s) && i > 0 && i < len(s)-1
}

func splitNameArch(s string) (string, string) {
	i := strings.LastIndexByte(s, '.')
	return s[:i], s[i+1:]
}

// NeedsRestarting is what `dnf needs-restarting -r` said.
type NeedsRestarting struct {
	Reboot bool
	// Packages are the core packages updated since boot (kernel, glibc, systemd, ...).
	Packages []string
}

// ParseNeedsRestarting reads the stdout of `dnf needs-restarting -r` (dnf-plugins-core):
//
//	Core libraries or services have been updated since boot-up:
//	  * kernel
//	  * systemd
//
//	Reboot is required to fully utilize these updates.
//	More information: https://access.redhat.com/solutions/27943
//
// or "No core libraries or services have been updated since boot-up." with "Reboot
// should not be necessary.". Its exit code (1 for a reboot) is also dnf's exit code for
// any error, so output that is neither is an error; the caller checks that the code
// agrees. The output is read untranslated (LC_ALL=C).
func ParseNeedsRestarting(out []byte) (NeedsRestarting, error) {
	var nr NeedsRestarting
	var sawHeader, sawVerdict bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "Core libraries or services have been updated"):
			sawHeader, nr.Reboot = true, true
		case strings.HasPrefix(line, "No core libraries or services have been updated"):
			sawHeader = true
		case strings.HasPrefix(line, "Reboot is required"):
			sawVerdict = nr.Reboot
		case strings.HasPrefix(line, "Reboot should not be necessary"):
			sawVerdict = !nr.Reboot
		case strings.HasPrefix(line, "* ") && nr.Reboot && !sawVerdict:
			name := strings.TrimSpace(line[2:])
			if !isToken(name) {
				return NeedsRestarting{}, fmt.Errorf("dnf needs-restarting: package %q: %w", name, ErrUnparsable)
			}
			nr.Packages = append(nr.Packages, name)
		}
	}
	if err := sc.Err(); err != nil {
		return NeedsRestarting{}, fmt.Errorf("reading dnf needs-restarting output: %w", err)
	}
	if !sawHeader || !sawVerdict {
		return NeedsRestarting{}, fmt.Errorf("dnf needs-restarting: neither a reboot hint nor its absence in %q: %w", truncate(out, 200), ErrUnparsable)
	}
	return nr, nil
}

// ParseRPMInstalled reads the output of
//
//	rpm -q --qf '%{NAME} %{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n' NAME.ARCH...
//
// into a map from "name.arch" to [epoch:]version-release. Lines "package X is not
// installed" (a package that an update newly brings in) are skipped.
func ParseRPMInstalled(out []byte) (map[string]string, error) {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || (strings.HasPrefix(line, "package ") && strings.HasSuffix(line, " is not installed")) {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || !isToken(f[0]) || !isToken(f[1]) || strings.Contains(f[1], ".") || !isToken(f[2]) {
			return nil, lineError("rpm -q", n, line)
		}
		key := f[0] + "." + f[1]
		// Several versions of an install-only package (kernel-core): keep the newest.
		if old, ok := m[key]; !ok || CompareRPMVersions(f[2], old) > 0 {
			m[key] = f[2]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading rpm -q output: %w", err)
	}
	return m, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
