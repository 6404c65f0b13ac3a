package pods

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/stats"
	"google.golang.org/protobuf/proto"
)

const mib = 1 << 20

func TestPrecopyPolicyNext(t *testing.T) {
	p := defaultPrecopyPolicy
	for _, c := range []struct {
		name   string
		rounds []int64
		more   bool
		why    string
	}{
		{"nothing yet", nil, true, ""},
		{"big first round", []int64{1000 * mib}, true, ""},
		{"small first round", []int64{3 * mib}, false, "round 1 wrote 3.0 MiB, under 4.0 MiB"},
		{"shrinking", []int64{1000 * mib, 400 * mib}, true, ""},
		{"under 10% of the first", []int64{1000 * mib, 400 * mib, 90 * mib}, false, "under 10% of round 1's"},
		{"under 4 MiB", []int64{20 * mib, 3 * mib}, false, "round 2 wrote 3.0 MiB, under 4.0 MiB"},
		{"did not shrink", []int64{1000 * mib, 300 * mib, 300 * mib}, false, "no less than round 2's"},
		{"grew", []int64{1000 * mib, 300 * mib, 500 * mib}, false, "no less than round 2's"},
		{"round limit", []int64{1000 * mib, 900 * mib, 800 * mib, 700 * mib, 600 * mib}, false, "5 rounds, the most allowed"},
		{"one below the limit", []int64{1000 * mib, 900 * mib, 800 * mib, 700 * mib}, true, ""},
	} {
		more, why := p.next(c.rounds)
		if more != c.more || !strings.Contains(why, c.why) || (c.more && why != "") {
			t.Errorf("%s: next(%v) = %v, %q; want %v, %q", c.name, c.rounds, more, why, c.more, c.why)
		}
	}
	// The rules are the package's to tune.
	tight := precopyPolicy{MaxRounds: 2, SmallBytes: 1, SmallFraction: 0}
	if more, why := tight.next([]int64{10, 5}); more || !strings.Contains(why, "2 rounds") {
		t.Errorf("MaxRounds 2: %v, %q", more, why)
	}
}

// fakeRounds plays rounds that wrote the given bytes, or fail at round
// failAt (1-based; 0: never).
func fakeRounds(written []int64, failAt int) (func(context.Context, int) (roundResult, error), *[]int) {
	var seen []int
	return func(ctx context.Context, n int) (roundResult, error) {
		seen = append(seen, n)
		if n == failAt {
			return roundResult{}, errors.New("criu pre-dump failed: boom")
		}
		w := written[len(written)-1]
		if n <= len(written) {
			w = written[n-1]
		}
		return roundResult{Written: w, Sent: w + 100}, nil
	}, &seen
}

func TestRunPrecopyRounds(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		written []int64
		failAt  int
		rounds  int
		why     string
		err     string
	}{
		{"converges", []int64{800 * mib, 200 * mib, 50 * mib}, 0, 3, "under 10%", ""},
		{"idle pod: one round", []int64{2 * mib}, 0, 1, "under 4.0 MiB", ""},
		{"busy pod: stops when no progress", []int64{800 * mib, 600 * mib, 600 * mib}, 0, 3, "no less than", ""},
		{"never converges: round limit", []int64{800 * mib, 700 * mib, 600 * mib, 500 * mib, 450 * mib, 400 * mib}, 0, 5, "5 rounds", ""},
		{"round 2 fails", []int64{800 * mib, 200 * mib}, 2, 1, "", "pre-copy round 2: criu pre-dump failed: boom"},
		{"round 1 fails", []int64{800 * mib}, 1, 0, "", "pre-copy round 1"},
	} {
		round, seen := fakeRounds(c.written, c.failAt)
		got, why, err := runPrecopyRounds(ctx, defaultPrecopyPolicy, round)
		if len(got) != c.rounds || !strings.Contains(why, c.why) {
			t.Errorf("%s: %d rounds (%q), want %d (%q)", c.name, len(got), why, c.rounds, c.why)
		}
		if (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.err)
		}
		for i, n := range *seen {
			if n != i+1 {
				t.Errorf("%s: rounds numbered %v", c.name, *seen)
			}
		}
		for i, r := range got {
			if r.Written != c.written[i] || r.Sent != c.written[i]+100 {
				t.Errorf("%s: round %d result %+v", c.name, i+1, r)
			}
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	round, seen := fakeRounds([]int64{800 * mib}, 0)
	if _, _, err := runPrecopyRounds(cctx, defaultPrecopyPolicy, round); !errors.Is(err, context.Canceled) || len(*seen) != 0 {
		t.Errorf("cancelled: %v after %v", err, *seen)
	}
}

func TestPrecopyParents(t *testing.T) {
	if parentOf(1) != "" || parentOf(2) != "../precopy-1" || parentOf(6) != "../precopy-5" {
		t.Errorf("parents: %q %q %q", parentOf(1), parentOf(2), parentOf(6))
	}
}

// statsImage builds a stats-dump image as CRIU writes it.
func statsImage(t *testing.T, d *stats.DumpStatsEntry) []byte {
	t.Helper()
	payload, err := proto.MarshalOptions{AllowPartial: true}.Marshal(&stats.StatsEntry{Dump: d})
	if err != nil {
		t.Fatal(err)
	}
	img := binary.LittleEndian.AppendUint32(nil, stats.ImgServiceMagic)
	img = binary.LittleEndian.AppendUint32(img, stats.StatsMagic)
	img = binary.LittleEndian.AppendUint32(img, uint32(len(payload)))
	return append(img, payload...)
}

