package hooks

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The dnf plugin (packaging/usr/lib/python3/dist-packages/dnf-plugins/autopod.py)
// writes one line per package of the transaction on the stdin of
// `autopodctl hook dnf-pre-transaction`:
//
//	NAME EPOCH:VERSION-RELEASE.ARCH ACTION[ EPOCH:VERSION-RELEASE.ARCH]
//
// separated by single spaces and ended by "\n". ACTION is install (also a package
// that obsoletes others), upgrade, downgrade, reinstall or remove (also an
// obsoleted package, and an old kernel that installonly_limit drops). The optional
// last field, for upgrade, downgrade and reinstall, is the installed package being
// replaced. EPOCH is always written, 0 for none. rpm allows no blank in a name,
// version, release or arch, no "-" in a version or release, and no "." in an arch,
// so the fields split without ambiguity.

// MaxDnfLine bounds one line of the plugin's input.
const MaxDnfLine = 64 << 10

// ParseDnfLines reads the dnf plugin's lines (see above). Empty lines are skipped;
// any other line that is not as described is an error wrapping ErrUnparsable.
// Versions in the result drop an epoch of 0 (Package).
func ParseDnfLines(r io.Reader) ([]Package, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxDnfLine)
	var pkgs []Package
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if line == "" {
			continue
		}
		p, err := dnfLine(line)
		if err != nil {
			return nil, unparsable(n, line, err.Error())
		}
		pkgs = append(pkgs, p)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: line %d is longer than %d bytes", ErrUnparsable, n+1, MaxDnfLine)
		}
		return nil, err
	}
	return pkgs, nil
}

func dnfLine(line string) (Package, error) {
	f := strings.Split(line, " ")
	if len(f) != 3 && len(f) != 4 {
		return Package{}, errors.New("want NAME EPOCH:VERSION-RELEASE.ARCH ACTION [EPOCH:VERSION-RELEASE.ARCH]")
	}
	if !isToken(f[0]) {
		return Package{}, errors.New("a malformed name")
	}
	evr, arch, err := splitEVRA(f[1])
	if err != nil {
		return Package{}, err
	}
	p := Package{Name: f[0], Arch: arch, Action: f[2]}
	switch p.Action {
	case ActionInstall:
		p.NewVersion = evr
	case ActionUpgrade, ActionDowngrade, ActionReinstall:
		p.NewVersion = evr
	case ActionRemove:
		p.OldVersion = evr
	default:
		return Package{}, fmt.Errorf("action %q is not install, upgrade, downgrade, reinstall or remove", p.Action)
	}
	if len(f) == 4 {
		if p.Action == ActionInstall || p.Action == ActionRemove {
			return Package{}, fmt.Errorf("a replaced package with action %s", p.Action)
		}
		old, _, err := splitEVRA(f[3])
		if err != nil {
			return Package{}, fmt.Errorf("the replaced package: %w", err)
		}
		p.OldVersion = old
	}
	return p, nil
}

// splitEVRA splits EPOCH:VERSION-RELEASE.ARCH into the version as Package keeps it
// ([EPOCH:]VERSION-RELEASE, no epoch when 0) and the arch.
func splitEVRA(s string) (evr, arch string, err error) {
	bad := fmt.Errorf("%q is not EPOCH:VERSION-RELEASE.ARCH", s)
	if !isToken(s) {
		return "", "", bad
	}
	epoch, rest, ok := strings.Cut(s, ":")
	if !ok || !isEpoch(epoch) {
		return "", "", bad
	}
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return "", "", bad
	}
	vr, arch := rest[:i], rest[i+1:]
	v, r, ok := strings.Cut(vr, "-")
	if !ok || v == "" || r == "" || arch == "" || strings.ContainsAny(r, "-:") || strings.Contains(v, ":") || strings.Contains(arch, ":") {
		return "", "", bad
	}
	if strings.TrimLeft(epoch, "0") == "" {
		return vr, arch, nil
	}
	return epoch + ":" + vr, arch, nil
}

func isEpoch(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// FormatDnfLine writes p as the dnf plugin does (without the "\n"), for packages
// whose fields ParseDnfLines accepts: ParseDnfLines of the line gives p back,
// except that an epoch written as "0:" in p is dropped.
func FormatDnfLine(p Package) string {
	evra := func(v string) string {
		if !strings.Contains(v, ":") {
			v = "0:" + v
		}
		return v + "." + p.Arch
	}
	switch p.Action {
	case ActionRemove:
		return p.Name + " " + evra(p.OldVersion) + " " + p.Action
	case ActionUpgrade, ActionDowngrade, ActionReinstall:
		line := p.Name + " " + evra(p.NewVersion) + " " + p.Action
		if p.OldVersion != "" {
			line += " " + evra(p.OldVersion)
		}
		return line
	}
	return p.Name + " " + evra(p.NewVersion) + " " + p.Action
}
