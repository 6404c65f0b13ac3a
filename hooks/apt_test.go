package hooks

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/autopod/autopod/updater"
)

const repo = "/tmp/capture/repo/./"

// The dist-upgrade of testdata/capture.sh, as version 3 reports it: oldtool goes
// (hello 2.0 conflicts with it), then every .deb is unpacked, then configured.
var distUpgradeV3 = []Package{
	{Name: "oldtool", Arch: "amd64", OldVersion: "1.0-1", Action: ActionRemove},
	{Name: "hello", Arch: "all", OldVersion: "1.0-1", NewVersion: "2.0-1", Action: ActionUpgrade, File: repo + "hello_2.0-1_all.deb"},
	{Name: "libdummy1", Arch: "i386", OldVersion: "1.0-1", NewVersion: "1.1-1", Action: ActionUpgrade, File: repo + "libdummy1_1.1-1_i386.deb"},
	{Name: "libdummy1", Arch: "amd64", OldVersion: "1.0-1", NewVersion: "1.1-1", Action: ActionUpgrade, File: repo + "libdummy1_1.1-1_amd64.deb"},
	{Name: "linux-image-6.99.0-2-amd64", Arch: "amd64", NewVersion: "6.99.2-1", Action: ActionInstall, File: repo + "linux-image-6.99.0-2-amd64_6.99.2-1_amd64.deb"},
	{Name: "linux-image-amd64", Arch: "amd64", OldVersion: "6.99.1-1", NewVersion: "6.99.2-1", Action: ActionUpgrade, File: repo + "linux-image-amd64_6.99.2-1_amd64.deb"},
	{Name: "login", Arch: "amd64", OldVersion: "1:4.13+dfsg1-1", NewVersion: "1:4.13+dfsg1-1+deb12u1", Action: ActionUpgrade, File: repo + "login_1:4.13+dfsg1-1+deb12u1_amd64.deb"},
	{Name: "hello", Arch: "all", OldVersion: "1.0-1", NewVersion: "2.0-1", Action: ActionConfigure},
	{Name: "libdummy1", Arch: "i386", OldVersion: "1.0-1", NewVersion: "1.1-1", Action: ActionConfigure},
	{Name: "libdummy1", Arch: "amd64", OldVersion: "1.0-1", NewVersion: "1.1-1", Action: ActionConfigure},
	{Name: "linux-image-6.99.0-2-amd64", Arch: "amd64", NewVersion: "6.99.2-1", Action: ActionConfigure},
	{Name: "linux-image-amd64", Arch: "amd64", OldVersion: "6.99.1-1", NewVersion: "6.99.2-1", Action: ActionConfigure},
	{Name: "login", Arch: "amd64", OldVersion: "1:4.13+dfsg1-1", NewVersion: "1:4.13+dfsg1-1+deb12u1", Action: ActionConfigure},
}

func noArch(pkgs []Package) []Package {
	out := append([]Package(nil), pkgs...)
	for i := range out {
		out[i].Arch = ""
	}
	return out
}

func parseAptCapture(t *testing.T, name string) *AptHook {
	t.Helper()
	h, err := ParseAptHook(bytes.NewReader(readCapture(t, name)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return h
}

func TestParseAptHookCaptures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
		want    []Package
	}{
		{"apt/v3-dist-upgrade.stdin", 3, distUpgradeV3},
		{"apt/v2-dist-upgrade.stdin", 2, noArch(distUpgradeV3)},
		{"apt/v1-dist-upgrade.stdin", 1, []Package{
			{Name: "hello", Arch: "all", NewVersion: "2.0-1", Action: ActionUnpack, File: repo + "hello_2.0-1_all.deb"},
			{Name: "libdummy1", Arch: "i386", NewVersion: "1.1-1", Action: ActionUnpack, File: repo + "libdummy1_1.1-1_i386.deb"},
			{Name: "libdummy1", Arch: "amd64", NewVersion: "1.1-1", Action: ActionUnpack, File: repo + "libdummy1_1.1-1_amd64.deb"},
			{Name: "linux-image-6.99.0-2-amd64", Arch: "amd64", NewVersion: "6.99.2-1", Action: ActionUnpack, File: repo + "linux-image-6.99.0-2-amd64_6.99.2-1_amd64.deb"},
			{Name: "linux-image-amd64", Arch: "amd64", NewVersion: "6.99.2-1", Action: ActionUnpack, File: repo + "linux-image-amd64_6.99.2-1_amd64.deb"},
			{Name: "login", Arch: "amd64", NewVersion: "1:4.13+dfsg1-1+deb12u1", Action: ActionUnpack, File: repo + "login_1:4.13+dfsg1-1+deb12u1_amd64.deb"},
		}},
		{"apt/v3-install.stdin", 3, []Package{
			{Name: "newpkg", Arch: "amd64", NewVersion: "1.0-1", Action: ActionInstall, File: repo + "newpkg_1.0-1_amd64.deb"},
			{Name: "newpkg", Arch: "amd64", NewVersion: "1.0-1", Action: ActionConfigure},
		}},
		{"apt/v3-reinstall.stdin", 3, []Package{
			{Name: "hello", Arch: "all", OldVersion: "2.0-1", NewVersion: "2.0-1", Action: ActionReinstall, File: repo + "hello_2.0-1_all.deb"},
			{Name: "hello", Arch: "all", OldVersion: "2.0-1", NewVersion: "2.0-1", Action: ActionConfigure},
		}},
		{"apt/v3-downgrade.stdin", 3, []Package{
			{Name: "hello", Arch: "all", OldVersion: "2.0-1", NewVersion: "1.0-1", Action: ActionDowngrade, File: repo + "hello_1.0-1_all.deb"},
			{Name: "hello", Arch: "all", OldVersion: "2.0-1", NewVersion: "1.0-1", Action: ActionConfigure},
		}},
		{"apt/v3-remove.stdin", 3, []Package{{Name: "hello", Arch: "all", OldVersion: "1.0-1", Action: ActionRemove}}},
		// apt announces a purge as a removal.
		{"apt/v3-purge.stdin", 3, []Package{{Name: "newpkg", Arch: "amd64", OldVersion: "1.0-1", Action: ActionRemove}}},
		// apt-get -f install after a failed postinst: only configuring is left.
		{"apt/v3-configure.stdin", 3, []Package{{Name: "failing", Arch: "amd64", OldVersion: "1.0-1", NewVersion: "1.0-1", Action: ActionConfigure}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := parseAptCapture(t, tc.name)
			if h.Version != tc.version {
				t.Errorf("Version = %d, want %d", h.Version, tc.version)
			}
			if !reflect.DeepEqual(h.Packages, tc.want) {
				t.Errorf("Packages:\n got %v\nwant %v", h.Packages, tc.want)
			}
			if tc.version >= 2 && len(h.Config) < 50 {
				t.Errorf("only %d configuration items", len(h.Config))
			}
		})
	}
}

