package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/cycle"
)

var testNow = time.Date(2025, 3, 4, 12, 0, 0, 0, time.UTC)

func TestRenderPods(t *testing.T) {
	rows := []podRow{
		{Name: "bad", State: "invalid", Error: "line 3:\n  unknown key"},
		{Name: "db", State: "stopped"},
		{Name: "web", State: "running", Pid: 4242, Address: "10.77.0.10/24", Since: testNow.Add(-3 * time.Hour)},
	}
	var b bytes.Buffer
	if err := renderPods(&b, rows, testNow); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"NAME  STATE    PID   ADDRESS        SINCE  ERROR\n" +
		"bad   invalid  -     -              -      line 3: unknown key\n" +
		"db    stopped  -     -              -      \n" +
		"web   running  4242  10.77.0.10/24  3h     \n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestRenderPodsEmpty(t *testing.T) {
	var b bytes.Buffer
	if err := renderPods(&b, nil, testNow); err != nil {
		t.Fatal(err)
	}
	if b.String() != "NAME  STATE  PID  ADDRESS  SINCE  ERROR\n" {
		t.Errorf("got %q", b.String())
	}
}

func TestRenderStatus(t *testing.T) {
	var b bytes.Buffer
	st := agentStatus{
		Version: "1.2.3",
		Criu: criuInfo{Path: "/usr/sbin/criu", Version: "4.1",
			Features: map[string]bool{"mem_dirty_track": true, "lazy_pages": false, "uffd": true}},
		Pods: 3,
	}
	if err := renderStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"Agent version:  1.2.3\n" +
		"CRIU path:      /usr/sbin/criu\n" +
		"CRIU version:   4.1\n" +
		"CRIU features:  mem_dirty_track, uffd (unsupported: lazy_pages)\n" +
		"Pods:           3\n" +
		"Update cycle:   off (no apt or dnf on this host)\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}

	// With the agent's migration strategies.
	b.Reset()
	st.Strategies = map[string]string{"stop-and-copy": "", "post-copy": "", "pre-copy": "the kernel does not track dirty memory"}
	if err := renderStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	if want := "" +
		"Migration:      post-copy, stop-and-copy (unavailable: pre-copy)\n" +
		"  pre-copy:     the kernel does not track dirty memory\n" +
		"Pods:           3\n"; !strings.Contains(b.String(), want) {
		t.Errorf("got:\n%s\nwant it to contain:\n%s", b.String(), want)
	}
	st.Strategies = nil

	// With an update cycle waiting for a blocked reboot.
	b.Reset()
	st.Update = &cycle.Status{
		Record: cycle.Record{State: cycle.Rebooting, Reason: "reboot blocked by backup.service",
			LeaseHeld: true, Blockers: []cycle.Blocker{{Who: "backup.service", Why: "nightly backup", What: "shutdown", PID: 812}},
			LastError: "install: apt-get: exit status 100"},
		PendingUpdates: []cycle.Update{{Name: "linux-image-amd64", Version: "6.1.119-1", Class: cycle.ClassKernel}},
		RebootRequired: true,
	}
	if err := renderStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"Update state:       rebooting",
		"Update reason:      reboot blocked by backup.service",
		"Pending updates:    linux-image-amd64 6.1.119-1 (kernel)",
		"Reboot required:    yes",
		"Next window:        any time (no maintenance window)",
		"Fleet lease:        held by this host",
		"Reboot blocked by:  backup.service",
		"Last update error:  install: apt-get: exit status 100",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("no line %q in:\n%s", line, b.String())
		}
	}

	b.Reset()
	st = agentStatus{Criu: criuInfo{Error: "criu not found in $PATH"}}
	if err := renderStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"CRIU path:      -", "CRIU features:  -", "CRIU error:     criu not found in $PATH", "Pods:           0"} {
		if !strings.Contains(b.String(), line+"\n") {
			t.Errorf("missing %q in:\n%s", line, b.String())
		}
	}
}

