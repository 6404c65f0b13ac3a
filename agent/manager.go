// Package agent is the autopod daemon: its D-Bus object, its listeners and
// the glue between them and the pod runtime.
package agent

import (
	"context"

	"github.com/autopod/autopod/pods"
)

// PodManager is what the agent needs from the pod runtime. *pods.Manager is
// the real one; tests use a fake.
type PodManager interface {
	List(ctx context.Context) []pods.Status
	Get(ctx context.Context, name string) (pods.Status, error)
	Start(ctx context.Context, name string) error
	Stop(ctx context.Context, name string) error
	Checkpoint(ctx context.Context, name string, opts pods.CheckpointOptions) (pods.CheckpointResult, error)
	Restore(ctx context.Context, name string) error
	// Subscribe registers fn for every pod state change; fn must not block.
	Subscribe(fn func(pods.Event))
}

// CriuInfo is what the agent learned about its CRIU binary at start.
type CriuInfo = pods.CriuInfo

// Migrator is what the agent needs from the pod runtime to move pods
// between hosts. *pods.Manager implements it.
type Migrator interface {
	Migrate(ctx context.Context, name, peer string, progress func(pods.MigrationProgress)) (pods.MigrationResult, error)
	// MigrateWith is Migrate with per-migration options (the strategy).
	MigrateWith(ctx context.Context, name, peer string, opts pods.MigrateOptions, progress func(pods.MigrationProgress)) (pods.MigrationResult, error)
	Evacuate(ctx context.Context, peer string, progress func(pods.MigrationProgress)) ([]pods.MigrationResult, error)
	Return(ctx context.Context, progress func(pods.MigrationProgress)) ([]string, error)
}

// PeerInfo is one pinned peer as the D-Bus API shows it.
type PeerInfo struct {
	Name        string `json:"name"`
	Address     string `json:"address"` // host:port
	Fingerprint string `json:"fingerprint"`
}

// PeerRegistry manages this host's peer identity and the pinned peers.
type PeerRegistry interface {
	// InitIdentity creates this host's key and certificate (force replaces
	// an existing one) and returns the certificate (PEM) and fingerprint.
	InitIdentity(force bool) (certPEM, fingerprint string, err error)
	// Identity returns this host's certificate, or an error saying to run
	// `autopodctl peer init`.
	Identity() (certPEM, fingerprint string, err error)
	AddPeer(name, address string, certPEM []byte) (PeerInfo, error)
	RemovePeer(name string) error
	ListPeers() ([]PeerInfo, error)
}
