package updater

import (
	"strings"

	rpmutils "github.com/sassoftware/go-rpmutils"
)

// CompareRPMVersions orders two RPM [epoch:]version[-release] strings as rpm does
// (rpm.vercmp, rpmverCmp): epochs first (a missing epoch is 0), then versions, then
// releases, each with rpm's segment comparison (go-rpmutils' Vercmp). A missing release
// sorts before any release. It returns -1, 0 or +1.
//
// go-rpmutils does not know the caret ('^', rpm ≥ 4.15, used for snapshot versions such
// as 1.0^git123), which rpm sorts after the end of a version but before any further
// segment; Vercmp treats it as a separator. Kernel versions carry no caret; the test
// TestCompareRPMVersionsCaret pins that gap.
func CompareRPMVersions(a, b string) int {
	ea, va, ra, hasRa := splitEVR(a)
	eb, vb, rb, hasRb := splitEVR(b)
	if c := rpmutils.Vercmp(ea, eb); c != 0 {
		return c
	}
	if c := rpmutils.Vercmp(va, vb); c != 0 {
		return c
	}
	switch {
	case hasRa && hasRb:
		return rpmutils.Vercmp(ra, rb)
	case hasRa:
		return 1
	case hasRb:
		return -1
	}
	return 0
}

// splitEVR splits as rpm's parseEVR does: the epoch is a leading run of digits ended by
// ':' ("0" when absent or empty), the release is everything after the last '-'.
func splitEVR(s string) (epoch, version, release string, hasRelease bool) {
	epoch, version = "0", s
	k := 0
	for k < len(s) && isDigit(s[k]) {
		k++
	}
	if k < len(s) && s[k] == ':' {
		if k > 0 {
			epoch = s[:k]
		}
		version = s[k+1:]
	}
	if i := strings.LastIndexByte(version, '-'); i >= 0 {
		version, release, hasRelease = version[:i], version[i+1:], true
	}
	return epoch, version, release, hasRelease
}
