package pods

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeImages(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestManifestRoundTrip(t *testing.T) {
	dir := writeImages(t, map[string]string{"pages-1.img": "abcdef", "core-1.img": "xyz"})
	m := &Manifest{Pod: Spec{Name: "web", Command: "/bin/true"}, Created: time.Unix(1, 0).UTC(),
		Kernel: "6.18", CriuVersion: "4.2.1", InitHash: "0123"}
	if err := WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	if m.TotalBytes != 9 || len(m.Files) != 2 || m.Files[0].Name != "core-1.img" {
		t.Fatalf("manifest: %+v", m)
	}
	got, err := VerifyImages(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Pod.Name != "web" || got.CriuVersion != "4.2.1" || got.InitHash != "0123" || got.TotalBytes != 9 {
		t.Fatalf("read back: %+v", got)
	}
	// No temporary files are left beside the manifest.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Fatalf("dir holds %d entries", len(ents))
	}
}

func TestVerifyImagesRejects(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(dir string)
		want   string
	}{
		{"changed byte", func(d string) { os.WriteFile(filepath.Join(d, "pages-1.img"), []byte("abcdeX"), 0o600) }, "checksum mismatch"},
		{"truncated", func(d string) { os.WriteFile(filepath.Join(d, "pages-1.img"), []byte("abc"), 0o600) }, "size 3"},
		{"missing", func(d string) { os.Remove(filepath.Join(d, "core-1.img")) }, "core-1.img: missing"},
		{"extra", func(d string) { os.WriteFile(filepath.Join(d, "evil.img"), nil, 0o600) }, "evil.img: not in manifest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeImages(t, map[string]string{"pages-1.img": "abcdef", "core-1.img": "xyz"})
			if err := WriteManifest(dir, &Manifest{}); err != nil {
				t.Fatal(err)
			}
			c.mutate(dir)
			_, err := VerifyImages(dir)
			if !errors.Is(err, ErrImageCorrupt) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrImageCorrupt mentioning %q", err, c.want)
			}
		})
	}
}

func TestReadManifestErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadManifest(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no manifest: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ManifestName), []byte("{"), 0o600)
	if _, err := ReadManifest(dir); err == nil || !strings.Contains(err.Error(), ManifestName) {
		t.Fatalf("bad JSON: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ManifestName), []byte(`{"version": 99}`), 0o600)
	if _, err := ReadManifest(dir); err == nil || !strings.Contains(err.Error(), "version 99") {
		t.Fatalf("future version: %v", err)
	}
}

func TestCriuErrorLines(t *testing.T) {
	log := `(00.000000) CRIU run id = 1
(00.010000) net: Running ip addr save
(00.020000) Error (criu/files-reg.c:1234): Can't open file tmp/x on restore: No such file or directory
(00.030000) Error (criu/cr-restore.c:2331): Restoring FAILED.
`
	got := criuErrorLines(log)
	if !strings.Contains(got, "files-reg.c:1234") || !strings.Contains(got, "Restoring FAILED") || strings.Contains(got, "run id") {
		t.Fatalf("got %q", got)
	}
	if got := criuErrorLines("line1\nline2\nlast words\n"); !strings.Contains(got, "last words") {
		t.Fatalf("no Error lines: got %q, want the tail", got)
	}
}

func TestCriuVersionNumber(t *testing.T) {
	for in, want := range map[string]int{"4.2.1": 40201, "4.1": 40100, "3.17.1": 31701, "": 0, "x.y": 0, "4.2-rc1": 40200} {
		if got := criuVersionNumber(in); got != want {
			t.Errorf("%q: got %d, want %d", in, got, want)
		}
	}
}

func TestWeightToShares(t *testing.T) {
	for in, want := range map[uint64]uint64{0: 1024, 1: 2, 100: 2597, 10000: 262144} {
		if got := weightToShares(in); got != want {
			t.Errorf("%d: got %d, want %d", in, got, want)
		}
	}
}

func TestHostVeth(t *testing.T) {
	if got := hostVeth("web"); got != "ap-web" {
		t.Fatal(got)
	}
	a, b := hostVeth("a-very-long-pod-name-1"), hostVeth("a-very-long-pod-name-2")
	if len(a) > 15 || len(b) > 15 || a == b {
		t.Fatalf("%q %q", a, b)
	}
}

func TestPodMAC(t *testing.T) {
	if got := podMAC(netip.MustParseAddr("10.77.0.10")); got != "0a:58:0a:4d:00:0a" {
		t.Fatal(got)
	}
}

func TestLookupUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/:/bin/sh\nredis:x:101:102::/var/lib/redis:/usr/sbin/nologin\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("redis:x:102:\nextra:x:500:redis,other\n"), 0o644)
	cases := []struct {
		in       string
		uid, gid int
		groups   []int
		err      bool
	}{
		{"", 0, 0, nil, false},
		{"redis", 101, 102, []int{500}, false},
		{"101", 101, 102, []int{500}, false},
		{"1000:1000", 1000, 1000, nil, false},
		{"4242", 4242, 4242, nil, false},
		{"nobody-here", 0, 0, nil, true},
		{"x:1", 0, 0, nil, true},
	}
	for _, c := range cases {
		uid, gid, groups, err := lookupUser(root, c.in)
		if (err != nil) != c.err || uid != c.uid || gid != c.gid || len(groups) != len(c.groups) {
			t.Errorf("%q: got %d %d %v %v", c.in, uid, gid, groups, err)
		}
	}
}
