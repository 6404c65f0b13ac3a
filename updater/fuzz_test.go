package updater

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// The fuzz targets feed every parser arbitrary output, seeded with the real captures,
// and check that it never panics, that it is deterministic, and that whatever it
// accepts is well formed: no empty or blank-containing names and versions, classes
// from the rule table, and no more packages than the output has lines.
//
//	go test -run XXX -fuzz FuzzParseAptSimulate -fuzztime 30s ./updater/

func seedCaptures(f *testing.F, patterns ...string) {
	for _, p := range patterns {
		for _, name := range captureNames(f, p) {
			f.Add(loadCapture(f, name).out)
		}
	}
}

func lineCount(b []byte) int { return bytes.Count(b, []byte("\n")) + 1 }

func checkUpdates(t *testing.T, b Backend, out []byte, us []Update) {
	t.Helper()
	if len(us) > lineCount(out) {
		t.Fatalf("%d updates from %d lines", len(us), lineCount(out))
	}
	for _, u := range us {
		if !isToken(u.Name) || (b == Apt && strings.Contains(u.Name, ":")) {
			t.Fatalf("bad name in %+v", u)
		}
		if u.From == "" && u.To == "" {
			t.Fatalf("neither From nor To in %+v", u)
		}
		for _, s := range []string{u.Arch, u.From, u.To} {
			if s != "" && !isToken(s) {
				t.Fatalf("bad field %q in %+v", s, u)
			}
		}
		if u.Class != Classify(b, u.Name) {
			t.Fatalf("class %s of %+v, Classify says %s", u.Class, u, Classify(b, u.Name))
		}
	}
}

func FuzzParseAptSimulate(f *testing.F) {
	seedCaptures(f, "apt/*simulate*")
	f.Add([]byte("Inst libc6:i386 [1] (2 x [i386]) []\nRemv a [1]\nPurg b:amd64 [2] [c ]\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		us, err := ParseAptSimulate(out)
		us2, err2 := ParseAptSimulate(out)
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(us, us2) {
			t.Fatal("not deterministic")
		}
		if err != nil {
			return
		}
		n := bytes.Count(out, []byte("Inst ")) + bytes.Count(out, []byte("Remv ")) + bytes.Count(out, []byte("Purg "))
		if len(us) > n {
			t.Fatalf("%d updates from %d Inst/Remv/Purg", len(us), n)
		}
		checkUpdates(t, Apt, out, us)
		for _, u := range us {
			if u.From == "" && u.Arch == "" {
				t.Fatalf("a new install without architecture: %+v", u)
			}
		}
	})
}

func FuzzParseAptListUpgradable(f *testing.F) {
	seedCaptures(f, "apt/*list-upgradable*")
	f.Fuzz(func(t *testing.T, out []byte) {
		us, err := ParseAptListUpgradable(out)
		if err != nil {
			return
		}
		checkUpdates(t, Apt, out, us)
		for _, u := range us {
			if u.From == "" || u.To == "" || u.Arch == "" {
				t.Fatalf("incomplete upgrade %+v", u)
			}
		}
	})
}

func FuzzParseDnfCheckUpdate(f *testing.F) {
	seedCaptures(f, "dnf/check-update*")
	f.Fuzz(func(t *testing.T, out []byte) {
		us, err := ParseDnfCheckUpdate(out)
		us2, err2 := ParseDnfCheckUpdate(out)
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(us, us2) {
			t.Fatal("not deterministic")
		}
		if err != nil {
			return
		}
		checkUpdates(t, Dnf, out, us)
		seen := map[Update]bool{}
		for _, u := range us {
			if u.Arch == "" || (u.From != "" && u.To != "") {
				t.Fatalf("check-update lists new versions or obsoleted ones, not %+v", u)
			}
			if seen[u] {
				t.Fatalf("%+v listed twice", u)
			}
			seen[u] = true
		}
	})
}

