package cycle

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
)

// A crash scenario: a fleet, a policy, faults, an outside actor, and when
// the cycle counts as over.
type scenario struct {
	name  string
	pol   Policy
	setup func(w *world, n *node)
	// actor returns what runs at the start of every round (apt).
	actor func(t *testing.T, w *world, n *node) func()
	// success: the scenario must end with the new kernel running (faults
	// that a crash can consume early make this optional).
	success bool
}

var crashScenarios = []scenario{
	{name: "peer", success: true},
	{
		name: "local-checkpoint", pol: Policy{NoPeer: NoPeerLocalCheckpoint}, success: true,
		setup: func(w *world, n *node) { w.hosts["b"].capacity, w.hosts["c"].capacity = 0, 0 },
	},
	{name: "apt-hook", pol: Policy{Mode: ModeNotify}, actor: aptActor, success: true},
	{name: "evacuation-fails", setup: func(w *world, n *node) { w.hosts["a"].fail["evacuate"] = 1 }},
	{name: "install-fails", setup: func(w *world, n *node) { w.hosts["a"].fail["install"] = 1 }},
	{name: "return-fails", setup: func(w *world, n *node) { w.hosts["a"].fail["return"] = 2 }, success: true},
	{
		name: "cancel-mid-evacuation",
		setup: func(w *world, n *node) {
			w.onPoint = func(h, at string) {
				if at == "evacuate:db" && n.m != nil {
					_ = n.m.Cancel(context.Background())
				}
			}
		},
	},
	{
		name: "blocked-reboot", success: true,
		setup: func(w *world, n *node) {
			w.hosts["a"].blockers = []Blocker{{Who: "backup", Why: "nightly backup", What: "shutdown", PID: 42}}
			w.onPoint = func(h, at string) {
				// The backup ends once the machine has seen it.
				if at == "blockers" && n.m != nil && n.m.Status().Blockers != nil {
					w.mu.Lock()
					w.hosts["a"].blockers = nil
					w.mu.Unlock()
				}
			}
		},
	},
}

// aptActor is apt with autopod's hook: announce the kernel, wait until the
// pods are away, install, report the end. If the cycle gives up first,
// the hook fails and apt installs nothing.
func aptActor(t *testing.T, w *world, n *node) func() {
	phase := 0
	return func() {
		if n.m == nil {
			return
		}
		switch phase {
		case 0:
			var needed bool
			var err error
			if n.guard(func() { needed, err = n.m.ExternalInstallBegin(context.Background(), []Update{kernelUpdate()}) }) {
				return // the agent died; the hook tries again
			}
			if err != nil || !needed {
				t.Fatalf("ExternalInstallBegin = %v, %v; want true, nil", needed, err)
			}
			phase = 1
		case 1:
			switch s := n.m.Status(); {
			case s.State == Installing:
				w.mu.Lock()
				w.install("a", []Update{kernelUpdate()}, "apt")
				w.mu.Unlock()
				phase = 2
			case s.State == Idle || s.State == Returning:
				phase = 3 // the hook failed: apt gives up
			}
		case 2:
			if !n.guard(func() {
				if err := n.m.ExternalInstallEnd(context.Background(), true, ""); err != nil {
					t.Errorf("ExternalInstallEnd: %v", err)
				}
			}) {
				phase = 3
			}
		}
	}
}

// runScenario runs sc with a crash at the crashAt-th crash point (0: none)
// and checks the outcome. It returns the node and the number of crash
// points passed.
func runScenario(t *testing.T, sc scenario, crashAt int) (*node, int) {
	t.Helper()
	w, n := fleet(t, sc.pol)
	w.crashAt = crashAt
	if sc.setup != nil {
		sc.setup(w, n)
	}
	var act func()
	if sc.actor != nil {
		act = sc.actor(t, w, n)
	}
	settle(t, w, ended(n), act, n)
	checkOutcome(t, w, n, sc.success)
	return n, w.points
}

