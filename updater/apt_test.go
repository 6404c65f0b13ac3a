package updater

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// The private universe of capture.sh: an old kernel ABI with its metapackage, boot
// critical packages and ordinary ones; the repository has a new ABI and conflicts
// oldtool away.
var aptUniverseUpdates = []Update{
	{"oldtool", "", "1.0-1", "", ClassOther},
	{"grub-efi-amd64-bin", "amd64", "2.06-13", "2.06-13+deb12u1", ClassBootCritical},
	{"hello", "all", "1.0-1", "2.0-1", ClassOther},
	{"intel-microcode", "amd64", "3.20230808.1~deb12u1", "3.20240312.1~deb12u1", ClassBootCritical},
	{"libc6", "amd64", "2.36-9", "2.36-9+deb12u1", ClassBootCritical},
	{"linux-headers-6.99.0-2-amd64", "amd64", "", "6.99.2-1", ClassOther},
	{"linux-headers-amd64", "amd64", "6.99.1-1", "6.99.2-1", ClassOther},
	{"linux-image-6.99.0-2-amd64", "amd64", "", "6.99.2-1", ClassKernel},
	{"linux-image-amd64", "amd64", "6.99.1-1", "6.99.2-1", ClassKernel},
	{"linux-libc-dev", "amd64", "6.99.1-1", "6.99.2-1", ClassOther},
	{"login", "amd64", "1:4.13+dfsg1-1", "1:4.13+dfsg1-1+deb12u1", ClassOther},
	{"systemd", "amd64", "252.1-1", "252.2-1", ClassBootCritical},
}

func TestParseAptSimulateCaptured(t *testing.T) {
	c := loadCapture(t, "apt/simulate-dist-upgrade")
	got, err := ParseAptSimulate(c.out)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, aptUniverseUpdates) {
		t.Errorf("ParseAptSimulate:\n got %v\nwant %v", got, aptUniverseUpdates)
	}

	none, err := ParseAptSimulate(loadCapture(t, "apt/simulate-none").out)
	if err != nil || len(none) != 0 {
		t.Errorf("nothing to do: got %v, %v", none, err)
	}
}

// TestParseAptSimulateHost reads this development host's own pending upgrade, 119
// packages from Debian's archive and security archive, with apt's dependency notes
// after some Inst lines.
func TestParseAptSimulateHost(t *testing.T) {
	c := loadCapture(t, "apt/host-simulate-dist-upgrade")
	got, err := ParseAptSimulate(c.out)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(c.out), "\nInst "); len(got) != n || n == 0 {
		t.Errorf("%d updates from %d Inst lines", len(got), n)
	}
	byName := map[string]Update{}
	for _, u := range got {
		if u.Name == "" || u.Arch == "" || u.From == "" || u.To == "" {
			t.Errorf("incomplete update %+v", u)
		}
		byName[u.Name] = u
	}
	for _, want := range []Update{
		// followed by "[libpam-modules:amd64 on libpam-modules-bin:amd64] [libpam-modules:amd64 ]"
		{"libpam-modules-bin", "amd64", "1.5.2-6+deb12u1", "1.5.2-6+deb12u3", ClassOther},
		{"ca-certificates", "all", "20230311+deb12u1", "20250419~deb12u2", ClassOther},
		{"login", "amd64", "1:4.13+dfsg1-1+deb12u1", "1:4.13+dfsg1-1+deb12u2", ClassOther},
		{"linux-libc-dev", "amd64", "", "", ClassOther}, // kernel headers for userspace: no reboot
		{"linux-perf", "amd64", "", "", ClassOther},
	} {
		u, ok := byName[want.Name]
		if want.From == "" {
			u.From, u.To = "", ""
		}
		if !ok || u != want {
			t.Errorf("%s: got %+v, want %+v", want.Name, u, want)
		}
	}
}

// TestAptListAgreesWithSimulate checks the two apt parsers against each other: every
// upgrade that apt list --upgradable shows is an Inst line of the simulation, with the
// same versions and architecture.
func TestAptListAgreesWithSimulate(t *testing.T) {
	for _, pair := range [][2]string{
		{"apt/list-upgradable", "apt/simulate-dist-upgrade"},
		{"apt/host-list-upgradable", "apt/host-simulate-dist-upgrade"},
		{"apt/list-upgradable-none", "apt/simulate-none"},
	} {
		list, err := ParseAptListUpgradable(loadCapture(t, pair[0]).out)
		if err != nil {
			t.Fatalf("%s: %v", pair[0], err)
		}
		sim, err := ParseAptSimulate(loadCapture(t, pair[1]).out)
		if err != nil {
			t.Fatalf("%s: %v", pair[1], err)
		}
		upgrades := map[string]Update{}
		for _, u := range sim {
			if u.From != "" && u.To != "" {
				upgrades[u.Name] = u
			}
		}
		if len(list) != len(upgrades) {
			t.Errorf("%s lists %d upgrades, %s has %d", pair[0], len(list), pair[1], len(upgrades))
		}
		for _, u := range list {
			if upgrades[u.Name] != u {
				t.Errorf("%s: %+v, simulation says %+v", pair[0], u, upgrades[u.Name])
			}
		}
	}
}

