package cycle

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

const gib = 1 << 30

// fleet is host a with pods web and db, a new kernel (and vim) in its
// repository, and peers b and c with room for the pods.
func fleet(t *testing.T, pol Policy) (*world, *node) {
	t.Helper()
	w := newWorld(t)
	a := w.addHost("a", 0, "b", "c")
	w.addHost("b", 8*gib, "a")
	w.addHost("c", 8*gib, "a")
	a.offer(kernelUpdate(), Update{Name: "vim", Version: "9.1", Class: ClassOther})
	w.addPod("db", "a", 2*gib)
	w.addPod("web", "a", gib)
	return w, newNode(w, "a", pol)
}

// updated: the host runs the new kernel and the cycle is over.
func updated(n *node) func() bool {
	return func() bool {
		return n.m != nil && n.m.Status().State == Idle && n.w.hosts[n.h].running == newKernel
	}
}

// ended: a cycle went back to Idle (by any edge).
func ended(n *node) func() bool {
	return func() bool {
		if n.m == nil {
			return false
		}
		s := n.m.Status()
		return s.State == Idle && len(s.History) > 0 && s.History[len(s.History)-1].From != Idle &&
			s.History[len(s.History)-1].From != UpdatePending && s.History[len(s.History)-1].From != WaitingForWindow &&
			s.History[len(s.History)-1].From != Locked
	}
}

func inState(n *node, st State) func() bool {
	return func() bool { return n.m != nil && n.m.Status().State == st }
}

func wantStates(t *testing.T, got []Transition, want string) {
	t.Helper()
	if g, w := states(got), stateList(want); !slices.Equal(g, w) {
		t.Errorf("states:\n got %v\nwant %v", g, w)
	}
}

func TestHappyPathToPeer(t *testing.T) {
	w, n := fleet(t, Policy{})
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
	w.assertAllHome(t)
	s := n.m.Status()
	wantStates(t, s.History, "idle update-pending waiting-for-window locked evacuating installing rebooting returning idle")
	if !slices.Equal(states(n.heard), states(s.History)) {
		t.Errorf("notifier heard %v, history has %v", states(n.heard), states(s.History))
	}
	a := w.hosts["a"]
	if a.boots != 1 || a.reboots != 1 || a.installs != 1 {
		t.Errorf("boots %d, reboot requests %d, installs %d; want 1 each", a.boots, a.reboots, a.installs)
	}
	if a.installed["vim"] != "9.0" {
		t.Errorf("updates = kernel installed vim %s", a.installed["vim"])
	}
	if s.LastError != "" || s.LeaseHeld || s.Plan != nil || s.Trigger != "" {
		t.Errorf("idle record not clean: %+v", s.Record)
	}
}

func (w *world) advance(d time.Duration) {
	w.mu.Lock()
	w.now = w.now.Add(d)
	w.mu.Unlock()
}

// stepFor steps n while the clock moves on by at least d.
func stepFor(t *testing.T, w *world, n *node, d time.Duration) {
	t.Helper()
	end := w.now.Add(d)
	settle(t, w, func() bool { return !w.now.Before(end) }, nil, n)
}

func lastTransition(n *node) Transition {
	h := n.m.Status().History
	if len(h) == 0 {
		return Transition{}
	}
	return h[len(h)-1]
}

