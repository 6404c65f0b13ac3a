package updater

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultWatchPaths are the paths whose changes may mean new pending updates or a
// reboot signal: /boot (a kernel installed by any means); apt's package lists
// (apt-get update renames new lists into place), the dpkg database (rewritten by every
// install), /run/reboot-required; dnf's metadata cache (makecache rewrites its *.solv
// files and touches last_makecache at the top level) and the rpm database.
// units/autopod-updates.path watches the same paths for both backends.
func DefaultWatchPaths(b Backend) []string {
	if b == Dnf {
		return []string{"/boot", "/var/cache/dnf", "/var/lib/rpm"}
	}
	return []string{"/boot", "/var/lib/apt/lists", "/var/lib/dpkg/status", DefaultRebootRequiredFile}
}

// ignoredNames are files that the package tools write while only reading, so that a
// change to them says nothing about updates. Without this, every Check would signal
// the next one: dnf creates and removes metadata_lock.pid and rewrites
// expired_repos.json in its cache on every run (-C check-update, needs-restarting), rpm
// -q opens its SQLite database's -wal and -shm files (or Berkeley DB's __db.00N)
// read-write, and apt-get update takes lists/lock even when nothing changed. A real
// change shows elsewhere: new *.solv files and last_makecache, the database file
// itself (SQLite checkpoints into it when the writer closes), renamed lists.
var ignoredNames = []string{"*.pid", "expired_repos.json", "*-shm", "*-wal", "*-journal", "__db.*", "lock", "lock-frontend"}

func ignoredName(name string) bool {
	for _, p := range ignoredNames {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// maxDelayFactor bounds how long a steady stream of changes can postpone the signal:
// at most this many debounce periods after its first change.
const maxDelayFactor = 10

// Watch signals on the returned channel when something changes at one of paths: a
// file written, created, renamed into place or removed at the path itself, or directly
// inside it when it is a directory. Bursts (an apt-get update renames dozens of
// files) are coalesced: the signal comes once the paths have been quiet for debounce,
// or at the latest after maxDelayFactor×debounce, and signals the receiver has not yet
// taken merge into one. There is no signal at start; check once before waiting.
//
// A path that does not exist yet is waited for: Watch watches its nearest existing
// ancestor and moves down as the missing directories appear, and back up if they go.
// Changes to the package tools' lock and side files (ignoredNames) do not count, so a
// Check run on a signal does not cause the next one. A Check with Options.Refresh
// does change the lists or the cache when the repositories have changed: refresh on a
// timer, not on every signal.
//
// The channel is closed when ctx ends (or, should it ever, when reading inotify fails).
func Watch(ctx context.Context, paths []string, debounce time.Duration) (<-chan struct{}, error) {
	if len(paths) == 0 {
		return nil, errors.New("updater: watch: no paths")
	}
	if debounce < 0 {
		return nil, fmt.Errorf("updater: watch: negative debounce %v", debounce)
	}
	targets := make([]string, len(paths))
	for i, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("updater: watch %s: %w", p, err)
		}
		targets[i] = abs
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("updater: inotify_init1: %w", os.NewSyscallError("inotify_init1", err))
	}
	// Non-blocking, so the runtime's poller waits for it and Close wakes a pending Read.
	f := os.NewFile(uintptr(fd), "inotify")
	w := &watcher{f: f, targets: targets, byWD: map[int32]string{}, byDir: map[string]int32{}}
	if err := w.sync(); err != nil {
		f.Close()
		return nil, err
	}
	out := make(chan struct{}, 1)
	kick := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.read(kick)
	}()
	go func() {
		defer close(out)
		debounceLoop(ctx, kick, out, debounce)
		f.Close() // ends w.read
		wg.Wait()
	}()
	return out, nil
}

func debounceLoop(ctx context.Context, kick <-chan struct{}, out chan<- struct{}, debounce time.Duration) {
	timer := time.NewTimer(0)
	<-timer.C
	pending := false
	var first time.Time
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case _, ok := <-kick:
			if !ok {
				// The reader stopped (the inotify descriptor failed): nothing more
				// will come, so end as if cancelled.
				return
			}
			now := time.Now()
			if !pending {
				pending, first = true, now
			}
			wait := debounce
			if deadline := first.Add(maxDelayFactor * debounce); now.Add(wait).After(deadline) {
				wait = max(deadline.Sub(now), 0)
			}
			timer.Reset(wait)
		case <-timer.C:
			pending = false
			select {
			case out <- struct{}{}:
			default: // one not yet taken already stands for this one
			}
		}
	}
}

