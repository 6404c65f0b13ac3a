package hooks

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/autopod/autopod/updater"
)

func parseDnfCapture(t *testing.T, name string) []Package {
	t.Helper()
	pkgs, err := ParseDnfLines(bytes.NewReader(readCapture(t, name)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return pkgs
}

func TestParseDnfLinesCaptures(t *testing.T) {
	for _, tc := range []struct {
		name string
		want []Package
	}{
		{"dnf/install.stdin", []Package{
			{Name: "epochpkg", Arch: "noarch", NewVersion: "2:1.0-1", Action: ActionInstall},
			{Name: "hello", Arch: "noarch", NewVersion: "1.0-1", Action: ActionInstall},
			{Name: "kernel", Arch: "x86_64", NewVersion: "6.0.0-1", Action: ActionInstall},
			{Name: "kernel-core", Arch: "x86_64", NewVersion: "6.0.0-1", Action: ActionInstall},
			{Name: "oldtool", Arch: "noarch", NewVersion: "1.0-1", Action: ActionInstall},
			{Name: "systemd", Arch: "x86_64", NewVersion: "253-1", Action: ActionInstall},
		}},
		{"dnf/install-kernel.stdin", []Package{
			{Name: "kernel", Arch: "x86_64", NewVersion: "6.1.0-1", Action: ActionInstall},
			{Name: "kernel-core", Arch: "x86_64", NewVersion: "6.1.0-1", Action: ActionInstall},
		}},
		// kernel-core is install-only: a new one is an install, and
		// installonly_limit=2 removes the oldest; newtool obsoletes oldtool.
		{"dnf/upgrade.stdin", []Package{
			{Name: "kernel", Arch: "x86_64", NewVersion: "6.2.0-1", Action: ActionInstall},
			{Name: "kernel-core", Arch: "x86_64", NewVersion: "6.2.0-1", Action: ActionInstall},
			{Name: "newtool", Arch: "noarch", NewVersion: "2.0-1", Action: ActionInstall},
			{Name: "oldtool", Arch: "noarch", OldVersion: "1.0-1", Action: ActionRemove},
			{Name: "epochpkg", Arch: "noarch", OldVersion: "2:1.0-1", NewVersion: "2:1.0-2", Action: ActionUpgrade},
			{Name: "hello", Arch: "noarch", OldVersion: "1.0-1", NewVersion: "1.1-1", Action: ActionUpgrade},
			{Name: "systemd", Arch: "x86_64", OldVersion: "253-1", NewVersion: "253-2", Action: ActionUpgrade},
			{Name: "kernel", Arch: "x86_64", OldVersion: "6.0.0-1", Action: ActionRemove},
			{Name: "kernel-core", Arch: "x86_64", OldVersion: "6.0.0-1", Action: ActionRemove},
		}},
		{"dnf/downgrade.stdin", []Package{{Name: "hello", Arch: "noarch", OldVersion: "1.1-1", NewVersion: "1.0-1", Action: ActionDowngrade}}},
		{"dnf/reinstall.stdin", []Package{{Name: "hello", Arch: "noarch", OldVersion: "1.0-1", NewVersion: "1.0-1", Action: ActionReinstall}}},
		{"dnf/remove.stdin", []Package{{Name: "newtool", Arch: "noarch", OldVersion: "2.0-1", Action: ActionRemove}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseDnfCapture(t, tc.name); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("\n got %v\nwant %v", got, tc.want)
			}
		})
	}
	var ks []string
	for _, p := range Kernels(updater.Dnf, parseDnfCapture(t, "dnf/upgrade.stdin")) {
		ks = append(ks, p.Name)
	}
	if !reflect.DeepEqual(ks, []string{"kernel", "kernel-core"}) {
		t.Errorf("Kernels of the upgrade = %q (the removed old kernel is not one)", ks)
	}
}

// TestFormatDnfLineMatchesPlugin: FormatDnfLine writes every line the plugin
// wrote, byte for byte: the two ends of the protocol agree.
func TestFormatDnfLineMatchesPlugin(t *testing.T) {
	for _, name := range captureFiles(t, "dnf/*.stdin") {
		raw := readCapture(t, name)
		var b strings.Builder
		for _, p := range parseDnfCapture(t, name) {
			b.WriteString(FormatDnfLine(p) + "\n")
		}
		if b.String() != string(raw) {
			t.Errorf("%s: FormatDnfLine gives\n%s\nthe plugin wrote\n%s", name, b.String(), raw)
		}
	}
}

func TestFormatDnfLine(t *testing.T) {
	for _, tc := range []struct {
		p    Package
		want string
	}{
		{Package{Name: "kernel-core", Arch: "x86_64", NewVersion: "6.2.0-1.fc40", Action: ActionInstall}, "kernel-core 0:6.2.0-1.fc40.x86_64 install"},
		{Package{Name: "e", Arch: "noarch", OldVersion: "2:1-1", NewVersion: "3:1-1", Action: ActionUpgrade}, "e 3:1-1.noarch upgrade 2:1-1.noarch"},
		{Package{Name: "e", Arch: "noarch", NewVersion: "1-1", Action: ActionUpgrade}, "e 0:1-1.noarch upgrade"},
		{Package{Name: "r", Arch: "i686", OldVersion: "0:1-1", Action: ActionRemove}, "r 0:1-1.i686 remove"},
	} {
		got := FormatDnfLine(tc.p)
		if got != tc.want {
			t.Errorf("FormatDnfLine(%+v) = %q, want %q", tc.p, got, tc.want)
		}
		back, err := ParseDnfLines(strings.NewReader(got))
		if err != nil || len(back) != 1 {
			t.Fatalf("ParseDnfLines(%q) = %v, %v", got, back, err)
		}
		want := tc.p
		want.OldVersion = strings.TrimPrefix(want.OldVersion, "0:")
		if back[0] != want {
			t.Errorf("round trip of %+v gives %+v", tc.p, back[0])
		}
	}
}

func TestParseDnfLinesErrors(t *testing.T) {
	for _, line := range []string{
		"kernel-core",
		"kernel-core 6.2.0-1.x86_64 install",                // no epoch
		"kernel-core 0:6.2.0-1 install",                     // no arch
		"kernel-core 0:6.2.0.x86_64 install",                // no release
		"kernel-core 0:-1.x86_64 install",                   // no version
		"kernel-core 0:6.2.0-.x86_64 install",               // empty release
		"kernel-core 0:6.2.0-1-2.x86_64 install",            // "-" in the release
		"kernel-core 0:6.2.0-1.x86_64 update",               // unknown action
		"kernel-core 0:6.2.0-1.x86_64 install 0:1-1.x86_64", // install replaces nothing
		"kernel-core 0:6.2.0-1.x86_64 remove 0:1-1.x86_64",
		"kernel-core 0:6.2.0-1.x86_64 upgrade 6.1-1.x86_64",
		"kernel-core 0:6.2.0-1.x86_64 upgrade 0:6.1-1.x86_64 extra",
		"kernel-core  0:6.2.0-1.x86_64 install",
		"kernel-core\t0:6.2.0-1.x86_64 install",
		"a 1x:1-1.noarch install",
		"a 12345678901:1-1.noarch install",
		"a 0:1-1.no:arch install",
		"a 0:1-1. install",
		" 0:1-1.noarch install",
	} {
		if pkgs, err := ParseDnfLines(strings.NewReader(line + "\n")); !errors.Is(err, ErrUnparsable) {
			t.Errorf("ParseDnfLines(%q) = %v, %v; want ErrUnparsable", line, pkgs, err)
		}
	}
	if _, err := ParseDnfLines(strings.NewReader(strings.Repeat("x", MaxDnfLine+1))); !errors.Is(err, ErrUnparsable) {
		t.Errorf("a line over MaxDnfLine: %v", err)
	}
	if pkgs, err := ParseDnfLines(strings.NewReader("\n\na 0:1-1.noarch install")); err != nil || len(pkgs) != 1 {
		t.Errorf("blank lines and no final newline: %v, %v", pkgs, err)
	}
}
