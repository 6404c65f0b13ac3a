// Package fleetlock speaks the FleetLock protocol, with which the hosts of
// a fleet take turns to reboot: a host asks a lock server for one of a
// group's few reboot slots before it reboots and gives the slot back once
// it runs normally again. Client is autopod's side; Server is a small,
// in-memory lock server for tests and for small fleets that want no
// separate service.
//
// # The protocol as implemented
//
// Followed: the protocol document of Zincati, docs/development/fleetlock/
// protocol.md in github.com/coreos/zincati (published at
// https://coreos.github.io/zincati/development/fleetlock/protocol/), and
// Airlock's server (github.com/coreos/airlock) where the document is
// silent:
//
//   - Two operations, each a POST relative to a deployment-specific base
//     URL: {base}/v1/pre-reboot takes a slot ("RecursiveLock"),
//     {base}/v1/steady-state releases it ("UnlockIfHeld").
//   - Every request carries the header "fleet-lock-protocol: true", so a
//     server can tell a deliberate request from one that arrived through an
//     unintended redirect, and the JSON body
//     {"client_params":{"id":"<node id>","group":"<group>"}}.
//   - id is a case-sensitive, non-empty label unique to the node; group
//     matches ^[a-zA-Z0-9.-]+$ and defaults to "default", as in Zincati.
//   - Locks are owned and recursive: pre-reboot by a node that already
//     holds a slot succeeds again without taking a second one, and
//     steady-state by a node that holds none succeeds too.
//   - 200 means success; every other status is a failure. Servers should
//     send a JSON body {"kind": "...", "value": "..."}, kind a
//     machine-readable identifier of small cardinality, value for humans;
//     the document's example for a full semaphore is the kind
//     "failed_lock_semaphore_full".
//
// Choices of this package where the document leaves room:
//
//   - The client follows no redirects: a 3xx is a failure that names the
//     target, so a lock request is never re-sent somewhere unexpected (Go's
//     client would also turn a POST into a GET on 301 to 303).
//   - An error body that is not the JSON above (a proxy's HTML page,
//     Airlock's plain-text errors) is quoted, shortened, in the error.
//   - The default node id is /etc/machine-id as it is. Zincati instead
//     sends an application-specific id derived from it, because
//     machine-id(5) asks not to expose the machine id to untrusted
//     parties; set Options.ID to do the same.
//   - Only 200 is success, as the document says; Zincati's own client
//     accepts any 2xx.
//   - Early versions of the protocol, of Zincati and of Airlock named the
//     id "node_uuid". Client sends "id" only; Server accepts either.
package fleetlock
