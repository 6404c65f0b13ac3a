package cycle

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// runRandom drives one host through the events data encodes — steps,
// crashes, Cancel, StartUpdate, CheckUpdates, injected failures, block
// inhibitors, a lease taken by another host, a lock server going down,
// peers filling up, apt runs, time passing — checking the invariants after
// every step (fleet_test.go), then lifts every fault and checks that the
// host comes to rest with every pod home and nothing held.
func runRandom(t *testing.T, data []byte) {
	if len(data) == 0 {
		return
	}
	pol := Policy{}
	if data[0]&1 != 0 {
		pol.Mode = ModeNotify
	}
	if data[0]&2 != 0 {
		pol.NoPeer = NoPeerLocalCheckpoint
	}
	if data[0]&4 != 0 {
		pol.Windows = []Window{{Days: []string{"daily"}, Start: "02:00", Length: 3 * time.Hour, TimeZone: "UTC"}}
	}
	if data[0]&8 != 0 {
		pol.Updates = UpdatesAll
	}
	w, n := fleet(t, pol)
	ctx := context.Background()
	failOps := []string{"evacuate", "return", "install", "reboot", "checkpoint", "restore", "list", "check", "delay"}
	apt := 0 // 0 idle, 1 waiting for the pods to leave, 2 installed
	aptOK := true
	aptStep := func() {
		if n.m == nil {
			return
		}
		switch s := n.m.Status(); {
		case apt == 1 && s.State == Installing && s.Trigger == TriggerAptHook:
			w.mu.Lock()
			w.install("a", []Update{kernelUpdate()}, "apt")
			w.mu.Unlock()
			apt = 2
		case apt == 1 && !s.State.Busy() && s.Trigger != TriggerAptHook:
			apt = 0 // the hook gave up
		case apt == 2:
			if !n.guard(func() { _ = n.m.ExternalInstallEnd(ctx, aptOK, "apt run") }) {
				apt = 0
			}
		}
	}
	alive := func() bool {
		if n.m == nil {
			n.start()
		}
		return n.m != nil
	}
	for _, b := range data[1:] {
		arg := int(b >> 4)
		switch b & 15 {
		case 0, 1, 2, 3, 4, 5:
			next := n.step()
			if next.After(w.now) && b&16 != 0 {
				w.mu.Lock()
				w.now = next
				w.mu.Unlock()
			}
		case 6:
			w.crashAt = w.points + 1 + arg
		case 7:
			if alive() {
				var err error
				n.guard(func() { err = n.m.Cancel(ctx) })
				if err != nil && !errors.Is(err, ErrNothingToCancel) && !errors.Is(err, ErrTooLate) {
					t.Errorf("Cancel: %v", err)
				}
			}
		case 8:
			if alive() {
				var err error
				n.guard(func() { _, err = n.m.StartUpdate(ctx, StartOptions{Now: arg&1 != 0, DryRun: arg&2 != 0}) })
				if err != nil && !errors.Is(err, ErrBusy) && !errors.Is(err, ErrNoUpdates) && !isInjected(err) {
					t.Errorf("StartUpdate: %v", err)
				}
			}
		case 9:
			if alive() {
				n.guard(func() { _, _ = n.m.CheckUpdates(ctx) })
			}
		case 10:
			w.hosts["a"].fail[failOps[arg%len(failOps)]]++
		case 11:
			if len(w.hosts["a"].blockers) == 0 {
				w.hosts["a"].blockers = []Blocker{{Who: "backup", Why: "running", PID: uint32(arg)}}
			} else {
				w.hosts["a"].blockers = nil
			}
		case 12:
			switch {
			case arg&1 != 0:
				w.leaseDown = !w.leaseDown
			case w.lease == "":
				w.lease = "x"
			case w.lease == "x":
				w.lease = ""
			}
		case 13:
			w.advance(time.Duration(arg+1) * 37 * time.Minute)
		case 14:
			h := []string{"b", "c"}[arg&1]
			if w.hosts[h].capacity > 0 {
				w.hosts[h].capacity = 0
			} else {
				w.hosts[h].capacity = 8 * gib
			}
		case 15:
			if apt == 0 && alive() {
				var needed bool
				var err error
				n.guard(func() { needed, err = n.m.ExternalInstallBegin(ctx, []Update{kernelUpdate()}) })
				if err != nil && !errors.Is(err, ErrBusy) {
					t.Errorf("ExternalInstallBegin: %v", err)
				}
				if needed {
					apt, aptOK = 1, arg&1 == 0
				}
			}
		}
		aptStep()
		if t.Failed() {
			break
		}
		w.mu.Lock()
		bad := len(w.violations) > 0
		w.mu.Unlock()
		if bad {
			break
		}
	}
	// Lift every fault; the host must come to rest with its pods home.
	w.mu.Lock()
	w.crashAt = 0
	clear(w.hosts["a"].fail)
	w.hosts["a"].blockers = nil
	w.leaseDown = false
	if w.lease == "x" {
		w.lease = ""
	}
	w.hosts["b"].capacity, w.hosts["c"].capacity = 8*gib, 8*gib
	w.mu.Unlock()
	settle(t, w, func() bool { return n.m != nil && !n.m.Status().State.Busy() }, aptStep, n)
	w.assertNoViolations(t)
	w.assertAllHome(t)
}

func isInjected(err error) bool {
	return err != nil && strings.Contains(err.Error(), "injected failure")
}

func TestRandomEventSequences(t *testing.T) {
	n := 250
	if testing.Short() {
		n = 50
	}
	for seed := range n {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		data := make([]byte, 20+r.IntN(120))
		for i := range data {
			data[i] = byte(r.UintN(256))
		}
		ok := t.Run("", func(t *testing.T) { runRandom(t, data) })
		if !ok {
			t.Fatalf("seed %d failed; reproduce with data %x", seed, data)
		}
	}
}

// FuzzCycle explores event sequences further: go test -fuzz FuzzCycle ./cycle/
func FuzzCycle(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 8, 0, 0, 0x16, 0, 0, 0, 0, 0x07, 0, 0, 0})
	f.Add([]byte{2, 0x0e, 0x1e, 0, 0, 0, 0x26, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0x0f, 0, 0, 0, 0, 0x46, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0, 0, 0x0c, 0, 0, 0, 0x0c, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 400 {
			data = data[:400]
		}
		runRandom(t, data)
	})
}
