//go:build roottest && bench

package pods

// The parts of the benchmarks (make bench, scripts/bench.sh) that need the
// pods package's insides: a Manager on a bridge of the bench's own, pods
// driven outside the Manager for the raw-CRIU column, and autopod's CRIU
// options spelled for the criu command line. The generic harness (tables
// of ratios, the pinging client, pressure readings, reports for
// docs/benchmarks.md) is test/benchkit.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/checkpoint-restore/go-criu/v7/rpc"

	"github.com/autopod/autopod/test/benchkit"
)

// The bench's own bridge, subnet and cgroup directory, distinct from those
// of the root tests (aptest0, 10.99.0.0/24, autopod-test), the system
// tests (10.98.0.0/24) and the demo (autopod0, 10.77.0.0/24), so that they
// can run at the same time.
const (
	benchBridge  = "apbench0"
	benchCgroup  = "autopod-bench"
	benchNet     = "10.97.0." // pods get benchNet+"10" and up
	benchGateway = benchNet + "1/24"
	benchPort    = 6379
)

// benchEnv is one Manager on the bench bridge, plus the pods that the
// bench runs outside the Manager (for the raw-CRIU column). Its cleanup
// stops every pod and removes the bridge.
type benchEnv struct {
	t        *testing.T
	m        *Manager
	dir      string
	criuPath string
	podsDir  string
	// raw pods: started with the Manager's launch but driven by the test.
	mu  sync.Mutex
	raw map[string]int // pod name -> host pid of its init
}

func newBenchEnv(t *testing.T) *benchEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the benchmarks must run as root (sudo make bench)")
	}
	criuPath := benchCriuPath(t)
	// State on disk, not tmpfs: images and RDB files go where a real
	// agent's would (/var/lib), through the page cache of a real disk.
	dir, err := os.MkdirTemp("/var/tmp", "autopod-bench-")
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	cfg := ManagerConfig{
		PodsDir:       filepath.Join(dir, "pods.d"),
		StateDir:      filepath.Join(dir, "state"),
		LogDir:        filepath.Join(dir, "log"),
		CriuPath:      criuPath,
		Bridge:        benchBridge,
		BridgeAddress: netip.MustParsePrefix(benchGateway),
		CgroupName:    benchCgroup,
		InitBinary:    exe,
		StopTimeout:   10 * time.Second,
		Log:           slog.New(slog.NewTextHandler(benchLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if err := os.MkdirAll(cfg.PodsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &benchEnv{t: t, m: m, dir: dir, criuPath: criuPath, podsDir: cfg.PodsDir, raw: map[string]int{}}
	t.Cleanup(e.cleanup)
	return e
}

func (e *benchEnv) cleanup() {
	ctx := context.Background()
	for _, s := range e.m.List(ctx) {
		if s.State == StateRunning {
			if err := e.m.Stop(ctx, s.Name); err != nil {
				e.t.Errorf("cleanup: stop %s: %v", s.Name, err)
			}
		}
	}
	e.mu.Lock()
	raw := e.raw
	e.raw = map[string]int{}
	e.mu.Unlock()
	for name, pid := range raw {
		e.killRaw(name, pid)
	}
	if _, err := run(ctx, "ip", "link", "show", "dev", benchBridge); err == nil {
		if _, err := run(ctx, "ip", "link", "del", benchBridge); err != nil {
			e.t.Errorf("cleanup: %v", err)
		}
	}
	if os.Getenv("BENCH_KEEP") != "" {
		e.t.Logf("BENCH_KEEP: kept %s (images, CRIU logs)", e.dir)
		return
	}
	if err := os.RemoveAll(e.dir); err != nil {
		e.t.Errorf("cleanup: %v", err)
	}
}

// benchLogWriter sends the Manager's warnings to the test log.
type benchLogWriter struct{ t *testing.T }

func (w benchLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// killRaw ends a pod that the test drives itself and removes what it left.
func (e *benchEnv) killRaw(name string, pid int) {
	if pid > 0 && alive(pid) {
		_ = unix.Kill(pid, unix.SIGKILL) // the pid namespace's init: takes the pod with it
		waitExit(pid)
	}
	e.m.cleanup(context.Background(), name)
}

func (e *benchEnv) setRaw(name string, pid int) {
	e.mu.Lock()
	e.raw[name] = pid
	e.mu.Unlock()
}

// benchCriuPath is the CRIU the benchmark uses: $AUTOPOD_CRIU, else the one
// `make deps` builds, else the distribution's; the first that works here.
func benchCriuPath(t *testing.T) string {
	var tried []string
	for _, p := range []string{os.Getenv("AUTOPOD_CRIU"), "/opt/autopod-criu/sbin/criu", "/usr/sbin/criu"} {
		if p == "" {
			continue
		}
		info := ProbeCriu(context.Background(), p)
		if info.Error == "" {
			return p
		}
		tried = append(tried, info.Error)
	}
	t.Fatalf("no working CRIU >= 4.1 (run `make deps` or set AUTOPOD_CRIU): %s", strings.Join(tried, "; "))
	return ""
}

// benchTargetFor is the only way the bench gets an address to send
// traffic to: benchkit.RoutedTarget refuses any address that the host does
// not route into the bench's own bridge.
func benchTargetFor(t *testing.T, ip string) benchkit.Target {
	t.Helper()
	target, err := benchkit.RoutedTarget(context.Background(), ip, benchPort, benchBridge)
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// criuCLIArgs turns the options autopod hands go-criu (criuRequest.opts)
// into the criu command line that sets the same options, so that the
// raw-CRIU column runs exactly autopod's option set. An option it does
// not know how to spell fails the benchmark rather than silently
// comparing different things.
func criuCLIArgs(r criuRequest) ([]string, error) {
	img, work, err := criuRunner{}.open(r)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	defer work.Close()
	o := r.opts(img, work)
	var args, unknown []string
	cgMode := ""
	manage := false
	o.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch fd.Name() {
		case "images_dir_fd":
			args = append(args, "-D", r.ImagesDir)
		case "work_dir_fd":
			args = append(args, "-W", r.WorkDir)
		case "log_file":
			args = append(args, "-o", v.String())
		case "log_level":
			args = append(args, fmt.Sprintf("-v%d", v.Int()))
		case "tcp_established":
			if v.Bool() {
				args = append(args, "--tcp-established")
			}
		case "file_locks":
			if v.Bool() {
				args = append(args, "--file-locks")
			}
		case "orphan_pts_master":
			// RPC only (it hands a pty master back over the RPC socket);
			// the criu CLI has no such option, and the bench's pods have
			// no pty for it to matter.
		case "network_lock":
			args = append(args, "--network-lock", strings.ToLower(rpc.CriuNetworkLockMethod(v.Enum()).String()))
		case "manage_cgroups":
			manage = v.Bool()
		case "manage_cgroups_mode":
			cgMode = strings.ToLower(rpc.CriuCgMode(v.Enum()).String())
		default:
			unknown = append(unknown, string(fd.Name()))
		}
		return true
	})
	if manage || cgMode != "" {
		if cgMode != "" {
			args = append(args, "--manage-cgroups="+cgMode)
		} else {
			args = append(args, "--manage-cgroups")
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("criuRequest.opts sets options the bench cannot spell on the criu command line: %v (teach criuCLIArgs)", unknown)
	}
	return args, nil
}

// dirBytes is the total size of the regular files in dir.
func dirBytes(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}