func TestAptHookConfig(t *testing.T) {
	h := parseAptCapture(t, "apt/v3-dist-upgrade.stdin")
	// capture.sh passed -o 'Autopod::Test=a=b %c "d"': '=' stays in a value, the
	// blank and '%' arrive %-encoded.
	if v, ok := h.ConfigValue("autopod::test"); !ok || v != `a=b %c "d"` {
		t.Errorf(`ConfigValue(autopod::test) = %q, %v; want a=b %%c "d"`, v, ok)
	}
	if got, want := h.ConfigList("DPkg::Pre-Install-Pkgs"), []string{"/usr/bin/autopodctl hook apt-pre-install || [ ! -e /usr/bin/autopodctl ]"}; !reflect.DeepEqual(got, want) {
		t.Errorf("DPkg::Pre-Install-Pkgs = %q, want %q (99autopod as shipped)", got, want)
	}
	if v, _ := h.ConfigValue("DPkg::Tools::Options::/usr/bin/autopodctl::Version"); v != "3" {
		t.Errorf("Version option = %q, want 3", v)
	}
	if !strings.HasPrefix(h.CommandLine(), "apt-get -y -o ") || !strings.HasSuffix(h.CommandLine(), " dist-upgrade") {
		t.Errorf("CommandLine = %q", h.CommandLine())
	}
	if h.Frontend() != "apt-get" {
		t.Errorf("Frontend = %q, want apt-get", h.Frontend())
	}
	if h.TargetRoot() != "/tmp/capture/root" {
		t.Errorf("TargetRoot = %q, want the capture's dpkg --root", h.TargetRoot())
	}
	if _, ok := h.ConfigValue("No::Such::Key"); ok {
		t.Error("ConfigValue of a missing key says it is set")
	}
	if (&AptHook{}).Frontend() != "apt" || (&AptHook{}).TargetRoot() != "/" {
		t.Error("defaults of an empty hook input")
	}
	chroot := &AptHook{Config: []ConfigItem{{"DPkg::Chroot-Directory", "/mnt/img"}, {"DPkg::Options::", "--force-all"}}}
	if chroot.TargetRoot() != "/mnt/img" {
		t.Errorf("TargetRoot with DPkg::Chroot-Directory = %q", chroot.TargetRoot())
	}
	uu := &AptHook{Config: []ConfigItem{{"CommandLine::AsString", "/usr/bin/unattended-upgrade"}}}
	if uu.Frontend() != "unattended-upgrade" {
		t.Errorf("Frontend of unattended-upgrades = %q", uu.Frontend())
	}
}

