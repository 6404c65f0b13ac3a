package hooks

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParseDpkgStatusCaptures(t *testing.T) {
	ok, err := ParseDpkgStatus(bytes.NewReader(readCapture(t, "apt/dpkg-installed.status")))
	if err != nil {
		t.Fatal(err)
	}
	// After the dist-upgrade: the two kernels, the metapackage, hello, login,
	// libdummy1 for two arches, and oldtool gone.
	if len(ok) != 7 {
		t.Errorf("%d entries, want 7: %v", len(ok), ok)
	}
	if u := Unsettled(ok); len(u) != 0 {
		t.Errorf("Unsettled after a good run = %v", u)
	}
	for _, s := range ok {
		if s.Name == "libdummy1" && s.Arch == "i386" && (s.Version != "1.1-1" || s.Status != "installed") {
			t.Errorf("libdummy1:i386 = %v", s)
		}
	}

	failed, err := ParseDpkgStatus(bytes.NewReader(readCapture(t, "apt/dpkg-failed.status")))
	if err != nil {
		t.Fatal(err)
	}
	u := Unsettled(failed)
	if len(u) != 1 || u[0] != (DpkgState{Name: "failing", Arch: "amd64", Version: "1.0-1", Want: "install", Flag: "ok", Status: "half-configured"}) {
		t.Errorf("Unsettled after the failed postinst = %v", u)
	}
}

func TestDpkgSettled(t *testing.T) {
	for status, want := range map[string]bool{
		"install ok installed":             true,
		"deinstall ok config-files":        true,
		"purge ok not-installed":           true,
		"hold ok installed":                true,
		"install ok half-configured":       false,
		"install ok unpacked":              false,
		"install ok half-installed":        false,
		"install ok triggers-pending":      false,
		"install ok triggers-awaited":      false,
		"install reinstreq installed":      false,
		"install reinstreq half-installed": false,
	} {
		f := strings.Fields(status)
		if got := (DpkgState{Want: f[0], Flag: f[1], Status: f[2]}).Settled(); got != want {
			t.Errorf("Settled(%s) = %v", status, got)
		}
	}
}

func TestParseDpkgStatusErrors(t *testing.T) {
	for _, in := range []string{
		"Status: install ok installed\n",               // no Package
		"Package: a\nVersion: 1\n",                     // no Status
		"Package: a\nStatus: install ok\n",             // two words
		"Package: a b\nStatus: install ok installed\n", // a blank in the name
		"Package: a\nStatus: install ok installed\nnocolon\n",
	} {
		if _, err := ParseDpkgStatus(strings.NewReader(in)); !errors.Is(err, ErrUnparsable) {
			t.Errorf("ParseDpkgStatus(%q) = %v, want ErrUnparsable", in, err)
		}
	}
	got, err := ParseDpkgStatus(strings.NewReader("\n\nPackage: a\nDescription: x\n more\n .\nStatus: install ok installed\n\n\n"))
	if err != nil || len(got) != 1 || got[0].Name != "a" {
		t.Errorf("continuations and blank lines: %v, %v", got, err)
	}
}

func TestAptOutcome(t *testing.T) {
	failed, err := ParseDpkgStatus(bytes.NewReader(readCapture(t, "apt/dpkg-failed.status")))
	if err != nil {
		t.Fatal(err)
	}
	// An ordinary package's failed postinst does not stop the reboot.
	if ok, detail := aptOutcome(failed, ""); !ok || detail != "dpkg left packages unfinished: failing half-configured" {
		t.Errorf("aptOutcome(failing) = %v, %q", ok, detail)
	}
	// A kernel's does: the agent must not boot into it.
	kernel := append(failed, DpkgState{Name: "linux-image-6.99.0-2-amd64", Want: "install", Flag: "ok", Status: "half-configured"})
	if ok, detail := aptOutcome(kernel, ""); ok || !strings.Contains(detail, "linux-image-6.99.0-2-amd64 half-configured") {
		t.Errorf("aptOutcome(kernel) = %v, %q", ok, detail)
	}
	if ok, detail := aptOutcome(nil, "could not read"); !ok || detail != "could not read" {
		t.Errorf("aptOutcome(nil) = %v, %q", ok, detail)
	}
}
