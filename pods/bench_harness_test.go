//go:build roottest && bench

package pods

// The benchmark harness behind `make bench` (scripts/bench.sh): real pods on
// a bridge of their own, a client that measures the pause it sees, and
// tables that put autopod next to its references (the bare tool, a cold
// restart, ...) as ratios measured in the same run, because these machines
// are shared and noisy and absolute numbers from different runs do not
// compare. Benchmarks are never part of `make test`.
//
// A benchmark builds a benchTable: rows are metrics, columns are ways of
// doing the thing (autopod, raw criu, cold restart; a migration benchmark
// adds its own), and each trial adds one benchSample per column. The table
// renders every cell as the median and the min–max of its trials, plus
// ratio columns between chosen pairs of columns. benchReport writes the
// rendered section to $AUTOPOD_BENCH_OUT/<key>.md, which scripts/bench.sh
// splices into docs/benchmarks.md.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/checkpoint-restore/go-criu/v7/rpc"

	"github.com/autopod/autopod/test/resp"
)

// The bench's own bridge, subnet and cgroup directory, distinct from the
// root tests' (aptest0, 10.99.0.0/24, autopod-test) and the demo's
// (autopod0, 10.77.0.0/24) so that they can run at the same time.
const (
	benchBridge  = "apbench0"
	benchCgroup  = "autopod-bench"
	benchGateway = "10.98.0.1/24"
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

// benchTarget is an address the benchmark may send traffic to. The only
// way to get one is benchTargetFor, which refuses any address that the
// host does not route into the bench's own bridge: the benchmark never
// sends anything anywhere else.
type benchTarget struct{ addr string }

func benchTargetFor(t *testing.T, ip string) benchTarget {
	t.Helper()
	out, err := run(context.Background(), "ip", "route", "get", ip)
	if err != nil || !strings.Contains(out, "dev "+benchBridge+" ") {
		t.Fatalf("%s is not routed to the bench bridge %s: %v %s", ip, benchBridge, err, out)
	}
	return benchTarget{addr: net.JoinHostPort(ip, strconv.Itoa(benchPort))}
}

func (b benchTarget) String() string { return b.addr }

func (b benchTarget) dial(timeout time.Duration) (*resp.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return resp.Dial(ctx, b.addr)
}

// pingConn is the pinger's connection: it only ever sends PING.
type pingConn struct {
	c net.Conn
	r *bufio.Reader
}

func (b benchTarget) dialPing(timeout time.Duration) (*pingConn, error) {
	c, err := net.DialTimeout("tcp", b.addr, timeout)
	if err != nil {
		return nil, err
	}
	return &pingConn{c: c, r: bufio.NewReader(c)}, nil
}

func (p *pingConn) Close() error { return p.c.Close() }

// waitReady dials b until redis answers PING (not -LOADING) and reports
// loading:0, trying every 10 ms with short dial timeouts so that the wait
// does not add TCP's SYN back-off to what it measures.
func (b benchTarget) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		c, err := b.dial(50 * time.Millisecond)
		if err != nil {
			last = err
			time.Sleep(10 * time.Millisecond)
			continue
		}
		for time.Now().Before(deadline) {
			r, err := c.Do(time.Second, []byte("PING"))
			if err == nil && r == "PONG" {
				info, err := c.Do(time.Second, []byte("INFO"), []byte("persistence"))
				if err == nil && strings.Contains(info, "loading:0") {
					c.Close()
					return nil
				}
			}
			if err != nil && !isRedisError(err) {
				last = err
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		c.Close()
	}
	return fmt.Errorf("redis at %s not ready after %s: %v", b, timeout, last)
}

// isRedisError tells a reply of the server (-LOADING …) from a broken connection.
func isRedisError(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "redis: ") }

// pinger is the client whose pause the benchmark reports: one TCP
// connection, a PING every 10 ms, each waiting for its reply. It records
// when every PONG arrived; the longest gap between two is the pause the
// client saw. If its connection breaks (a cold restart) it reconnects,
// trying every 10 ms with 50 ms dial timeouts, and counts that.
type pinger struct {
	target benchTarget
	mu     sync.Mutex
	pongs  []time.Time
	redial int
	odd    []string  // replies that were not RESP: reported, never expected
	stopAt time.Time // stop at the first PONG after this
	done   chan error
}

