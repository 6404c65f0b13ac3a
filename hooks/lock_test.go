package hooks

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestLockHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock-frontend")
	if pid, held, err := LockHolder(path); err != nil || held || pid != 0 {
		t.Errorf("missing file: %d, %v, %v", pid, held, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, held, err := LockHolder(path); err != nil || held {
		t.Errorf("unlocked file: %v, %v", held, err)
	}
	// An open file description lock conflicts with LockHolder's query although it
	// is this process's (a classic POSIX lock of our own would not: the real one,
	// apt's, is checked against a real apt in the root tier).
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if pid, held, err := LockHolder(path); err != nil || !held || pid != -1 {
		t.Errorf("locked file: %d, %v, %v; want -1, true", pid, held, err)
	}
}
