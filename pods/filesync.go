package pods

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A migration copies the pod's files — its data bind mounts and, for pods
// with their own root, the root directory — in two passes: everything
// while the pod still runs, then, once it is frozen, only what changed.

// fileEntry describes one file-system object on the wire.
type fileEntry struct {
	Path    string `json:"path"` // absolute, the same on both hosts
	Kind    string `json:"kind"` // dir, file, symlink
	Mode    uint32 `json:"mode"` // permission bits (incl. setuid/setgid/sticky)
	UID     int    `json:"uid"`
	GID     int    `json:"gid"`
	MtimeNs int64  `json:"mtime_ns"`
	Size    int64  `json:"size,omitempty"`
	Target  string `json:"target,omitempty"` // symlink target
}

// fileStamp is what the sender remembers to find changes in the second pass.
type fileStamp struct {
	size, mtime, ctime int64
	ino                uint64
	kind               string
}

type fileTree struct {
	entries []fileEntry
	stamps  map[string]fileStamp
}

// scanTree walks the roots (directories or single files). In the roots
// that are oneMount, what another mount covers is taken as its empty
// mountpoint (see mountpoint).
func scanTree(roots []string, oneMount map[string]bool) (fileTree, error) {
	t := fileTree{stamps: map[string]fileStamp{}}
	for _, root := range roots {
		rootMnt := uint64(0)
		if oneMount[root] {
			var err error
			if rootMnt, err = mountID(root); err != nil {
				return t, fmt.Errorf("scan %s: %w", root, err)
			}
		}
		// The pod runs during the first scan: what it removes between
		// the directory read and the look at an entry is left out (the
		// scan after the freeze sees what is there then).
		gone := func(path string, err error) bool {
			return path != root && errors.Is(err, fs.ErrNotExist)
		}
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if gone(path, err) {
					return nil
				}
				return err
			}
			if rootMnt != 0 {
				if id, err := mountID(path); err != nil {
					if gone(path, err) {
						return nil
					}
					return err
				} else if id != rootMnt {
					e := mountpoint(path, d.IsDir())
					t.entries = append(t.entries, e)
					t.stamps[path] = fileStamp{kind: e.Kind}
					if d.IsDir() {
						return fs.SkipDir
					}
					return nil
				}
			}
			fi, err := os.Lstat(path)
			if err != nil {
				if gone(path, err) {
					return nil
				}
				return err
			}
			st := fi.Sys().(*syscall.Stat_t)
			e := fileEntry{Path: path, Mode: uint32(fi.Mode().Perm()), UID: int(st.Uid), GID: int(st.Gid),
				MtimeNs: st.Mtim.Nano()}
			if fi.Mode()&os.ModeSetuid != 0 {
				e.Mode |= unix.S_ISUID
			}
			if fi.Mode()&os.ModeSetgid != 0 {
				e.Mode |= unix.S_ISGID
			}
			if fi.Mode()&os.ModeSticky != 0 {
				e.Mode |= unix.S_ISVTX
			}
			switch {
			case fi.IsDir():
				e.Kind = "dir"
			case fi.Mode().IsRegular():
				e.Kind, e.Size = "file", fi.Size()
			case fi.Mode()&os.ModeSymlink != 0:
				e.Kind = "symlink"
				if e.Target, err = os.Readlink(path); err != nil {
					if gone(path, err) {
						return nil
					}
					return err
				}
			default:
				return nil // sockets, fifos, devices: recreated by the pod, not copied
			}
			t.entries = append(t.entries, e)
			t.stamps[path] = fileStamp{size: fi.Size(), mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), ino: st.Ino, kind: e.Kind}
			return nil
		})
		if err != nil {
			return t, fmt.Errorf("scan %s: %w", root, err)
		}
	}
	return t, nil
}

// mountID is the id of the mount path is on (not following a last symlink).
func mountID(path string) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, &fs.PathError{Op: "statx", Path: path, Err: err}
	}
	return stx.Mnt_id, nil
}

// mountpoint stands for what another mount covers at path: an empty
// directory or file, which is all the restore needs there (CRIU mounts it
// again). The pod's view hides what the mountpoint really holds.
func mountpoint(path string, dir bool) fileEntry {
	if dir {
		return fileEntry{Path: path, Kind: "dir", Mode: 0o755}
	}
	return fileEntry{Path: path, Kind: "file", Mode: 0o644}
}

// changedSince returns the entries of t that are new or changed compared
// with old, and the paths of old that are gone.
func (t fileTree) changedSince(old fileTree) (changed []fileEntry, deleted []string) {
	for _, e := range t.entries {
		if s, ok := old.stamps[e.Path]; !ok || s != t.stamps[e.Path] {
			changed = append(changed, e)
		}
	}
	for p := range old.stamps {
		if _, ok := t.stamps[p]; !ok {
			deleted = append(deleted, p)
		}
	}
	// Children before parents, so a removed directory is empty by then.
	sort.Sort(sort.Reverse(sort.StringSlice(deleted)))
	return changed, deleted
}

// filesMsg announces one pass; each "file" entry is followed by its stream.
type filesMsg struct {
	Entries []fileEntry `json:"entries"`
	Deleted []string    `json:"deleted,omitempty"`
}

