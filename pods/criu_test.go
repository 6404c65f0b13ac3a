package pods

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// The watchdog finds go-criu's hidden worker by parent, binary and open
// directory; a child of this test stands in for it.
func TestCriuWorkerFindsChildByDir(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	dir, other := t.TempDir(), t.TempDir()
	cmd := exec.Command(sleep, "30")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := childrenOf("self"); !slices.Contains(got, cmd.Process.Pid) {
		t.Fatalf("childrenOf(self) = %v, want %d among them", got, cmd.Process.Pid)
	}
	for i := 0; ; i++ { // its working directory is set once it has started
		if got := criuWorker(sleep, dir); got == cmd.Process.Pid {
			break
		} else if i == 100 {
			t.Fatalf("criuWorker(sleep, dir) = %d, want %d", got, cmd.Process.Pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := criuWorker(sleep, other); got != 0 {
		t.Errorf("criuWorker(sleep, another dir) = %d, want 0", got)
	}
	if got := criuWorker("/bin/true", dir); got != 0 {
		t.Errorf("criuWorker(another binary, dir) = %d, want 0", got)
	}

	abort := make(chan struct{})
	stop := criuRunner{path: sleep}.watchdog(abort, dir)
	close(abort)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the worker exited normally; want killed")
		}
	case <-time.After(abortGrace + 5*time.Second):
		t.Fatal("the watchdog did not kill the worker")
	}
	if why := stop(); why == "" {
		t.Error("stop() does not say the worker was killed")
	}
}

// A pod owns what is below its directories: a symbolic link it planted,
// even on the way, must not make the agent read a host file, and a FIFO
// must not hang the copy.
func TestOpenBeneathRefusesLinksAndFIFOs(t *testing.T) {
	root, host := t.TempDir(), t.TempDir()
	secret := filepath.Join(host, "secret")
	os.WriteFile(secret, []byte("host only"), 0o600)
	os.MkdirAll(filepath.Join(root, "d"), 0o755)
	os.WriteFile(filepath.Join(root, "d", "f"), []byte("pod data"), 0o644)
	os.Symlink(secret, filepath.Join(root, "link"))
	os.Symlink(host, filepath.Join(root, "dirlink"))
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]*os.File{}
	defer func() {
		for _, d := range dirs {
			d.Close()
		}
	}()
	f, err := openBeneath(filepath.Join(root, "d", "f"), []string{root}, dirs)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(f)
	f.Close()
	if string(data) != "pod data" {
		t.Fatalf("read %q", data)
	}
	for _, p := range []string{"link", "dirlink/secret", "fifo", "missing"} {
		done := make(chan error, 1)
		go func() {
			f, err := openBeneath(filepath.Join(root, p), []string{root}, dirs)
			if f != nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s: opened", p)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: open hangs", p)
		}
	}
}

func TestTmpfsMovable(t *testing.T) {
	for _, c := range []struct {
		target string
		want   bool
	}{{"/data", true}, {"/tmp/cache", true}, {"/tmp", false}, {"/run/", false}, {"/dev/shm", false}} {
		s := Spec{Mounts: []Mount{{Source: "/srv/x", Target: c.target}}}
		if got := tmpfsMovable(s); got != c.want {
			t.Errorf("a bind on %s: tmpfsMovable = %v, want %v", c.target, got, c.want)
		}
	}
}