func TestRenderPod(t *testing.T) {
	since := testNow.Add(-90 * time.Second)
	p := podInfo{Name: "web", State: "running", Pid: 4242, Address: "10.77.0.10/24",
		File: "/etc/autopod/pods/web.toml", Since: since, Restarts: 2}
	var b bytes.Buffer
	if err := renderPod(&b, p, testNow); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"Name:        web\n" +
		"State:       running\n" +
		"PID:         4242\n" +
		"Address:     10.77.0.10/24\n" +
		"File:        /etc/autopod/pods/web.toml\n" +
		"Since:       " + since.Local().Format(time.RFC3339) + " (90s ago)\n" +
		"Restarts:    2\n" +
		"Checkpoint:  -\n" +
		"Error:       -\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestRenderCheckpoint(t *testing.T) {
	var b bytes.Buffer
	_ = renderCheckpoint(&b, checkpointResult{Name: "web", Dir: "/var/lib/autopod/pods/web/checkpoints/20261130T040205.009385820Z", Bytes: 12 << 20, LeaveRunning: true})
	if want := "checkpointed web: 12.0 MiB in /var/lib/autopod/pods/web/checkpoints/20261130T040205.009385820Z (pod left running)\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestRenderPodMigrated(t *testing.T) {
	var b bytes.Buffer
	_ = renderPod(&b, podInfo{Name: "kv", State: "migrated", Location: "hostb"}, testNow)
	if !strings.HasSuffix(b.String(), "Error:       -\nLocation:    hostb\n") {
		t.Errorf("got:\n%s", b.String())
	}
}

func TestProgressPrinter(t *testing.T) {
	var b bytes.Buffer
	pp := newProgressPrinter(&b, false)
	for _, p := range []migrationProgress{
		{"kv", "hostb", "files", 0},
		{"kv", "hostb", "files", 4096}, // same phase: no line
		{"web", "hostb", "files", 0},   // another pod, interleaved
		{"kv", "hostb", "images", 1 << 20},
		{"kv", "hostb", "dump", 1 << 20}, // pre-copy: phases come again
		{"kv", "hostb", "images", 104_900_000},
		{"kv", "hostb", "images", 105_000_000},
	} {
		pp.show(p)
	}
	want := "" +
		"kv → hostb: files 0 B\n" +
		"web → hostb: files 0 B\n" +
		"kv → hostb: images 1.0 MiB\n" +
		"kv → hostb: dump 1.0 MiB\n" +
		"kv → hostb: images 100.0 MiB\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	newProgressPrinter(&b, true).show(migrationProgress{"kv", "hostb", "restore", 3 << 20})
	if b.String() != "kv ← hostb: restore 3.0 MiB\n" {
		t.Errorf("incoming: %q", b.String())
	}
}

func TestRenderMigrationResults(t *testing.T) {
	var b bytes.Buffer
	_ = renderMigration(&b, migrateResult{Pod: "kv", Peer: "hostb", FrozenUsec: 812_345, TotalUsec: 1_903_000, Bytes: 115_657_523})
	_ = renderEvacuation(&b, evacuateResult{Peer: "hostb", Migrated: []string{"kv"}})
	_ = renderEvacuation(&b, evacuateResult{Peer: "hostb", Migrated: []string{}})
	_ = renderReturn(&b, returnResult{Returned: []string{"kv", "web"}})
	_ = renderReturn(&b, returnResult{Returned: []string{}})
	want := "" +
		"migrated kv to hostb: frozen 812 ms, total 1.9 s, 110.3 MiB\n" +
		"evacuated 1 pod to hostb: kv\n" +
		"evacuated no pods to hostb: none is running\n" +
		"returned 2 pods: kv, web\n" +
		"returned no pods: none runs on a peer\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestRenderPeers(t *testing.T) {
	var b bytes.Buffer
	_ = renderPeers(&b, []peerRow{
		{"hosta", "192.0.2.1:7781", "sha256:aa"},
		{"hostb-long", "[fd00::2]:7000", "sha256:bb"},
	})
	want := "" +
		"NAME        ADDRESS         FINGERPRINT\n" +
		"hosta       192.0.2.1:7781  sha256:aa\n" +
		"hostb-long  [fd00::2]:7000  sha256:bb\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestHumanDuration(t *testing.T) {
	for usec, want := range map[uint64]string{
		0: "0 µs", 999: "999 µs", 1000: "1 ms", 812_345: "812 ms", 999_400: "999 ms", 999_600: "1.0 s",
		1_903_000: "1.9 s", 59_940_000: "59.9 s", 59_960_000: "1 min 0 s", 125_000_000: "2 min 5 s",
		1<<64 - 1: "153722867 min 16 s", // clamped, not wrapped
	} {
		if got := humanDuration(usec); got != want {
			t.Errorf("humanDuration(%d) = %q, want %q", usec, got, want)
		}
	}
}

