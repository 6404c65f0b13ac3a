package cycle

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadRecord(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC)
	path := filepath.Join(dir, "cycle.json")

	r, err := loadRecord(path, now)
	if err != nil || r.State != Idle || r.Version != RecordVersion || !r.Since.Equal(now) {
		t.Fatalf("missing file: %+v, %v; want a fresh idle record", r, err)
	}

	for _, tc := range []struct{ content, want string }{
		{`{"version":1,"state":"evacuat`, "damaged"},
		{`{"version":2,"state":"idle"}`, "format version 2"},
		{`{"version":1,"state":"rebooted"}`, `unknown state "rebooted"`},
	} {
		if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadRecord(path, now); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v; want an error naming the file and saying %q", tc.content, err, tc.want)
		}
		if _, err := New(Config{StateFile: path, Detector: fake{}, Pods: fake{}, Peers: fake{}, Lock: fake{},
			Inhibitor: fake{}, Installer: fake{}, Rebooter: fake{}}); err == nil {
			t.Errorf("New accepted a bad record %s", tc.content)
		}
	}

	// A full record survives a round trip through the file.
	full := &Record{
		Version: RecordVersion, State: Rebooting, Since: now, Reason: "reboot requested (kexec)", Trigger: TriggerAptHook,
		Plan: &Plan{
			Updates: []Update{kernelUpdate()}, RebootRequired: true, Reasons: []string{"x"}, When: now, WindowEnd: now.Add(time.Hour),
			Peer: "b", Refusals: []Refusal{{Peer: "c", Reason: "updating"}}, Moves: []Move{{Pod: "web", To: "b", Done: true}},
			RebootMethod: RebootKexec,
		},
		LastCheck: &CheckResult{At: now, Updates: []Update{kernelUpdate()}, RebootRequired: true, Reasons: []string{"r"}},
		BootID:    "abc", RebootRequested: now, Attempts: 2, RetryAt: now, LastError: "e", LeaseHeld: true,
		Blockers:        []Blocker{{Who: "w", Why: "y", What: "shutdown", PID: 1, UID: 2}},
		CancelRequested: true, External: &External{Begun: now, Ended: true, OK: true, Detail: "d"}, Dismissed: "k",
		History: []Transition{{At: now, From: Installing, To: Rebooting, Reason: "installed"}},
	}
	if err := saveRecord(path, full); err != nil {
		t.Fatal(err)
	}
	got, err := loadRecord(path, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(full)
	b, _ := json.Marshal(got)
	if string(a) != string(b) {
		t.Errorf("round trip:\n got %s\nwant %s", b, a)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode: %v, %v", fi.Mode(), err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".cycle.json.tmp*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestHistoryIsBounded(t *testing.T) {
	w, n := fleet(t, Policy{Mode: ModeNotify})
	n.start()
	for i := 0; i < 2*maxHistory; i++ {
		if err := n.m.transition(UpdatePending, "up", nil); err != nil {
			t.Fatal(err)
		}
		if err := n.m.transition(Idle, "down", nil); err != nil {
			t.Fatal(err)
		}
	}
	_ = w
	h := n.m.Status().History
	if len(h) != maxHistory || h[len(h)-1].To != Idle {
		t.Errorf("history has %d entries; want the last %d", len(h), maxHistory)
	}
	if len(n.heard) != 4*maxHistory {
		t.Errorf("notifier heard %d transitions; want %d", len(n.heard), 4*maxHistory)
	}
	onDisk, err := loadRecord(n.stateFile(), time.Time{})
	if err != nil || len(onDisk.History) != maxHistory {
		t.Errorf("on disk: %d entries, %v", len(onDisk.History), err)
	}
}

func TestStatusJSON(t *testing.T) {
	// The agent serialises Status for D-Bus; its keys are API.
	w, n := fleet(t, Policy{Windows: []Window{{Days: []string{"daily"}, Start: "02:00", Length: time.Hour, TimeZone: "UTC"}}})
	settle(t, w, inState(n, WaitingForWindow), nil, n)
	data, err := json.Marshal(n.m.Status())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"state", "since", "reason", "plan", "pending_updates", "reboot_required", "next_window_start", "next_window_end", "history"} {
		if _, ok := m[key]; !ok {
			t.Errorf("status JSON lacks %q: %s", key, data)
		}
	}
	if m["state"] != "waiting-for-window" || m["next_window_start"] != "2025-03-05T02:00:00Z" {
		t.Errorf("state %v, next window %v", m["state"], m["next_window_start"])
	}
}
