//go:build roottest && bench

package system

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/test/benchkit"
	"github.com/autopod/autopod/test/testbed"
)

// TestBenchMigrate measures live migration between two test-bed hosts for
// redis pods of random (incompressible) values, with each strategy the
// agents can run here, next to the references the issue names, all on the
// same test-bed in the same run, trial after trial: the raw CRIU pipeline
// (criu dump, a plain copy of the images, criu restore on the other host)
// on the same workload, a cold restart of redis from its RDB file, and a
// plain TCP copy of the same bytes over the same link. Run by
// scripts/bench.sh (make bench), never by make test.
//
// Knobs: BENCH_SIZES ("100M 1G"); trials per column
// BENCH_TRIALS_MIGRATE_<size>, else BENCH_TRIALS, else 6 at 100M and 2 at
// 1G; BENCH_MIGRATE_COLUMNS, the columns to run (default all:
// "post-copy stop-and-copy raw cold"), for looking into one of them (the
// others' cells stay empty, so use scripts/bench.sh --no-docs);
// BENCH_MIGRATE_LINK_RATE, the limit of the link for the second table of
// each size (post-copy against a plain copy over a LAN-like link; tc's
// notation, default "1gbit", "off" for none). A trial of a migration
// column is one migration: they alternate A→B and B→A, so 6 trials are 3
// round trips.
func TestBenchMigrate(t *testing.T) {
	criuPath := testbed.CriuPath(t)
	sizes, err := benchkit.Sizes("100M 1G")
	if err != nil {
		t.Fatal(err)
	}
	report := &benchkit.Report{Key: "migration", Title: "Live migration between two hosts"}
	report.Add(benchkit.Environment(
		fmt.Sprintf("CRIU %s (%s)%s", migCriuVersion(criuPath), criuPath, criuPatchNote(criuPath)),
		"redis "+benchkit.RedisVersion(),
		"the hosts are network and mount namespaces of this one machine joined by a bridge (test/testbed): the link between them is a veth pair, and they share its CPUs") + "\n")
	report.Add(migLegend)
	for _, size := range sizes {
		def := 2
		if size.MiB <= 100 {
			def = 6
		}
		trials, err := benchkit.Count(def, "BENCH_TRIALS_MIGRATE_"+size.Name, "BENCH_TRIALS")
		if err != nil {
			t.Fatal(err)
		}
		if trials < 1 {
			t.Fatalf("%s: at least one trial", size)
		}
		t.Run(size.Name, func(t *testing.T) {
			start := time.Now()
			report.Add(benchMigrateSize(t, criuPath, size, trials))
			t.Logf("%s: %s in all", size, time.Since(start).Round(time.Second))
		})
	}
	if t.Failed() {
		t.Log("not writing a report: a benchmark failed")
		return
	}
	if err := report.Write(); err != nil {
		t.Fatal(err)
	}
}

