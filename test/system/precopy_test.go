//go:build roottest

package system

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/test/testbed"
)

// strategyUnavailable returns why host h's agent cannot run a migration
// strategy ("" if it can), from `autopodctl --json status`.
func strategyUnavailable(t *testing.T, h *testbed.Host, strategy string) string {
	t.Helper()
	out := h.MustCtl(t, "--json", "status")
	var st struct {
		Strategies map[string]string `json:"migration_strategies"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%s status: %v\n%s", h.Name, err, out)
	}
	why, ok := st.Strategies[strategy]
	if !ok {
		t.Fatalf("%s status does not list strategy %s:\n%s", h.Name, strategy, out)
	}
	return why
}

// TestMigratePreCopy moves a redis pod A→B→A with pre-copy while a client
// writes on one connection. Where the kernel lacks soft-dirty tracking it
// checks instead that asking for pre-copy fails at once with the reason,
// before anything is frozen, and that the pod serves on from A; then it
// skips with that reason.
func TestMigratePreCopy(t *testing.T) {
	// The configured default is pre-copy too: `return` (B's migration
	// out) has no --strategy.
	a, b, l, sums := roundTripBed(t, "pre-copy")

	if why := strategyUnavailable(t, a, "pre-copy"); why != "" {
		testPreCopyRefused(t, a, b, l, why)
		// With the default overridden, the same pod moves.
		out := a.MustCtl(t, "migrate", "kv", "--to", "hostb", "--strategy", "stop-and-copy")
		t.Logf("migrate --strategy stop-and-copy:\n%s", out)
		if !strings.Contains(a.AgentLog(), "strategy=stop-and-copy") {
			t.Errorf("--strategy stop-and-copy did not override migration_strategy:\n%s", a.AgentLog())
		}
		waitPod(t, b, "kv", "running")
		l.pause()
		l.check(t)
		t.Skip(why)
	}

	net := podNetwork(t, waitPod(t, a, "kv", "running").Pid)
	out := a.MustCtl(t, "migrate", "kv", "--to", "hostb", "--strategy", "pre-copy")
	t.Logf("migrate A→B:\n%s", out)
	logA := a.AgentLog()
	if !strings.Contains(logA, "strategy=pre-copy") || !strings.Contains(logA, `msg="pre-copy round"`) {
		t.Errorf("A's agent did not migrate with pre-copy rounds:\n%s", logA)
	}
	if !strings.Contains(out, "pre-copy ") {
		t.Errorf("no pre-copy progress line:\n%s", out)
	}
	for _, l := range strings.Split(logA, "\n") {
		if strings.Contains(l, "pre-copy round") || strings.Contains(l, "pre-copy rounds done") {
			t.Log(l)
		}
	}
	pauseAB := l.pause()
	l.check(t)
	checkMovedToB(t, a, b, net)

	out = a.MustCtl(t, "return")
	t.Logf("return B→A:\n%s", out)
	if !strings.Contains(b.AgentLog(), "strategy=pre-copy") {
		t.Errorf("B's agent did not return the pod with pre-copy:\n%s", b.AgentLog())
	}
	pauseBA := l.pause()
	waitPod(t, a, "kv", "running")
	if _, ok := podOn(t, b, "kv"); ok {
		t.Fatal("kv still listed on B after return")
	}
	time.Sleep(300 * time.Millisecond)

	acked := checkWrites(t, l, sums)
	t.Logf("%d acknowledged writes, all present; client-seen pause A→B %s, B→A %s", acked, pauseAB, pauseBA)
}

// testPreCopyRefused: on a host that cannot run pre-copy, asking for it
// (by --strategy, or by the configured default) fails with the probe's
// reason before the pod is frozen or the peer holds anything; the pod
// serves on from A through the same connections.
func testPreCopyRefused(t *testing.T, a, b *testbed.Host, l *load, why string) {
	t.Helper()
	for _, args := range [][]string{
		{"migrate", "kv", "--to", "hostb", "--strategy", "pre-copy"},
		{"migrate", "kv", "--to", "hostb"}, // migration_strategy = "pre-copy"
	} {
		out, err := a.Ctl(args...)
		if err == nil {
			t.Fatalf("autopodctl %s succeeded on a host without dirty-memory tracking:\n%s", strings.Join(args, " "), out)
		}
		t.Logf("autopodctl %s:\n%s", strings.Join(args, " "), out)
		want := fmt.Sprintf("migration strategy pre-copy cannot run on this host: %s", why)
		if !strings.Contains(out, want) {
			t.Errorf("the error does not give the reason %q:\n%s", want, out)
		}
		for _, phase := range []string{"freeze", "dump", "rollback"} {
			if strings.Contains(out, phase) {
				t.Errorf("the failed migration reached phase %s:\n%s", phase, out)
			}
		}
	}
	if log := a.AgentLog(); strings.Contains(log, "phase=freeze") || strings.Contains(log, "phase=offer") {
		t.Errorf("A's agent began a migration:\n%s", log)
	}
	if strings.Contains(b.AgentLog(), "pod=kv") {
		t.Errorf("B heard of the pod:\n%s", b.AgentLog())
	}
	if p := waitPod(t, a, "kv", "running"); p.Location != "" {
		t.Fatalf("on A: %+v", p)
	}
	onlyOnA(t, a, b, l)
}
