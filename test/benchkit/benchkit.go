// Package benchkit is the harness of autopod's benchmarks (`make bench`,
// scripts/bench.sh). Speed is measured in benchmarks, not asserted in timed
// tests, and always next to references measured in the same run (the bare
// tool, a cold restart, a plain copy, ...), because these machines are
// shared and noisy and absolute numbers from different runs do not compare.
//
// A benchmark fills a Table: rows are Metrics, columns are ways of doing
// the job, and every trial adds one Sample per column. Markdown renders
// each cell as the median and the min–max of its trials, plus ratio
// columns between chosen pairs of columns. A Report collects a benchmark's
// tables and writes them to $AUTOPOD_BENCH_OUT/<key>.md, which
// scripts/bench.sh splices into docs/benchmarks.md under the key's markers.
//
// Pinger is the client whose pause a benchmark reports; Measure and Settle
// record and reduce the noise of other work on the host (Linux PSI).
package benchkit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autopod/autopod/test/resp"
)

// Sample is one trial of one column: metric key -> value.
type Sample map[string]float64

// Metric is a row. Unit "s" prints seconds, "MB" bytes in 10^6, "%" a
// percentage, "×" a ratio (two decimals; the label says "×"), anything
// else a whole number ("" a count, "ms", "MB/s"). Ratio says whether ratio
// columns mean anything for it.
type Metric struct {
	Key, Label, Unit string
	Ratio            bool
}

// Column is one way of doing the job being measured.
type Column struct{ Key, Label string }

// Table collects the samples of one benchmark configuration.
type Table struct {
	Metrics []Metric
	Columns []Column
	Ratios  [][2]string // column keys: numerator, denominator
	samples map[string][]Sample
}

// Add records one trial of column col.
func (t *Table) Add(col string, s Sample) {
	if t.samples == nil {
		t.samples = map[string][]Sample{}
	}
	t.samples[col] = append(t.samples[col], s)
}

