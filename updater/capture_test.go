package updater

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// capture is one run of a real tool, kept by testdata/capture.sh as NAME.out, NAME.err
// and NAME.rc.
type capture struct {
	out, err []byte
	rc       int
}

func loadCaptureFrom(t testing.TB, dir, name string) capture {
	t.Helper()
	read := func(ext string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name+ext))
		if err != nil {
			t.Fatalf("capture %s: %v (regenerate with updater/testdata/capture.sh)", name, err)
		}
		return b
	}
	rc, err := strconv.Atoi(strings.TrimSpace(string(read(".rc"))))
	if err != nil {
		t.Fatalf("capture %s: exit code: %v", name, err)
	}
	return capture{out: read(".out"), err: read(".err"), rc: rc}
}

func loadCapture(t testing.TB, name string) capture {
	return loadCaptureFrom(t, "testdata", name)
}

func (c capture) result() Result {
	return Result{Stdout: c.out, Stderr: c.err, ExitCode: c.rc}
}

// captureNames lists the captures of a parser, for fuzz seeds.
func captureNames(t testing.TB, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", pattern+".out"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captures match %s: %v", pattern, err)
	}
	var names []string
	for _, f := range files {
		rel, _ := filepath.Rel("testdata", f)
		names = append(names, strings.TrimSuffix(rel, ".out"))
	}
	return names
}
