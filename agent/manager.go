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
