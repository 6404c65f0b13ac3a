package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCompareDebianVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0", "1.1", -1},
		{"1.10", "1.9", 1},
		{"1.0", "1.0-0", 0}, // a missing revision is the empty one, which equals "0"
		{"1.0-1", "1.0", 1},
		{"1.0~rc1", "1.0", -1}, // '~' sorts before the end
		{"1.0~rc1", "1.0~rc1~1", 1},
		{"1.0~~", "1.0~", -1},
		{"1.0a", "1.0", 1},
		{"1.0a", "1.0+", -1}, // letters before non-letters
		{"1.0+", "1.0.", -1}, // non-letters by ASCII
		{"1.0Z", "1.0a", -1}, // letters by ASCII
		{"1:0.1", "2.0", 1},  // epoch first
		{"0:2.0", "2.0", 0},
		{"+1:2.0", "1:2.0", 0}, // strtol's sign
		{"-0:2.0", "2.0", 0},
		{"1.01", "1.1", 0}, // numbers, not strings
		{"2.36-9", "2.36-9+deb12u1", -1},
		{"3.20230808.1~deb12u1", "3.20240312.1~deb12u1", -1},
		{"1:4.13+dfsg1-1", "1:4.13+dfsg1-1+deb12u1", -1},
		{"6.1.0-13-amd64", "6.1.0-9-amd64", 1}, // kernel releases, as grub compares them
		{"6.1.0-13-amd64", "6.12.0-0.bpo.1-amd64", -1},
		{"6.99.0-1-amd64", "6.99.0-2-amd64", -1},
		{"2:1.0-1:2", "2:1.0-1", 1}, // ':' in the upstream part once there is an epoch
		{"a1", "1", 1},              // dpkg warns, still compares
		{"1_0", "1", 1},
		{" 1.0 ", "1.0", 0},
	}
	for _, tt := range tests {
		got, err := CompareDebianVersions(tt.a, tt.b)
		if err != nil || got != tt.want {
			t.Errorf("CompareDebianVersions(%q, %q) = %d, %v; want %d", tt.a, tt.b, got, err, tt.want)
		}
		if rev, _ := CompareDebianVersions(tt.b, tt.a); rev != -tt.want {
			t.Errorf("CompareDebianVersions(%q, %q) = %d; want %d", tt.b, tt.a, rev, -tt.want)
		}
	}
}

func TestParseDebianVersion(t *testing.T) {
	good := map[string]DebianVersion{
		"1.0":                {0, "1.0", ""},
		"1:2.0-3":            {1, "2.0", "3"},
		"6.1.0-13-amd64":     {0, "6.1.0-13", "amd64"},
		"1:4.13+dfsg1-1":     {1, "4.13+dfsg1", "1"},
		"2:1.0-1:2":          {2, "1.0", "1:2"},
		"+3:1":               {3, "1", ""},
		"2147483647:1":       {2147483647, "1", ""},
		"\t1.0-1 ":           {0, "1.0", "1"},
		"20250419~deb12u2":   {0, "20250419~deb12u2", ""},
		"3.0.22-1~deb12u2.1": {0, "3.0.22", "1~deb12u2.1"},
	}
	for s, want := range good {
		v, err := ParseDebianVersion(s)
		if err != nil || v != want {
			t.Errorf("ParseDebianVersion(%q) = %+v, %v; want %+v", s, v, err, want)
		}
	}
	// Each is an error for dpkg --compare-versions too (TestDebianVersionsAgainstDpkg
	// checks every error against dpkg).
	for _, s := range []string{"", " ", "1 0", ":1", "x:1", "1x:1", "-1:1", "2147483648:1", "99999999999999999999:1", "1:", "1-", "-1", "1:-1"} {
		if _, err := ParseDebianVersion(s); !errors.Is(err, ErrBadVersion) {
			t.Errorf("ParseDebianVersion(%q) = %v, want ErrBadVersion", s, err)
		}
	}
	for s := range good {
		v, _ := ParseDebianVersion(s)
		back, err := ParseDebianVersion(v.String())
		if err != nil || back != v {
			t.Errorf("%q: String() = %q parses back to %+v, %v", s, v.String(), back, err)
		}
	}
}

