package updater

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// DebianVersion is a parsed Debian package version, [epoch:]upstream[-revision]
// (deb-version(7)).
type DebianVersion struct {
	Epoch    int
	Upstream string
	Revision string
}

// ErrBadVersion is wrapped by the errors of ParseDebianVersion.
var ErrBadVersion = errors.New("bad version syntax")

// ParseDebianVersion parses s as dpkg does (parseversion in lib/dpkg/parsehelp.c): it
// rejects what dpkg rejects, and, like dpkg --compare-versions, accepts what dpkg only
// warns about (an upstream part that does not start with a digit, characters outside
// the allowed set).
func ParseDebianVersion(s string) (DebianVersion, error) {
	var v DebianVersion
	bad := func(why string) (DebianVersion, error) {
		return DebianVersion{}, fmt.Errorf("version %q: %w: %s", s, ErrBadVersion, why)
	}
	if s == "" {
		return bad("version string is empty")
	}
	t := strings.Trim(s, " \t")
	if strings.ContainsAny(t, " \t") {
		return bad("version string has embedded spaces")
	}
	if e, rest, ok := strings.Cut(t, ":"); ok {
		// dpkg reads the epoch with strtol, which takes a sign.
		neg := false
		if e != "" && (e[0] == '+' || e[0] == '-') {
			neg, e = e[0] == '-', e[1:]
		}
		k := 0
		for k < len(e) && isDigit(e[k]) {
			k++
		}
		switch {
		case k == 0:
			return bad("epoch in version is empty")
		case k != len(e):
			return bad("epoch in version is not number")
		case neg && strings.Trim(e, "0") != "":
			return bad("epoch in version is negative")
		}
		n, err := strconv.ParseInt(e, 10, 64)
		if err != nil || n > math.MaxInt32 {
			return bad("epoch in version is too big")
		}
		if rest == "" {
			return bad("nothing after colon in version number")
		}
		v.Epoch, t = int(n), rest
	}
	if i := strings.LastIndexByte(t, '-'); i >= 0 {
		v.Upstream, v.Revision = t[:i], t[i+1:]
		if v.Revision == "" {
			return bad("revision number is empty")
		}
	} else {
		v.Upstream = t
	}
	if v.Upstream == "" {
		return bad("version number is empty")
	}
	return v, nil
}

// String formats v as dpkg would print it.
func (v DebianVersion) String() string {
	s := v.Upstream
	if v.Epoch != 0 {
		s = strconv.Itoa(v.Epoch) + ":" + s
	}
	if v.Revision != "" {
		s += "-" + v.Revision
	}
	return s
}

// Compare orders v and w as dpkg does: -1 if v is older, 0 if equal, +1 if newer.
func (v DebianVersion) Compare(w DebianVersion) int {
	switch {
	case v.Epoch < w.Epoch:
		return -1
	case v.Epoch > w.Epoch:
		return 1
	}
	if c := verrevcmp(v.Upstream, w.Upstream); c != 0 {
		return c
	}
	return verrevcmp(v.Revision, w.Revision)
}

// CompareDebianVersions parses and compares two Debian versions.
func CompareDebianVersions(a, b string) (int, error) {
	va, err := ParseDebianVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := ParseDebianVersion(b)
	if err != nil {
		return 0, err
	}
	return va.Compare(vb), nil
}

// order is dpkg's weight of a character in the non-digit parts of a version: '~' sorts
// before everything, even the end of the string; then the end and digits; then letters;
// then everything else.
func order(c int) int {
	switch {
	case c < 0: // end of string
		return 0
	case isDigit(byte(c)):
		return 0
	case isAlpha(byte(c)):
		return c
	case c == '~':
		return -1
	default:
		return c + 256
	}
}

// verrevcmp is dpkg's comparison of an upstream version or a revision: alternately a
// non-digit run, compared character by character with order, and a digit run, compared
// as a number.
func verrevcmp(a, b string) int {
	at := func(s string, i int) int {
		if i < len(s) {
			return int(s[i])
		}
		return -1
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		firstDiff := 0
		for (i < len(a) && !isDigit(a[i])) || (j < len(b) && !isDigit(b[j])) {
			ac, bc := order(at(a, i)), order(at(b, j))
			if ac != bc {
				return sign(ac - bc)
			}
			i++
			j++
		}
		for i < len(a) && a[i] == '0' {
			i++
		}
		for j < len(b) && b[j] == '0' {
			j++
		}
		for i < len(a) && j < len(b) && isDigit(a[i]) && isDigit(b[j]) {
			if firstDiff == 0 {
				firstDiff = int(a[i]) - int(b[j])
			}
			i++
			j++
		}
		if i < len(a) && isDigit(a[i]) {
			return 1
		}
		if j < len(b) && isDigit(b[j]) {
			return -1
		}
		if firstDiff != 0 {
			return sign(firstDiff)
		}
	}
	return 0
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool { return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') }

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
