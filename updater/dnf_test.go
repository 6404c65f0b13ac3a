package updater

import (
	"errors"
	"reflect"
	"testing"
)

const longRPMName = "autopod-a-package-whose-name-is-so-long-that-dnf-wraps-its-check-update-line"

// What check-update lists in capture.sh's installroot: new versions only (From comes
// from rpm), newtool obsoleting the installed oldtool.
var dnfUniverseUpdates = []Update{
	{longRPMName, "x86_64", "", "1.1-1", ClassOther},
	{"epochpkg", "noarch", "", "2:1.0-2", ClassOther},
	{"glibc", "x86_64", "", "2.37-2", ClassBootCritical},
	{"hello", "noarch", "", "1.1-1", ClassOther},
	{"kernel", "x86_64", "", "6.2.0-1", ClassKernel},
	{"kernel-core", "x86_64", "", "6.2.0-1", ClassKernel},
	{"systemd", "x86_64", "", "253-2", ClassBootCritical},
	{"newtool", "noarch", "", "2.0-1", ClassOther},
	{"oldtool", "noarch", "1.0-1", "", ClassOther},
}

// TestParseDnfCheckUpdateCaptured reads the same pending updates as dnf printed them
// after a refresh (download progress first), from the cache only (-C), from fresh
// cached metadata ("Last metadata expiration check"), and on an 80-column terminal
// (the long name wrapped onto two lines, CRLF line ends).
func TestParseDnfCheckUpdateCaptured(t *testing.T) {
	for _, name := range []string{"dnf/check-update", "dnf/check-update-cacheonly", "dnf/check-update-cached", "dnf/check-update-tty"} {
		c := loadCapture(t, name)
		if c.rc != 100 {
			t.Errorf("%s: captured exit code %d, want 100", name, c.rc)
		}
		got, err := ParseDnfCheckUpdate(c.out)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(got, dnfUniverseUpdates) {
			t.Errorf("%s:\n got %v\nwant %v", name, got, dnfUniverseUpdates)
		}
	}
	for _, name := range []string{"dnf/check-update-none", "dnf/check-update-error"} {
		got, err := ParseDnfCheckUpdate(loadCapture(t, name).out)
		if err != nil || len(got) != 0 {
			t.Errorf("%s: got %v, %v; want nothing", name, got, err)
		}
	}
}

func TestParseDnfCheckUpdateLines(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want []Update
	}{
		{"obsoleter listed twice", "\nnew.noarch 2-1 updates\nObsoleting Packages\nnew.noarch 2-1 updates\n    old.noarch 1-1 @System\n",
			[]Update{{"new", "noarch", "", "2-1", ClassOther}, {"old", "noarch", "1-1", "", ClassOther}}},
		{"obsoleter wrapped", "Obsoleting Packages\nkernel-uki-virt-a-long-name.x86_64\n      6.2.0-1 updates\n    old.noarch 1-1 @System\n",
			[]Update{{"kernel-uki-virt-a-long-name", "x86_64", "", "6.2.0-1", ClassKernel}, {"old", "noarch", "1-1", "", ClassOther}}},
		{"obsoleted wrapped", "Obsoleting Packages\nnew.noarch 2-1 updates\n    an-old-package-with-a-long-name.noarch\n         1-1 @System\n",
			[]Update{{"new", "noarch", "", "2-1", ClassOther}, {"an-old-package-with-a-long-name", "noarch", "1-1", "", ClassOther}}},
		{"dots in name", "python3.11-libs.x86_64 3.11.2-1.fc38 updates\n",
			[]Update{{"python3.11-libs", "x86_64", "", "3.11.2-1.fc38", ClassOther}}},
		{"progress and metadata", "Fedora 39 - x86_64 - Updates   2.1 MB/s |  12 MB     00:05\nLast metadata expiration check: 0:00:03 ago on Mon 30 Nov 2026 05:42:21 AM UTC.\n\nkernel-core.x86_64 6.6.2-201.fc39 updates\n",
			[]Update{{"kernel-core", "x86_64", "", "6.6.2-201.fc39", ClassKernel}}},
	}
	for _, tt := range tests {
		got, err := ParseDnfCheckUpdate([]byte(tt.out))
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
	for _, bad := range []string{
		"kernel-core.x86_64 6.2.0-1\n",
		"kernel-core 6.2.0-1 updates\n",
		"kernel-core.x86_64 6.2.0-1 updates extra\n",
		"a-wrapped-name.x86_64\n",                     // the rest never came
		"a-wrapped-name.x86_64\n  6.2.0-1\n",          // half of it
		"a-wrapped-name.x86_64\nnext.x86_64 1 r\n",    // not a continuation
		"Error: Failed to download metadata for repo", // not a package line
	} {
		if got, err := ParseDnfCheckUpdate([]byte(bad)); !errors.Is(err, ErrUnparsable) {
			t.Errorf("%q: got %+v, %v; want ErrUnparsable", bad, got, err)
		}
	}
}

func TestParseNeedsRestarting(t *testing.T) {
	c := loadCapture(t, "dnf/needs-restarting-reboot")
	got, err := ParseNeedsRestarting(c.out)
	want := NeedsRestarting{Reboot: true, Packages: []string{"glibc", "kernel", "linux-firmware", "systemd"}}
	if err != nil || !reflect.DeepEqual(got, want) || c.rc != 1 {
		t.Errorf("reboot: got %+v, %v (exit %d); want %+v (exit 1)", got, err, c.rc, want)
	}
	c = loadCapture(t, "dnf/needs-restarting-none")
	got, err = ParseNeedsRestarting(c.out)
	if err != nil || got.Reboot || len(got.Packages) != 0 || c.rc != 0 {
		t.Errorf("none: got %+v, %v (exit %d)", got, err, c.rc)
	}
	for _, bad := range []string{
		"",
		"Error: No such command: needs-restarting. Please use /usr/bin/dnf --help\n",
		"Core libraries or services have been updated since boot-up:\n  * kernel\n", // cut short
		"No core libraries or services have been updated since boot-up.\nReboot is required to fully utilize these updates.\n",
		"Core libraries or services have been updated since boot-up:\n  * two words\n\nReboot is required to fully utilize these updates.\n",
	} {
		if got, err := ParseNeedsRestarting([]byte(bad)); !errors.Is(err, ErrUnparsable) {
			t.Errorf("%q: got %+v, %v; want ErrUnparsable", bad, got, err)
		}
	}
}

func TestParseRPMInstalled(t *testing.T) {
	c := loadCapture(t, "dnf/rpm-installed")
	got, err := ParseRPMInstalled(c.out)
	want := map[string]string{
		"hello.noarch":          "1.0-1",
		longRPMName + ".x86_64": "1.0-1",
		"epochpkg.noarch":       "2:1.0-1",
		"kernel-core.x86_64":    "6.1.0-1",
		"kernel.x86_64":         "6.1.0-1",
		"systemd.x86_64":        "253-1",
		"glibc.x86_64":          "2.37-1",
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
	// Two kernels installed: the newest counts.
	got, err = ParseRPMInstalled([]byte("kernel-core x86_64 6.10.0-1\nkernel-core x86_64 6.9.0-1\n"))
	if err != nil || got["kernel-core.x86_64"] != "6.10.0-1" {
		t.Errorf("two kernels: got %v, %v", got, err)
	}
	if _, err := ParseRPMInstalled([]byte("error: rpmdb open failed\n")); !errors.Is(err, ErrUnparsable) {
		t.Errorf("garbage: err = %v", err)
	}
}
