package pods

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/autopod/autopod/osthread"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// CRIU reaches the cgroups through a "yard": a directory with every cgroup
// hierarchy mounted under its name. Unless it is given one, it makes its
// own for every dump and restore, and mounting a cgroup2 hierarchy costs
// 16-20 ms on these kernels (the cgroup v1 ones well under 1 ms): twice
// per migration, inside the freeze. autopod mounts one yard when it first
// needs it and hands it to every CRIU call (--cgroup-yard).
//
// The yard lives in a mount namespace of its own, which no process is in
// and nothing on the host sees: a yard on the host's tree would be a
// trap, as anything that removes a directory tree (rm -rf, a package's
// clean-up) would descend into the cgroup mounts and remove every empty
// cgroup of the host. autopod keeps the namespace and the yard's directory
// open and hands CRIU the directory as /proc/self/fd/N, a descriptor it
// inherits for the call.

// cgHierarchy is one cgroup hierarchy of this host, as /proc/self/cgroup
// lists it ("cpu,cpuacct", "name=systemd", "" for cgroup2).
type cgHierarchy string

// yardDir is the directory CRIU looks for the hierarchy in, in a yard.
func (h cgHierarchy) yardDir() string {
	switch {
	case h == "":
		return "unified"
	case strings.HasPrefix(string(h), "name="):
		return strings.TrimPrefix(string(h), "name=")
	}
	return string(h)
}

// mount mounts the hierarchy at dir.
func (h cgHierarchy) mount(dir string) error {
	var err error
	switch {
	case h == "":
		err = unix.Mount("none", dir, "cgroup2", 0, "")
	case strings.HasPrefix(string(h), "name="):
		err = unix.Mount("none", dir, "cgroup", 0, "none,"+string(h))
	default:
		err = unix.Mount("none", dir, "cgroup", 0, string(h))
	}
	if err != nil {
		return fmt.Errorf("mount cgroup hierarchy %q: %w", string(h), err)
	}
	return nil
}

// cgHierarchies reads this host's cgroup hierarchies from
// /proc/self/cgroup, in its order.
func cgHierarchies() ([]cgHierarchy, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	var hs []cgHierarchy
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			return nil, fmt.Errorf("/proc/self/cgroup: malformed line %q", l)
		}
		hs = append(hs, cgHierarchy(f[1]))
	}
	return hs, nil
}

// cgroupYard is autopod's yard, built on first use and rebuilt when the
// host's hierarchies change. The zero value is ready to use.
type cgroupYard struct {
	mu     sync.Mutex
	ns     *os.File // the yard's mount namespace
	dir    *os.File // the yard (O_PATH)
	layout []cgHierarchy
}

// acquire returns the yard for one CRIU call: a path valid in this
// process and in the CRIU processes it starts before release, and the
// directories in it. Without a yard (it could not be built: the reason is
// returned) CRIU makes its own, as it does by default.
func (y *cgroupYard) acquire() (path string, dirs []string, release func(), err error) {
	hs, err := cgHierarchies()
	if err != nil {
		return "", nil, nil, err
	}
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.dir == nil || !slices.Equal(hs, y.layout) {
		y.closeLocked()
		if y.ns, y.dir, err = buildYard(hs); err != nil {
			return "", nil, nil, err
		}
		y.layout = hs
	}
	// A copy without close-on-exec, so that the CRIU process started for
	// this call inherits it under the same number; taken under ForkLock,
	// so that no child started meanwhile by another goroutine gets it.
	syscall.ForkLock.Lock()
	fd, err := unix.Dup(int(y.dir.Fd()))
	syscall.ForkLock.Unlock()
	if err != nil {
		return "", nil, nil, fmt.Errorf("cgroup yard: %w", err)
	}
	for _, h := range y.layout {
		dirs = append(dirs, h.yardDir())
	}
	return fmt.Sprintf("/proc/self/fd/%d", fd), dirs, func() { unix.Close(fd) }, nil
}

func (y *cgroupYard) closeLocked() {
	if y.dir != nil {
		y.dir.Close()
		y.ns.Close()
		y.dir, y.ns, y.layout = nil, nil, nil
	}
}

// buildYard makes a mount namespace with a tmpfs holding a mount of each
// hierarchy and returns the namespace and the tmpfs's directory. It works
// on a thread of its own, which it moves into the new namespace and which
// ends with it (osthread.Doomed): no other thread of the agent changes
// namespace.
func buildYard(hs []cgHierarchy) (ns, dir *os.File, err error) {
	type result struct {
		ns, dir *os.File
		err     error
	}
	ch := make(chan result, 1)
	osthread.Doomed(func() {
		var r result
		r.ns, r.dir, r.err = func() (*os.File, *os.File, error) {
			if unix.Gettid() == unix.Getpid() {
				return nil, nil, errors.New("on the main thread") // osthread.Doomed's bug
			}
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return nil, nil, fmt.Errorf("unshare the mount namespace: %w", err)
			}
			// Nothing mounted here may reach the host's namespace.
			if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
				return nil, nil, fmt.Errorf("make the yard's namespace private: %w", err)
			}
			// Any directory does as the place: only this namespace sees it.
			where := os.TempDir()
			if err := unix.Mount("cgyard", where, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64k"); err != nil {
				return nil, nil, fmt.Errorf("mount the yard's tmpfs: %w", err)
			}
			for _, h := range hs {
				d := filepath.Join(where, h.yardDir())
				if err := os.Mkdir(d, 0o700); err != nil {
					return nil, nil, err
				}
				if err := h.mount(d); err != nil {
					return nil, nil, err
				}
			}
			ns, err := os.Open("/proc/thread-self/ns/mnt")
			if err != nil {
				return nil, nil, err
			}
			fd, err := unix.Open(where, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				ns.Close()
				return nil, nil, fmt.Errorf("open the yard: %w", err)
			}
			return ns, os.NewFile(uintptr(fd), "cgroup-yard"), nil
		}()
		ch <- r
	})
	r := <-ch
	if r.err != nil {
		return nil, nil, fmt.Errorf("cgroup yard: %w", r.err)
	}
	return r.ns, r.dir, nil
}

// imageHierarchies returns the hierarchy directories that CRIU's restore
// of the images in dir looks for in its yard, from their cgroup.img.
func imageHierarchies(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.img"))
	if err != nil {
		return nil, err
	}
	// Two magic numbers, then the entry's size and the entry.
	if len(b) < 12 {
		return nil, errors.New("cgroup.img: too short")
	}
	size := binary.LittleEndian.Uint32(b[8:])
	if uint64(len(b)-12) < uint64(size) {
		return nil, errors.New("cgroup.img: truncated")
	}
	var e cgroup.CgroupEntry
	if err := proto.Unmarshal(b[12:12+size], &e); err != nil {
		return nil, fmt.Errorf("cgroup.img: %w", err)
	}
	var dirs []string
	for _, c := range e.GetControllers() {
		// As CRIU names them: each controller without "name=", "" as
		// "unified", joined by commas.
		var names []string
		for _, n := range c.GetCnames() {
			names = append(names, cgHierarchy(n).yardDir())
		}
		dirs = append(dirs, strings.Join(names, ","))
	}
	return dirs, nil
}

// subset reports whether every string of a is in b.
func subset(a, b []string) bool {
	for _, s := range a {
		if !slices.Contains(b, s) {
			return false
		}
	}
	return true
}
