package updater

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// DefaultRebootRequiredFile is the reboot flag that Debian and Ubuntu packages drop
// (kernel postinst hooks; libc6, dbus and others through update-notifier-common's
// notify-reboot-required), with the packages that asked in the same name plus ".pkgs".
const DefaultRebootRequiredFile = "/run/reboot-required"

// ParseRebootRequiredPkgs reads /run/reboot-required.pkgs: the packages that asked for
// the reboot, one per line, appended by each package that asks (so repeated), in the
// order given, without repeats.
func ParseRebootRequiredPkgs(data []byte) []string {
	var pkgs []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" || seen[p] {
			continue
		}
		seen[p] = true
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// rebootRequiredReason returns a reason if file exists; pkgsFile, optional, names the
// packages behind it.
func rebootRequiredReason(file, pkgsFile string) (*Reason, error) {
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("updater: %w", err)
	}
	r := &Reason{Kind: ReasonRebootRequiredFile, Detail: file + " exists"}
	data, err := os.ReadFile(pkgsFile)
	switch {
	case err == nil:
		r.Packages = ParseRebootRequiredPkgs(data)
		if len(r.Packages) > 0 {
			r.Detail += " (asked for by " + strings.Join(r.Packages, ", ") + ")"
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("updater: %w", err)
	}
	return r, nil
}