// checkOutcome checks a finished cycle: no rule broken on the way, every
// pod home once, nothing held, and the host rebooted exactly once if and
// only if it runs the new kernel.
func checkOutcome(t *testing.T, w *world, n *node, success bool) {
	t.Helper()
	w.assertNoViolations(t)
	w.assertAllHome(t)
	a := w.hosts[n.h]
	if n.m.Status().State != Idle {
		t.Fatalf("ended in %s", n.m.Status().State)
	}
	if _, err := os.Stat(n.activeFile()); err == nil {
		t.Errorf("the cycle ended but its active marker %s is still there", n.activeFile())
	}
	switch {
	case a.running == newKernel && a.boots != 1:
		t.Errorf("new kernel after %d boots; want exactly 1", a.boots)
	case a.running != newKernel && a.boots != 0:
		t.Errorf("old kernel but %d boots", a.boots)
	case a.running != newKernel && success:
		t.Errorf("cycle did not install the new kernel: %s (last error %q)", n.m.Status().Reason, n.m.Status().LastError)
	}
}

// TestCrashAtEveryPoint kills the agent at every point of every scenario
// where it calls out or has just persisted a transition (so between
// persisting and acting, and between acting and persisting), restarts it
// from its state directory and checks that the cycle still ends with
// every pod live exactly once, at home, and the lease and delay lock
// released.
func TestCrashAtEveryPoint(t *testing.T) {
	seen := map[State]int{}
	for _, sc := range crashScenarios {
		t.Run(sc.name, func(t *testing.T) {
			_, points := runScenario(t, sc, 0)
			if points < 10 {
				t.Fatalf("only %d crash points: the scenario does not run", points)
			}
			scSeen := map[State]bool{}
			for k := 1; k <= points; k++ {
				ok := t.Run(fmt.Sprint("crash-", k), func(t *testing.T) {
					n, _ := runScenario(t, sc, k)
					if n.crashes != 1 {
						t.Fatalf("crashed %d times; want 1", n.crashes)
					}
					for _, st := range n.crashStates {
						seen[st]++
						scSeen[st] = true
					}
				})
				if !ok {
					break // one failure per scenario is enough to read
				}
			}
			if sc.name == "peer" {
				for _, st := range AllStates() {
					if !scSeen[st] {
						t.Errorf("no crash happened in state %s", st)
					}
				}
			}
		})
	}
	for _, st := range AllStates() {
		if seen[st] == 0 {
			t.Errorf("no crash in state %s in any scenario", st)
		}
	}
	t.Logf("crashes per persisted state: %v", seen)
}

// TestCrashTwice kills the agent twice: at point k, then again at point k
// of its second life (so also while it resumes).
func TestCrashTwice(t *testing.T) {
	sc := crashScenarios[0]
	_, points := runScenario(t, sc, 0)
	for k := 1; k <= points; k += 2 {
		for j := 1; j <= 6; j++ {
			w, n := fleet(t, sc.pol)
			w.crashAt = k
			w.onPoint = func(h, at string) {
				if n.crashes == 1 && w.crashAt == k {
					w.crashAt = w.points + j
				}
			}
			settle(t, w, ended(n), nil, n)
			checkOutcome(t, w, n, true)
			if t.Failed() {
				t.Fatalf("crash at %d, then %d points later", k, j)
			}
			if n.crashes != 2 && w.points >= w.crashAt {
				t.Fatalf("crash at %d then %d: crashed %d times", k, j, n.crashes)
			}
		}
	}
}

func TestCrashScenariosCoverFailureEdges(t *testing.T) {
	// Without crashes each failure scenario must take its failure edge,
	// or the crash test above would prove less than it claims.
	want := map[string]string{
		"evacuation-fails":      "evacuating returning",
		"install-fails":         "installing returning",
		"cancel-mid-evacuation": "evacuating returning",
		"local-checkpoint":      "evacuating installing",
	}
	for _, sc := range crashScenarios {
		edge, ok := want[sc.name]
		if !ok {
			continue
		}
		n, _ := runScenario(t, sc, 0)
		got := states(n.m.Status().History)
		w := stateList(edge)
		if !slices.ContainsFunc(pairs(got), func(p [2]State) bool { return p == [2]State{w[0], w[1]} }) {
			t.Errorf("%s: history %v lacks %s → %s", sc.name, got, w[0], w[1])
		}
	}
}

func pairs(s []State) [][2]State {
	var out [][2]State
	for i := 1; i < len(s); i++ {
		out = append(out, [2]State{s[i-1], s[i]})
	}
	return out
}