func TestRelativeAge(t *testing.T) {
	cases := []struct {
		ago  time.Duration
		want string
	}{
		{0, "0s"}, {45 * time.Second, "45s"}, {119 * time.Second, "119s"}, {2 * time.Minute, "2m"},
		{90 * time.Minute, "90m"}, {3 * time.Hour, "3h"}, {47 * time.Hour, "47h"}, {72 * time.Hour, "3d"},
		{-5 * time.Second, "0s"}, // clock stepped back
	}
	for _, c := range cases {
		if got := relativeAge(testNow.Add(-c.ago), testNow); got != c.want {
			t.Errorf("relativeAge(%v ago) = %q, want %q", c.ago, got, c.want)
		}
	}
	if got := relativeAge(time.Time{}, testNow); got != "-" {
		t.Errorf("zero time: %q", got)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 12 << 20: "12.0 MiB", 3 << 30: "3.0 GiB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestJSONOutputIsOneDocument checks the --json contract: one document,
// and fields from the agent that autopodctl does not know pass through.
func TestJSONOutputIsOneDocument(t *testing.T) {
	var b bytes.Buffer
	if err := writeRawJSON(&b, `[{"name":"web","future_field":7}]`); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(&b)
	var v []map[string]any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v[0]["future_field"] != float64(7) {
		t.Errorf("unknown field lost: %v", v)
	}
	if dec.More() {
		t.Error("more than one document")
	}
	if err := writeRawJSON(&b, "{not json"); err == nil {
		t.Error("malformed agent JSON accepted")
	}

	b.Reset()
	if err := writeJSON(&b, agentStatus{Version: "1", Criu: criuInfo{Features: map[string]bool{"x": true}}, Pods: 2}); err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	criu, _ := st["criu"].(map[string]any)
	if st["version"] != "1" || st["pods"] != float64(2) || criu["features"] == nil {
		t.Errorf("status JSON = %s", b.String())
	}
}

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, noEnv, &out, &errb); code != exitOK {
		t.Fatalf("--help exit %d: %s", code, errb.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"help"}, noEnv, &out, &errb); code != exitOK {
		t.Fatalf("help exit %d: %s", code, errb.String())
	}
	for _, section := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "EXIT STATUS", "ENVIRONMENT", "EXAMPLES"} {
		if !strings.Contains(out.String(), "\n"+section+"\n") && !strings.HasPrefix(out.String(), section+"\n") {
			t.Errorf("--help lacks %s", section)
		}
	}
	mainHelp := out.String()
	for _, c := range commandTable() {
		// A group is listed through its sub-commands.
		if !c.group && !strings.Contains(mainHelp, "\n    "+c.synopsis()) {
			t.Errorf("--help does not list %s", c.name)
		}
		out.Reset()
		// "help peer add" as a person types it; "help 'peer add'" works too.
		if code := run(context.Background(), append([]string{"help"}, strings.Fields(c.name)...), noEnv, &out, &errb); code != exitOK {
			t.Fatalf("help %s exit %d", c.name, code)
		}
		var quoted bytes.Buffer
		run(context.Background(), []string{"help", c.name}, noEnv, &quoted, &errb)
		if quoted.String() != out.String() {
			t.Errorf("help %q differs from help %s", c.name, c.name)
		}
		if c.group {
			for _, sub := range subcommands(c.name) {
				if !strings.Contains(out.String(), "\n    "+sub.synopsis()+"\n") {
					t.Errorf("help %s does not list %s", c.name, sub.name)
				}
			}
		}
		for _, section := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES"} {
			if !strings.Contains(out.String(), section+"\n") {
				t.Errorf("help %s lacks %s", c.name, section)
			}
		}
		if c.name != "help" && !strings.Contains(out.String(), "EXIT STATUS") {
			t.Errorf("help %s lacks EXIT STATUS", c.name)
		}
		var viaFlag bytes.Buffer
		run(context.Background(), append(strings.Fields(c.name), "--help"), noEnv, &viaFlag, &errb)
		if c.name != "help" && viaFlag.String() != out.String() {
			t.Errorf("%s --help differs from help %s", c.name, c.name)
		}
		out.Reset()
	}
}

func TestUsageExitCode(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"pod"}, noEnv, &out, &errb)
	if code != exitUsage || out.Len() != 0 || !strings.HasPrefix(errb.String(), "autopodctl: usage: autopodctl pod NAME\n") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

func TestUnreachableBus(t *testing.T) {
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == "DBUS_SYSTEM_BUS_ADDRESS" {
			return "unix:path=" + t.TempDir() + "/no-bus"
		}
		return ""
	}
	code := run(context.Background(), []string{"status"}, env, &out, &errb)
	if code != exitUnreachable {
		t.Fatalf("exit %d, want %d; stderr %s", code, exitUnreachable, errb.String())
	}
	if !strings.Contains(errb.String(), "no-bus") || !strings.Contains(errb.String(), "systemctl start autopod") {
		t.Errorf("stderr does not name the bus and say how to start the agent:\n%s", errb.String())
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q", out.String())
	}
}

func noEnv(string) string { return "" }
