package cycle

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/autopod/autopod/atomicfile"
)

// RecordVersion is the version of the record's format. A record written by
// a newer autopod is refused rather than misread.
const RecordVersion = 1

// maxHistory bounds Record.History.
const maxHistory = 64

// Record is the machine's persisted state, one JSON file (Config.StateFile,
// by default /var/lib/autopod/cycle.json). It holds everything a restarted
// agent needs to carry on: where the cycle is, what it planned, whether it
// asked for the reboot and under which boot, and whether it holds the lease.
type Record struct {
	Version int       `json:"version"`
	State   State     `json:"state"`
	Since   time.Time `json:"since"`
	// Reason says, in words, why the machine is in State or what it waits
	// for ("waiting for the window at …", "reboot blocked by …").
	Reason string `json:"reason,omitempty"`
	// Trigger is what started the current cycle; empty when Idle.
	Trigger Trigger `json:"trigger,omitempty"`
	// Plan is the current cycle's plan; nil when Idle.
	Plan *Plan `json:"plan,omitempty"`
	// LastCheck is the Detector's latest answer.
	LastCheck *CheckResult `json:"last_check,omitempty"`
	// BootID is the boot ID (/proc/sys/kernel/random/boot_id) under which
	// the reboot was requested: another boot ID means it happened.
	BootID string `json:"boot_id,omitempty"`
	// RebootRequested is when the reboot was requested.
	RebootRequested time.Time `json:"reboot_requested,omitzero"`
	// Attempts counts the attempts at the current state's action,
	// including those a crash cut short; reset on every transition.
	Attempts int `json:"attempts,omitempty"`
	// RetryAt is when a failed or refused action is tried again.
	RetryAt time.Time `json:"retry_at,omitzero"`
	// LastError is the latest failure, kept after the cycle ends.
	LastError string `json:"last_error,omitempty"`
	// LeaseHeld records that this host holds the fleet lease.
	LeaseHeld bool `json:"lease_held,omitempty"`
	// Blockers are the block inhibitors that held the reboot back when it
	// was last due.
	Blockers []Blocker `json:"blockers,omitempty"`
	// CancelRequested: Cancel was accepted; the machine rolls back at its
	// next step.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// External is the apt run that started the cycle (Trigger apt-hook).
	External *External `json:"external,omitempty"`
	// Dismissed identifies the pending updates a Cancel dismissed: the
	// machine does not start again on its own for the same updates.
	Dismissed string `json:"dismissed,omitempty"`
	// History is the latest transitions, oldest first.
	History []Transition `json:"history,omitempty"`
}

// Trigger is what started a cycle.
type Trigger string

const (
	// TriggerWindow: the machine (automatic mode) or StartUpdate without
	// now; the cycle waits for the maintenance window.
	TriggerWindow Trigger = "window"
	// TriggerNow: StartUpdate with now (`autopodctl update --now`); the
	// window is ignored.
	TriggerNow Trigger = "now"
	// TriggerAptHook: apt or unattended-upgrades is about to install
	// packages; the window is ignored and apt installs them itself.
	TriggerAptHook Trigger = "apt-hook"
)

// External is an installation run by apt, which the apt hook announced.
type External struct {
	Begun time.Time `json:"begun"`
	// Ended: the post-invoke hook reported the end of apt's run.
	Ended  bool   `json:"ended,omitempty"`
	OK     bool   `json:"ok,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Transition is one edge taken.
type Transition struct {
	At     time.Time `json:"at"`
	From   State     `json:"from"`
	To     State     `json:"to"`
	Reason string    `json:"reason"`
}

// Plan is what a cycle does: the updates, where the pods go, when and why.
// StartUpdate with a dry run returns one without doing anything.
type Plan struct {
	Updates        []Update `json:"updates,omitempty"`
	RebootRequired bool     `json:"reboot_required,omitempty"`
	// Reasons say why the cycle runs (the Detector's reasons, the
	// trigger, the policy).
	Reasons []string `json:"reasons,omitempty"`
	// When is the earliest start: now, or when the next window opens;
	// WindowEnd is when that window closes (zero: no end).
	When      time.Time `json:"when,omitzero"`
	WindowEnd time.Time `json:"window_end,omitzero"`
	// Peer takes the pods; empty when Local or nothing moves.
	Peer string `json:"peer,omitempty"`
	// Local: no peer takes the pods, and the policy checkpoints them to
	// this host's disk and restores them after the reboot.
	Local bool `json:"local,omitempty"`
	// Refusals are the peers that would not take the pods, and why.
	Refusals []Refusal `json:"refusals,omitempty"`
	// Moves are the pods that go, and where each is.
	Moves        []Move       `json:"moves,omitempty"`
	RebootMethod RebootMethod `json:"reboot_method,omitempty"`
}

// LocalDisk is Move.To for a pod checkpointed to this host's disk.
const LocalDisk = "local-disk"

// Move is one pod leaving: To is a peer or LocalDisk; Done says it is
// there (as the pod runtime last reported).
type Move struct {
	Pod  string `json:"pod"`
	To   string `json:"to"`
	Done bool   `json:"done,omitempty"`
}

func newRecord(now time.Time) *Record {
	return &Record{Version: RecordVersion, State: Idle, Since: now}
}

// clone deep-copies r, so a snapshot never shares slices with the live one.
func (r *Record) clone() *Record {
	data, err := json.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("cycle: marshal record: %v", err)) // only plain data: cannot fail
	}
	var c Record
	if err := json.Unmarshal(data, &c); err != nil {
		panic(fmt.Sprintf("cycle: unmarshal record: %v", err))
	}
	return &c
}

// loadRecord reads the record at path. A missing file is a fresh Idle
// record; a damaged or unknown one is an error, because guessing could
// leave pods on a peer.
func loadRecord(path string, now time.Time) (*Record, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return newRecord(now), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read update cycle state: %w", err)
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("update cycle state %s is damaged (fix or remove it once every pod is home): %w", path, err)
	}
	if r.Version != RecordVersion {
		return nil, fmt.Errorf("update cycle state %s has format version %d, this autopod reads version %d", path, r.Version, RecordVersion)
	}
	if !r.State.Valid() {
		return nil, fmt.Errorf("update cycle state %s: unknown state %q", path, r.State)
	}
	return &r, nil
}

func saveRecord(path string, r *Record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode update cycle state: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write update cycle state: %w", err)
	}
	return nil
}
