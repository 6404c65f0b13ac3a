package updater

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// Update is one package that the pending upgrade changes. From is empty for a package
// the upgrade newly installs (a new kernel ABI on Debian, a package that obsoletes an
// installed one on dnf); To is empty for one it removes. Arch is empty where the tool
// does not say (apt's Remv lines).
type Update struct {
	Name  string
	Arch  string
	From  string
	To    string
	Class Class
}

// ErrUnparsable is wrapped by the errors of the parsers: a line of the tool's output
// that has the shape of a package line but cannot be read. The parsers fail rather than
// skip it, since a skipped line could be the kernel update.
var ErrUnparsable = errors.New("unparsable line")

func lineError(tool string, n int, line string) error {
	return fmt.Errorf("%s output line %d %q: %w", tool, n, line, ErrUnparsable)
}

// ParseAptSimulate reads the output of `apt-get --simulate dist-upgrade` (or
// upgrade, install): its Inst, Remv and Purg lines, apt's stable scripting interface.
// Conf lines repeat what Inst said and are skipped, as is the human-readable summary
// above them.
//
//	Inst linux-image-amd64 [6.1.1] (6.1.2 Debian:12.x/stable [amd64])   an upgrade
//	Inst linux-image-6.1.0-2-amd64 (6.1.2 Debian:12.x/stable [amd64])   a new package
//	Inst libpam-modules-bin [1.5.2-6] (1.5.2-7 Debian:12/stable [amd64]) [libpam-modules:amd64 ]
//	Remv oldtool [1.0-1]
func ParseAptSimulate(out []byte) ([]Update, error) {
	var updates []Update
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		verb, rest, _ := strings.Cut(line, " ")
		var u Update
		var ok bool
		switch verb {
		case "Inst":
			u, ok = parseAptInst(rest)
		case "Remv", "Purg":
			u, ok = parseAptRemv(rest)
		default:
			continue
		}
		if !ok {
			return nil, lineError("apt-get --simulate", n, line)
		}
		u.Class = Classify(Apt, u.Name)
		updates = append(updates, u)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading apt-get --simulate output: %w", err)
	}
	return updates, nil
}

// parseAptInst reads "NAME [OLD] (NEW RELEASE... [ARCH])" with optional trailing
// "[...]" notes about dependencies.
func parseAptInst(s string) (Update, bool) {
	var u Update
	name, rest, ok := strings.Cut(s, " ")
	if !ok || name == "" {
		return u, false
	}
	u.Name, u.Arch = splitAptArch(name)
	if strings.HasPrefix(rest, "[") {
		old, after, ok := strings.Cut(rest[1:], "] ")
		if !ok || !isToken(old) {
			return u, false
		}
		u.From, rest = old, after
	}
	if !strings.HasPrefix(rest, "(") {
		return u, false
	}
	paren, _, ok := strings.Cut(rest[1:], ")")
	if !ok {
		return u, false
	}
	fields := strings.Fields(paren)
	if len(fields) < 2 || !isToken(fields[0]) {
		return u, false
	}
	u.To = fields[0]
	last := fields[len(fields)-1]
	if !strings.HasPrefix(last, "[") || !strings.HasSuffix(last, "]") || len(last) < 3 {
		return u, false
	}
	u.Arch = last[1 : len(last)-1]
	return u, isToken(u.Name) && isToken(u.Arch)
}

// parseAptRemv reads "NAME [OLD]" with optional trailing notes.
func parseAptRemv(s string) (Update, bool) {
	var u Update
	name, rest, _ := strings.Cut(s, " ")
	if name == "" {
		return u, false
	}
	u.Name, u.Arch = splitAptArch(name)
	if strings.HasPrefix(rest, "[") {
		old, _, ok := strings.Cut(rest[1:], "]")
		if !ok || !isToken(old) {
			return u, false
		}
		u.From = old
	}
	return u, u.From != "" && isToken(u.Name) && (u.Arch == "" || isToken(u.Arch))
}

// splitAptArch splits apt's "libc6:i386" (a package of a foreign architecture).
func splitAptArch(name string) (string, string) {
	n, arch, _ := strings.Cut(name, ":")
	return n, arch
}

// isToken reports whether s is non-empty and has no blanks or brackets, as a package
// name, version or architecture never does.
func isToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t[]()")
}

// ParseAptListUpgradable reads the output of `apt list --upgradable`:
//
//	Listing...
//	linux-image-amd64/stable,stable-security 6.1.2 amd64 [upgradable from: 6.1.1]
//
// apt itself warns that this interface is not stable; ParseAptSimulate is what the
// Detector uses. This one serves output captured elsewhere (support bundles, an admin's
// paste).
func ParseAptListUpgradable(out []byte) ([]Update, error) {
	var updates []Update
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		// "N: There is 1 additional version..." is a notice, not a package.
		if line == "" || strings.HasPrefix(line, "Listing...") || strings.HasPrefix(line, "N: ") {
			continue
		}
		const marker = "[upgradable from: "
		head, old, ok := strings.Cut(line, marker)
		if !ok || !strings.HasSuffix(old, "]") {
			return nil, lineError("apt list --upgradable", n, line)
		}
		old = strings.TrimSuffix(old, "]")
		fields := strings.Fields(head)
		if len(fields) != 3 || !isToken(old) {
			return nil, lineError("apt list --upgradable", n, line)
		}
		name, _, ok := strings.Cut(fields[0], "/")
		if !ok || !isToken(name) || !isToken(fields[1]) || !isToken(fields[2]) {
			return nil, lineError("apt list --upgradable", n, line)
		}
		updates = append(updates, Update{
			Name: name, Arch: fields[2], From: old, To: fields[1], Class: Classify(Apt, name),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading apt list output: %w", err)
	}
	return updates, nil
}