func TestTransitionTable(t *testing.T) {
	// Every state is reachable from Idle and leads back to Idle.
	reach := func(from State, rev bool) map[State]bool {
		seen := map[State]bool{from: true}
		for changed := true; changed; {
			changed = false
			for _, s := range AllStates() {
				for _, to := range s.Next() {
					a, b := s, to
					if rev {
						a, b = to, s
					}
					if seen[a] && !seen[b] {
						seen[b], changed = true, true
					}
				}
			}
		}
		return seen
	}
	fwd, back := reach(Idle, false), reach(Idle, true)
	for _, s := range AllStates() {
		if !s.Valid() || !fwd[s] || !back[s] {
			t.Errorf("%s: valid %v, reachable from Idle %v, leads to Idle %v", s, s.Valid(), fwd[s], back[s])
		}
	}
	if State("rebooted").Valid() {
		t.Error("unknown state is valid")
	}
	// The main path is in the table.
	for _, p := range pairs(stateList("idle update-pending waiting-for-window locked evacuating installing rebooting returning idle")) {
		if !p[0].CanGo(p[1]) {
			t.Errorf("main path edge %s → %s missing", p[0], p[1])
		}
	}
	// Installing and later never go back to Idle directly: the pods are away.
	for _, s := range []State{Evacuating, Installing, Rebooting} {
		if s.CanGo(Idle) {
			t.Errorf("%s → idle would leave pods away", s)
		}
	}

	// An illegal transition is refused and changes nothing, on disk either.
	_, n := fleet(t, Policy{})
	n.start()
	before, _ := loadRecord(n.stateFile(), time.Time{})
	err := n.m.transition(Installing, "bug", nil)
	var te *TransitionError
	if !errors.As(err, &te) || te.From != Idle || te.To != Installing {
		t.Fatalf("transition idle → installing: %v; want a *TransitionError", err)
	}
	after, _ := loadRecord(n.stateFile(), time.Time{})
	if n.m.Status().State != Idle || after.State != before.State || len(n.heard) != 0 {
		t.Errorf("illegal transition changed something: %s, on disk %s, heard %v", n.m.Status().State, after.State, n.heard)
	}
}

