package pods

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCriu writes a shell script standing in for the criu binary.
func fakeCriu(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProbeCriu(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name, script, wantErr string
	}{
		{"missing binary", "", "does not run"},
		{"too old", `echo "Version: 3.17.1"`, "too old"},
		{"check fails", `[ "$1" = --version ] && { echo "Version: 4.2.1"; exit 0; }
echo "(00.01) Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds" >&2; exit 1`, "Unexpected rt vDSO"},
		{"good", `[ "$1" = --version ] && { echo "Version: 4.2.1"; exit 0; }
[ "$1" = check ] && [ "$3" = mem_dirty_track ] && exit 1
exit 0`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := "/nonexistent/criu"
			if c.script != "" {
				path = fakeCriu(t, c.script)
			}
			info := ProbeCriu(ctx, path)
			if c.wantErr == "" {
				if info.Error != "" || info.Version != "4.2.1" || info.Features["mem_dirty_track"] || !info.Features["uffd-noncoop"] {
					t.Fatalf("%+v", info)
				}
				return
			}
			if !strings.Contains(info.Error, c.wantErr) {
				t.Fatalf("error %q, want it to mention %q", info.Error, c.wantErr)
			}
		})
	}
}