const migLegend = `- **post-copy**, **stop-and-copy**: ` + "`autopodctl migrate kv --to hostb`" + `, then ` + "`autopodctl return`" + ` (each direction is one trial) of an autopod pod, with ` + "`migration_strategy`" + ` set on both agents (they are restarted to switch). Stop-and-copy freezes the pod and dumps it, the dump streaming its pages to CRIU's page server on the peer through the peers' TLS link, then sends the other images (all SHA-256 checked), restores and commits. Post-copy freezes the pod, sends everything but its memory, resumes it on the peer, then moves the memory (CRIU lazy pages, relayed over the same TLS link) while the pod runs. Packets that reach the frozen pod are held and replayed on the destination.
- **raw CRIU pipeline**: the same redis, not an autopod pod but a bare process tree in its own network namespace on host A's LAN, moved between the two hosts with the criu command line alone: ` + "`criu dump --tcp-established --network-lock nftables --manage-cgroups=ignore`" + ` into tmpfs, the image directory sent as a tar stream over one plain TCP connection (no TLS, no checksums) into tmpfs on the other host, ` + "`criu restore -d --tcp-established --network-lock nftables --external veth[eth0]:…@autopod0`" + ` there (the namespace, its address and MAC move, its veth joins that host's bridge), then one gratuitous ARP (` + "`arping -U`" + `) so that the LAN learns where it went. Packets that reach it while it is frozen are **dropped** (CRIU's network lock): the client waits for its TCP retransmission.
- **cold restart**: the same redis in a network namespace on host A that stays: ` + "`SAVE`" + `, SIGTERM, start redis again, which loads the RDB file (on disk). The client reconnects (every 10 ms). Nothing crosses the link.
- **plain TCP copy**: as many bytes as a post-copy migration put on the link, sent from host A to host B over one TCP connection, no TLS, no files: what the link can carry.
- **client-seen pause**: a client on a third host holds one TCP connection and sends PING every 10 ms, each waiting for its reply; the longest gap between two answers during the trial, TCP retransmission back-off included (a new connection for each trial). The worst-trial row is the longest over all trials. In a cold restart the blocking SAVE and the restart are two gaps, usually split by one answer: the longer counts (the whole outage is in "frozen"). During the migrations and the raw pipeline a second connection sends INCR as fast as replies come, and every acknowledged write is checked at the end, as are the values.
- **frozen**: autopod: from isolating the pod on the source until the destination exposes it (the agent's own measurement); raw: from the start of ` + "`criu dump`" + ` to the ARP announcement after the restore; cold: from the SAVE until redis answers with its data loaded. **total**: the whole migration, including what is copied while the pod runs (post-copy: until the last page has moved); raw and cold: the same as frozen.
- **bytes sent**: IP bytes that went between the two hosts, both directions, during the trial (nftables counters in the hosts' namespaces; TLS, TCP and IP headers included). **throughput**: bytes sent / total; **throughput / plain copy's**: against the median plain copy of the same run. The phase rows split the references' time.
- Podman's ` + "`container checkpoint --export`" + ` and ` + "`container restore --import`" + ` of the same workload are not in this table: a separate benchmark measures them, in their own section of this file.
- Trials of all columns alternate, two of each column in turn, so that every column meets the same neighbours; cells are the median and, in brackets, the min–max over the trials; ratios are of medians. Before each trial the bench runs ` + "`sync`" + ` and waits up to 10 s for half a second of CPU pressure under 30 % with the CPUs at most a quarter busy (an agent checks for updates when it starts, and the agents restart to switch strategy).
`

// notSelected is why a column that BENCH_MIGRATE_COLUMNS leaves out is
// not measured.
const notSelected = "not selected (BENCH_MIGRATE_COLUMNS)"

// Column keys.
const (
	colPostCopy = "post-copy"
	colStopCopy = "stop-and-copy"
	colRaw      = "raw"
	colCold     = "cold"
	colCopy     = "copy"
)

// migBench is one size's run: an autopod pod moving between hosts A and
// B, the raw pipeline's redis, the cold restart's redis and the link.
type migBench struct {
	t        *testing.T
	bed      *testbed.Bed
	a, b     *testbed.Host
	mib      int
	link     *linkCounter
	kvAddr   string
	kvOnA    bool
	kvLoad   *benchWriter
	strategy string // the agents' migration_strategy now
	raw      *rawPod
	rawLoad  *benchWriter
	cold     *coldRedis
	samples  map[string][]benchkit.Sample
	no       map[string]string // strategies that cannot run here: why
}