func TestParseDumpStats(t *testing.T) {
	img := statsImage(t, &stats.DumpStatsEntry{FreezingTime: proto.Uint32(1), FrozenTime: proto.Uint32(2300),
		MemdumpTime: proto.Uint32(3), MemwriteTime: proto.Uint32(4), PagesScanned: proto.Uint64(27000),
		PagesSkippedParent: proto.Uint64(25000), PagesWritten: proto.Uint64(2000), PagesLazy: proto.Uint64(0)})
	st, err := parseDumpStats(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetPagesWritten() != 2000 || st.GetPagesScanned() != 27000 || st.GetPagesSkippedParent() != 25000 {
		t.Errorf("got %v", st)
	}
	// Written by CRIU 4.2.1 (`criu dump` of a sleep: 58 pages scanned,
	// 31 written).
	st, err = dumpStats("testdata/criu")
	if err == nil {
		t.Error("dumpStats read a directory without stats-dump")
	}
	data, err := os.ReadFile("testdata/criu/stats-dump-4.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if st, err = parseDumpStats(data); err != nil || st.GetPagesWritten() != 31 || st.GetPagesScanned() != 58 {
		t.Errorf("CRIU 4.2.1's stats-dump: %v, %v", st, err)
	}
	bad := map[string][]byte{
		"empty":      nil,
		"short":      img[:8],
		"bad magic":  append([]byte{1, 2, 3, 4}, img[4:]...),
		"truncated":  img[:len(img)-3],
		"no payload": statsImage(t, nil)[:12],
	}
	for name, data := range bad {
		if _, err := parseDumpStats(data); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseDumpStats(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseDumpStats(data) // must not panic
	})
}

func TestCheckStrategy(t *testing.T) {
	m := &Manager{strategies: ProbeStrategies(CriuInfo{Version: "4.2.1", Features: map[string]bool{"uffd-noncoop": true}})}
	if err := m.checkStrategy(StrategyAuto); err != nil {
		t.Errorf("auto: %v", err)
	}
	if err := m.checkStrategy(StrategyPostCopy); err != nil {
		t.Errorf("post-copy: %v", err)
	}
	err := m.checkStrategy(StrategyPreCopy)
	if !errors.Is(err, ErrStrategy) || !strings.HasPrefix(err.Error(), "migration strategy pre-copy cannot run on this host: the kernel does not track dirty memory") {
		t.Errorf("pre-copy without dirty tracking: %v", err)
	}
	if err := m.checkStrategy("teleport"); !errors.Is(err, ErrStrategy) || !strings.Contains(err.Error(), `migration strategy "teleport" is unknown`) {
		t.Errorf("unknown: %v", err)
	}
	m.cfg.MigrationStrategy = StrategyStopAndCopy
	if got := m.strategyFor(MigrateOptions{}); got != StrategyStopAndCopy {
		t.Errorf("default: %q", got)
	}
	if got := m.strategyFor(MigrateOptions{Strategy: StrategyPreCopy}); got != StrategyPreCopy {
		t.Errorf("override: %q", got)
	}
}

// scriptConn is a MigrationConn that replays received messages and
// records what is sent.
type scriptConn struct {
	MigrationConn
	in   []scriptMsg
	sent []string
}

type scriptMsg struct {
	typ  string
	body string
}

func (c *scriptConn) PeerName() string { return "hostb" }
func (c *scriptConn) Send(typ string, _ any) error {
	c.sent = append(c.sent, typ)
	return nil
}
func (c *scriptConn) Recv() (string, json.RawMessage, error) {
	if len(c.in) == 0 {
		return "", nil, io.EOF
	}
	m := c.in[0]
	c.in = c.in[1:]
	return m.typ, json.RawMessage(m.body), nil
}

// TestPrecopyInRefusesBadSequences: the destination follows the rounds
// in order and refuses anything else before it starts a page server.
func TestPrecopyInRefusesBadSequences(t *testing.T) {
	m := &Manager{cfg: ManagerConfig{Log: slog.New(slog.DiscardHandler)}, criu: criuRunner{path: "/nonexistent/criu"}}
	for _, c := range []struct {
		name string
		in   []scriptMsg
		err  string
	}{
		{"final before any round", []scriptMsg{{"precopy-final", `{"rounds":0}`}}, "the final dump follows round 0, but 0 rounds arrived"},
		{"round out of order", []scriptMsg{{"precopy-round", `{"round":2}`}}, "round 2 arrived, round 1 expected"},
		{"something else", []scriptMsg{{"images", `{}`}}, `unexpected message "images"`},
		{"link breaks", nil, "EOF"},
	} {
		conn := &scriptConn{in: c.in}
		work := t.TempDir()
		_, _, _, err := m.precopyIn(context.Background(), conn, "kv", "txn", work, work+"/images", func(int64) {})
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: %v, want %q", c.name, err, c.err)
		}
		if len(conn.sent) != 0 {
			t.Errorf("%s: sent %q", c.name, conn.sent)
		}
	}
}
