package hooks

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// The fuzz targets feed every parser arbitrary input, seeded with the real
// captures, and check that it never panics, is deterministic, and that whatever it
// accepts is well formed; FormatDnfLine must round-trip what ParseDnfLines accepts.
//
//	go test -run XXX -fuzz FuzzParseAptHook -fuzztime 30s ./hooks/

func seed(f *testing.F, patterns ...string) {
	for _, p := range patterns {
		for _, name := range captureFiles(f, p) {
			f.Add(readCapture(f, name))
		}
	}
}

var actions = map[string]bool{ActionInstall: true, ActionUpgrade: true, ActionDowngrade: true,
	ActionReinstall: true, ActionUnpack: true, ActionConfigure: true, ActionRemove: true}

func checkPackages(t *testing.T, in []byte, pkgs []Package, knownActions bool) {
	t.Helper()
	if len(pkgs) > bytes.Count(in, []byte("\n"))+1 {
		t.Fatalf("%d packages from %d lines", len(pkgs), bytes.Count(in, []byte("\n"))+1)
	}
	for _, p := range pkgs {
		if !isToken(p.Name) || strings.Contains(p.Name, ":") || !isToken(p.Action) {
			t.Fatalf("bad name or action in %+v", p)
		}
		if knownActions && !actions[p.Action] {
			t.Fatalf("unknown action in %+v", p)
		}
		for _, s := range []string{p.Arch, p.OldVersion, p.NewVersion} {
			if s != "" && !isToken(s) {
				t.Fatalf("bad field %q in %+v", s, p)
			}
		}
		if p.Unpacks() && p.NewVersion == "" {
			t.Fatalf("unpacks without a new version: %+v", p)
		}
		if p.File != "" && !p.Unpacks() {
			t.Fatalf("a file on a step that does not unpack: %+v", p)
		}
	}
}

func FuzzParseAptHook(f *testing.F) {
	seed(f, "apt/*.stdin")
	f.Add([]byte("VERSION 2\nA%3d=%25\n\nhello - < 1.0 /x y.deb\nfoo 1 > - **REMOVE**\n"))
	f.Add([]byte("/var/cache/apt/archives/login_1%3a4.13_amd64.deb\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ParseAptHook(bytes.NewReader(in))
		h2, err2 := ParseAptHook(bytes.NewReader(in))
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(h, h2) {
			t.Fatal("not deterministic")
		}
		if err != nil {
			return
		}
		if h.Version < 1 || h.Version > 3 || (h.Version == 1 && len(h.Config) > 0) {
			t.Fatalf("version %d with %d configuration items", h.Version, len(h.Config))
		}
		checkPackages(t, in, h.Packages, false)
		_ = h.TargetRoot()
		_ = h.Frontend()
	})
}

func FuzzParseDnfLines(f *testing.F) {
	seed(f, "dnf/*.stdin")
	f.Add([]byte("e 3:1-1.noarch upgrade 2:1-1.noarch\nr 0:1-1.i686 remove\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		pkgs, err := ParseDnfLines(bytes.NewReader(in))
		pkgs2, err2 := ParseDnfLines(bytes.NewReader(in))
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(pkgs, pkgs2) {
			t.Fatal("not deterministic")
		}
		if err != nil {
			return
		}
		checkPackages(t, in, pkgs, true)
		for _, p := range pkgs {
			if p.File != "" || p.Arch == "" {
				t.Fatalf("%+v", p)
			}
			line := FormatDnfLine(p)
			back, err := ParseDnfLines(strings.NewReader(line))
			if err != nil || len(back) != 1 || back[0] != p {
				t.Fatalf("FormatDnfLine(%+v) = %q parses as %+v, %v", p, line, back, err)
			}
		}
	})
}

func FuzzParseDpkgStatus(f *testing.F) {
	seed(f, "apt/*.status")
	f.Fuzz(func(t *testing.T, in []byte) {
		states, err := ParseDpkgStatus(bytes.NewReader(in))
		states2, err2 := ParseDpkgStatus(bytes.NewReader(in))
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(states, states2) {
			t.Fatal("not deterministic")
		}
		for _, s := range states {
			if !isToken(s.Name) || s.Want == "" || s.Flag == "" || s.Status == "" {
				t.Fatalf("%+v", s)
			}
		}
		_, _ = aptOutcome(states, "")
	})
}