func benchMigrateSize(t *testing.T, criuPath string, size benchkit.Size, trials int) string {
	bed := testbed.New(t, 2)
	a, b := bed.Hosts[0], bed.Hosts[1]
	m := &migBench{t: t, bed: bed, a: a, b: b, mib: size.MiB, kvOnA: true,
		samples: map[string][]benchkit.Sample{}, no: map[string]string{}}

	// The autopod pod, with room for the data and redis's own overhead.
	m.kvAddr = kvPod(t, bed, a, "kv", 100)
	p := filepath.Join(a.PodsDir, "kv.toml")
	spec, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(spec), `memory = "1G"`, `memory = "3G"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	m.strategy = colPostCopy
	for _, h := range bed.Hosts {
		h.Configure(t, fmt.Sprintf("migration_strategy = %q", m.strategy))
	}
	a.StartAgent(t)
	b.StartAgent(t)
	bed.Pair(t)
	waitPod(t, a, "kv", "running")
	m.link = newLinkCounter(t, a, b)

	// The same data in the three redis servers, checked at the end.
	fill := func(what, addr string) map[string][32]byte {
		c := dialRedis(t, bed, addr)
		defer c.Close()
		start := time.Now()
		if err := c.FillRandom(size.MiB, 1<<20); err != nil {
			t.Fatalf("fill %s: %v", what, err)
		}
		sums := valueSums(t, c, size.MiB)
		t.Logf("%s: %s filled with %d random values of 1 MiB in %s", size, what, size.MiB, time.Since(start).Round(time.Millisecond))
		return sums
	}
	kvSums := fill("autopod pod", m.kvAddr)
	m.raw = startRawPod(t, bed, criuPath, a, 110)
	rawSums := fill("raw pipeline's redis", m.raw.addr())
	m.cold = startColdRedis(t, bed, a, 120)
	coldSums := fill("cold restart's redis", m.cold.addr())
	m.kvLoad = startBenchWriter(t, bed, m.kvAddr)
	m.rawLoad = startBenchWriter(t, bed, m.raw.addr())

	// Rounds: two trials of each column in turn (a round trip for the
	// migrations), starting one column further each round, and a plain
	// copy after each round.
	cols := []string{colPostCopy, colStopCopy, colRaw, colCold}
	if only := os.Getenv("BENCH_MIGRATE_COLUMNS"); only != "" {
		for _, c := range cols {
			if !slices.Contains(strings.Fields(only), c) {
				m.no[c] = notSelected
			}
		}
	}
	done := map[string]int{}
	for round := 0; ; round++ {
		progress := false
		for i := range cols {
			col := cols[(i+round)%len(cols)]
			for k := 0; k < 2 && done[col] < trials && m.no[col] == ""; k++ {
				s, err := m.trial(col)
				var un errUnavailable
				if errors.As(err, &un) {
					m.no[col] = string(un)
					t.Logf("%s cannot run here, not measured: %s", col, un)
					break
				}
				if err != nil {
					t.Fatalf("%s, trial %d of %s: %v", size, done[col]+1, col, err)
				}
				m.samples[col] = append(m.samples[col], s)
				done[col]++
				progress = true
			}
		}
		if !progress {
			break
		}
		m.plainCopy()
	}
	for len(m.samples[colCopy]) < 3 {
		m.plainCopy()
	}
	var shaped string
	if rate := envOr("BENCH_MIGRATE_LINK_RATE", "1gbit"); rate != "off" && m.no[colPostCopy] == "" {
		shaped = m.overShapedLink(size, rate)
	}

	kvAcked := m.kvLoad.finish(t)
	rawAcked := m.rawLoad.finish(t)
	for _, c := range []struct {
		what, addr string
		sums       map[string][32]byte
	}{{"autopod pod", m.kvAddr, kvSums}, {"raw pipeline's redis", m.raw.addr(), rawSums}, {"cold restart's redis", m.cold.addr(), coldSums}} {
		conn := dialRedis(t, bed, c.addr)
		after := valueSums(t, conn, size.MiB)
		conn.Close()
		for k, v := range c.sums {
			if after[k] != v {
				t.Fatalf("%s: %s changed during the benchmark", c.what, k)
			}
		}
	}
	out := m.markdown(size, trials, kvAcked, rawAcked)
	if shaped != "" {
		out += "\n" + shaped
	}
	return out
}

// overShapedLink measures post-copy against a plain copy once more, with
// the link between the hosts limited to rate (tc's notation) in each
// direction: as on a LAN, where the link and not the CPU is the limit. A
// round trip of the pod and two plain copies, alternating; the samples
// are kept apart from the main table's.
func (m *migBench) overShapedLink(size benchkit.Size, rate string) string {
	if err := m.use(colPostCopy); err != nil {
		m.t.Fatal(err)
	}
	for _, h := range []*testbed.Host{m.a, m.b} {
		// A token bucket on each host's uplink: its queue holds 20 ms at
		// the rate, so TCP meets the limit as it would on a switch.
		benchMust(m.t, "tc", "-n", h.Netns, "qdisc", "replace", "dev", "uplink", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "20ms")
	}
	defer func() {
		for _, h := range []*testbed.Host{m.a, m.b} {
			exec.Command("tc", "-n", h.Netns, "qdisc", "del", "dev", "uplink", "root").Run()
		}
	}()
	main := m.samples
	m.samples = map[string][]benchkit.Sample{}
	defer func() { m.samples = main }()
	n := benchkit.Median(valuesOf(main[colPostCopy], "bytes"))
	for i := 0; i < 2; i++ {
		s, err := m.trial(colPostCopy)
		if err != nil {
			m.t.Fatalf("%s over a %s link, post-copy: %v", size, rate, err)
		}
		m.samples[colPostCopy] = append(m.samples[colPostCopy], s)
		m.plainCopyOf(n)
	}
	table := &benchkit.Table{
		Metrics: migMetricsNamed("pause", "frozen", "total", "bytes", "thr", "thr_rel"),
		Columns: []benchkit.Column{{Key: colPostCopy, Label: "post-copy"}, {Key: colCopy, Label: "plain TCP copy"}},
		Ratios:  [][2]string{{colPostCopy, colCopy}},
	}
	plainThr := benchkit.Median(m.values(colCopy, "thr"))
	for _, col := range []string{colPostCopy, colCopy} {
		for _, s := range m.samples[col] {
			if v, ok := s["thr"]; ok && plainThr > 0 {
				s["thr_rel"] = v / plainThr
			}
			table.Add(col, s)
		}
	}
	return fmt.Sprintf("#### The same %s over a link limited to %s\n\nThe link between hosts A and B limited to %s in each direction (a token bucket, `tc qdisc … tbf rate %s`, on each host's uplink), as on a LAN where the link and not the CPU is the limit: 1 round trip of post-copy migrations, with the writing client, and 2 plain copies of as many bytes, alternating.\n\n%s",
		size, rateLabel(rate), rateLabel(rate), rate, table.Markdown())
}

// errUnavailable says that a strategy cannot run on these hosts.
type errUnavailable string

func (e errUnavailable) Error() string { return string(e) }

// trial runs one trial of column col, measured by a client of its own.
func (m *migBench) trial(col string) (benchkit.Sample, error) {
	switch col {
	case colPostCopy, colStopCopy:
		if err := m.use(col); err != nil {
			return nil, err
		}
		return m.measure(m.kvAddr, m.kvLoad, func() (benchkit.Sample, error) { return m.autopodLeg(col) })
	case colRaw:
		to := m.b
		if m.raw.on == m.b {
			to = m.a
		}
		return m.measure(m.raw.addr(), m.rawLoad, func() (benchkit.Sample, error) { return m.raw.move(to) })
	case colCold:
		return m.measure(m.cold.addr(), nil, m.cold.restart)
	}
	return nil, fmt.Errorf("no column %q", col)
}

// measure runs one trial step after a quiet moment, with a client that
// PINGs every 10 ms on a new connection, and adds to the step's sample the
// client-seen pause, the reconnections and the host's pressure. A step
// with a writer moves the server between the hosts, with the writer
// busy: the bytes that crossed the link and their rate are added too.
func (m *migBench) measure(addr string, load *benchWriter, step func() (benchkit.Sample, error)) (benchkit.Sample, error) {
	benchkit.Settle()
	if load != nil {
		load.run(true)
		defer load.run(false)
	}
	s, err := benchkit.Measure(func() (benchkit.Sample, error) {
		p, err := benchkit.StartPinger(m.dialer(addr))
		if err != nil {
			return nil, err
		}
		defer p.Stop() // a failed trial leaves no client behind
		before := m.link.bytes(m.t)
		s, err := step()
		if err != nil {
			return nil, err
		}
		gap, redials, err := p.Finish(2 * time.Minute)
		if err != nil {
			return nil, err
		}
		s["pause"] = migMs(gap)
		m.t.Logf("client-seen pause %s, answered at %s", gap.Round(time.Millisecond), p.GapEnd().UTC().Format("15:04:05.000"))
		s["redials"] = float64(redials)
		if load != nil {
			s["bytes"] = float64(m.link.bytes(m.t) - before)
			if s["total"] > 0 {
				s["thr"] = s["bytes"] / 1e6 / s["total"]
			}
		}
		return s, nil
	})
	if err == nil && load != nil {
		err = load.failed()
	}
	return s, err
}

func migMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// use restarts both agents with migration strategy s, unless they have it.
func (m *migBench) use(s string) error {
	if m.strategy == s {
		return nil
	}
	for _, h := range []*testbed.Host{m.a, m.b} {
		h.StopAgent()
		data, err := os.ReadFile(h.Config)
		if err != nil {
			return err
		}
		// A top-level key: it replaces the line where it stands (before the
		// config's [update] table).
		var keep []string
		for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "migration_strategy") {
				keep = append(keep, l)
			}
		}
		if err := os.WriteFile(h.Config, []byte(strings.Join(keep, "\n")+"\n"), 0o644); err != nil {
			return err
		}
		h.Configure(m.t, fmt.Sprintf("migration_strategy = %q", s))
	}
	m.a.StartAgent(m.t)
	m.b.StartAgent(m.t)
	where := m.a
	if !m.kvOnA {
		where = m.b
	}
	waitPod(m.t, where, "kv", "running")
	m.strategy = s
	return nil
}

// autopodLeg migrates the pod to the other host: `migrate` from A, or
// `return` when it is on B. The numbers are the source agent's.
func (m *migBench) autopodLeg(strategy string) (benchkit.Sample, error) {
	src, dst, args := m.a, m.b, []string{"--json", "migrate", "kv", "--to", "hostb"}
	if !m.kvOnA {
		src, dst, args = m.b, m.a, []string{"--json", "return"}
	}
	seen := strings.Count(src.AgentLog(), `msg="pod migrated"`)
	out, err := m.a.Ctl(args...)
	if err != nil {
		if strings.Contains(out, "cannot run on") {
			return nil, errUnavailable(strings.TrimSpace(out))
		}
		return nil, fmt.Errorf("autopodctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m.kvOnA = !m.kvOnA
	waitPod(m.t, dst, "kv", "running")
	r, err := waitMigrated(src, seen)
	if err != nil {
		return nil, err
	}
	if r.strategy != strategy {
		return nil, fmt.Errorf("%s migrated with %q, want %s", src.Name, r.strategy, strategy)
	}
	var reply struct {
		Bytes int64 `json:"bytes"`
	}
	if i := strings.Index(out, "{"); i >= 0 {
		json.Unmarshal([]byte(out[i:]), &reply)
	}
	m.t.Logf("%s %s→%s: frozen %s, total %s; its log line says %d B of files, %d B of images, %d B of pages (0: not logged); the command's reply %d B (0: none)",
		strategy, src.Name, dst.Name, r.frozen, r.total, r.fileBytes, r.imageBytes, r.pageBytes, reply.Bytes)
	return benchkit.Sample{"frozen": migMs(r.frozen), "total": r.total.Seconds()}, nil
}

// migrationRecord is the source agent's log line of one migration.
type migrationRecord struct {
	strategy                         string
	frozen, total                    time.Duration
	fileBytes, imageBytes, pageBytes int64
}

// waitMigrated returns the first "pod migrated" line of h's agent after
// the seen ones; it may come just after the command returned.
func waitMigrated(h *testbed.Host, seen int) (migrationRecord, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var lines []string
		for _, l := range strings.Split(h.AgentLog(), "\n") {
			if strings.Contains(l, `msg="pod migrated"`) {
				lines = append(lines, l)
			}
		}
		if len(lines) > seen {
			return parseMigrated(lines[seen])
		}
		if time.Now().After(deadline) {
			return migrationRecord{}, fmt.Errorf("%s's agent logged no \"pod migrated\"", h.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func parseMigrated(line string) (migrationRecord, error) {
	var r migrationRecord
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		var err error
		switch k {
		case "strategy":
			r.strategy = strings.Trim(v, `"`)
		case "frozen":
			r.frozen, err = time.ParseDuration(v)
		case "total":
			r.total, err = time.ParseDuration(v)
		case "file_bytes":
			r.fileBytes, err = strconv.ParseInt(v, 10, 64)
		case "image_bytes":
			r.imageBytes, err = strconv.ParseInt(v, 10, 64)
		case "page_bytes":
			r.pageBytes, err = strconv.ParseInt(v, 10, 64)
		}
		if err != nil {
			return r, fmt.Errorf("agent log %q: %s: %w", line, k, err)
		}
	}
	if r.total <= 0 {
		return r, fmt.Errorf("agent log without a total: %q", line)
	}
	return r, nil
}