const pingEvery = 10 * time.Millisecond

// startPinger connects and returns once a few PINGs were answered, so the
// pause that follows is measured from a steady state.
func startPinger(target benchTarget) (*pinger, error) {
	c, err := target.dialPing(5 * time.Second)
	if err != nil {
		return nil, err
	}
	p := &pinger{target: target, done: make(chan error, 1)}
	go p.loop(c)
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.pongs)
		p.mu.Unlock()
		if n >= 5 {
			return p, nil
		}
		select {
		case err := <-p.done:
			return nil, fmt.Errorf("pinger: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return nil, errors.New("pinger: no PONG in 5s")
		}
		time.Sleep(pingEvery)
	}
}

func (p *pinger) loop(c *pingConn) {
	hardStop := time.Now().Add(10 * time.Minute)
	for {
		sent := time.Now()
		if sent.After(hardStop) {
			p.done <- errors.New("ran for 10 minutes")
			return
		}
		if c == nil {
			var err error
			if c, err = p.target.dialPing(50 * time.Millisecond); err != nil {
				c = nil
				time.Sleep(pingEvery)
				continue
			}
			p.mu.Lock()
			p.redial++
			p.mu.Unlock()
		}
		err := ping(c, 2*time.Minute)
		now := time.Now()
		switch {
		case err == nil:
			p.mu.Lock()
			p.pongs = append(p.pongs, now)
			stop := !p.stopAt.IsZero() && now.After(p.stopAt)
			p.mu.Unlock()
			if stop {
				c.Close()
				p.done <- nil
				return
			}
		case isRedisError(err): // -LOADING: the server is up but not serving yet
		default:
			if strings.Contains(err.Error(), "unexpected reply") {
				p.mu.Lock()
				p.odd = append(p.odd, err.Error())
				p.mu.Unlock()
			}
			c.Close()
			c = nil
		}
		if d := time.Until(sent.Add(pingEvery)); d > 0 {
			time.Sleep(d)
		}
	}
}

// ping sends one PING on c and reads its reply.
func ping(c *pingConn, timeout time.Duration) error {
	c.c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c.c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	switch line = strings.TrimRight(line, "\r\n"); {
	case line == "+PONG":
		return nil
	case strings.HasPrefix(line, "-"):
		return fmt.Errorf("redis: %s", line[1:])
	}
	return fmt.Errorf("unexpected reply %q to PING", line)
}

// finish waits for the first PONG after now, stops the pinger and returns
// the longest gap between two PONGs and how often it had to reconnect.
func (p *pinger) finish(timeout time.Duration) (gap time.Duration, redials int, err error) {
	p.mu.Lock()
	p.stopAt = time.Now()
	p.mu.Unlock()
	select {
	case err = <-p.done:
	case <-time.After(timeout):
		return 0, 0, fmt.Errorf("pinger: no PONG within %s of the end", timeout)
	}
	if err != nil {
		return 0, 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.odd) > 0 {
		return 0, 0, fmt.Errorf("pinger: %s", strings.Join(p.odd, "; "))
	}
	for i := 1; i < len(p.pongs); i++ {
		gap = max(gap, p.pongs[i].Sub(p.pongs[i-1]))
	}
	return gap, p.redial, nil
}

// criuLogSeconds is how long a CRIU run took by its own clock: the
// timestamp "(SS.uuuuuu)" of the last line of its log.
func criuLogSeconds(path string) (float64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	ms := criuLogStamp.FindAllSubmatch(data, -1)
	if len(ms) == 0 {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(ms[len(ms)-1][1]), 64)
	return v, err == nil
}

var criuLogStamp = regexp.MustCompile(`(?m)^\((\d+\.\d+)\)`)

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

// benchSample is one trial of one column: metric key -> value.
type benchSample map[string]float64