func FuzzParseNeedsRestarting(f *testing.F) {
	seedCaptures(f, "dnf/needs-restarting*")
	f.Fuzz(func(t *testing.T, out []byte) {
		nr, err := ParseNeedsRestarting(out)
		if err != nil {
			return
		}
		if !nr.Reboot && len(nr.Packages) > 0 {
			t.Fatalf("packages without a reboot: %+v", nr)
		}
		for _, p := range nr.Packages {
			if !isToken(p) {
				t.Fatalf("bad package %q", p)
			}
		}
	})
}

func FuzzParseRPMInstalled(f *testing.F) {
	seedCaptures(f, "dnf/rpm-installed")
	f.Fuzz(func(t *testing.T, out []byte) {
		m, err := ParseRPMInstalled(out)
		if err != nil {
			return
		}
		if len(m) > lineCount(out) {
			t.Fatalf("%d packages from %d lines", len(m), lineCount(out))
		}
		for k, v := range m {
			if !isNameArch(k) || !isToken(v) {
				t.Fatalf("bad entry %q: %q", k, v)
			}
		}
	})
}

func FuzzParseDpkgKernels(f *testing.F) {
	seedCaptures(f, "apt/dpkg-query-kernels*")
	f.Fuzz(func(t *testing.T, out []byte) {
		ks, err := ParseDpkgKernels(out)
		if err != nil {
			return
		}
		checkKernels(t, out, ks)
		for _, k := range ks {
			if !strings.HasPrefix(k.Package, "linux-image-") || !strings.Contains(k.Package, k.Release) || !isToken(k.Version) {
				t.Fatalf("bad kernel %+v", k)
			}
		}
	})
}

func FuzzParseRPMKernels(f *testing.F) {
	seedCaptures(f, "dnf/rpm-kernel-core*")
	f.Fuzz(func(t *testing.T, out []byte) {
		ks, err := ParseRPMKernels(out)
		if err != nil {
			return
		}
		checkKernels(t, out, ks)
	})
}

func checkKernels(t *testing.T, out []byte, ks []Kernel) {
	t.Helper()
	if len(ks) > lineCount(out) {
		t.Fatalf("%d kernels from %d lines", len(ks), lineCount(out))
	}
	for _, k := range ks {
		if !isToken(k.Release) {
			t.Fatalf("bad release in %+v", k)
		}
	}
}

func FuzzParseRebootRequiredPkgs(f *testing.F) {
	f.Add([]byte("linux-image-6.1.0-15-amd64\nlibc6\nlibc6\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pkgs := ParseRebootRequiredPkgs(data)
		seen := map[string]bool{}
		for _, p := range pkgs {
			if p == "" || p != strings.TrimSpace(p) || seen[p] {
				t.Fatalf("bad or repeated %q in %q", p, pkgs)
			}
			seen[p] = true
		}
	})
}

// FuzzCompareDebianVersions checks that the order is an order: antisymmetric,
// reflexive, consistent with String, and that parsing never panics.
func FuzzCompareDebianVersions(f *testing.F) {
	for _, s := range [][2]string{{"1:2.0-1", "2.0~rc1"}, {"6.1.0-13-amd64", "6.1.0-9-amd64"}, {"1.0", "1.0-0"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ab, errA := CompareDebianVersions(a, b)
		ba, errB := CompareDebianVersions(b, a)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("error depends on the order: %v / %v", errA, errB)
		}
		if errA != nil {
			return
		}
		if ab != -ba || ab < -1 || ab > 1 {
			t.Fatalf("compare(%q, %q) = %d, reversed %d", a, b, ab, ba)
		}
		va, _ := ParseDebianVersion(a)
		if c, err := CompareDebianVersions(va.String(), a); err != nil || c != 0 {
			t.Fatalf("%q formats as %q, which compares %d, %v", a, va.String(), c, err)
		}
	})
}

func FuzzCompareRPMVersions(f *testing.F) {
	f.Add("1:6.2.0-1.fc39", "6.10.0-1")
	f.Add("1.0~rc1", "1.0")
	f.Fuzz(func(t *testing.T, a, b string) {
		ab, ba := CompareRPMVersions(a, b), CompareRPMVersions(b, a)
		if ab != -ba || ab < -1 || ab > 1 || CompareRPMVersions(a, a) != 0 {
			t.Fatalf("compare(%q, %q) = %d, reversed %d", a, b, ab, ba)
		}
	})
}
