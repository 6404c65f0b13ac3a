package updater

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	testDebounce = 50 * time.Millisecond
	// A signal must arrive this soon after a change.
	signalWithin = time.Second
	// And none when nothing relevant changed, over this long (well past testDebounce).
	quietFor = 250 * time.Millisecond
)

func expectSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
	case <-time.After(signalWithin):
		t.Fatalf("%s: no signal within %v", what, signalWithin)
	}
}

func expectQuiet(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: unexpected signal", what)
	case <-time.After(quietFor):
	}
}

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWatch plays what apt, dpkg and dnf do to the watched paths, in a temp dir laid
// out like the real ones.
func TestWatch(t *testing.T) {
	root := t.TempDir()
	lists := filepath.Join(root, "var/lib/apt/lists")
	dpkgDir := filepath.Join(root, "var/lib/dpkg")
	status := filepath.Join(dpkgDir, "status")
	dnfCache := filepath.Join(root, "var/cache/dnf") // does not exist yet
	for _, d := range []string{filepath.Join(lists, "partial"), dpkgDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, status, "Package: hello\n")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := Watch(ctx, []string{lists, status, dnfCache}, testDebounce)
	if err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, ch, "at start")

	// apt-get update: download into partial/, then rename into lists/.
	partial := filepath.Join(lists, "partial", "deb.debian.org_dists_bookworm_InRelease")
	writeFile(t, partial, "new")
	expectQuiet(t, ch, "a download in partial/ (not the lists themselves)")
	if err := os.Rename(partial, filepath.Join(lists, "deb.debian.org_dists_bookworm_InRelease")); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, ch, "a list renamed into lists/")

	// A burst, as apt-get update renames dozens of lists: one signal.
	for i := range 50 {
		writeFile(t, filepath.Join(lists, fmt.Sprintf("list-%d", i)), "x")
	}
	expectSignal(t, ch, "a burst of 50 lists")
	expectQuiet(t, ch, "after the burst's one signal")

	// dpkg: write status-new, rename it over status. Its other files do not count.
	writeFile(t, filepath.Join(dpkgDir, "lock"), "")
	writeFile(t, filepath.Join(dpkgDir, "status-new"), "Package: hello\nVersion: 2\n")
	expectQuiet(t, ch, "other files next to dpkg's status")
	if err := os.Rename(filepath.Join(dpkgDir, "status-new"), status); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, ch, "status replaced by rename")
	// The rename replaced the inode; writing the new status in place must count too.
	writeFile(t, status, "Package: hello\nVersion: 3\n")
	expectSignal(t, ch, "status rewritten in place")

	// dnf's cache appears (its parents too: var/cache does not exist either), then
	// makecache writes into it.
	if err := os.MkdirAll(dnfCache, 0o755); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, ch, "the dnf cache directory created")
	writeFile(t, filepath.Join(dnfCache, "fedora.solv"), "solv")
	expectSignal(t, ch, "a file written in the new dnf cache")
	// Removed and made again: the watch follows.
	if err := os.RemoveAll(dnfCache); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, ch, "the dnf cache removed")
	if err := os.MkdirAll(dnfCache, 0o755); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, ch, "the dnf cache made again")
	writeFile(t, filepath.Join(dnfCache, "last_makecache"), "")
	expectSignal(t, ch, "a file written in the remade dnf cache")

	cancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(signalWithin):
		t.Fatal("channel not closed after cancel")
	}
}

// TestWatchIgnoresToolSideFiles: what dnf and rpm write while only reading does not
// signal (else every check would cause the next), what makecache writes does.
func TestWatchIgnoresToolSideFiles(t *testing.T) {
	root := t.TempDir()
	cache, rpmdb := filepath.Join(root, "cache/dnf"), filepath.Join(root, "lib/rpm")
	for _, d := range []string{cache, rpmdb} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ch, err := Watch(t.Context(), []string{cache, rpmdb}, testDebounce)
	if err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(cache, "metadata_lock.pid")
	writeFile(t, lock, "1234")
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cache, "expired_repos.json"), "[]")
	writeFile(t, filepath.Join(rpmdb, "rpmdb.sqlite-shm"), "")
	writeFile(t, filepath.Join(rpmdb, "rpmdb.sqlite-wal"), "")
	writeFile(t, filepath.Join(rpmdb, "__db.001"), "")
	expectQuiet(t, ch, "dnf's lock and expired_repos.json, rpm's -shm/-wal/__db")

	writeFile(t, filepath.Join(cache, "last_makecache"), "")
	expectSignal(t, ch, "makecache's last_makecache")
	writeFile(t, filepath.Join(rpmdb, "rpmdb.sqlite"), "")
	expectSignal(t, ch, "the rpm database itself")
}

// TestWatchCoalescesUnread: signals the receiver has not taken merge into one.
func TestWatchCoalescesUnread(t *testing.T) {
	dir := t.TempDir()
	ch, err := Watch(t.Context(), []string{dir}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		writeFile(t, filepath.Join(dir, fmt.Sprint(i)), "x")
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // every write's signal is due by now
	expectSignal(t, ch, "five writes")
	expectQuiet(t, ch, "after the one pending signal")
}

// TestWatchMaxDelay: a steady stream of changes cannot postpone the signal for ever.
func TestWatchMaxDelay(t *testing.T) {
	dir := t.TempDir()
	ch, err := Watch(t.Context(), []string{dir}, testDebounce)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stop := time.After(3 * maxDelayFactor * testDebounce)
	tick := time.NewTicker(testDebounce / 5)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ch:
			if d := time.Since(start); d < maxDelayFactor*testDebounce/2 {
				t.Errorf("signal after %v, before the changes paused", d)
			}
			return
		case <-stop:
			t.Fatalf("no signal during %v of constant changes", 3*maxDelayFactor*testDebounce)
		case <-tick.C:
			writeFile(t, filepath.Join(dir, "f"), fmt.Sprint(i))
		}
	}
}

func TestWatchArgs(t *testing.T) {
	if _, err := Watch(t.Context(), nil, time.Second); err == nil {
		t.Error("no paths accepted")
	}
	if _, err := Watch(t.Context(), []string{t.TempDir()}, -time.Second); err == nil {
		t.Error("negative debounce accepted")
	}
}

// TestWatchSyncCatchesDirectoryMadeMeanwhile: a directory made below a new one before
// its watch exists (mkdir -p, in the gap between looking and watching) sends no event
// to anyone; sync must look again and watch it.
func TestWatchSyncCatchesDirectoryMadeMeanwhile(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "cache", "dnf")
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify"), targets: []string{target}, byWD: map[int32]string{}, byDir: map[string]int32{}}
	defer w.f.Close()
	if err := w.sync(); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.byDir[root]; !ok {
		t.Fatalf("watching %v, want %s (the nearest existing ancestor)", w.byDir, root)
	}
	// cache appears (its event makes the reader sync); dnf appears in the gap.
	if err := os.Mkdir(filepath.Join(root, "cache"), 0o755); err != nil {
		t.Fatal(err)
	}
	w.beforeAdd = func() {
		w.beforeAdd = nil
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Error(err)
		}
	}
	if err := w.sync(); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.byDir[target]; !ok {
		t.Fatalf("watching %v, not %s, which appeared while sync ran", w.byDir, target)
	}
}
