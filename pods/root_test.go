//go:build roottest

package pods

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autopod/autopod/test/resp"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// The root tier: real CRIU, namespaces, cgroups, veths and redis-server.
// Run with `go test -tags roottest ./pods/` as root (make test-root).

const testBridge = "aptest0"

func criuPathForTest(t *testing.T) string {
	for _, p := range []string{os.Getenv("AUTOPOD_CRIU"), "/opt/autopod-criu/sbin/criu", "/usr/sbin/criu"} {
		if p == "" {
			continue
		}
		if info := ProbeCriu(context.Background(), p); info.Error == "" {
			return p
		}
	}
	t.Fatal("no working CRIU >= 4.1 found; run `make deps` (or set AUTOPOD_CRIU)")
	return ""
}

type rootEnv struct {
	m       *Manager
	podsDir string
	cfg     ManagerConfig
}

func newRootEnv(t *testing.T) *rootEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the root tier must run as root")
	}
	dir := t.TempDir()
	cfg := ManagerConfig{
		PodsDir:       filepath.Join(dir, "pods.d"),
		StateDir:      filepath.Join(dir, "state"),
		LogDir:        filepath.Join(dir, "log"),
		CriuPath:      criuPathForTest(t),
		Bridge:        testBridge,
		BridgeAddress: netip.MustParsePrefix("10.99.0.1/24"),
		CgroupName:    "autopod-test",
		StopTimeout:   5 * time.Second,
		Log:           slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	os.MkdirAll(cfg.PodsDir, 0o755)
	exe, _ := os.Executable()
	cfg.InitBinary = exe
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range m.List(context.Background()) {
			if s.State == StateRunning {
				m.Stop(context.Background(), s.Name)
			}
		}
		run(context.Background(), "ip", "link", "del", testBridge)
	})
	return &rootEnv{m: m, podsDir: cfg.PodsDir, cfg: cfg}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func redisPod(name, addr string) string {
	return fmt.Sprintf(`command = "/usr/bin/redis-server"
args = ["--port", "6379", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no",
        "--protected-mode", "no", "--enable-debug-command", "yes", "--dir", "/tmp"]
workdir = "/tmp"
restart = "no"
[network]
address = "%s/24"
bridge = "%s"
[limits]
memory = "1G"
pids = 256
`, addr, testBridge)
}