func TestNotifyModeWaitsForStart(t *testing.T) {
	w, n := fleet(t, Policy{Mode: ModeNotify})
	stepFor(t, w, n, 48*time.Hour)
	s := n.m.Status()
	if s.State != UpdatePending || !strings.Contains(s.Reason, "notify") {
		t.Fatalf("notify mode: %s (%s); want update-pending saying why", s.State, s.Reason)
	}
	if len(s.PendingUpdates) != 1 || s.PendingUpdates[0].Name != kernelPkg {
		t.Errorf("PendingUpdates = %v; want only the kernel (updates = kernel)", s.PendingUpdates)
	}
	if _, err := n.m.StartUpdate(context.Background(), StartOptions{}); err != nil {
		t.Fatal(err)
	}
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestWindows(t *testing.T) {
	pol := Policy{Windows: []Window{{Days: []string{"daily"}, Start: "02:00", Length: 3 * time.Hour, TimeZone: "UTC"}}}
	w, n := fleet(t, pol) // now is 10:00 UTC
	settle(t, w, inState(n, WaitingForWindow), nil, n)
	open := time.Date(2025, 3, 5, 2, 0, 0, 0, time.UTC)
	if s := n.m.Status(); !s.NextWindowStart.Equal(open) || !strings.Contains(s.Reason, "2025-03-05T02:00:00Z") {
		t.Errorf("waiting: next window %v, reason %q; want %v", s.NextWindowStart, s.Reason, open)
	}
	settle(t, w, updated(n), nil, n)
	for _, tr := range n.m.Status().History {
		if tr.To == Locked && (tr.At.Before(open) || !tr.At.Before(open.Add(3*time.Hour))) {
			t.Errorf("locked at %v, outside the window", tr.At)
		}
	}
	w.assertNoViolations(t)

	// --now ignores the window.
	w, n = fleet(t, pol)
	settle(t, w, inState(n, WaitingForWindow), nil, n)
	start := w.now
	if _, err := n.m.StartUpdate(context.Background(), StartOptions{Now: true}); err != nil {
		t.Fatal(err)
	}
	settle(t, w, inState(n, Evacuating), nil, n)
	if at := lastTransition(n).At; !at.Equal(start) {
		t.Errorf("--now evacuated at %v; want at once (%v)", at, start)
	}
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
}

func TestNoPeerWaits(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.hosts["b"].capacity = 0
	w.hosts["c"].capacity = gib // db needs 2 GiB more
	settle(t, w, func() bool {
		return n.m != nil && len(n.m.Status().History) > 0 && lastTransition(n).From == Locked
	}, nil, n)
	s := n.m.Status()
	if s.State != WaitingForWindow {
		t.Fatalf("no peer with room: %s; want waiting-for-window", s.State)
	}
	for _, want := range []string{"b: not enough memory", "c: not enough memory", "no_peer = wait"} {
		if !strings.Contains(s.Reason, want) {
			t.Errorf("reason %q lacks %q", s.Reason, want)
		}
	}
	if s.Plan == nil || len(s.Plan.Refusals) != 2 {
		t.Errorf("plan refusals: %+v", s.Plan)
	}
	if w.lease != "" || s.LeaseHeld {
		t.Errorf("lease kept while waiting for a peer: %q", w.lease)
	}
	stepFor(t, w, n, 3*time.Hour)
	if st := n.m.Status().State; st != WaitingForWindow {
		t.Fatalf("still no peer: %s", st)
	}
	w.mu.Lock()
	w.hosts["c"].capacity = 4 * gib
	w.mu.Unlock()
	settle(t, w, updated(n), nil, n)
	if p := w.pods["db"]; p.home != "a" || !p.live["a"] {
		t.Errorf("db not home")
	}
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestNoPeerLocalCheckpoint(t *testing.T) {
	w, n := fleet(t, Policy{NoPeer: NoPeerLocalCheckpoint})
	w.hosts["b"].capacity, w.hosts["c"].capacity = 0, 0
	settle(t, w, inState(n, Installing), nil, n)
	s := n.m.Status()
	if !s.Plan.Local || s.Plan.Peer != "" || len(s.Plan.Moves) != 2 {
		t.Fatalf("plan %+v; want local, two moves", s.Plan)
	}
	for _, mv := range s.Plan.Moves {
		if mv.To != LocalDisk || !mv.Done {
			t.Errorf("move %+v; want done to %s", mv, LocalDisk)
		}
	}
	if !w.pods["web"].saved || len(w.pods["web"].live) != 0 {
		t.Errorf("web not checkpointed: %+v", w.pods["web"])
	}
	settle(t, w, updated(n), nil, n)
	wantStates(t, n.m.Status().History, "idle update-pending waiting-for-window locked evacuating installing rebooting returning idle")
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestEvacuationFailsReturnsHome(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.hosts["a"].fail["evacuate"] = 1 // db fails, web moves
	settle(t, w, ended(n), nil, n)
	s := n.m.Status()
	wantStates(t, s.History, "idle update-pending waiting-for-window locked evacuating returning idle")
	if !strings.Contains(s.LastError, "injected failure of evacuate") {
		t.Errorf("LastError = %q", s.LastError)
	}
	if a := w.hosts["a"]; a.installs != 0 || a.reboots != 0 {
		t.Errorf("installs %d, reboots %d after a failed evacuation", a.installs, a.reboots)
	}
	w.assertNoViolations(t)
	w.assertAllHome(t)
	// The updates are still pending: the next cycle runs and succeeds.
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
}

func TestInstallFailsReturnsHomeWithoutReboot(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.hosts["a"].fail["install"] = 1
	settle(t, w, ended(n), nil, n)
	s := n.m.Status()
	wantStates(t, s.History, "idle update-pending waiting-for-window locked evacuating installing returning idle")
	if !strings.Contains(s.LastError, "install") || w.hosts["a"].reboots != 0 {
		t.Errorf("LastError %q, reboots %d", s.LastError, w.hosts["a"].reboots)
	}
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestRebootBlockedByInhibitor(t *testing.T) {
	w, n := fleet(t, Policy{})
	backup := Blocker{Who: "backup.service", Why: "nightly backup running", What: "shutdown", PID: 4242, UID: 0}
	w.hosts["a"].blockers = []Blocker{backup}
	settle(t, w, func() bool { return n.m != nil && len(n.m.Status().Blockers) > 0 }, nil, n)
	stepFor(t, w, n, 2*time.Hour)
	s := n.m.Status()
	if s.State != Rebooting || w.hosts["a"].reboots != 0 {
		t.Fatalf("blocked: state %s, reboot requests %d", s.State, w.hosts["a"].reboots)
	}
	if !s.RebootRequired {
		t.Errorf("status while the reboot is due says no reboot is required")
	}
	if len(s.Blockers) != 1 || s.Blockers[0] != backup || !strings.Contains(s.Reason, "backup.service (pid 4242, uid 0): nightly backup running") {
		t.Errorf("status does not say who blocks: %v, %q", s.Blockers, s.Reason)
	}
	if w.lease != "a" {
		t.Errorf("lease released while the pods are away")
	}
	w.mu.Lock()
	w.hosts["a"].blockers = nil
	w.mu.Unlock()
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestRebootThatNeverHappens(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.hosts["a"].ignoreReboot = true
	settle(t, w, ended(n), nil, n)
	s := n.m.Status()
	wantStates(t, s.History, "idle update-pending waiting-for-window locked evacuating installing rebooting returning idle")
	if got := w.hosts["a"].reboots; got != 3 {
		t.Errorf("reboot requested %d times; want max_attempts = 3", got)
	}
	if !strings.Contains(s.LastError, "did not reboot within 15m0s") {
		t.Errorf("LastError = %q", s.LastError)
	}
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestLeaseHeldByAnotherHost(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.lease = "b"
	stepFor(t, w, n, time.Hour)
	s := n.m.Status()
	if s.State != WaitingForWindow || !strings.Contains(s.Reason, "lease held by b") {
		t.Fatalf("%s (%s); want waiting for the lease", s.State, s.Reason)
	}
	w.mu.Lock()
	w.lease = ""
	w.mu.Unlock()
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestLockServerDownWhileReturning(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.onPoint = func(h, at string) {
		if at == "persisted:returning" {
			w.leaseDown = true
		}
	}
	settle(t, w, inState(n, Returning), nil, n)
	stepFor(t, w, n, time.Hour)
	s := n.m.Status()
	if s.State != Returning || !strings.Contains(s.LastError, "lock server unreachable") {
		t.Fatalf("%s, last error %q; want returning until the lease is released", s.State, s.LastError)
	}
	w.mu.Lock()
	w.leaseDown, w.onPoint = false, nil
	w.mu.Unlock()
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestLeaseLostWhileAgentDown(t *testing.T) {
	// The agent dies while installing; meanwhile its lease expires and b
	// takes it. Resume must not go on to reboot without it.
	w, n := fleet(t, Policy{})
	w.onPoint = func(h, at string) {
		if at == "install" {
			w.crashAt = w.points
		}
	}
	settle(t, w, func() bool { return n.crashes == 1 }, nil, n)
	w.onPoint = nil
	w.lease = "b"
	n.start()
	if s := n.m.Status(); s.State != Returning || !strings.Contains(s.Reason, "lease lost") {
		t.Fatalf("resumed to %s (%s); want returning", s.State, s.Reason)
	}
	settle(t, w, ended(n), nil, n)
	if w.hosts["a"].reboots != 0 {
		t.Error("rebooted without the lease")
	}
	w.lease = ""
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestCancel(t *testing.T) {
	for _, tc := range []struct {
		st  State
		pol Policy
		// at, if set, is the crash point at which to cancel.
		at string
	}{
		{st: UpdatePending, pol: Policy{Mode: ModeNotify}},
		{st: WaitingForWindow, pol: Policy{Windows: []Window{{Days: []string{"sun"}, Start: "01:00", Length: time.Hour}}}},
		{st: Locked, at: "persisted:locked"},
		{st: Evacuating, at: "evacuate:db"},
	} {
		t.Run(string(tc.st), func(t *testing.T) {
			w, n := fleet(t, tc.pol)
			cancelled := false
			cancel := func() {
				if err := n.m.Cancel(context.Background()); err != nil {
					t.Errorf("Cancel in %s: %v", n.m.Status().State, err)
				}
				cancelled = true
			}
			if tc.at != "" {
				w.onPoint = func(h, at string) {
					if at == tc.at && !cancelled {
						cancel()
					}
				}
				settle(t, w, func() bool { return cancelled }, nil, n)
			} else {
				settle(t, w, inState(n, tc.st), nil, n)
				cancel()
			}
			settle(t, w, inState(n, Idle), nil, n)
			s := n.m.Status()
			if lt := lastTransition(n); lt.Reason != "cancelled" && s.History[len(s.History)-2].Reason != "cancelled" {
				t.Errorf("history %v does not say cancelled", s.History)
			}
			if a := w.hosts["a"]; a.installs != 0 || a.reboots != 0 {
				t.Errorf("cancelled cycle installed %d times, rebooted %d", a.installs, a.reboots)
			}
			w.assertNoViolations(t)
			w.assertAllHome(t)
			// Dismissed: the same updates do not start a cycle again...
			stepFor(t, w, n, 8*24*time.Hour)
			if st := n.m.Status().State; st != Idle {
				t.Fatalf("cancelled updates came back: %s", st)
			}
			// ...a newer kernel does.
			w.mu.Lock()
			w.hosts["a"].available[0].Version = newKernel
			w.hosts["a"].offer(Update{Name: "linux-image-6.1.0-2-amd64", Version: "6.1.0-2", Class: ClassKernel})
			w.mu.Unlock()
			if _, err := n.m.CheckUpdates(context.Background()); err != nil {
				t.Fatal(err)
			}
			if st := n.m.Status().State; st != UpdatePending && st != WaitingForWindow {
				t.Errorf("new updates after a cancel: %s; want a new cycle", st)
			}
		})
	}
}

func TestCancelRefused(t *testing.T) {
	w, n := fleet(t, Policy{})
	n.start()
	if err := n.m.Cancel(context.Background()); !errors.Is(err, ErrNothingToCancel) {
		t.Errorf("Cancel in Idle: %v", err)
	}
	tried := map[State]bool{}
	w.onPoint = func(h, at string) {
		if at != "install" && at != "reboot" && at != "return" {
			return
		}
		st := n.m.Status().State
		tried[st] = true
		err := n.m.Cancel(context.Background())
		if !errors.Is(err, ErrTooLate) || !strings.Contains(err.Error(), string(st)) {
			t.Errorf("Cancel in %s: %v; want ErrTooLate naming the state", st, err)
		}
		if n.m.Status().CancelRequested {
			t.Errorf("refused Cancel was recorded")
		}
	}
	settle(t, w, updated(n), nil, n)
	if len(tried) != 3 {
		t.Errorf("Cancel tried in %v; want installing, rebooting, returning", tried)
	}
	w.assertNoViolations(t)
}

func TestDryRun(t *testing.T) {
	pol := Policy{Windows: []Window{{Days: []string{"sat"}, Start: "03:00", Length: 2 * time.Hour, TimeZone: "UTC"}}}
	w, n := fleet(t, pol)
	n.start()
	before := n.m.Status()
	plan, err := n.m.StartUpdate(context.Background(), StartOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Updates) != 1 || plan.Updates[0] != kernelUpdate() {
		t.Errorf("updates %v; want the kernel only", plan.Updates)
	}
	if plan.Peer != "b" || len(plan.Moves) != 2 || plan.Moves[0] != (Move{Pod: "db", To: "b"}) {
		t.Errorf("peer %q moves %v", plan.Peer, plan.Moves)
	}
	if want := time.Date(2025, 3, 8, 3, 0, 0, 0, time.UTC); !plan.When.Equal(want) || !plan.WindowEnd.Equal(want.Add(2*time.Hour)) {
		t.Errorf("when %v–%v; want the Saturday window", plan.When, plan.WindowEnd)
	}
	if why := strings.Join(plan.Reasons, "\n"); !strings.Contains(why, "maintenance window") || !strings.Contains(why, kernelPkg) {
		t.Errorf("reasons do not say why and when: %q", why)
	}
	after := n.m.Status()
	if after.State != Idle || len(after.History) != len(before.History) || w.lease != "" || w.hosts["a"].evacuations != 0 {
		t.Errorf("dry run changed something: %s, lease %q", after.State, w.lease)
	}
	w.assertAllHome(t)

	// No peer: the plan says who refused and what the policy does.
	w.hosts["b"].capacity, w.hosts["c"].capacity = 0, 0
	plan, err = n.m.StartUpdate(context.Background(), StartOptions{DryRun: true, Now: true})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Peer != "" || len(plan.Refusals) != 2 || !plan.When.Equal(w.now) {
		t.Errorf("no-peer plan: %+v", plan)
	}
	if why := strings.Join(plan.Reasons, "\n"); !strings.Contains(why, "no_peer = wait") || !strings.Contains(why, "window is ignored") {
		t.Errorf("reasons: %q", why)
	}
}

func TestStartUpdateErrors(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.hosts["a"].available = nil
	n.start()
	if _, err := n.m.StartUpdate(context.Background(), StartOptions{Now: true}); !errors.Is(err, ErrNoUpdates) {
		t.Errorf("nothing pending: %v", err)
	}
	w.hosts["a"].offer(kernelUpdate())
	settle(t, w, inState(n, Installing), nil, n)
	if _, err := n.m.StartUpdate(context.Background(), StartOptions{Now: true}); !errors.Is(err, ErrBusy) {
		t.Errorf("while installing: %v", err)
	}
	if err := n.m.AcceptPods(); !errors.Is(err, ErrUpdating) {
		t.Errorf("AcceptPods while updating: %v", err)
	}
	settle(t, w, updated(n), nil, n)
	if err := n.m.AcceptPods(); err != nil {
		t.Errorf("AcceptPods when idle: %v", err)
	}
}

func TestExternalInstall(t *testing.T) {
	ctx := context.Background()
	t.Run("not needed", func(t *testing.T) {
		_, n := fleet(t, Policy{Mode: ModeNotify})
		n.start()
		needed, err := n.m.ExternalInstallBegin(ctx, []Update{{Name: "vim", Version: "9.1", Class: ClassOther}})
		if needed || err != nil || n.m.Status().State != Idle {
			t.Errorf("vim only: %v, %v, %s", needed, err, n.m.Status().State)
		}
		if err := n.m.ExternalInstallEnd(ctx, true, ""); err != nil {
			t.Errorf("End without Begin: %v", err)
		}
	})
	t.Run("apt fails", func(t *testing.T) {
		w, n := fleet(t, Policy{Mode: ModeNotify})
		n.start()
		if needed, err := n.m.ExternalInstallBegin(ctx, []Update{kernelUpdate()}); !needed || err != nil {
			t.Fatal(needed, err)
		}
		settle(t, w, inState(n, Installing), nil, n)
		if err := n.m.ExternalInstallEnd(ctx, false, "E: Sub-process /usr/bin/dpkg returned an error code (1)"); err != nil {
			t.Fatal(err)
		}
		settle(t, w, ended(n), nil, n)
		s := n.m.Status()
		if !strings.Contains(s.LastError, "dpkg returned an error") || w.hosts["a"].reboots != 0 {
			t.Errorf("LastError %q, reboots %d", s.LastError, w.hosts["a"].reboots)
		}
		w.assertNoViolations(t)
		w.assertAllHome(t)
	})
	t.Run("apt never reports", func(t *testing.T) {
		w, n := fleet(t, Policy{Mode: ModeNotify, ExternalInstallTimeout: time.Hour})
		n.start()
		if needed, err := n.m.ExternalInstallBegin(ctx, []Update{kernelUpdate()}); !needed || err != nil {
			t.Fatal(needed, err)
		}
		settle(t, w, ended(n), nil, n)
		if s := n.m.Status(); !strings.Contains(s.LastError, "within 1h0m0s") {
			t.Errorf("LastError %q", s.LastError)
		}
		w.assertNoViolations(t)
		w.assertAllHome(t)
	})
	t.Run("autopod's own apt run", func(t *testing.T) {
		w, n := fleet(t, Policy{})
		var needed bool
		var err error
		w.onPoint = func(h, at string) {
			if at == "install" { // the hook, called by autopod's own apt-get
				needed, err = n.m.ExternalInstallBegin(ctx, []Update{kernelUpdate()})
			}
		}
		settle(t, w, updated(n), nil, n)
		if needed || err != nil {
			t.Errorf("hook during autopod's own install: %v, %v; want false, nil", needed, err)
		}
		w.assertNoViolations(t)
	})
	t.Run("joins a running cycle", func(t *testing.T) {
		w, n := fleet(t, Policy{})
		settle(t, w, inState(n, Evacuating), nil, n)
		if needed, err := n.m.ExternalInstallBegin(ctx, []Update{kernelUpdate()}); !needed || err != nil {
			t.Fatal(needed, err)
		}
		ready := make(chan error, 1)
		go func() { ready <- n.m.WaitInstallReady(ctx) }()
		settle(t, w, inState(n, Installing), nil, n)
		if err := <-ready; err != nil {
			t.Fatalf("WaitInstallReady: %v", err)
		}
		w.mu.Lock()
		w.install("a", []Update{kernelUpdate()}, "apt")
		w.mu.Unlock()
		if err := n.m.ExternalInstallEnd(ctx, true, ""); err != nil {
			t.Fatal(err)
		}
		settle(t, w, updated(n), nil, n)
		if got := w.hosts["a"].installs; got != 1 {
			t.Errorf("%d installations; want apt's only", got)
		}
		w.assertNoViolations(t)
		w.assertAllHome(t)
	})
	t.Run("busy while returning", func(t *testing.T) {
		w, n := fleet(t, Policy{})
		var err error
		w.onPoint = func(h, at string) {
			if at == "return" {
				_, err = n.m.ExternalInstallBegin(ctx, []Update{kernelUpdate()})
			}
		}
		settle(t, w, updated(n), nil, n)
		if !errors.Is(err, ErrBusy) {
			t.Errorf("Begin while returning: %v", err)
		}
	})
	t.Run("cycle fails: the hook hears why", func(t *testing.T) {
		w, n := fleet(t, Policy{Mode: ModeNotify})
		w.hosts["a"].fail["evacuate"] = 1
		n.start()
		if needed, err := n.m.ExternalInstallBegin(ctx, []Update{kernelUpdate()}); !needed || err != nil {
			t.Fatal(needed, err)
		}
		ready := make(chan error, 1)
		go func() { ready <- n.m.WaitInstallReady(ctx) }()
		settle(t, w, ended(n), nil, n)
		if err := <-ready; !errors.Is(err, ErrAborted) || !strings.Contains(err.Error(), "injected failure of evacuate") {
			t.Errorf("WaitInstallReady: %v", err)
		}
	})
}

func TestTwoHostsNeverUpdateTogether(t *testing.T) {
	w := newWorld(t)
	for _, h := range []string{"a", "b"} {
		other := map[string]string{"a": "b", "b": "a"}[h]
		w.addHost(h, 8*gib, other).offer(kernelUpdate())
		w.addPod(h+"-web", h, gib)
		w.addPod(h+"-db", h, gib)
	}
	a, b := newNode(w, "a", Policy{}), newNode(w, "b", Policy{})
	both := 0
	done := func() bool {
		if a.m != nil && b.m != nil && a.m.Status().State.Busy() && b.m.Status().State.Busy() {
			both++
		}
		return updated(a)() && updated(b)()
	}
	settle(t, w, done, nil, a, b)
	if both > 0 {
		t.Errorf("both hosts were in a cycle at once, %d times", both)
	}
	w.assertNoViolations(t)
	w.assertAllHome(t)
	for _, h := range []string{"a", "b"} {
		if w.hosts[h].boots != 1 {
			t.Errorf("%s booted %d times", h, w.hosts[h].boots)
		}
	}
}

func TestReturnRetriesUntilHome(t *testing.T) {
	w, n := fleet(t, Policy{})
	w.hosts["a"].fail["return"] = 5
	settle(t, w, func() bool { return n.m != nil && n.m.Status().State == Returning && n.m.Status().Attempts >= 2 }, nil, n)
	s := n.m.Status()
	if !strings.Contains(s.LastError, "injected failure of return") || !strings.Contains(s.Reason, "retrying") {
		t.Errorf("returning: %q / %q", s.Reason, s.LastError)
	}
	if w.lease != "a" {
		t.Errorf("lease %q while pods are away", w.lease)
	}
	settle(t, w, updated(n), nil, n)
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func TestRunLoop(t *testing.T) {
	// updates = all with a package that needs no reboot: the cycle runs
	// through without waiting, so Run finishes it on the real timer.
	w, n := fleet(t, Policy{Updates: UpdatesAll})
	w.hosts["a"].available = []Update{{Name: "vim", Version: "9.1", Class: ClassOther}}
	m, err := New(n.config())
	if err != nil {
		t.Fatal(err)
	}
	n.m = m
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	s, err := m.Wait(wctx, func(s Status) bool { return s.State == Idle && len(s.History) > 0 })
	if err != nil {
		t.Fatalf("Run did not finish the cycle: %v (%s)", err, s.State)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v", err)
	}
	wantStates(t, s.History, "idle update-pending waiting-for-window locked evacuating installing returning idle")
	if w.hosts["a"].installed["vim"] != "9.1" || w.hosts["a"].reboots != 0 {
		t.Errorf("vim %s, reboots %d", w.hosts["a"].installed["vim"], w.hosts["a"].reboots)
	}
	w.assertNoViolations(t)
	w.assertAllHome(t)
}
