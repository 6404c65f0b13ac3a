package cycle

import (
	"fmt"
	"slices"
)

// State is where the update cycle is. The values are API: they are
// persisted, shown by `autopodctl status` and sent as the D-Bus State
// property.
type State string

const (
	// Idle: no update this host acts on is pending; pods are at home.
	Idle State = "idle"
	// UpdatePending: updates (or a reboot) are pending. In notify mode the
	// machine stays here until someone starts the update.
	UpdatePending State = "update-pending"
	// WaitingForWindow: the update will run at the next maintenance window
	// (or as soon as the fleet lease and a peer are available).
	WaitingForWindow State = "waiting-for-window"
	// Locked: this host holds the fleet lease and is choosing a peer.
	Locked State = "locked"
	// Evacuating: pods are being migrated to the peer (or checkpointed to
	// local disk); autopod holds a logind delay lock.
	Evacuating State = "evacuating"
	// Installing: the packages are being installed (by autopod, or by apt
	// when an apt hook started the cycle).
	Installing State = "installing"
	// Rebooting: the reboot is due, requested, or blocked by an inhibitor.
	Rebooting State = "rebooting"
	// Returning: pods are being pulled back (after the reboot, or because a
	// step failed or the cycle was cancelled).
	Returning State = "returning"
)

// AllStates lists every state in cycle order.
func AllStates() []State {
	return []State{Idle, UpdatePending, WaitingForWindow, Locked, Evacuating, Installing, Rebooting, Returning}
}

// transitions is the whole diagram: from → the states it may go to. Any
// other transition is a bug in this package and is refused with a
// *TransitionError. docs/update-cycle.md draws the same table.
var transitions = map[State][]State{
	Idle:             {UpdatePending},
	UpdatePending:    {WaitingForWindow, Locked, Idle},
	WaitingForWindow: {Locked, Idle},
	Locked:           {Evacuating, WaitingForWindow, Idle},
	Evacuating:       {Installing, Returning},
	Installing:       {Rebooting, Returning},
	Rebooting:        {Returning},
	Returning:        {Idle},
}

// Valid reports whether s is one of the eight states.
func (s State) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// CanGo reports whether the diagram has an edge from s to to.
func (s State) CanGo(to State) bool {
	return slices.Contains(transitions[s], to)
}

// Next lists the states s may go to.
func (s State) Next() []State {
	return slices.Clone(transitions[s])
}

// HoldsLease reports whether autopod must hold the fleet lease in s. In
// Returning it keeps the lease when it can but pulls its pods back either
// way: bringing pods home is always safe.
func (s State) HoldsLease() bool {
	switch s {
	case Locked, Evacuating, Installing, Rebooting:
		return true
	}
	return false
}

// Busy reports whether s is part of a running cycle (from Locked to
// Returning): a host in such a state refuses to take a peer's pods.
func (s State) Busy() bool {
	return s.HoldsLease() || s == Returning
}

// Cancellable reports whether Cancel is accepted in s: up to and including
// Evacuating, nothing has been installed yet.
func (s State) Cancellable() bool {
	switch s {
	case UpdatePending, WaitingForWindow, Locked, Evacuating:
		return true
	}
	return false
}

// TransitionError is an illegal transition: a bug, never a normal outcome.
type TransitionError struct {
	From, To State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("cycle: illegal transition %s → %s", e.From, e.To)
}

// checkTransition returns a *TransitionError unless the diagram has the edge.
func checkTransition(from, to State) error {
	if !from.CanGo(to) {
		return &TransitionError{From: from, To: to}
	}
	return nil
}
