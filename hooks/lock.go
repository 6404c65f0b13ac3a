package hooks

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// DpkgFrontendLock is the lock that apt, apt-get, aptitude, unattended-upgrades
// and other dpkg frontends hold for their whole run (dpkg >= 1.19), across every
// dpkg run they make; dpkg itself takes the lock next to it ("lock").
//
// The agent needs it because DPkg::Post-Invoke marks the end of one dpkg run, not
// of apt's: unattended-upgrades installs in minimal steps, one dpkg run (with its
// Pre-Install-Pkgs and Post-Invoke hooks) per step, so after the step with the
// kernel more steps may follow. The reboot must wait until the frontend lock is
// free (LockHolder).
const DpkgFrontendLock = "/var/lib/dpkg/lock-frontend"

// LockHolder reports whether some process holds a write-conflicting fcntl(2)
// record lock on the file at path (how apt and dpkg lock theirs) and, for a
// classic POSIX lock, its pid; pid is -1 for an open file description lock and 0
// when the lock is free. A missing file is a free lock. It takes no lock itself.
func LockHolder(path string) (pid int, held bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("lock %s: %w", path, err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
		return 0, false, fmt.Errorf("lock %s: F_GETLK: %w", path, err)
	}
	if lk.Type == unix.F_UNLCK {
		return 0, false, nil
	}
	return int(lk.Pid), true, nil
}
