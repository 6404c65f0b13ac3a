package hooks

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The captures in testdata/ are what real apt and dnf gave the hooks autopod ships
// (testdata/capture.sh regenerates them; testdata/versions.txt says which tools).

func readCapture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("capture %s: %v (regenerate with hooks/testdata/capture.sh)", name, err)
	}
	return b
}

// captureFiles lists testdata files matching pattern (relative to testdata).
func captureFiles(t testing.TB, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", pattern))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captures match %s: %v", pattern, err)
	}
	var names []string
	for _, f := range files {
		rel, _ := filepath.Rel("testdata", f)
		names = append(names, rel)
	}
	return names
}

func lines(b []byte) []string {
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}