// Values are a metric's values over the trials of a column, sorted.
func (t *Table) Values(col, metric string) []float64 {
	var vs []float64
	for _, s := range t.samples[col] {
		if v, ok := s[metric]; ok {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

// Median of sorted values (NaN for none).
func Median(sorted []float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// Format prints v in unit (see Metric).
func Format(v float64, unit string) string {
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
	case "×":
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
}

func (t *Table) cell(col string, m Metric) string {
	vs := t.Values(col, m.Key)
	if len(vs) == 0 {
		return "–"
	}
	med := Format(Median(vs), m.Unit)
	lo, hi := Format(vs[0], m.Unit), Format(vs[len(vs)-1], m.Unit)
	if lo == hi {
		return med
	}
	return fmt.Sprintf("%s (%s–%s)", med, lo, hi)
}

func (t *Table) ratio(pair [2]string, m Metric) string {
	if !m.Ratio {
		return "–"
	}
	a, b := Median(t.Values(pair[0], m.Key)), Median(t.Values(pair[1], m.Key))
	// A denominator that rounds to zero in its own cell makes a ratio of noise.
	if math.IsNaN(a) || math.IsNaN(b) || strings.Trim(Format(b, m.Unit), "0. %") == "" {
		return "–"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "×"
}

func (t *Table) label(key string) string {
	for _, c := range t.Columns {
		if c.Key == key {
			return c.Label
		}
	}
	return key
}

// Markdown renders the table: median (min–max) per cell, ratios of medians.
func (t *Table) Markdown() string {
	var b strings.Builder
	head := []string{"metric"}
	align := []string{"---"}
	for _, c := range t.Columns {
		head = append(head, c.Label)
		align = append(align, "---:")
	}
	for _, r := range t.Ratios {
		head = append(head, t.label(r[0])+" / "+t.label(r[1]))
		align = append(align, "---:")
	}
	fmt.Fprintf(&b, "| %s |\n|%s|\n", strings.Join(head, " | "), strings.Join(align, "|"))
	for _, m := range t.Metrics {
		row := []string{m.Label}
		for _, c := range t.Columns {
			row = append(row, t.cell(c.Key, m))
		}
		for _, r := range t.Ratios {
			row = append(row, t.ratio(r, m))
		}
		fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
	}
	return b.String()
}

// Report is one section of docs/benchmarks.md.
type Report struct {
	Key   string // file name under $AUTOPOD_BENCH_OUT and scripts/bench.sh's marker
	Title string // the heading bench.sh gives a section new to docs/benchmarks.md
	parts []string
}

// Add appends markdown to the section.
func (r *Report) Add(md string) { r.parts = append(r.parts, md) }

// Write prints the section and, when $AUTOPOD_BENCH_OUT is set, writes it
// there for scripts/bench.sh to splice into docs/benchmarks.md.
func (r *Report) Write() error {
	body := strings.Join(r.parts, "\n")
	fmt.Printf("\n%s\n", body)
	out := os.Getenv("AUTOPOD_BENCH_OUT")
	if out == "" {
		return nil
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	data := "<!-- title: " + r.Title + " -->\n" + body
	return os.WriteFile(filepath.Join(out, r.Key+".md"), []byte(data), 0o644)
}

// Environment describes the machine and the moment of a run for a report:
// date, kernel, CPUs, memory, the load average, and extra facts.
func Environment(extra ...string) string {
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
	load := "?"
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(data)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	parts := []string{fmt.Sprintf("Run %s on Linux %s, %d CPUs (%s), %.0f GiB RAM",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), unix.ByteSliceToString(uts.Release[:]),
		runtime.NumCPU(), cpu, float64(si.Totalram)*float64(si.Unit)/(1<<30))}
	parts = append(parts, extra...)
	parts = append(parts, runtime.Version(), "load average at the start "+load)
	return strings.Join(parts, "; ") + "."
}

// RedisVersion is the version `redis-server --version` reports, or "?".
func RedisVersion() string {
	out, err := exec.Command("redis-server", "--version").Output()
	if err != nil {
		return "?"
	}
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return v
		}
	}
	return "?"
}

// Size is a data size given as "100M" or "1G" (MiB, GiB).
type Size struct {
	Name string // as given, upper case: "100M"
	MiB  int
}

func (s Size) String() string {
	if s.MiB%1024 == 0 {
		return fmt.Sprintf("%d GiB", s.MiB/1024)
	}
	return fmt.Sprintf("%d MiB", s.MiB)
}

// ParseSize reads "100M" (MiB) or "1G" (GiB); a bare number is MiB.
func ParseSize(s string) (Size, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	mul, num := 1, s
	switch {
	case strings.HasSuffix(s, "G"):
		mul, num = 1024, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		num = strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return Size{}, fmt.Errorf("bad size %q: want e.g. 100M or 1G", s)
	}
	return Size{Name: s, MiB: n * mul}, nil
}

// Sizes reads $BENCH_SIZES ("100M 1G" style, spaces or commas), else def.
func Sizes(def string) ([]Size, error) {
	spec := os.Getenv("BENCH_SIZES")
	if spec == "" {
		spec = def
	}
	var out []Size
	for _, f := range strings.FieldsFunc(spec, func(r rune) bool { return r == ' ' || r == ',' }) {
		s, err := ParseSize(f)
		if err != nil {
			return nil, fmt.Errorf("BENCH_SIZES: %w", err)
		}
		out = append(out, s)
	}
	return out, nil
}

// Count reads a count from the first of the environment variables names
// that is set, else def.
func Count(def int, names ...string) (int, error) {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			i, err := strconv.Atoi(v)
			if err != nil || i < 0 {
				return 0, fmt.Errorf("%s=%q: want a count", n, v)
			}
			return i, nil
		}
	}
	return def, nil
}

// Seconds turns a duration into a sample value.
func Seconds(d time.Duration) float64 { return d.Seconds() }

// CRIULogSeconds is how long a CRIU run took by its own clock: the
// timestamp "(SS.uuuuuu)" of the last line of its log.
func CRIULogSeconds(path string) (float64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	ms := regexp.MustCompile(`(?m)^\((\d+\.\d+)\)`).FindAllSubmatch(data, -1)
	if len(ms) == 0 {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(ms[len(ms)-1][1]), 64)
	return v, err == nil
}

// Target is a redis server the benchmark may send traffic to. RoutedTarget
// is the only way to make one outside this package: it refuses an address
// that the host does not route into the benchmark's own bridge, so a
// benchmark never sends anything anywhere else.
type Target struct{ addr string }

// RoutedTarget checks with `ip route get` that ip is reached through
// bridge and returns ip:port as a Target.
func RoutedTarget(ctx context.Context, ip string, port int, bridge string) (Target, error) {
	out, err := exec.CommandContext(ctx, "ip", "route", "get", ip).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "dev "+bridge+" ") {
		return Target{}, fmt.Errorf("%s is not routed to the bench bridge %s: %v %s", ip, bridge, err, out)
	}
	return Target{addr: net.JoinHostPort(ip, strconv.Itoa(port))}, nil
}

