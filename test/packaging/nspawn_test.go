//go:build roottest

package packaging

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The Debian root the .deb is installed into. trixie, because its criu
// (4.1.1) satisfies the package's Recommends: criu (>= 4.1), so what is
// installed is what an operator gets; bookworm's criu is 3.17.
const (
	rootSuite   = "trixie"
	rootVariant = "minbase"
	// rootRecipe changes whenever the way the root is made changes, so that
	// old cache entries are not reused.
	rootRecipe = "1"
)

// rootPackages are added to minbase: systemd as PID 1 with the system bus,
// the package's dependencies and recommendation (installed with dpkg -i,
// the test needs no network after debootstrap), and man-db so that
// `systemd-analyze verify` can check Documentation=man:autopod(8).
var rootPackages = []string{"systemd", "systemd-sysv", "dbus", "iproute2", "nftables", "criu", "man-db"}

// cacheDir holds debootstrapped roots across runs (AUTOPOD_TEST_CACHE
// overrides it). Each entry is keyed by everything that went into it;
// delete the directory to start afresh (e.g. to pick up trixie updates).
func cacheDir() string {
	if d := os.Getenv("AUTOPOD_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/autopod-test"
}

func mirror() string {
	if m := os.Getenv("AUTOPOD_TEST_MIRROR"); m != "" {
		return m
	}
	return "http://deb.debian.org/debian"
}

// debianRoot returns a debootstrapped root, from the cache if it holds one
// built from the same inputs, else built now (about half a minute to two
// minutes, the only step of the tier that uses the network: the Debian
// archive). The root is never modified afterwards: containers run on an
// overlay of it.
func debianRoot(t *testing.T, ctx context.Context) string {
	t.Helper()
	dbsVersion := strings.TrimSpace(run(t, ctx, "", nil, "dpkg-query", "-W", "-f=${Version}", "debootstrap"))
	inputs := strings.Join([]string{
		"recipe=" + rootRecipe,
		"suite=" + rootSuite,
		"variant=" + rootVariant,
		"include=" + strings.Join(rootPackages, ","),
		"mirror=" + mirror(),
		"arch=" + debArch(t, ctx),
		"debootstrap=" + dbsVersion,
	}, "\n") + "\n"
	sum := sha256.Sum256([]byte(inputs))
	base := filepath.Join(cacheDir(), "nspawn-roots")
	entry := filepath.Join(base, rootSuite+"-"+hex.EncodeToString(sum[:])[:12])
	rootfs := filepath.Join(entry, "rootfs")
	marker := filepath.Join(entry, "inputs")
	if _, err := os.Stat(marker); err == nil {
		t.Logf("Debian root from the cache: %s", entry)
		return rootfs
	}

	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// One builder at a time; a second run waits and then finds the entry.
	lock, err := os.OpenFile(filepath.Join(base, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(marker); err == nil {
		return rootfs
	}

	tmp := entry + ".building"
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("building the Debian root (cache miss) into %s", entry)
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	out, err := runErr(t, bctx, tmp, nil, "debootstrap", "--variant="+rootVariant,
		"--include="+strings.Join(rootPackages, ","), rootSuite, filepath.Join(tmp, "rootfs"), mirror())
	if err != nil {
		t.Fatalf("debootstrap %s from %s failed (it needs the Debian archive; set AUTOPOD_TEST_MIRROR for another mirror): %v\n%s",
			rootSuite, mirror(), err, lastLines(out, 30))
	}
	if err := os.WriteFile(filepath.Join(tmp, "inputs"), []byte(inputs), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, entry); err != nil {
		t.Fatal(err)
	}
	return rootfs
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// container is a Debian root booted with systemd as PID 1 by systemd-nspawn
// (../shared/notes/systemd-test-bed.md), on an overlay so that the cached
// root stays pristine, with its own network namespace (loopback only) and
// its own cgroups.
type container struct {
	t       *testing.T
	name    string
	root    string // the merged overlay: the container's / seen from the host
	cmd     *exec.Cmd
	exited  chan struct{}
	pid1    int      // the container's systemd, in the host's pid namespace
	cgroups []string // the container's own cgroup in every hierarchy
	console string   // file with nspawn's and the container's console output
	lock    string   // nspawn's lock file for the image
}

// bootContainer boots lower (read-only) in a container; prepare may put
// files into its root before it boots. Everything is undone at cleanup.
func bootContainer(t *testing.T, ctx context.Context, lower string, prepare func(root string)) *container {
	t.Helper()
	dir := t.TempDir()
	c := &container{t: t, name: fmt.Sprintf("autopod-pkgtest-%d", os.Getpid()), exited: make(chan struct{}),
		root: filepath.Join(dir, "merged"), console: filepath.Join(dir, "console.log")}
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run(t, ctx, "", nil, "mount", "-t", "overlay", "overlay", "-o",
		fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, dir, dir), c.root)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", c.root).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", c.root, err, out)
		}
	})
	if prepare != nil {
		prepare(c.root)
	}
	// nspawn locks the image as /run/systemd/nspawn/locks/inode-DEV:INO and
	// leaves the file behind when it is killed.
	var st syscall.Stat_t
	if err := syscall.Stat(c.root, &st); err == nil {
		c.lock = fmt.Sprintf("/run/systemd/nspawn/locks/inode-%d:%d", st.Dev, st.Ino)
	}

	c.cgroups = ownCgroups(t, c.name)
	t.Cleanup(c.stop)
	console, err := os.Create(c.console)
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	// nspawn starts in the container's own cgroups (the shell moves itself
	// there and execs nspawn), so that nspawn's payload/supervisor cgroups,
	// the container's cgroup namespace and every pod cgroup the agent makes
	// inside land below them, not next to other tests' cgroups, and cleanup
	// can remove them all. --register=no --keep-unit: there is no host
	// systemd or machined to talk to. --private-network: the peer port is
	// the container's own, not the host's.
	c.cmd = exec.Command("sh", "-c", `for d in $CGROUPS; do echo $$ >"$d/cgroup.procs" || exit 1; done; exec "$@"`, "sh",
		"systemd-nspawn", "-D", c.root, "-b", "--register=no", "--keep-unit", "-M", c.name,
		"--console=pipe", "--private-network")
	c.cmd.Env = append(os.Environ(), "CGROUPS="+strings.Join(c.cgroups, " "))
	c.cmd.Stdout, c.cmd.Stderr = console, console
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.exited)
	}()

	deadline := time.Now().Add(30 * time.Second)
	for c.pid1 == 0 {
		if pid := systemdChild(c.cmd.Process.Pid); pid != 0 {
			c.pid1 = pid
			break
		}
		select {
		case <-c.exited:
			t.Fatalf("systemd-nspawn exited: %s\n%s", c.cmd.ProcessState, c.consoleTail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no systemd in the container after 30 s:\n%s", c.consoleTail())
		}
	}
	// Until systemd has set itself up, systemctl cannot connect, or finds no
	// /run/systemd/system ("offline"); then --wait waits for the boot.
	var state string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		out, _ := c.exec(wctx, "systemctl", "is-system-running", "--wait")
		cancel()
		state = strings.TrimSpace(out)
		if state == "running" || state == "degraded" || time.Now().After(deadline) {
			break
		}
	}
	if state != "running" {
		failed, _ := c.exec(ctx, "systemctl", "--failed", "--no-legend")
		if state != "degraded" {
			t.Fatalf("container system state %q; failed units:\n%s\nconsole:\n%s", state, failed, c.consoleTail())
		}
		t.Logf("container is degraded (not caused by autopod, which is not installed yet):\n%s", failed)
	}
	c.writableCgroups(ctx)
	return c
}

