// Command autopodctl is the command-line client of the autopod agent. It
// talks to the agent only through its D-Bus API (org.autopod.Agent1 on the
// system bus), so it can do nothing that busctl could not, and needs no
// privileges of its own: the agent decides who may change pods.
//
// main only wires the process to run; everything else takes its inputs and
// writers as arguments so that tests can drive it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time by the Makefile (-ldflags "-X
// main.version=..."), like the daemon's; a plain "go build" leaves it
// empty and clientVersion falls back to the module's build information.
var version string

func main() {
	// Ctrl-C cancels the call in flight; the agent finishes or rolls back
	// the operation on its own, it is not tied to this client.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
