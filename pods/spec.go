package pods

import (
	"net/netip"
	"time"
)

// Spec is one pod's definition, read from /etc/autopod/pods/NAME.toml.
// The pod's name is the file name without ".toml". Spec is also what is
// stored in a checkpoint's manifest, so it round-trips through JSON.
type Spec struct {
	Name     string            `json:"name" toml:"-"`
	Command  string            `json:"command" toml:"command"`
	Args     []string          `json:"args,omitempty" toml:"args"`
	Env      map[string]string `json:"env,omitempty" toml:"env"`
	WorkDir  string            `json:"workdir,omitempty" toml:"workdir"`
	User     string            `json:"user,omitempty" toml:"user"` // name, uid or uid:gid; default root
	Hostname string            `json:"hostname,omitempty" toml:"hostname"`
	Root     RootSpec          `json:"root" toml:"root"`
	Mounts   []Mount           `json:"mounts,omitempty" toml:"mount"`
	Network  NetworkSpec       `json:"network" toml:"network"`
	Limits   Limits            `json:"limits" toml:"limits"`
	Restart  RestartPolicy     `json:"restart" toml:"restart"`

	// File is where the spec was read from; empty for specs built in code.
	File string `json:"file,omitempty" toml:"-"`
}

// RootMode says what the pod sees as its root file system.
type RootMode string

const (
	// RootHost: the host's root, with private /tmp, /run and /dev/shm.
	RootHost RootMode = "host"
	// RootDir: a separate root file system in a directory (Path).
	RootDir RootMode = "dir"
)

type RootSpec struct {
	Mode     RootMode `json:"mode" toml:"mode"`
	Path     string   `json:"path,omitempty" toml:"path"`
	ReadOnly bool     `json:"readonly,omitempty" toml:"readonly"`
}

// Mount binds a host directory or file (data) into the pod.
type Mount struct {
	Source   string `json:"source" toml:"source"`
	Target   string `json:"target" toml:"target"`
	ReadOnly bool   `json:"readonly,omitempty" toml:"readonly"`
}

// NetworkSpec gives the pod its own IPv4 address on a host bridge.
// A zero Address means the pod has only loopback.
type NetworkSpec struct {
	Address netip.Prefix `json:"address" toml:"address"` // e.g. 10.77.0.10/24
	Gateway netip.Addr   `json:"gateway" toml:"gateway"` // default: first host address of the prefix
	Bridge  string       `json:"bridge,omitempty" toml:"bridge"`
}

// Limits are applied through the pod's cgroup. Zero means unlimited/default.
type Limits struct {
	MemoryBytes int64  `json:"memory_bytes,omitempty" toml:"-"`
	Memory      string `json:"-" toml:"memory"`                        // "512M", "2G", bytes
	CPUWeight   uint64 `json:"cpu_weight,omitempty" toml:"cpu_weight"` // 1..10000, cgroup v2 scale
	Pids        int64  `json:"pids,omitempty" toml:"pids"`
}

type RestartPolicy string

const (
	RestartNo        RestartPolicy = "no"
	RestartOnFailure RestartPolicy = "on-failure"
	RestartAlways    RestartPolicy = "always"
)

// RestartDelay is the pause before a restart; it doubles up to MaxRestartDelay.
const (
	RestartDelay    = 500 * time.Millisecond
	MaxRestartDelay = 30 * time.Second
)