// plainCopy adds a trial of the reference: as many bytes as the median
// post-copy migration (else any migration) put on the link, sent from A to
// B over plain TCP.
func (m *migBench) plainCopy() {
	var n float64
	for _, col := range []string{colPostCopy, colStopCopy, colRaw} {
		if n = benchkit.Median(m.values(col, "bytes")); n > 0 {
			break
		}
	}
	m.plainCopyOf(n)
}

// plainCopyOf adds a plain copy of n bytes (no n: the pod's data size).
func (m *migBench) plainCopyOf(n float64) {
	if !(n > 0) {
		n = float64(int64(m.mib) << 20)
	}
	benchkit.Settle()
	s, err := benchkit.Measure(func() (benchkit.Sample, error) {
		before := m.link.bytes(m.t)
		secs, err := plainCopy(m.a, m.b, int64(n))
		if err != nil {
			return nil, err
		}
		sent := float64(m.link.bytes(m.t) - before)
		return benchkit.Sample{"total": secs, "bytes": sent, "thr": sent / 1e6 / secs}, nil
	})
	if err != nil {
		m.t.Fatalf("plain copy: %v", err)
	}
	m.samples[colCopy] = append(m.samples[colCopy], s)
}

func (m *migBench) values(col, key string) []float64 {
	return valuesOf(m.samples[col], key)
}