// watcher keeps inotify watches on the directories that matter for its targets.
// Only the reader goroutine touches it after the first sync.
type watcher struct {
	f       *os.File
	targets []string
	byWD    map[int32]string
	byDir   map[string]int32

	// beforeAdd, when set (by tests), runs between wanted() and adding the watches.
	beforeAdd func()
}

const (
	// Changes inside a directory and to the directory itself.
	dirMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
		unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF |
		unix.IN_ONLYDIR
)

// wanted returns the directories to watch and, for each, which entry names in it
// matter ("" for all of them).
func (w *watcher) wanted() map[string]map[string]bool {
	want := map[string]map[string]bool{}
	add := func(dir, name string) {
		if want[dir] == nil {
			want[dir] = map[string]bool{}
		}
		want[dir][name] = true
	}
	for _, t := range w.targets {
		fi, err := os.Stat(t)
		if err == nil && fi.IsDir() {
			add(t, "") // its entries
		}
		// The nearest existing ancestor, for the next missing component (or, when t
		// exists, t's own entry: a file replaced by rename, a directory removed).
		child := t
		for dir := filepath.Dir(t); ; dir = filepath.Dir(dir) {
			if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
				add(dir, filepath.Base(child))
				break
			}
			if dir == filepath.Dir(dir) {
				break
			}
			child = dir
		}
	}
	return want
}

// syncRounds bounds how often sync looks again for directories that appeared while
// it added watches.
const syncRounds = 8

// sync adds watches for the directories wanted now and removes the others. A
// directory created below a missing one between wanted() and the new watch (mkdir -p
// makes var/cache, then var/cache/dnf at once) sends no event to anyone, so sync looks
// again after every round that added a watch, until nothing new is wanted.
func (w *watcher) sync() error {
	var errs []error
	for range syncRounds {
		added, err := w.syncOnce()
		if err != nil {
			errs = append(errs, err)
		}
		if !added {
			break
		}
	}
	return errors.Join(errs...)
}

// syncOnce is one round of sync; added says whether it added a watch.
func (w *watcher) syncOnce() (added bool, _ error) {
	want := w.wanted()
	if w.beforeAdd != nil {
		w.beforeAdd()
	}
	rc, err := w.f.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("updater: inotify: %w", err)
	}
	var errs []error
	ctlErr := rc.Control(func(fd uintptr) {
		for dir := range want {
			if _, ok := w.byDir[dir]; ok {
				continue
			}
			wd, err := unix.InotifyAddWatch(int(fd), dir, dirMask)
			if err != nil {
				// It may have gone since wanted() looked; the parent's watch notices.
				if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
					errs = append(errs, fmt.Errorf("updater: inotify_add_watch %s: %w", dir, err))
				}
				continue
			}
			if old, ok := w.byWD[int32(wd)]; ok && old != dir {
				delete(w.byDir, old) // the same directory under another path
			}
			w.byWD[int32(wd)], w.byDir[dir] = dir, int32(wd)
			added = true
		}
		for dir, wd := range w.byDir {
			if _, ok := want[dir]; !ok {
				unix.InotifyRmWatch(int(fd), uint32(wd))
				delete(w.byDir, dir)
				delete(w.byWD, wd)
			}
		}
	})
	if ctlErr != nil {
		errs = append(errs, ctlErr)
	}
	return added, errors.Join(errs...)
}

// relevant reports whether an event in dir about entry name concerns a target.
func (w *watcher) relevant(dir, name string) bool {
	if name != "" && ignoredName(name) {
		return false
	}
	for _, t := range w.targets {
		if t == dir {
			return true // anything inside a watched directory, or the directory itself
		}
		if name != "" && (t == filepath.Join(dir, name) || strings.HasPrefix(t, filepath.Join(dir, name)+"/")) {
			return true
		}
	}
	return false
}

// read turns inotify events into kicks until the descriptor is closed.
func (w *watcher) read(kick chan<- struct{}) {
	defer close(kick)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		signal, resync := false, false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : min(off+unix.SizeofInotifyEvent+int(ev.Len), n)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			name := strings.TrimRight(string(nameBytes), "\x00")
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				signal, resync = true, true // events were lost: assume the worst
				continue
			}
			dir, ok := w.byWD[ev.Wd]
			if !ok {
				continue
			}
			if ev.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				if ev.Mask&unix.IN_IGNORED != 0 {
					delete(w.byWD, ev.Wd)
					delete(w.byDir, dir)
				}
				resync = true
				signal = signal || w.relevant(dir, "")
				continue
			}
			if w.relevant(dir, name) {
				signal = true
				if ev.Mask&(unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO) != 0 {
					resync = true // a missing directory may have appeared, or gone
				}
			}
		}
		if resync {
			_ = w.sync() // best effort; what failed is retried on the next event
		}
		if signal {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
}
