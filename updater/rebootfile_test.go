package updater

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseRebootRequiredPkgs(t *testing.T) {
	got := ParseRebootRequiredPkgs([]byte("linux-image-6.1.0-15-amd64\nlibc6\n\nlinux-image-6.1.0-15-amd64\n  dbus \n"))
	want := []string{"linux-image-6.1.0-15-amd64", "libc6", "dbus"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := ParseRebootRequiredPkgs(nil); got != nil {
		t.Errorf("empty: got %q", got)
	}
}

func TestRebootRequiredReason(t *testing.T) {
	dir := t.TempDir()
	file, pkgs := filepath.Join(dir, "reboot-required"), filepath.Join(dir, "reboot-required.pkgs")

	if r, err := rebootRequiredReason(file, pkgs); r != nil || err != nil {
		t.Fatalf("no file: %+v, %v", r, err)
	}
	if err := os.WriteFile(file, []byte("*** System restart required ***\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := rebootRequiredReason(file, pkgs)
	if err != nil || r == nil || r.Kind != ReasonRebootRequiredFile || len(r.Packages) != 0 {
		t.Fatalf("file without .pkgs: %+v, %v", r, err)
	}
	if err := os.WriteFile(pkgs, []byte("libc6\nlinux-image-6.1.0-15-amd64\nlibc6\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err = rebootRequiredReason(file, pkgs)
	if err != nil || r == nil || !reflect.DeepEqual(r.Packages, []string{"libc6", "linux-image-6.1.0-15-amd64"}) {
		t.Fatalf("with .pkgs: %+v, %v", r, err)
	}
	if want := file + " exists (asked for by libc6, linux-image-6.1.0-15-amd64)"; r.Detail != want {
		t.Errorf("detail %q, want %q", r.Detail, want)
	}
	// A .pkgs that cannot be read is an error, not silence.
	if err := os.Remove(pkgs); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(pkgs, 0o755); err != nil {
		t.Fatal(err)
	}
	if r, err := rebootRequiredReason(file, pkgs); err == nil {
		t.Errorf("unreadable .pkgs: %+v, no error", r)
	}
}