// systemdChild finds the container's PID 1: the systemd that nspawn forked.
func systemdChild(nspawn int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawn, nspawn))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "systemd" {
			return pid
		}
	}
	return 0
}

// writableCgroups remounts the container's cgroup v1 controller hierarchies
// read-write. nspawn mounts them read-only (on these hybrid-cgroup hosts),
// and the agent must create pod cgroups there, as it does on a real host,
// where it runs in the host's namespaces. The container's cgroup namespace
// is rooted at its own cgroup (ownCgroups), so nothing outside it is
// exposed.
func (c *container) writableCgroups(ctx context.Context) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.pid1))
	if err != nil {
		c.t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 6 || len(f) < sep+2 || f[sep+1] != "cgroup" {
			continue
		}
		if opts := "," + f[5] + ","; !strings.Contains(opts, ",ro,") {
			continue
		}
		run(c.t, ctx, "", nil, "nsenter", "-t", strconv.Itoa(c.pid1), "-m", "mount", "-o", "remount,bind,rw", f[4])
	}
}

// exec runs a command in the container (all of its namespaces, its root)
// with a clean environment, and returns its combined output.
func (c *container) exec(ctx context.Context, args ...string) (string, error) {
	c.t.Helper()
	full := append([]string{"-t", strconv.Itoa(c.pid1), "-a", "env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "DEBIAN_FRONTEND=noninteractive"}, args...)
	return runLabeled(c.t, ctx, "[container] "+shortArgs(args), "", nil, "nsenter", full...)
}

// must runs a command in the container; failing is fatal.
func (c *container) must(ctx context.Context, args ...string) string {
	c.t.Helper()
	out, err := c.exec(ctx, args...)
	if err != nil {
		c.t.Fatalf("in the container: %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// path is a path inside the container seen from the host.
func (c *container) path(p string) string { return filepath.Join(c.root, p) }

func (c *container) consoleTail() string {
	data, _ := os.ReadFile(c.console)
	return lastLines(string(data), 40)
}

// stop shuts the container down: SIGTERM makes nspawn halt it (systemd stops
// every unit and kills what is left, pods included); whatever is still
// alive after a minute is killed. Then the container's cgroups go.
func (c *container) stop() {
	if c.cmd != nil && c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(time.Minute):
			c.t.Errorf("the container did not halt within a minute; killing it\n%s", c.consoleTail())
			killCgroups(c.cgroups)
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	}
	killCgroups(c.cgroups)
	if err := removeCgroups(c.cgroups); err != nil {
		c.t.Errorf("removing the container's cgroups: %v", err)
	}
	// nspawn's per-machine propagation directory and image lock on the host.
	_ = os.RemoveAll(filepath.Join("/run/systemd/nspawn/propagate", c.name))
	if c.lock != "" {
		_ = os.Remove(c.lock)
	}
}

// ownCgroups makes a cgroup named name below this process's cgroup in every
// mounted hierarchy and returns their paths.
func ownCgroups(t *testing.T, name string) []string {
	t.Helper()
	mounts := cgroupMounts(t)
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	t.Cleanup(func() { _ = removeCgroups(dirs) }) // if setup fails half-way
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		mp, ok := mounts[controllerKey(parts[1])]
		if !ok {
			continue
		}
		parent := filepath.Join(mp, parts[2])
		d := filepath.Join(parent, name)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("creating cgroup %s: %v", d, err)
		}
		dirs = append(dirs, d)
		// A new cpuset cgroup has no CPUs and memory nodes: no task could join.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), v, 0); err != nil {
					t.Fatalf("%s/%s: %v", d, f, err)
				}
			}
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no cgroup hierarchy found in /proc/self/cgroup and /proc/self/mountinfo")
	}
	return dirs
}