func TestParseAptSimulateLines(t *testing.T) {
	tests := []struct {
		line string
		want Update
	}{
		{"Inst linux-image-amd64 [6.1.1] (6.1.2 Debian:12.x/stable [amd64])",
			Update{"linux-image-amd64", "amd64", "6.1.1", "6.1.2", ClassKernel}},
		{"Inst libc6:i386 [2.36-9] (2.36-9+deb12u1 Debian:12.5/stable, Debian-Security:12/stable-security [i386])",
			Update{"libc6", "i386", "2.36-9", "2.36-9+deb12u1", ClassBootCritical}},
		{"Inst linux-modules-6.5.0-14-generic (6.5.0-14.14 Ubuntu:23.10/mantic-updates [amd64]) []",
			Update{"linux-modules-6.5.0-14-generic", "amd64", "", "6.5.0-14.14", ClassKernel}},
		{"Inst foo (1.0 local-deb [amd64])", Update{"foo", "amd64", "", "1.0", ClassOther}},
		{"Remv linux-image-6.1.0-9-amd64 [6.1.27-1]", Update{"linux-image-6.1.0-9-amd64", "", "6.1.27-1", "", ClassKernel}},
		{"Purg firmware-misc-nonfree [20230210-5]", Update{"firmware-misc-nonfree", "", "20230210-5", "", ClassBootCritical}},
		{"Remv dbus:amd64 [1.14.10-1~deb12u1] [systemd:amd64 ]", Update{"dbus", "amd64", "1.14.10-1~deb12u1", "", ClassBootCritical}},
	}
	for _, tt := range tests {
		got, err := ParseAptSimulate([]byte("Reading package lists...\n" + tt.line + "\nConf x (1 y [amd64])\n"))
		if err != nil || len(got) != 1 || got[0] != tt.want {
			t.Errorf("%q: got %+v, %v; want %+v", tt.line, got, err, tt.want)
		}
	}
	for _, bad := range []string{
		"Inst",
		"Inst foo",
		"Inst foo [1.0]",
		"Inst foo [1.0] 2.0 stable [amd64]",
		"Inst foo [1.0] (2.0)",
		"Inst foo [1.0] (2.0 stable amd64)",
		"Inst foo [] (2.0 stable [amd64])",
		"Remv foo",
		"Remv foo [1.0",
	} {
		if got, err := ParseAptSimulate([]byte(bad + "\n")); !errors.Is(err, ErrUnparsable) {
			t.Errorf("%q: got %+v, %v; want ErrUnparsable", bad, got, err)
		}
	}
}

func TestParseAptListUpgradableLines(t *testing.T) {
	got, err := ParseAptListUpgradable([]byte("Listing... Done\n" +
		"linux-image-amd64/stable,stable-security 6.1.2 amd64 [upgradable from: 6.1.1]\r\n" +
		"\n" +
		"N: There is 1 additional version. Please use the '-a' switch to see it\n" +
		"intel-microcode/stable 3.20240312.1~deb12u1 amd64 [upgradable from: 3.20230808.1~deb12u1]\n"))
	want := []Update{
		{"linux-image-amd64", "amd64", "6.1.1", "6.1.2", ClassKernel},
		{"intel-microcode", "amd64", "3.20230808.1~deb12u1", "3.20240312.1~deb12u1", ClassBootCritical},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []string{
		"foo 1.0 amd64 [upgradable from: 0.9]",
		"foo/stable 1.0 [upgradable from: 0.9]",
		"foo/stable 1.0 amd64 [upgradable from: 0.9",
		"foo/stable 1.0 amd64 [upgradable from: ]",
		"foo/stable 1.0 amd64 [installed,upgradable to: 1.1]",
	} {
		if got, err := ParseAptListUpgradable([]byte(bad)); !errors.Is(err, ErrUnparsable) {
			t.Errorf("%q: got %+v, %v; want ErrUnparsable", bad, got, err)
		}
	}
}
