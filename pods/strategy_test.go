package pods

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/osthread"
)

func TestProbeStrategies(t *testing.T) {
	ss := ProbeStrategies(CriuInfo{Version: "4.2.1", Features: map[string]bool{"uffd-noncoop": true}})
	if !ss.Can(StrategyPostCopy) || !ss.Can(StrategyStopAndCopy) || ss.Can(StrategyPreCopy) {
		t.Errorf("uffd, no dirty tracking: %+v", ss)
	}
	if !strings.Contains(ss.Unavailable[StrategyPreCopy], "dirty memory") {
		t.Errorf("pre-copy reason: %q", ss.Unavailable[StrategyPreCopy])
	}
	ss = ProbeStrategies(CriuInfo{Version: "4.1.1", Features: map[string]bool{"uffd-noncoop": true, "mem_dirty_track": true}})
	if !ss.Can(StrategyPreCopy) || !ss.Can(StrategyPostCopy) || !ss.Can(StrategyStopAndCopy) {
		t.Errorf("uffd and dirty tracking: %+v", ss)
	}
	ss = ProbeStrategies(CriuInfo{Version: "4.2.1", Features: map[string]bool{}})
	if ss.Can(StrategyPostCopy) || !strings.Contains(ss.Unavailable[StrategyPostCopy], "userfaultfd") {
		t.Errorf("no uffd: %+v", ss)
	}
	ss = ProbeStrategies(CriuInfo{Error: "criu check fails"})
	if ss.Can(StrategyStopAndCopy) {
		t.Errorf("broken CRIU: %+v", ss)
	}
}

func TestPickStrategy(t *testing.T) {
	all := StrategySupport{}
	noLazy := StrategySupport{Unavailable: map[string]string{StrategyPostCopy: "no uffd"}}
	noDirty := StrategySupport{Unavailable: map[string]string{StrategyPreCopy: "no soft-dirty"}}
	onlyStop := StrategySupport{Unavailable: map[string]string{StrategyPostCopy: "no uffd", StrategyPreCopy: "no soft-dirty"}}
	broken := StrategySupport{Unavailable: map[string]string{StrategyPostCopy: "x", StrategyPreCopy: "x", StrategyStopAndCopy: "criu broken"}}
	for _, c := range []struct {
		want          string
		local, remote StrategySupport
		got, err      string
	}{
		{"auto", all, all, StrategyPostCopy, ""},
		{"", all, all, StrategyPostCopy, ""},
		{"auto", all, noLazy, StrategyPreCopy, ""},
		{"auto", noLazy, all, StrategyPreCopy, ""},
		{"auto", broken, all, "", "no migration strategy runs on both hosts"},
		{StrategyPostCopy, all, noLazy, "", "cannot run on the peer: no uffd"},
		{StrategyPostCopy, noLazy, all, "", "cannot run on this host: no uffd"},
		{StrategyStopAndCopy, all, noLazy, StrategyStopAndCopy, ""},
		// auto: post-copy, then pre-copy, then stop-and-copy
		{"auto", noLazy, noLazy, StrategyPreCopy, ""},
		{"auto", noLazy, noDirty, StrategyStopAndCopy, ""},
		{"auto", onlyStop, all, StrategyStopAndCopy, ""},
		{"auto", noDirty, all, StrategyPostCopy, ""},
		{StrategyPreCopy, all, all, StrategyPreCopy, ""},
		{StrategyPreCopy, noDirty, all, "", "pre-copy cannot run on this host: no soft-dirty"},
		{StrategyPreCopy, all, noDirty, "", "pre-copy cannot run on the peer: no soft-dirty"},
	} {
		got, err := pickStrategy(c.want, c.local, c.remote)
		if got != c.got || (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("pickStrategy(%q): %q, %v; want %q, %q", c.want, got, err, c.got, c.err)
		}
	}
}

func TestEnsurePipeSize(t *testing.T) {
	defer func(p string) { pipeMaxSizePath = p }(pipeMaxSizePath)
	pipeMaxSizePath = filepath.Join(t.TempDir(), "pipe-max-size")
	os.WriteFile(pipeMaxSizePath, []byte("1048576\n"), 0o644)
	if err := ensurePipeSize(); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(pipeMaxSizePath); strings.TrimSpace(string(data)) != "4194304" {
		t.Errorf("raised to %q", data)
	}
	os.WriteFile(pipeMaxSizePath, []byte("8388608\n"), 0o644)
	if err := ensurePipeSize(); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(pipeMaxSizePath); strings.TrimSpace(string(data)) != "8388608" {
		t.Errorf("lowered to %q", data)
	}
}

func TestParseNeighbours(t *testing.T) {
	// `ip -j neigh show dev eth0` inside a pod (iproute2 6.1).
	out := `[{"dst":"10.55.0.250","lladdr":"06:7a:94:a9:c9:6e","state":["REACHABLE"]},` +
		`{"dst":"10.55.0.1","lladdr":"f6:bf:84:f2:cb:96","state":["STALE"]},` +
		`{"dst":"10.55.0.7","state":["INCOMPLETE"]},` +
		`{"dst":"10.55.0.9","lladdr":"06:00:00:00:00:09","state":["FAILED"]},` +
		`{"dst":"fe80::1","lladdr":"06:00:00:00:00:01","state":["STALE"]}]`
	ns, err := parseNeighbours([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 2 || ns[0].IP.String() != "10.55.0.250" || ns[1].MAC != "f6:bf:84:f2:cb:96" {
		t.Errorf("got %+v", ns)
	}
	if ns, err := parseNeighbours([]byte("\n")); err != nil || ns != nil {
		t.Errorf("empty table: %v, %v", ns, err)
	}
	if _, err := parseNeighbours([]byte("[{")); err == nil {
		t.Error("bad JSON accepted")
	}
}

// TestDaemonOutlivesThreads: a daemon CRIU (one that dies with the agent,
// by its parent-death signal) is not killed when the Go thread that
// started it ends, as threads do under goroutines that exit locked to them
// (osthread.Doomed). It once was, in the middle of post-copy migrations.
func TestDaemonOutlivesThreads(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "criu")
	// Says it is ready on its status fd (3), then waits to be killed.
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nprintf x >&3\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Started from a thread that then ends (osthread.Doomed), as any
	// thread of the agent may when a goroutine exits locked to it.
	var d *criuDaemon
	var err error
	done := make(chan struct{})
	osthread.Doomed(func() {
		defer close(done)
		d, err = criuRunner{path: fake}.startDaemon(ctx, dir, "daemon.log", "lazy-pages")
	})
	<-done
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		d.kill()
		_ = d.wait(context.Background())
	}()
	time.Sleep(50 * time.Millisecond) // a signal's delivery
	select {
	case <-d.failed:
		t.Fatalf("the daemon ended when threads of the agent did: %v", d.wait(ctx))
	default:
	}
}