// sendFiles sends one pass of entries found below roots (see scanTree).
// wire, if not nil, maps a path here to the one the peer writes (the pod's
// tmpfs contents are read through /proc/PID/root and written below the
// peer's own tmpfs mounts).
func sendFiles(c MigrationConn, entries []fileEntry, deleted []string, roots []string, wire func(string) string) (int64, error) {
	msg := filesMsg{Entries: entries, Deleted: deleted}
	if wire != nil {
		msg.Entries = make([]fileEntry, len(entries))
		for i, e := range entries {
			e.Path = wire(e.Path)
			msg.Entries[i] = e
		}
		msg.Deleted = make([]string, len(deleted))
		for i, d := range deleted {
			msg.Deleted[i] = wire(d)
		}
	}
	if err := c.Send("files", msg); err != nil {
		return 0, err
	}
	var total int64
	dirs := map[string]*os.File{}
	defer func() {
		for _, d := range dirs {
			d.Close()
		}
	}()
	for _, e := range entries {
		if e.Kind != "file" {
			continue
		}
		// What the pod changed since the scan (the first pass runs while
		// it runs) goes as scanned: a file that is gone, no longer a
		// regular file, or shorter is sent as its announced size,
		// padded with zeros. Its stamp changed, so the pass after the
		// freeze sends it again, or deletes it.
		var content io.Reader = zeros{}
		f, err := openBeneath(e.Path, roots, dirs)
		if err == nil {
			content = io.MultiReader(f, zeros{})
		}
		n, _, err := c.SendStream(io.LimitReader(content, e.Size))
		if f != nil {
			f.Close()
		}
		total += n
		if err != nil {
			return total, fmt.Errorf("send %s: %w", e.Path, err)
		}
	}
	return total, nil
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// openBeneath opens the regular file at path, below one of roots, without
// following any symbolic link below that root: the pod owns what is in
// its directories and tmpfs, and a link it planted (even swapped in after
// the scan) must not make the agent read a file of the host into the
// pod's copy on the peer. It does not block on a FIFO swapped in either.
// dirs caches the roots' descriptors.
func openBeneath(path string, roots []string, dirs map[string]*os.File) (*os.File, error) {
	root := ""
	for _, r := range roots {
		if (path == r || strings.HasPrefix(path, r+"/")) && len(r) > len(root) {
			root = r
		}
	}
	const flags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK
	var f *os.File
	if root == "" || path == root {
		// A root that is a single file (a data bind): the operator's path.
		fd, err := unix.Open(path, flags, 0)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		f = os.NewFile(uintptr(fd), path)
	} else {
		d, ok := dirs[root]
		if !ok {
			var err error
			if d, err = os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
				return nil, err
			}
			dirs[root] = d
		}
		fd, err := unix.Openat2(int(d.Fd()), strings.TrimPrefix(path, root+"/"), &unix.OpenHow{
			Flags:   flags,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		f = os.NewFile(uintptr(fd), path)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: path, Err: unix.EINVAL}
	}
	return f, nil
}

// within reports whether path is one of roots or below one.
func within(path string, roots []string) bool {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return false
	}
	for _, r := range roots {
		if path == r || strings.HasPrefix(path, r+"/") {
			return true
		}
	}
	return false
}

// recvFiles applies one pass sent by sendFiles, refusing any path outside
// roots (the pod's declared data and root directories).
func recvFiles(c MigrationConn, roots []string) (int64, error) {
	var msg filesMsg
	if err := c.Expect("files", &msg); err != nil {
		return 0, err
	}
	for _, p := range msg.Deleted {
		if !within(p, roots) {
			return 0, fmt.Errorf("peer asked to delete %s, outside the pod's directories", p)
		}
		if err := os.RemoveAll(p); err != nil {
			return 0, err
		}
	}
	var total int64
	var dirs []fileEntry
	for _, e := range msg.Entries {
		if !within(e.Path, roots) {
			return total, fmt.Errorf("peer sent %s, outside the pod's directories", e.Path)
		}
		switch e.Kind {
		case "dir":
			if err := os.MkdirAll(e.Path, 0o755); err != nil {
				return total, err
			}
			dirs = append(dirs, e) // metadata after the contents are written
		case "symlink":
			os.Remove(e.Path)
			if err := os.MkdirAll(filepath.Dir(e.Path), 0o755); err != nil {
				return total, err
			}
			if err := os.Symlink(e.Target, e.Path); err != nil {
				return total, err
			}
			_ = os.Lchown(e.Path, e.UID, e.GID)
		case "file":
			n, err := recvFile(c, e)
			total += n
			if err != nil {
				return total, fmt.Errorf("receive %s: %w", e.Path, err)
			}
		default:
			return total, fmt.Errorf("peer sent %s of unknown kind %q", e.Path, e.Kind)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := setMeta(dirs[i]); err != nil {
			return total, err
		}
	}
	return total, nil
}

func recvFile(c MigrationConn, e fileEntry) (int64, error) {
	dir := filepath.Dir(e.Path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(dir, ".autopod-recv-*")
	if err != nil {
		return 0, err
	}
	n, _, err := c.RecvStream(f)
	if err == nil && n != e.Size {
		err = fmt.Errorf("got %d bytes, announced %d", n, e.Size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), e.Path)
	}
	if err != nil {
		os.Remove(f.Name())
		return n, err
	}
	return n, setMeta(e)
}

func setMeta(e fileEntry) error {
	if err := os.Lchown(e.Path, e.UID, e.GID); err != nil {
		return err
	}
	if err := unix.Chmod(e.Path, e.Mode); err != nil {
		return err
	}
	t := time.Unix(0, e.MtimeNs)
	if err := os.Chtimes(e.Path, t, t); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
