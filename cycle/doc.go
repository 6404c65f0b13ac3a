// Package cycle is autopod's update cycle: one explicit state machine that
// takes a host from "an update is pending" through evacuating its pods to a
// peer, installing the packages and rebooting, to having its pods back.
//
//	Idle → UpdatePending → WaitingForWindow → Locked → Evacuating →
//	Installing → Rebooting → Returning → Idle
//
// The diagram, the failure edges and what resume does in each state are in
// docs/update-cycle.md; state.go holds the table every transition is
// checked against.
//
// The contract:
//
//   - Every transition is written durably (atomicfile: temporary file, fsync,
//     rename, fsync of the directory) before the machine acts in the new
//     state, so a crash or the reboot itself never loses where the cycle was.
//   - Resume, at agent start, reconciles the outside world with the recorded
//     state: it reads the boot ID to learn whether the reboot happened, asks
//     the pod runtime where each pod is, and re-takes or drops the fleet
//     lease so that the lease is held exactly in Locked…Rebooting.
//   - The machine never leaves Returning while a pod of this host is away,
//     never installs or reboots while a pod is live on this host, and never
//     reboots past a block-mode shutdown inhibitor.
//
// Everything outside the process is reached through small interfaces
// (Detector, Pods, Peers, Lock, Inhibitor, Installer, Rebooter, Clock) that
// the agent implements with the pod runtime, the package manager, logind and
// the fleet lock; the tests implement them with a simulated fleet.
package cycle