func (t Target) String() string { return t.addr }

// Dial opens a RESP connection to the target.
func (t Target) Dial(timeout time.Duration) (*resp.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return resp.Dial(ctx, t.addr)
}

// Dialer is what a Pinger connects with.
func (t Target) Dialer() Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", t.addr)
	}
}

// WaitReady dials until redis answers PING (not -LOADING) and reports
// loading:0, trying every 10 ms with short dial timeouts so that the wait
// adds no SYN back-off of its own to what it measures.
func (t Target) WaitReady(timeout time.Duration) error {
	return WaitReady(t.Dialer(), t.addr, timeout)
}

// WaitReady is Target.WaitReady for a server reached through dial (from
// another network namespace, say); name is what errors call it.
func WaitReady(dial Dialer, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		nc, err := dial(ctx)
		cancel()
		if err != nil {
			last = err
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c := resp.New(nc)
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
	return fmt.Errorf("redis at %s not ready after %s: %v", name, timeout, last)
}

// isRedisError tells a reply of the server (-LOADING …) from a broken connection.
func isRedisError(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "redis: ") }

// Dialer opens one TCP connection to the server a Pinger watches.
type Dialer func(ctx context.Context) (net.Conn, error)

// PingEvery is the Pinger's request interval.
const PingEvery = 10 * time.Millisecond

// Pinger is the client whose pause a benchmark reports: one TCP connection,
// a PING every 10 ms, each waiting for its reply. It records when every
// PONG arrived; the longest gap between two is the pause the client saw.
// When its connection breaks (a cold restart) it reconnects, trying every
// 10 ms with 50 ms dial timeouts, and counts that.
type Pinger struct {
	dial   Dialer
	mu     sync.Mutex
	conn   net.Conn // the current connection; Stop closes it
	pongs  []time.Time
	redial int
	odd    []string  // replies that were not RESP: reported, never expected
	stopAt time.Time // Finish: stop at the first PONG after this
	gapEnd time.Time // Finish: the answer that ended the longest gap
	quit   chan struct{}
	once   sync.Once
	done   chan error
}

// StartPinger connects and returns once a few PINGs were answered, so the
// pause that follows is measured from a steady state.
func StartPinger(dial Dialer) (*Pinger, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := dial(ctx)
	cancel()
	if err != nil {
		return nil, err
	}
	p := &Pinger{dial: dial, conn: c, quit: make(chan struct{}), done: make(chan error, 1)}
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
			p.Stop()
			return nil, errors.New("pinger: no PONG in 5s")
		}
		time.Sleep(PingEvery)
	}
}

func (p *Pinger) loop(conn net.Conn) {
	hardStop := time.Now().Add(10 * time.Minute)
	r := bufio.NewReader(conn)
	drop := func() {
		conn.Close()
		conn = nil
		p.mu.Lock()
		p.conn = nil
		p.mu.Unlock()
	}
	for {
		sent := time.Now()
		select {
		case <-p.quit:
			if conn != nil {
				drop()
			}
			p.done <- errors.New("stopped")
			return
		default:
		}
		if sent.After(hardStop) {
			p.done <- errors.New("ran for 10 minutes")
			return
		}
		if conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			c, err := p.dial(ctx)
			cancel()
			if err != nil {
				time.Sleep(PingEvery)
				continue
			}
			conn, r = c, bufio.NewReader(c)
			p.mu.Lock()
			p.conn = c
			p.redial++
			p.mu.Unlock()
		}
		err := ping(conn, r, 2*time.Minute)
		now := time.Now()
		switch {
		case err == nil:
			p.mu.Lock()
			p.pongs = append(p.pongs, now)
			stop := !p.stopAt.IsZero() && now.After(p.stopAt)
			p.mu.Unlock()
			if stop {
				drop()
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
			drop()
		}
		if d := time.Until(sent.Add(PingEvery)); d > 0 {
			time.Sleep(d)
		}
	}
}