func TestKernelsOfCaptures(t *testing.T) {
	for _, name := range []string{"apt/v1-dist-upgrade.stdin", "apt/v2-dist-upgrade.stdin", "apt/v3-dist-upgrade.stdin"} {
		h := parseAptCapture(t, name)
		var got []string
		for _, p := range Kernels(updater.Apt, h.Packages) {
			got = append(got, p.Name+" "+p.NewVersion)
		}
		want := []string{"linux-image-6.99.0-2-amd64 6.99.2-1", "linux-image-amd64 6.99.2-1"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: Kernels = %q, want %q", name, got, want)
		}
		// libdummy1 is unpacked for two arches: both are announced, except in
		// version 2, which does not tell them apart.
		want6 := 6
		if h.Version == 2 {
			want6 = 5
		}
		if n := len(Unpacking(h.Packages)); n != want6 {
			t.Errorf("%s: Unpacking has %d packages, want %d", name, n, want6)
		}
	}
	for _, name := range []string{"apt/v3-remove.stdin", "apt/v3-purge.stdin", "apt/v3-configure.stdin"} {
		if u := Unpacking(parseAptCapture(t, name).Packages); len(u) != 0 {
			t.Errorf("%s: Unpacking = %v, want none", name, u)
		}
	}
}

func TestParseAptHookErrors(t *testing.T) {
	const cfg = "VERSION 3\nA=b\n\n"
	for _, tc := range []struct{ name, in string }{
		{"version 4", "VERSION 4\n\n"},
		{"version word", "VERSION three\n"},
		{"no end of configuration", "VERSION 3\nA=b\n"},
		{"configuration without =", "VERSION 3\nAb\n\n"},
		{"configuration without key", "VERSION 3\n=b\n\n"},
		{"bad %", "VERSION 3\nA=b%2\n\n"},
		{"bad % hex", "VERSION 3\nA=b%zz\n\n"},
		{"few fields", cfg + "hello - - none < 1.0 all none\n"},
		{"v2 fields in v3", cfg + "hello - < 1.0 /x.deb\n"},
		{"direction", cfg + "hello - - none ? 1.0 all none /x.deb\n"},
		{"double blank", cfg + "hello  - none < 1.0 all none /x.deb\n"},
		{"arch without version", cfg + "hello - amd64 none < 1.0 all none /x.deb\n"},
		{"arch qualifier", cfg + "hello:i386 - - none < 1.0 i386 same /x.deb\n"},
		{"unpack without new version", cfg + "hello 1.0 all none > - - none /x.deb\n"},
		{"empty action", cfg + "hello 1.0 all none > - - none \n"},
		{"starred blank", cfg + "hello 1.0 all none > - - none ** **\n"},
		{"v1 not a deb", "/var/cache/apt/archives/hello.rpm\n"},
		{"v1 name", "/var/cache/apt/archives/hello_1.0.deb\n"},
		{"v1 blank name", "/x/_1.0_all.deb\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseAptHook(strings.NewReader(tc.in))
			if !errors.Is(err, ErrUnparsable) {
				t.Fatalf("ParseAptHook = %+v, %v; want ErrUnparsable", h, err)
			}
		})
	}
}

func TestParseAptHookEdges(t *testing.T) {
	// Empty input: apt version 1 with nothing to unpack.
	if h, err := ParseAptHook(strings.NewReader("")); err != nil || h.Version != 1 || len(h.Packages) != 0 {
		t.Errorf("empty: %+v, %v", h, err)
	}
	// No final newline; a local .deb whose path has blanks; an action a later apt
	// may add; the epoch's colon as apt's cache writes it (%3a) in version 1.
	in := "VERSION 3\nA%3d=%25\n\nhello - - none < 1.0 all none /tmp/my debs/hello_1.0_all.deb\nfoo 1 amd64 same = 1 amd64 same **TRIGGER**"
	h, err := ParseAptHook(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Package{
		{Name: "hello", Arch: "all", NewVersion: "1.0", Action: ActionInstall, File: "/tmp/my debs/hello_1.0_all.deb"},
		{Name: "foo", Arch: "amd64", OldVersion: "1", NewVersion: "1", Action: "trigger"},
	}
	if !reflect.DeepEqual(h.Packages, want) || !reflect.DeepEqual(h.Config, []ConfigItem{{"A=", "%"}}) {
		t.Errorf("got %+v %+v", h.Packages, h.Config)
	}
	if h.Packages[1].Unpacks() {
		t.Error("an unknown action counts as unpacking")
	}
	v1, err := ParseAptHook(strings.NewReader("/var/cache/apt/archives/login_1%3a4.13_amd64.deb\n\n"))
	if err != nil || len(v1.Packages) != 1 || v1.Packages[0].NewVersion != "1:4.13" {
		t.Errorf("v1 with %%3a: %+v, %v", v1, err)
	}
	long := "VERSION 3\nA=" + strings.Repeat("x", MaxAptHookLine+1) + "\n\n"
	if _, err := ParseAptHook(strings.NewReader(long)); !errors.Is(err, ErrUnparsable) {
		t.Errorf("a line over MaxAptHookLine: %v", err)
	}
}

func TestPackageString(t *testing.T) {
	for _, tc := range []struct {
		p    Package
		want string
	}{
		{distUpgradeV3[5], "linux-image-amd64:amd64 6.99.1-1 -> 6.99.2-1 (upgrade)"},
		{distUpgradeV3[4], "linux-image-6.99.0-2-amd64:amd64 6.99.2-1 (install)"},
		{distUpgradeV3[0], "oldtool:amd64 1.0-1 (remove)"},
		{Package{Name: "x", Action: ActionConfigure}, "x (configure)"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}