// genDebianVersion makes a version string from a small alphabet, so that generated
// pairs often share prefixes and hit every branch of the comparison: epochs, '~' and
// '+' runs, leading zeros, letters against digits, revisions with and without. bad
// occasionally produces a version dpkg rejects.
func genDebianVersion(r *rand.Rand, bad bool) string {
	pick := func(s string) byte { return s[r.IntN(len(s))] }
	var b strings.Builder
	if r.IntN(4) == 0 {
		b.WriteString([]string{"0", "1", "2", "10", "01"}[r.IntN(5)])
		b.WriteByte(':')
	}
	b.WriteByte(pick("0123456789"))
	hasEpoch := strings.Contains(b.String(), ":")
	upChars := "0019.~+aZb"
	if hasEpoch {
		upChars += ":"
	}
	for n := r.IntN(6); n > 0; n-- {
		b.WriteByte(pick(upChars))
	}
	if r.IntN(3) > 0 {
		if r.IntN(4) == 0 {
			b.WriteString("-" + string(pick("0123456789")) + "." + string(pick("0123456789")))
		}
		b.WriteByte('-')
		b.WriteByte(pick("0123456789a~+"))
		for n := r.IntN(4); n > 0; n-- {
			b.WriteByte(pick("019.~+ab"))
		}
	}
	s := b.String()
	if bad {
		switch r.IntN(5) {
		case 0:
			s = "x:" + s
		case 1:
			s += "-"
		case 2:
			s = "1:"
		case 3:
			s = "a" + s // a warning only: still valid
		case 4:
			s = "2147483648:" + s
		}
	}
	return s
}

// equivalentDebianVersion rewrites s in a way that dpkg regards as equal.
func equivalentDebianVersion(r *rand.Rand, s string) string {
	switch r.IntN(3) {
	case 0:
		if !strings.Contains(s, ":") {
			return "0:" + s
		}
	case 1:
		if !strings.Contains(s, "-") {
			return s + "-0"
		}
	}
	return "0" + s // a leading zero in the first number
}

// dpkgCompare asks the real dpkg --compare-versions about every pair, in one shell
// (one fork of dpkg per question, no Go process per pair). It returns -1, 0, +1, or 2
// where dpkg rejects a version.
func dpkgCompare(t testing.TB, pairs [][2]string) []int {
	t.Helper()
	dpkg, err := exec.LookPath("dpkg")
	if err != nil {
		t.Skip("dpkg is not installed: the cross-check against the real dpkg needs a Debian host")
	}
	script := `while IFS=' ' read -r a b; do
  "$DPKG" --compare-versions "$a" lt "$b" 2>/dev/null; r=$?
  if [ $r -eq 0 ]; then echo -1; elif [ $r -ne 1 ]; then echo 2
  elif "$DPKG" --compare-versions "$a" eq "$b" 2>/dev/null; then echo 0; else echo 1; fi
done`
	var in bytes.Buffer
	for _, p := range pairs {
		fmt.Fprintf(&in, "%s %s\n", p[0], p[1])
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Env = append(cmd.Environ(), "DPKG="+dpkg)
	cmd.Stdin = &in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("running dpkg --compare-versions: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(pairs) {
		t.Fatalf("dpkg answered %d of %d pairs", len(lines), len(pairs))
	}
	res := make([]int, len(lines))
	for i, l := range lines {
		res[i], _ = strconv.Atoi(l)
	}
	return res
}

// crossCheckDebian compares n generated pairs with CompareDebianVersions and with the
// real dpkg, and fails on any disagreement, including on which versions are invalid.
func crossCheckDebian(t *testing.T, seed uint64, n int) {
	r := rand.New(rand.NewPCG(seed, 1))
	pairs := make([][2]string, 0, n)
	for len(pairs) < n {
		a := genDebianVersion(r, r.IntN(20) == 0)
		b := genDebianVersion(r, r.IntN(20) == 0)
		switch r.IntN(6) {
		case 0: // a near neighbour of a
			b = a + string("0a~+."[r.IntN(5)])
		case 1: // the same version spelt differently: a zero epoch, revision or padding
			b = equivalentDebianVersion(r, a)
		}
		pairs = append(pairs, [2]string{a, b})
	}
	want := dpkgCompare(t, pairs)
	var agree, invalid int
	for i, p := range pairs {
		got, err := CompareDebianVersions(p[0], p[1])
		if err != nil {
			got = 2
			invalid++
		}
		if got != want[i] {
			t.Errorf("%q vs %q: CompareDebianVersions = %d (err %v), dpkg --compare-versions says %d", p[0], p[1], got, err, want[i])
			continue
		}
		agree++
	}
	var eq int
	for _, w := range want {
		if w == 0 {
			eq++
		}
	}
	t.Logf("seed %d: %d pairs agree with dpkg (%d equal, %d with an invalid version)", seed, agree, eq, invalid)
	if invalid == 0 || eq == 0 {
		t.Errorf("the generator made %d invalid and %d equal pairs: it no longer covers those cases", invalid, eq)
	}
}

// TestDebianVersionsAgainstDpkg cross-checks CompareDebianVersions against the real
// dpkg on generated pairs. A few hundred keep the unit tier fast (one dpkg fork per
// question); TestRootDebianVersionsAgainstDpkgMany runs thousands.
func TestDebianVersionsAgainstDpkg(t *testing.T) {
	crossCheckDebian(t, 20261130, 300)
}