// benchMetric is a row: Unit "s" prints seconds, "MB" bytes in 10^6,
// "" a count. Ratio says whether ratio columns are meaningful for it.
type benchMetric struct {
	Key, Label, Unit string
	Ratio            bool
}

type benchColumn struct{ Key, Label string }

type benchTable struct {
	Metrics []benchMetric
	Columns []benchColumn
	Ratios  [][2]string // column keys: numerator, denominator
	samples map[string][]benchSample
}

func (bt *benchTable) add(col string, s benchSample) {
	if bt.samples == nil {
		bt.samples = map[string][]benchSample{}
	}
	bt.samples[col] = append(bt.samples[col], s)
}

// values are a metric's values over the trials of a column, sorted.
func (bt *benchTable) values(col, metric string) []float64 {
	var vs []float64
	for _, s := range bt.samples[col] {
		if v, ok := s[metric]; ok {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "s":
		if v < 10 {
			return strconv.FormatFloat(v, 'f', 2, 64)
		}
		return strconv.FormatFloat(v, 'f', 1, 64)
	case "MB":
		return strconv.FormatFloat(v/1e6, 'f', 0, 64)
	case "%":
		return strconv.FormatFloat(v, 'f', 0, 64) + " %"
	default:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
}

func (bt *benchTable) cell(col string, m benchMetric) string {
	vs := bt.values(col, m.Key)
	if len(vs) == 0 {
		return "–"
	}
	med := formatValue(median(vs), m.Unit)
	lo, hi := formatValue(vs[0], m.Unit), formatValue(vs[len(vs)-1], m.Unit)
	if lo == hi {
		return med
	}
	return fmt.Sprintf("%s (%s–%s)", med, lo, hi)
}

func (bt *benchTable) ratio(pair [2]string, m benchMetric) string {
	if !m.Ratio {
		return "–"
	}
	a, b := median(bt.values(pair[0], m.Key)), median(bt.values(pair[1], m.Key))
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "–"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "×"
}

func (bt *benchTable) label(key string) string {
	for _, c := range bt.Columns {
		if c.Key == key {
			return c.Label
		}
	}
	return key
}

// markdown renders the table: median (min–max) per cell, ratios of medians.
func (bt *benchTable) markdown() string {
	var b strings.Builder
	head := []string{"metric"}
	align := []string{"---"}
	for _, c := range bt.Columns {
		head = append(head, c.Label)
		align = append(align, "---:")
	}
	for _, r := range bt.Ratios {
		head = append(head, bt.label(r[0])+" / "+bt.label(r[1]))
		align = append(align, "---:")
	}
	fmt.Fprintf(&b, "| %s |\n|%s|\n", strings.Join(head, " | "), strings.Join(align, "|"))
	for _, m := range bt.Metrics {
		row := []string{m.Label}
		for _, c := range bt.Columns {
			row = append(row, bt.cell(c.Key, m))
		}
		for _, r := range bt.Ratios {
			row = append(row, bt.ratio(r, m))
		}
		fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
	}
	return b.String()
}

// benchReport is one section of docs/benchmarks.md.
type benchReport struct {
	Key   string // file name under $AUTOPOD_BENCH_OUT, and scripts/bench.sh's marker
	Title string // the heading bench.sh gives a section new to docs/benchmarks.md
	parts []string
}

func (r *benchReport) add(md string) { r.parts = append(r.parts, md) }

// write prints the section and, when $AUTOPOD_BENCH_OUT is set, writes it
// there for scripts/bench.sh to splice into docs/benchmarks.md.
func (r *benchReport) write(t *testing.T) {
	body := strings.Join(r.parts, "\n")
	fmt.Printf("\n%s\n", body)
	out := os.Getenv("AUTOPOD_BENCH_OUT")
	if out == "" {
		return
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	data := "<!-- title: " + r.Title + " -->\n" + body
	if err := os.WriteFile(filepath.Join(out, r.Key+".md"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// benchEnvironment describes the machine and the run, for the report.
func benchEnvironment(criuPath string) string {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	cpu := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var si unix.Sysinfo_t
	_ = unix.Sysinfo(&si)
	redis := "?"
	if out, err := exec.Command("redis-server", "--version").Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if v, ok := strings.CutPrefix(f, "v="); ok {
				redis = v
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	return fmt.Sprintf("Run %s on Linux %s, %d CPUs (%s), %.0f GiB RAM; CRIU %s (%s); redis %s; %s; load average at the start %s.",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), unix.ByteSliceToString(uts.Release[:]),
		runtime.NumCPU(), cpu, float64(si.Totalram)*float64(si.Unit)/(1<<30),
		criuVersion(context.Background(), criuPath), criuPath, redis, runtime.Version(),
		strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
}

// benchSize is a data size given as "100M" or "1G" (MiB / GiB).
type benchSize struct {
	Name string
	MiB  int
}

func (s benchSize) String() string {
	if s.MiB%1024 == 0 {
		return fmt.Sprintf("%d GiB", s.MiB/1024)
	}
	return fmt.Sprintf("%d MiB", s.MiB)
}

func parseBenchSize(s string) (benchSize, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	mul := 1
	num := s
	switch {
	case strings.HasSuffix(s, "G"):
		mul, num = 1024, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		num = strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return benchSize{}, fmt.Errorf("bad size %q: want e.g. 100M or 1G", s)
	}
	return benchSize{Name: s, MiB: n * mul}, nil
}

// benchSizes reads $BENCH_SIZES ("100M 1G" by default).
func benchSizes(t *testing.T, def string) []benchSize {
	spec := os.Getenv("BENCH_SIZES")
	if spec == "" {
		spec = def
	}
	var out []benchSize
	for _, f := range strings.FieldsFunc(spec, func(r rune) bool { return r == ' ' || r == ',' }) {
		s, err := parseBenchSize(f)
		if err != nil {
			t.Fatalf("BENCH_SIZES: %v", err)
		}
		out = append(out, s)
	}
	return out
}

// benchCount reads a positive integer from the first set variable of
// names, else def.
func benchCount(t *testing.T, def int, names ...string) int {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			i, err := strconv.Atoi(v)
			if err != nil || i < 0 {
				t.Fatalf("%s=%q: want a count", n, v)
			}
			return i
		}
	}
	return def
}

// settle lets the previous step's dirty pages reach the disk, so that one
// column's write-back is not charged to the next, then waits (10 s at most)
// for half a second in which the host's CPU pressure stays under 30 %:
// other people's work on a shared machine hits every column alike that
// way, and what remains is recorded with each sample (psi).
func settle() {
	unix.Sync()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := psiNow()
		time.Sleep(500 * time.Millisecond)
		if cpu, _ := psiNow().since(p); cpu < 30 || time.Now().After(deadline) {
			return
		}
	}
}

// psi is a reading of the kernel's pressure stall counters: how long some
// task waited for a CPU, or for I/O.
type psi struct {
	at      time.Time
	cpu, io time.Duration
}

func psiNow() psi {
	return psi{at: time.Now(), cpu: psiTotal("/proc/pressure/cpu"), io: psiTotal("/proc/pressure/io")}
}

// since returns the share of wall time since p in which some task stalled
// on CPU and on I/O, in percent.
func (p psi) since(old psi) (cpu, io float64) {
	wall := float64(p.at.Sub(old.at))
	if wall <= 0 {
		return 0, 0
	}
	return 100 * float64(p.cpu-old.cpu) / wall, 100 * float64(p.io-old.io) / wall
}

// psiTotal reads the "some … total=µs" counter of a /proc/pressure file
// (0 when the kernel has no PSI).
func psiTotal(path string) time.Duration {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, "some ") {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				us, _ := strconv.ParseInt(v, 10, 64)
				return time.Duration(us) * time.Microsecond
			}
		}
	}
	return 0
}

// withPressure runs one step and adds to its sample how much the host's
// CPU and I/O were under pressure meanwhile.
func withPressure(step func() (benchSample, error)) (benchSample, error) {
	before := psiNow()
	s, err := step()
	if err != nil {
		return nil, err
	}
	s["psi_cpu"], s["psi_io"] = psiNow().since(before)
	return s, nil
}

func seconds(d time.Duration) float64 { return d.Seconds() }

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
