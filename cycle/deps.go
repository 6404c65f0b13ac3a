package cycle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The interfaces below are everything the machine needs from outside the
// process. The agent implements each with one real system; the tests
// implement them with a simulated fleet (fleet_test.go). Every method that
// blocks takes a context and must return when it is done.

// Detector finds pending updates and reboot-required signals (apt or dnf
// metadata, /run/reboot-required, `dnf needs-restarting -r`).
type Detector interface {
	// Check reports the updates the package manager would install now and
	// whether the running system already needs a reboot. It only looks.
	Check(ctx context.Context) (CheckResult, error)
}

// Pods is this host's pod runtime (pods.Manager in the agent).
type Pods interface {
	// List reports this host's own pods and where each is now. Pods that
	// other hosts migrated here are not listed.
	List(ctx context.Context) ([]Pod, error)
	// Evacuate migrates every pod running here to peer and returns the
	// first error after trying them all. Each migration is all-or-nothing
	// (the pod runtime's two-phase commit), so after a failure or a crash
	// List tells where each pod is. Pods already on the peer are skipped.
	Evacuate(ctx context.Context, peer string) error
	// Return pulls every pod of this host back from the peers it runs on.
	// Pods already here are skipped.
	Return(ctx context.Context) error
	// CheckpointLocal checkpoints the named pods to this host's disk and
	// stops them (the no-peer "local-checkpoint" policy, as KUP did).
	// Pods already checkpointed are skipped.
	CheckpointLocal(ctx context.Context, names []string) error
	// RestoreLocal restores the named pods from their checkpoints on this
	// host. Pods already running are skipped.
	RestoreLocal(ctx context.Context, names []string) error
}

// Peers chooses where the pods go.
type Peers interface {
	// Choose asks the configured peers, in order of preference, whether
	// they take all of pods now and returns the first that does. A peer
	// refuses when it is itself updating (Machine.AcceptPods) or lacks
	// memory for the pods. Choose reserves nothing: it is also used for
	// dry runs. When no peer accepts, the error is a *NoPeerError.
	Choose(ctx context.Context, pods []Pod) (peer string, err error)
}

// Lock is the fleet lease: between peers (two peers never update at the
// same time), and optionally FleetLock on an external server
// (`POST /v1/pre-reboot` to acquire, `/v1/steady-state` to release).
type Lock interface {
	// Acquire takes the lease for this host, or fails (held by another
	// host, server unreachable). Taking a lease this host already holds
	// succeeds: after a crash the machine re-affirms it.
	Acquire(ctx context.Context) error
	// Release gives the lease up. Releasing a lease this host does not
	// hold succeeds: after a crash the machine cannot know whether an
	// Acquire went through.
	Release(ctx context.Context) error
}

// Inhibitor is systemd-logind's inhibitor locks.
type Inhibitor interface {
	// Delay takes a "delay" mode lock on shutdown and sleep, as autopod,
	// with the reason why, and returns the function that releases it. The
	// lock lives as long as the returned file descriptor does, so a crash
	// releases it.
	Delay(ctx context.Context, why string) (release func(), err error)
	// Blockers lists the "block" mode locks on shutdown held now.
	Blockers(ctx context.Context) ([]Blocker, error)
}

// Installer installs packages (apt-get, dnf) non-interactively.
type Installer interface {
	// Install installs updates. It must be idempotent: after a crash the
	// machine runs it again (and it repairs an interrupted dpkg run with
	// `dpkg --configure -a` first). The error carries the tool's output.
	Install(ctx context.Context, updates []Update) error
}

// Rebooter reboots the host.
type Rebooter interface {
	// Reboot asks for a reboot with method: RebootLogind (logind's
	// Reboot) or RebootKexec (load the newest installed kernel with kexec,
	// then logind's RebootWithFlags/kexec). It returns once the request is
	// accepted; the host goes down afterwards.
	Reboot(ctx context.Context, method RebootMethod) error
}

// Clock tells the time. The tests move it by hand.
type Clock interface {
	Now() time.Time
}

// Notifier is called after every transition has been persisted, in order,
// outside the machine's lock. The agent emits the D-Bus StateChanged
// signal from it. It must not block for long.
type Notifier func(Transition)

// Class is what kind of package an update is.
type Class string

const (
	// ClassKernel: a kernel image or its modules.
	ClassKernel Class = "kernel"
	// ClassBoot: boot-critical packages whose update takes effect only
	// after a reboot (systemd, libc, initramfs tools, microcode, firmware,
	// the boot loader).
	ClassBoot Class = "boot"
	// ClassOther: everything else.
	ClassOther Class = "other"
)

// Update is one package to install.
type Update struct {
	Name    string `json:"name"`
	Version string `json:"version"` // the version to be installed
	Class   Class  `json:"class"`
}

func (u Update) String() string {
	return fmt.Sprintf("%s %s (%s)", u.Name, u.Version, u.Class)
}

// CheckResult is what a Detector found.
type CheckResult struct {
	At             time.Time `json:"at"`
	Updates        []Update  `json:"updates,omitempty"`
	RebootRequired bool      `json:"reboot_required"`
	// Reasons say why a reboot is required, in words
	// ("/run/reboot-required: linux-image-6.1.0-28-amd64").
	Reasons []string `json:"reasons,omitempty"`
}

// Pod is one of this host's pods and where it is.
type Pod struct {
	Name string `json:"name"`
	// Running: the pod runs on this host.
	Running bool `json:"running"`
	// Peer is the peer the pod runs on now; "" when it is not migrated.
	Peer string `json:"peer,omitempty"`
	// Checkpointed: the pod is saved on this host's disk and not running.
	Checkpointed bool `json:"checkpointed,omitempty"`
	// Memory is the pod's memory limit in bytes, 0 when unlimited; peers
	// judge from it whether they have room.
	Memory uint64 `json:"memory,omitempty"`
}

// Blocker is a block-mode logind inhibitor lock on shutdown.
type Blocker struct {
	Who  string `json:"who"`  // the holder's name, e.g. "backup.service"
	Why  string `json:"why"`  // its reason
	What string `json:"what"` // e.g. "shutdown:sleep"
	PID  uint32 `json:"pid"`
	UID  uint32 `json:"uid"`
}

func (b Blocker) String() string {
	return fmt.Sprintf("%s (pid %d, uid %d): %s", b.Who, b.PID, b.UID, b.Why)
}

// Refusal is one peer's reason for not taking the pods.
type Refusal struct {
	Peer   string `json:"peer"`
	Reason string `json:"reason"`
}

// ErrNoPeer: no peer takes the pods. Peers.Choose returns a *NoPeerError,
// which matches it.
var ErrNoPeer = errors.New("no peer can take the pods")

// NoPeerError says why each peer refused.
type NoPeerError struct {
	Refusals []Refusal
}

func (e *NoPeerError) Error() string {
	if len(e.Refusals) == 0 {
		return ErrNoPeer.Error() + ": no peers configured"
	}
	parts := make([]string, len(e.Refusals))
	for i, r := range e.Refusals {
		parts[i] = r.Peer + ": " + r.Reason
	}
	return ErrNoPeer.Error() + ": " + strings.Join(parts, "; ")
}

func (e *NoPeerError) Is(target error) bool { return target == ErrNoPeer }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