// rateLabel spells a tc rate ("1gbit") for people ("1 Gbit/s").
func rateLabel(rate string) string {
	for _, u := range []struct{ tc, label string }{{"gbit", "Gbit/s"}, {"mbit", "Mbit/s"}, {"kbit", "kbit/s"}} {
		if n, ok := strings.CutSuffix(rate, u.tc); ok {
			return n + " " + u.label
		}
	}
	return rate
}

// valuesOf returns the values of key in samples, sorted.
func valuesOf(samples []benchkit.Sample, key string) []float64 {
	var vs []float64
	for _, s := range samples {
		if v, ok := s[key]; ok {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

// migMetrics are the rows of the migration tables, in their order.
var migMetrics = []benchkit.Metric{
	{Key: "pause", Label: "client-seen pause, ms", Unit: "ms", Ratio: true},
	{Key: "pause_worst", Label: "client-seen pause, worst trial, ms", Unit: "ms", Ratio: true},
	{Key: "frozen", Label: "frozen (service unavailable), ms", Unit: "ms", Ratio: true},
	{Key: "total", Label: "total, s", Unit: "s", Ratio: true},
	{Key: "bytes", Label: "bytes sent between the hosts, MB", Unit: "MB", Ratio: true},
	{Key: "thr", Label: "throughput (bytes sent / total), MB/s", Unit: "MB/s", Ratio: true},
	{Key: "thr_rel", Label: "throughput / plain copy's, ×", Unit: "×"},
	{Key: "p_dump", Label: "phase: criu dump (cold: SAVE), s", Unit: "s", Ratio: true},
	{Key: "p_copy", Label: "phase: copy of the images, s", Unit: "s"},
	{Key: "p_restore", Label: "phase: criu restore and ARP (cold: stop, start, load), s", Unit: "s", Ratio: true},
	{Key: "redials", Label: "client reconnections"},
}

// migMetricsNamed returns the rows of migMetrics with the keys given.
func migMetricsNamed(keys ...string) []benchkit.Metric {
	var ms []benchkit.Metric
	for _, m := range migMetrics {
		if slices.Contains(keys, m.Key) {
			ms = append(ms, m)
		}
	}
	return ms
}

func (m *migBench) markdown(size benchkit.Size, trials int, kvAcked, rawAcked int64) string {
	labels := map[string]string{colPostCopy: "post-copy", colStopCopy: "stop-and-copy", colRaw: "raw CRIU pipeline", colCold: "cold restart", colCopy: "plain TCP copy"}
	table := &benchkit.Table{
		Metrics: append(slices.Clone(migMetrics), benchkit.PressureMetrics()...),
	}
	plainThr := benchkit.Median(m.values(colCopy, "thr"))
	var notes []string
	for _, col := range []string{colPostCopy, colStopCopy, colRaw, colCold, colCopy} {
		switch why := m.no[col]; why {
		case "":
		case notSelected:
			notes = append(notes, fmt.Sprintf("%s is not measured: %s.", labels[col], why))
			continue
		default:
			notes = append(notes, fmt.Sprintf("%s is not measured: it cannot run on these hosts (%s).", labels[col], why))
			continue
		}
		table.Columns = append(table.Columns, benchkit.Column{Key: col, Label: labels[col]})
		for _, s := range m.samples[col] {
			if v, ok := s["thr"]; ok && plainThr > 0 {
				s["thr_rel"] = v / plainThr
			}
			table.Add(col, s)
		}
		if vs := m.values(col, "pause"); len(vs) > 0 {
			table.Add(col, benchkit.Sample{"pause_worst": vs[len(vs)-1]})
		}
	}
	for _, r := range [][2]string{{colPostCopy, colRaw}, {colPostCopy, colCold}, {colStopCopy, colRaw}} {
		if m.no[r[0]] == "" && m.no[r[1]] == "" {
			table.Ratios = append(table.Ratios, r)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "### %s of random values\n\n%d trials of each column (for the migrations: %s of A→B and B→A); %d plain copies. %d writes acknowledged on one connection through all the migrations, and %d through the raw pipeline's, all present at the end; the values are unchanged in all three servers.",
		size, trials, migLegs(trials), len(m.samples[colCopy]), kvAcked, rawAcked)
	for _, n := range notes {
		b.WriteString(" " + n)
	}
	b.WriteString("\n\n" + table.Markdown())
	return b.String()
}

func migLegs(n int) string {
	s := fmt.Sprintf("%d round trip", n/2)
	if n/2 != 1 {
		s += "s"
	}
	if n%2 == 1 {
		s += " and one more A→B"
	}
	return s
}

// criuPatchNote says which of autopod's patches the CRIU at path carries.
func criuPatchNote(path string) string {
	ps := testbed.CriuPatches(path)
	if len(ps) == 0 {
		return ", as released"
	}
	return " with autopod's patches from scripts/criu-patches: " + strings.Join(ps, ", ")
}

// migCriuVersion is what `criu --version` says, or "?".
func migCriuVersion(path string) string {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