func waitRedis(t *testing.T, addr string) *resp.Conn {
	t.Helper()
	// Never send anything to an address outside the test's own bridge.
	host, _, _ := strings.Cut(addr, ":")
	if out, err := run(context.Background(), "ip", "route", "get", host); err != nil || !strings.Contains(out, "dev "+testBridge+" ") {
		t.Fatalf("%s is not routed to the test bridge %s: %v %s", host, testBridge, err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		c, err := resp.Dial(ctx, addr)
		if err == nil {
			if r, err := c.Cmd("PING"); err == nil && r == "PONG" {
				return c
			}
			c.Close()
		}
		if ctx.Err() != nil {
			t.Fatalf("redis at %s never answered: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// innerPids lists the pod's pids as seen inside its pid namespace.
func innerPids(t *testing.T, m *Manager, name string) []int {
	var out []int
	for _, p := range m.cg.procs(name) {
		out = append(out, nsPid(p))
	}
	slices.Sort(out)
	return out
}

func TestRootRedisPodCheckpointRestore(t *testing.T) {
	env := newRootEnv(t)
	m := env.m
	ctx := context.Background()
	os.WriteFile(filepath.Join(env.podsDir, "cache.toml"), []byte(redisPod("cache", "10.99.0.10")), 0o644)
	if errs := m.Load(ctx); len(errs) > 0 {
		t.Fatal(errs)
	}
	st, err := m.Get(ctx, "cache")
	if err != nil || st.State != StateRunning {
		t.Fatalf("pod not running: %+v %v", st, err)
	}
	addr := "10.99.0.10:6379"
	client := waitRedis(t, addr)
	defer client.Close()
	start := time.Now()
	if err := client.FillRandom(105, 1<<20); err != nil { // 105 MiB of random values
		t.Fatal(err)
	}
	t.Logf("filled 105 MiB in %s", time.Since(start))
	info, _ := client.Cmd("INFO", "memory")
	if !strings.Contains(info, "used_memory:") {
		t.Fatalf("INFO memory: %q", info)
	}
	digest, err := client.Cmd("DEBUG", "DIGEST")
	if err != nil {
		t.Fatal(err)
	}
	pids := innerPids(t, m, "cache")
	if len(pids) < 2 || pids[0] != 1 {
		t.Fatalf("inner pids %v: want init as 1 and redis", pids)
	}
	localAddr := client.C.LocalAddr().String()

	res, err := m.Checkpoint(ctx, "cache", CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpoint: %d bytes in %s at %s", res.Bytes, res.Duration, res.Dir)
	if res.Bytes < 100<<20 {
		t.Fatalf("image holds %d bytes, want >= 100 MiB", res.Bytes)
	}
	if st, _ := m.Get(ctx, "cache"); st.State != StateCheckpointed {
		t.Fatalf("state after checkpoint: %s", st.State)
	}
	if _, err := VerifyImages(res.Dir); err != nil {
		t.Fatal(err)
	}
	if procs := m.cg.procs("cache"); len(procs) != 0 {
		t.Fatalf("processes left after checkpoint: %v", procs)
	}

	if err := m.Restore(ctx, "cache"); err != nil {
		t.Fatal(err)
	}
	// The same TCP connection carries on: no reconnect.
	if r, err := client.Cmd("PING"); err != nil || r != "PONG" {
		t.Fatalf("PING on the old connection after restore: %q %v", r, err)
	}
	if client.C.LocalAddr().String() != localAddr {
		t.Fatal("connection changed")
	}
	d2, err := client.Cmd("DEBUG", "DIGEST")
	if err != nil || d2 != digest {
		t.Fatalf("digest after restore %q (err %v), before %q", d2, err, digest)
	}
	if got := innerPids(t, m, "cache"); !slices.Equal(got, pids) {
		t.Fatalf("inner pids after restore %v, before %v", got, pids)
	}
	// New clients reach the pod at its address too.
	c2 := waitRedis(t, addr)
	c2.Close()
	// The restore used autopod's cgroup yard, and mounted none of its own.
	if rlog, err := os.ReadFile(filepath.Join(m.podDir("cache"), "criu-logs", "restore.log")); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(string(rlog), "Opening /proc/self/fd/") || strings.Contains(string(rlog), "Making controller dir") {
		t.Errorf("the restore did not use autopod's cgroup yard; its log's cgroup lines:\n%s", grepLines(string(rlog), "cg:"))
	}

	// A checkpoint that fails after CRIU has frozen the pod and locked its
	// network leaves it running and reachable.
	st, _ = m.Get(ctx, "cache")
	var lockedDuringDump []string
	m.fault = func(step string) error {
		if step == "post-dump" {
			// By now CRIU has frozen the pod and locked its network.
			lockedDuringDump, _ = criuLockTables(ctx, st.Pid)
			return errors.New("injected failure at post-dump")
		}
		return nil
	}
	_, err = m.Checkpoint(ctx, "cache", CheckpointOptions{})
	m.fault = nil
	if err == nil {
		t.Fatal("checkpoint with an injected failure succeeded")
	}
	t.Logf("failed checkpoint said: %v", err)
	if len(lockedDuringDump) == 0 {
		t.Fatal("no CRIU network lock seen during the dump: the test did not exercise the unlock path")
	}
	st2, _ := m.Get(ctx, "cache")
	if st2.State != StateRunning || st2.Pid != st.Pid || !alive(st.Pid) {
		t.Fatalf("after failed checkpoint: %+v (was pid %d)", st2, st.Pid)
	}
	if tables, err := criuLockTables(ctx, st.Pid); err != nil || len(tables) != 0 {
		t.Fatalf("network lock left behind: %v %v", tables, err)
	}
	if r, err := client.Cmd("PING"); err != nil || r != "PONG" {
		t.Fatalf("PING after failed checkpoint: %q %v", r, err)
	}
	if d3, _ := client.Cmd("DEBUG", "DIGEST"); d3 != digest {
		t.Fatal("data changed by the failed checkpoint")
	}

	// A restore that fails keeps the images and quotes CRIU; a corrupt
	// image is refused before CRIU runs. Then the real restore works.
	if _, err := m.Checkpoint(ctx, "cache", CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	m.fault = func(step string) error {
		if step == "post-restore" {
			return errors.New("injected failure at post-restore")
		}
		return nil
	}
	err = m.Restore(ctx, "cache")
	m.fault = nil
	if err == nil || !strings.Contains(err.Error(), "Error (") {
		t.Fatalf("failed restore: want CRIU's error lines, got %v", err)
	}
	t.Logf("failed restore said: %v", err)
	st4, _ := m.Get(ctx, "cache")
	if st4.State != StateCheckpointed {
		t.Fatalf("state after failed restore: %s", st4.State)
	}
	if _, err := VerifyImages(st4.Checkpoint); err != nil {
		t.Fatalf("images damaged by failed restore: %v", err)
	}
	pages, _ := filepath.Glob(filepath.Join(st4.Checkpoint, "pages-*.img"))
	if len(pages) == 0 {
		t.Fatal("no pages image")
	}
	orig, _ := os.ReadFile(pages[0])
	bad := slices.Clone(orig)
	bad[len(bad)/2] ^= 0xff
	os.WriteFile(pages[0], bad, 0o600)
	if err := m.Restore(ctx, "cache"); !errors.Is(err, ErrImageCorrupt) {
		t.Fatalf("restore of a corrupt image: %v", err)
	}
	os.WriteFile(pages[0], orig, 0o600)
	if err := m.Restore(ctx, "cache"); err != nil {
		t.Fatal(err)
	}
	// The restored tree of the failed attempt died behind the network
	// lock, so the client never saw a reset: its connection carries on.
	if d, err := client.Cmd("DEBUG", "DIGEST"); err != nil || d != digest {
		t.Fatalf("after a failed then a good restore: digest %q, %v", d, err)
	}
	st, _ = m.Get(ctx, "cache")

	// --leave-running: the pod keeps serving on the same connection.
	res, err = m.Checkpoint(ctx, "cache", CheckpointOptions{LeaveRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	if st3, _ := m.Get(ctx, "cache"); st3.State != StateRunning || st3.Pid != st.Pid {
		t.Fatalf("leave-running checkpoint: %+v", st3)
	}
	if r, err := client.Cmd("PING"); err != nil || r != "PONG" {
		t.Fatalf("PING after leave-running checkpoint: %q %v", r, err)
	}

	// Stop leaves nothing behind.
	if err := m.Stop(ctx, "cache"); err != nil {
		t.Fatal(err)
	}
	if alive(st.Pid) {
		t.Fatal("init still alive after stop")
	}
	dirs, _ := m.cg.dirs("cache")
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left behind", d)
		}
	}
	if _, err := run(ctx, "ip", "link", "show", hostVeth("cache")); err == nil {
		t.Error("veth left behind")
	}
}

// makeRootFS builds a minimal root file system holding redis-server and
// the libraries it links, the way an operator's own rootfs would.
func makeRootFS(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	out, err := run(context.Background(), "ldd", "/usr/bin/redis-server")
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"/usr/bin/redis-server"}
	for _, l := range strings.Split(out, "\n") {
		for _, f := range strings.Fields(l) {
			if strings.HasPrefix(f, "/") {
				files = append(files, f)
			}
		}
	}
	for _, f := range files {
		dst := filepath.Join(root, f)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if _, err := run(context.Background(), "cp", "-L", f, dst); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/false\n"), 0o644)
	return root
}

func TestRootDirPodCheckpointRestore(t *testing.T) {
	env := newRootEnv(t)
	m := env.m
	ctx := context.Background()
	root := makeRootFS(t)
	data := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(data, 0o755)
	spec := fmt.Sprintf(`command = "/usr/bin/redis-server"
args = ["--bind", "0.0.0.0", "--protected-mode", "no", "--enable-debug-command", "yes",
        "--dir", "/data", "--dbfilename", "dump.rdb"]
workdir = "/data"
[root]
mode = "dir"
path = %q
[[mount]]
source = %q
target = "/data"
[network]
address = "10.99.0.20/24"
bridge = %q
`, root, data, testBridge)
	os.WriteFile(filepath.Join(env.podsDir, "rootfs.toml"), []byte(spec), 0o644)
	if errs := m.Load(ctx); len(errs) > 0 {
		t.Fatal(errs)
	}
	c := waitRedis(t, "10.99.0.20:6379")
	defer c.Close()
	if _, err := c.Cmd("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	// The data bind is the host directory: SAVE writes through it.
	if _, err := c.Cmd("SAVE"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(data, "dump.rdb")); err != nil {
		t.Fatalf("data bind mount: %v", err)
	}
	// The pod sees its own root, not the host's.
	st, _ := m.Get(ctx, "rootfs")
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/usr/bin/redis-server", st.Pid)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/usr/bin/bash", st.Pid)); err == nil {
		t.Fatal("pod with a separate root sees the host's /usr/bin/bash")
	}
	// A dump of a pod that its caller has cut off the network (a
	// migration's) takes no network lock of CRIU's; a checkpoint does.
	m.mu.Lock()
	p := m.pods["rootfs"]
	cutReq := criuRequest{ImagesDir: t.TempDir(), WorkDir: t.TempDir(), LogName: "dump.log", Pid: st.Pid,
		LeaveRunning: true, CutOff: true, ExtMounts: m.extMounts(p.spec, p.st.InitHash)}
	m.mu.Unlock()
	if err := m.criu.Dump(ctx, cutReq); err != nil {
		t.Fatal(err)
	}
	if got := imagesNetworkLock(t, cutReq.ImagesDir); got != criuNetworkLockSkip {
		t.Errorf("a dump with CutOff recorded network lock method %d, want %d (skip)", got, criuNetworkLockSkip)
	}
	if v, err := c.Cmd("GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET after a dump that left the pod running: %q %v", v, err)
	}
	res, err := m.Checkpoint(ctx, "rootfs", CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := imagesNetworkLock(t, res.Dir); got != 1 {
		t.Errorf("a checkpoint recorded network lock method %d, want 1 (nftables)", got)
	}
	lazyDaemonNiced(t, m.criu, res.Dir)
	if err := m.Restore(ctx, "rootfs"); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Cmd("GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET on the old connection after restore: %q %v", v, err)
	}
	if err := m.Stop(ctx, "rootfs"); err != nil {
		t.Fatal(err)
	}
}

func TestRootRestartPolicyAndReadoption(t *testing.T) {
	env := newRootEnv(t)
	m := env.m
	ctx := context.Background()
	os.WriteFile(filepath.Join(env.podsDir, "sleeper.toml"), []byte(`command = "/bin/sleep"
args = ["1000"]
restart = "on-failure"
`), 0o644)
	if errs := m.Load(ctx); len(errs) > 0 {
		t.Fatal(errs)
	}
	st, _ := m.Get(ctx, "sleeper")
	if st.State != StateRunning {
		t.Fatalf("%+v", st)
	}
	// Kill the workload (not the init): the init exits with 128+9, a failure.
	var workload int
	for _, p := range m.cg.procs("sleeper") {
		if p != st.Pid {
			workload = p
		}
	}
	if workload == 0 {
		t.Fatal("no workload process in the pod's cgroup")
	}
	syscall.Kill(workload, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, _ := m.Get(ctx, "sleeper")
		if s.State == StateRunning && s.Pid != st.Pid {
			if s.Restarts != 1 {
				t.Fatalf("restarts = %d", s.Restarts)
			}
			st = s
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod not restarted: %+v", s)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A second manager over the same state re-adopts the running pod
	// instead of starting another copy.
	m2, err := NewManager(env.cfg)
	if err != nil {
		t.Fatal(err)
	}
	m2.Load(ctx)
	s2, _ := m2.Get(ctx, "sleeper")
	if s2.State != StateRunning || s2.Pid != st.Pid {
		t.Fatalf("re-adoption: %+v, want pid %d", s2, st.Pid)
	}
	if n := len(m.cg.procs("sleeper")); n != 2 {
		t.Fatalf("%d processes in the pod, want init + sleep", n)
	}
	// A clean exit under on-failure is not restarted.
	if err := m2.Stop(ctx, "sleeper"); err != nil {
		t.Fatal(err)
	}
	if s, _ := m2.Get(ctx, "sleeper"); s.State != StateStopped {
		t.Fatalf("after stop: %+v", s)
	}
}

// TestRootCgroupV2Layout runs the cgroup code against a unified (v2-only)
// mount, as current distributions have, by re-running this test binary in
// a private mount namespace with cgroup2 mounted at a directory of its own.
// (These machines have the hybrid layout, where the controllers belong to
// v1; the unified hierarchy there still takes pods and pids, so everything
// but the limits can be exercised.)
func TestRootCgroupV2Layout(t *testing.T) {
	if os.Getenv("AUTOPOD_V2_CHILD") != "" {
		cgroupV2Child(t)
		return
	}
	dir := t.TempDir()
	exe, _ := os.Executable()
	out, err := run(context.Background(), "unshare", "--mount", "--propagation", "private", "sh", "-c",
		fmt.Sprintf("mount -t cgroup2 none %q && AUTOPOD_V2_CHILD=%q exec %q -test.run '^TestRootCgroupV2Layout$' -test.v", dir, dir, exe))
	t.Log(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "--- PASS: TestRootCgroupV2Layout") {
		t.Fatal("the child did not run the v2 checks")
	}
}

func cgroupV2Child(t *testing.T) {
	mount := os.Getenv("AUTOPOD_V2_CHILD")
	c := cgroups{mount: mount, name: "autopod-v2test"}
	l, err := c.layout()
	if err != nil || !l.unified {
		t.Fatalf("layout of %s: %+v %v", mount, l, err)
	}
	dirs, _ := c.dirs("p")
	if len(dirs) != 1 || dirs[0] != filepath.Join(mount, "autopod-v2test", "p") {
		t.Fatalf("dirs: %v", dirs)
	}
	if ctl := c.controllers(); len(ctl) != 1 || ctl[0] != "" {
		t.Fatalf("controllers: %q", ctl)
	}
	if err := c.create("p", Limits{}); err != nil {
		t.Fatalf("create without limits: %v", err)
	}
	defer os.Remove(filepath.Join(mount, "autopod-v2test"))
	// A child process to place in the pod's cgroup.
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.join("p", cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if procs := c.procs("p"); len(procs) != 1 || procs[0] != cmd.Process.Pid {
		t.Fatalf("procs: %v", procs)
	}
	if err := c.freeze("p", true); err != nil {
		t.Fatalf("freeze through cgroup.freeze: %v", err)
	}
	if err := c.freeze("p", false); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := c.remove("p"); err != nil {
		t.Fatal(err)
	}
	t.Logf("v2 layout at %s: create, join, procs, freeze, thaw, remove all work", mount)
	// A limit needs its controller, which this hybrid host keeps on v1:
	// the error says where to look.
	l.v1 = nil
	err = c.create("q", Limits{MemoryBytes: 64 << 20})
	os.Remove(filepath.Join(mount, "autopod-v2test", "q"))
	if err == nil || !strings.Contains(err.Error(), "subtree_control") {
		if err == nil && fileExists(filepath.Join(mount, "cgroup.controllers")) {
			b, _ := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
			if strings.Contains(string(b), "memory") {
				return // a real v2 host: the limit was applied
			}
		}
		t.Fatalf("memory limit without the memory controller: %v", err)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestRootCgroupYard: autopod's cgroup yard holds a mount of each of this
// host's hierarchies, reachable through the path it hands out, and none of
// it shows in the host's mount table.
func TestRootCgroupYard(t *testing.T) {
	var y cgroupYard
	path, dirs, release, err := y.acquire()
	if err != nil {
		t.Fatal(err)
	}
	hs, err := cgHierarchies()
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != len(hs) {
		t.Fatalf("yard dirs %v for hierarchies %v", dirs, hs)
	}
	for i, h := range hs {
		var st unix.Statfs_t
		if err := unix.Statfs(filepath.Join(path, dirs[i]), &st); err != nil {
			t.Fatalf("%s (%q): %v", dirs[i], string(h), err)
		}
		want := int64(unix.CGROUP_SUPER_MAGIC)
		if h == "" {
			want = unix.CGROUP2_SUPER_MAGIC
		}
		if int64(st.Type) != want {
			t.Errorf("%s: file system %#x, want %#x", dirs[i], st.Type, want)
		}
		// The same hierarchy as the host's: this process's own cgroup is there.
		if _, err := os.Stat(filepath.Join(path, dirs[i], "cgroup.procs")); err != nil {
			t.Errorf("%s: %v", dirs[i], err)
		}
	}
	release()
	// The yard's namespace is made on a thread that then ends; the main
	// thread (what /proc/self shows, and where Go would keep a thread that
	// ended locked) stays in the host's. Goroutines often land on the main
	// thread: build many.
	nsBefore, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		ns, dir, err := buildYard(hs)
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
		ns.Close()
		dir.Close()
		mi, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(mi), "cgyard") {
			t.Fatalf("build %d: the yard shows in the main thread's mount table:\n%s", i, grepLines(string(mi), "cgyard"))
		}
		if now, _ := os.Readlink("/proc/self/ns/mnt"); now != nsBefore {
			t.Fatalf("build %d: the main thread is in mount namespace %s, was in %s", i, now, nsBefore)
		}
	}
	if _, err := os.Stat(path); err == nil {
		t.Errorf("%s still open after release", path)
	}
	// The second run reuses it.
	ns := y.ns
	_, _, release, err = y.acquire()
	if err != nil {
		t.Fatal(err)
	}
	release()
	if y.ns != ns {
		t.Error("the yard was built again for an unchanged host")
	}
	y.mu.Lock()
	y.closeLocked()
	y.mu.Unlock()
}

// imagesNetworkLock returns the network-lock method that the dump in dir
// recorded (CRIU's enum: iptables 0, nftables 1, skip 2).
func imagesNetworkLock(t *testing.T, dir string) uint32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "inventory.img"))
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := splitInventory(b)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	var e inventory.InventoryEntry
	if err := proto.Unmarshal(msg, &e); err != nil {
		t.Fatal(err)
	}
	return e.GetNetworkLockMethod()
}

// lazyDaemonNiced checks that a lazy-pages daemon for the images in dir
// (it reads them, then waits for a restore) runs at lazyDaemonNice, with
// lazyDaemonSlice where the kernel keeps a fair task's slice (6.12 and
// later): it spins while it waits for pages.
func lazyDaemonNiced(t *testing.T, c criuRunner, dir string) {
	t.Helper()
	d, err := c.startLazyDaemon(t.Context(), dir, t.TempDir(), "127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { d.kill(); d.wait(context.Background()) }()
	f, err := statFields(d.cmd.Process.Pid, 17)
	if err != nil {
		t.Fatal(err)
	}
	if f[16] != strconv.Itoa(lazyDaemonNice) { // field 19
		t.Fatalf("lazy-pages daemon's nice %s, want %d", f[16], lazyDaemonNice)
	}
	attr, err := unix.SchedGetAttr(d.cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A kernel that keeps a fair task's slice reports it (its default
	// when none was asked for); an older one reports 0.
	want := uint64(lazyDaemonSlice.Nanoseconds())
	switch {
	case attr.Policy != unix.SCHED_NORMAL:
		t.Fatalf("lazy-pages daemon's policy %d, want SCHED_NORMAL", attr.Policy)
	case attr.Runtime == 0:
		t.Log("this kernel keeps no slice for fair tasks")
	case attr.Runtime != want:
		t.Fatalf("lazy-pages daemon's slice %d ns, want %d", attr.Runtime, want)
	}
}
