package pods

import (
	"errors"
	"time"
)

// State is a pod's lifecycle state as the agent reports it.
type State string

const (
	StateStopped       State = "stopped"       // defined, not running
	StateStarting      State = "starting"      // namespaces being set up
	StateRunning       State = "running"       // init and workload alive
	StateCheckpointing State = "checkpointing" // CRIU dump in progress
	StateCheckpointed  State = "checkpointed"  // not running; images on disk
	StateRestoring     State = "restoring"     // CRIU restore in progress
	StateFailed        State = "failed"        // exited and not restarted, or start failed
	StateInvalid       State = "invalid"       // its file does not parse; see Error
	StateMigrating     State = "migrating"     // being moved to or from a peer
	StateMigrated      State = "migrated"      // this host's pod now runs on a peer (Location)
)

// Status is the externally visible view of one pod.
type Status struct {
	Name       string    `json:"name"`
	State      State     `json:"state"`
	Pid        int       `json:"pid,omitempty"` // host pid of the pod's init
	Address    string    `json:"address,omitempty"`
	File       string    `json:"file,omitempty"`
	Since      time.Time `json:"since"`
	Restarts   int       `json:"restarts"`
	Checkpoint string    `json:"checkpoint,omitempty"` // newest image directory, if any
	Error      string    `json:"error,omitempty"`      // last failure, or the parse error for invalid pods
	Home       string    `json:"home,omitempty"`       // the peer a guest pod belongs to
	Location   string    `json:"location,omitempty"`   // the peer this host's pod was migrated to
	// MemoryLimit is the pod's memory limit in bytes, 0 when unlimited.
	MemoryLimit int64 `json:"memory_limit,omitempty"`
}

// Event reports a pod state change; the agent turns these into D-Bus signals.
type Event struct {
	Name  string
	State State
	Error string
}

// CheckpointOptions tune one checkpoint.
type CheckpointOptions struct {
	LeaveRunning bool // keep the pod running after the dump
}

// CheckpointResult describes a finished checkpoint.
type CheckpointResult struct {
	Dir      string        `json:"dir"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"duration_ns"`
}

// Sentinel errors that callers (the D-Bus layer, the CLI) branch on.
var (
	ErrNotFound     = errors.New("no such pod")
	ErrInvalid      = errors.New("invalid pod definition")
	ErrRunning      = errors.New("pod is running")
	ErrNotRunning   = errors.New("pod is not running")
	ErrNoCheckpoint = errors.New("pod has no checkpoint")
	ErrMigrated     = errors.New("pod runs on a peer")
	ErrPeerRefused  = errors.New("peer refused the migration")
	ErrBusy         = errors.New("pod is busy with another operation")
	// ErrStrategy: the migration strategy asked for is unknown, or this
	// host cannot run it. Its text starts the message: "migration
	// strategy pre-copy cannot run on this host: why".
	ErrStrategy = errors.New("migration strategy")
	// ErrNotCheckpointable: this host cannot checkpoint the pod (see the message).
	ErrNotCheckpointable = errors.New("pod cannot be checkpointed on this host")
)
