package updater

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPathUnitWatchesDefaultPaths keeps units/autopod-updates.path and
// DefaultWatchPaths in step: the unit starts the agent on the changes that the running
// agent watches itself.
func TestPathUnitWatchesDefaultPaths(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "units", "autopod-updates.path"))
	if err != nil {
		t.Fatal(err)
	}
	var watched []string
	unit := ""
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "PathChanged="); ok {
			watched = append(watched, strings.TrimSuffix(v, "/"))
		}
		if v, ok := strings.CutPrefix(l, "Unit="); ok {
			unit = v
		}
	}
	// The package databases are left out: every install rewrites them, and
	// the unit would start the agent for each package operation (the apt
	// hook and the dnf plugin tell the agent about installs).
	want := slices.DeleteFunc(append(DefaultWatchPaths(Apt), DefaultWatchPaths(Dnf)...), func(p string) bool {
		return p == "/var/lib/dpkg/status" || p == "/var/lib/rpm"
	})
	slices.Sort(want)
	want = slices.Compact(want)
	slices.Sort(watched)
	if !slices.Equal(watched, want) {
		t.Errorf("autopod-updates.path watches %q; DefaultWatchPaths are %q", watched, want)
	}
	if unit != "autopod.service" {
		t.Errorf("Unit=%q, want autopod.service", unit)
	}
}
