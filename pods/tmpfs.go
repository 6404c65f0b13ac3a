package pods

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A pod has three tmpfs mounts of its own: /tmp, /run and /dev/shm (see
// buildMounts). CRIU saves a tmpfs by running tar and gzip over it and
// restores it by running them again: ~15 ms per mount in the dump and ~4 ms
// in the restore, all inside the freeze of a migration, even for an empty
// one. A migration therefore moves their contents itself, with the pod's
// files: the bulk while the pod runs, the changes once it is frozen. The
// destination mounts a fresh tmpfs for each, fills it, and the restore
// binds it where the pod had its own (the dump declared the three
// external). Local checkpoints leave them to CRIU: they must survive a
// reboot, and a restored pod's tmpfs, once the host side is detached, is
// again a tmpfs that only the pod has mounted.

// podTmpfs is one of a pod's tmpfs mounts.
type podTmpfs struct {
	target string // in the pod
	name   string // directory under the destination's tmpfs base
	data   string // mount options, as buildMounts mounts it
}

var podTmpfsMounts = []podTmpfs{
	{"/tmp", "tmp", "mode=1777"},
	{"/run", "run", "mode=755"},
	{"/dev/shm", "shm", "mode=1777"},
}

// tmpfsMovable reports whether a migration may move s's tmpfs mounts
// itself: not when a data bind covers one of them (the target of the
// bind is the pod's /tmp, say), where CRIU keeps doing it.
func tmpfsMovable(s Spec) bool {
	for _, b := range s.Mounts {
		for _, t := range podTmpfsMounts {
			if path.Clean(b.Target) == t.target {
				return false
			}
		}
	}
	return true
}

// tmpfsSource is the source's view of a pod's tmpfs mounts for a
// migration, through /proc/PID/root. Mounts below them (the init binary
// and console log under /run/autopod, data binds) are taken as their
// empty mountpoints (scanTree's oneMount), not copied.
type tmpfsSource struct {
	roots []string // "/proc/PID/root/tmp"...
	dests []string // the same on the destination, under its base
}

// newTmpfsSource describes the tmpfs mounts of the pod whose init is pid;
// dest is the directory under which the destination mounted its own (the
// accept's tmpfs_dir).
func newTmpfsSource(pid int, dest string) *tmpfsSource {
	src := &tmpfsSource{}
	for _, t := range podTmpfsMounts {
		src.roots = append(src.roots, fmt.Sprintf("/proc/%d/root%s", pid, t.target))
		src.dests = append(src.dests, filepath.Join(dest, t.name))
	}
	return src
}

// oneMount marks the roots for scanTree.
func (s *tmpfsSource) oneMount() map[string]bool {
	m := map[string]bool{}
	if s != nil {
		for _, r := range s.roots {
			m[r] = true
		}
	}
	return m
}

// wirePath maps a path below one of the roots to the destination's.
func (s *tmpfsSource) wirePath(p string) string {
	for i, r := range s.roots {
		switch {
		case p == r:
			return s.dests[i]
		case strings.HasPrefix(p, r+"/"):
			return s.dests[i] + p[len(r):]
		}
	}
	return p
}

// mountTmpfsDirs mounts a fresh tmpfs for each of a pod's tmpfs mounts
// under base and returns them by target in the pod.
func mountTmpfsDirs(base string) (map[string]string, error) {
	dirs := map[string]string{}
	for _, t := range podTmpfsMounts {
		d := filepath.Join(base, t.name)
		_ = unix.Unmount(d, unix.MNT_DETACH) // a leftover from a crash
		if err := os.MkdirAll(d, 0o700); err != nil {
			unmountTmpfsDirs(base)
			return nil, err
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, t.data); err != nil {
			unmountTmpfsDirs(base)
			return nil, fmt.Errorf("mount a tmpfs on %s: %w", d, err)
		}
		dirs[t.target] = d
	}
	return dirs, nil
}

// unmountTmpfsDirs detaches the tmpfs mounts under base and removes the
// directories. A restored pod keeps its own mounts of them. The
// directories are removed only when nothing is mounted there any more, so
// that no one ever deletes a pod's files through them.
func unmountTmpfsDirs(base string) error {
	var errs []error
	for _, t := range podTmpfsMounts {
		d := filepath.Join(base, t.name)
		for {
			if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
				if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("unmount %s: %w", d, err))
				}
				break // not (or no longer) a mountpoint
			}
		}
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(base); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