// ping sends one PING and reads its reply.
func ping(c net.Conn, r *bufio.Reader, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
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

// Finish waits for the first PONG after now, stops the pinger and returns
// the longest gap between two PONGs and how often it reconnected.
func (p *Pinger) Finish(timeout time.Duration) (gap time.Duration, redials int, err error) {
	p.mu.Lock()
	p.stopAt = time.Now()
	p.mu.Unlock()
	select {
	case err = <-p.done:
	case <-time.After(timeout):
		p.Stop()
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
		if d := p.pongs[i].Sub(p.pongs[i-1]); d > gap {
			gap, p.gapEnd = d, p.pongs[i]
		}
	}
	return gap, p.redial, nil
}

// GapEnd is when the answer that ended Finish's longest gap came: for
// lining the gap up with the agents' logs.
func (p *Pinger) GapEnd() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gapEnd
}

// Stop ends the pinger without a measurement (a failed trial).
func (p *Pinger) Stop() {
	p.once.Do(func() {
		close(p.quit)
		p.mu.Lock()
		if p.conn != nil {
			p.conn.Close() // unblocks a pending request
		}
		p.mu.Unlock()
	})
}

// Pressure is a reading of the kernel's pressure stall counters: how long
// some task waited for a CPU, or for I/O.
type Pressure struct {
	at      time.Time
	cpu, io time.Duration
}

// PressureNow reads /proc/pressure (zero counters without PSI).
func PressureNow() Pressure {
	return Pressure{at: time.Now(), cpu: psiTotal("/proc/pressure/cpu"), io: psiTotal("/proc/pressure/io")}
}

// Since returns the share of wall time since old in which some task
// stalled on CPU and on I/O, in percent.
func (p Pressure) Since(old Pressure) (cpu, io float64) {
	wall := float64(p.at.Sub(old.at))
	if wall <= 0 {
		return 0, 0
	}
	return 100 * float64(p.cpu-old.cpu) / wall, 100 * float64(p.io-old.io) / wall
}

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

// PressureMetrics are the rows that Measure fills.
func PressureMetrics() []Metric {
	return []Metric{
		{Key: "psi_cpu", Label: "host CPU pressure during the step (PSI some)", Unit: "%"},
		{Key: "psi_io", Label: "host I/O pressure during the step (PSI some)", Unit: "%"},
	}
}

// Measure runs one step and adds to its sample how much the host's CPU
// and I/O were under pressure meanwhile (psi_cpu, psi_io).
func Measure(step func() (Sample, error)) (Sample, error) {
	before := PressureNow()
	s, err := step()
	if err != nil {
		return nil, err
	}
	s["psi_cpu"], s["psi_io"] = PressureNow().Since(before)
	return s, nil
}

// Settle lets the previous step's dirty pages reach the disk, so that one
// column's write-back is not charged to the next, then waits (10 s at
// most) for half a second in which the host's CPU pressure stays under
// 30 % and its CPUs are at most a quarter busy: other people's work on a
// shared machine then hits every column alike, and what remains is
// recorded by Measure. The second condition catches what pressure does
// not: one busy task, even at nice 19 (an agent's update check after its
// start), that leaves the other CPU free but takes memory bandwidth and
// the CPU a step needs.
func Settle() {
	unix.Sync()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, b := PressureNow(), cpuTimes()
		time.Sleep(500 * time.Millisecond)
		cpu, _ := PressureNow().Since(p)
		if cpu < 30 && cpuTimes().busySince(b) < 25 || time.Now().After(deadline) {
			return
		}
	}
}

// cpuJiffies is the "cpu" line of /proc/stat: time busy (user, nice,
// system, irq, softirq) and in all, in clock ticks.
type cpuJiffies struct{ busy, all uint64 }

func cpuTimes() cpuJiffies {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuJiffies{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var j cpuJiffies
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i >= 8 { // guest times are within user and nice already
			break
		}
		j.all += n
		switch i {
		case 0, 1, 2, 5, 6: // user nice system irq softirq (not idle, iowait, steal)
			j.busy += n
		}
	}
	return j
}

// busySince is the share of CPU time that was busy since old, in percent.
func (j cpuJiffies) busySince(old cpuJiffies) float64 {
	if j.all <= old.all {
		return 0
	}
	return 100 * float64(j.busy-old.busy) / float64(j.all-old.all)
}