// cgroupMounts maps a hierarchy's controller list (sorted, comma-separated,
// "" for cgroup2) to its mount point.
func cgroupMounts(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"cpu": true, "cpuacct": true, "cpuset": true, "memory": true, "devices": true,
		"freezer": true, "net_cls": true, "net_prio": true, "blkio": true, "perf_event": true, "hugetlb": true,
		"pids": true, "rdma": true, "misc": true}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(f) < sep+4 || f[3] != "/" {
			continue
		}
		var key string
		switch f[sep+1] {
		case "cgroup2":
			key = ""
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(f[sep+3], ",") {
				if known[o] || strings.HasPrefix(o, "name=") {
					ctrls = append(ctrls, o)
				}
			}
			key = controllerKey(strings.Join(ctrls, ","))
		default:
			continue
		}
		if _, dup := m[key]; !dup {
			m[key] = f[4]
		}
	}
	return m
}

func controllerKey(list string) string {
	if list == "" {
		return ""
	}
	parts := strings.Split(list, ",")
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// killCgroups SIGKILLs every process left in the trees.
func killCgroups(dirs []string) {
	for round := 0; round < 50; round++ {
		found := false
		for _, d := range dirs {
			_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
				if err != nil || !e.IsDir() {
					return nil
				}
				data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
				for _, f := range strings.Fields(string(data)) {
					if pid, _ := strconv.Atoi(f); pid > 0 {
						found = true
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				return nil
			})
		}
		if !found {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroups removes the trees, deepest directories first.
func removeCgroups(dirs []string) error {
	var errs []error
	for _, d := range dirs {
		var all []string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		sort.Slice(all, func(i, j int) bool { return len(all[i]) > len(all[j]) })
		for _, p := range all {
			var err error
			for i := 0; i < 50; i++ {
				if err = syscall.Rmdir(p); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}
