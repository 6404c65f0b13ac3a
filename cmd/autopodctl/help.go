package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// commandSpec describes one subcommand: how it is parsed and its manual
// page. Parsing and help come from the same table so they cannot disagree.
//
// A group ("peer") only gathers sub-commands, whose names are the group's
// and a word ("peer add"); on the command line the word follows the group.
type commandSpec struct {
	name     string
	aliases  []string
	group    bool          // takes a sub-command; see above
	args     []string      // positional arguments, all required
	timeout  time.Duration // default timeout; 0 means defaultTimeout
	flags    string        // command-specific options, as in the synopsis
	accepts  []string      // names of the command-specific options it takes
	requires []string      // those of accepts that must be given
	root     bool          // the agent requires root
	summary  string        // one line, for the command list
	desc     string        // DESCRIPTION
	options  string        // command-specific OPTIONS entries, if any
	output   string        // OUTPUT
	dbus     string        // the D-Bus call(s) it makes
	example  string        // EXAMPLES
}

func (c commandSpec) synopsis() string {
	if c.group {
		return c.name + " SUB-COMMAND [ARG...]"
	}
	// Optional flags come first, as in "checkpoint [--leave-running] NAME";
	// required ones end the sentence: "migrate NAME --to PEER".
	parts := []string{c.name}
	if c.flags != "" && len(c.requires) == 0 {
		parts = append(parts, c.flags)
	}
	parts = append(parts, c.args...)
	if c.flags != "" && len(c.requires) > 0 {
		parts = append(parts, c.flags)
	}
	return strings.Join(parts, " ")
}

func lookupCommand(name string) (commandSpec, bool) {
	for _, c := range commandTable() {
		if c.name == name {
			return c, true
		}
		for _, a := range c.aliases {
			if a == name {
				return c, true
			}
		}
	}
	return commandSpec{}, false
}

// commandTable is a function rather than a package variable so that no
// caller can modify the table another one reads.
func commandTable() []commandSpec {
	return []commandSpec{
		{
			name:    "status",
			summary: "Show the agent, its CRIU, the number of pods and the update cycle.",
			desc: `Shows what the agent learned about itself at start: its version, the CRIU
binary it uses (path, version, and which optional CRIU features the
running kernel supports), why CRIU is unusable if it is, and how many pods
the agent knows. Checkpoints need a working CRIU; "CRIU error" names the
problem when there is one.

Then the update cycle: its state and why it is there, the pending updates
the policy acts on, whether a reboot is required, the next maintenance
window, whether this host holds the fleet lease, who blocks the reboot
(logind "block" inhibitors: who, pid, uid and why) and the last error.`,
			output: `People get one "key: value" line per item. With --json, one object:
  {"version": "...", "criu": {"path": "...", "version": "...",
   "features": {"NAME": true|false, ...}, "error": "..."}, "pods": N,
   "update": {"state": "Idle", "reason": "...", "pending_updates": [...],
   "reboot_required": false, "next_window_start": "...", "lease_held": false,
   "blockers": [...], "last_error": "...", "history": [...], ...}}`,
			dbus:    "org.autopod.Agent1.Status() -> a{sv}\norg.autopod.Agent1.UpdateStatusJSON() -> s",
			example: "autopodctl status\nautopodctl --json status | jq .criu.features",
		},
		{
			name:    "pods",
			aliases: []string{"list"},
			summary: "List pods with their state, pid, address and age.",
			desc: `Lists every pod the agent knows, sorted by name, including pods whose
definition file does not parse (state "invalid", the parse error in the
ERROR column). "list" is an alias.

States: stopped, starting, running, checkpointing, checkpointed,
restoring, failed, invalid, migrating (being moved to or from a peer) and
migrated (this host's pod runs on a peer; "pod NAME" says which).`,
			output: `A table with the columns NAME STATE PID ADDRESS SINCE ERROR. SINCE is how
long the pod has been in its state (e.g. 45s, 12m, 3h, 2d); "-" marks a
value the pod does not have. With --json, a JSON array of pod objects with
every field the agent reports (name, state, pid, address, file, since as
RFC 3339, restarts, checkpoint, error), as "pod --json" prints them.`,
			dbus:    "org.autopod.Agent1.ListPods() -> a(ssisss)\norg.autopod.Agent1.ListPodsJSON() -> s   (with --json)",
			example: "autopodctl pods\nautopodctl --json pods | jq -r '.[] | select(.state == \"failed\") | .name'",
		},
		{
			name:    "pod",
			args:    []string{"NAME"},
			summary: "Show everything the agent knows about one pod.",
			desc: `Shows one pod's state, the pid of its init process on the host, its
address, its definition file, when it entered its state, how often it was
restarted, its newest checkpoint directory and its last error. For a pod
that was migrated, also the peer it runs on now (Location) or, on the
peer, the host it belongs to (Home).`,
			output: `People get one "key: value" line per field; Location and Home only when
set. With --json, the pod object:
  {"name": "...", "state": "...", "pid": N, "address": "...", "file": "...",
   "since": "RFC 3339", "restarts": N, "checkpoint": "...", "error": "...",
   "home": "...", "location": "..."}
(empty fields are left out).`,
			dbus:    "org.autopod.Agent1.GetPod(s name) -> a{sv}\norg.autopod.Agent1.GetPodJSON(s name) -> s   (with --json)",
			example: "autopodctl pod web\nautopodctl --json pod web | jq -r .checkpoint",
		},
		{
			name:    "start",
			args:    []string{"NAME"},
			root:    true,
			summary: "Start a stopped or failed pod.",
			desc: `Asks the agent to start the pod: create its namespaces and cgroup, set up
its network and run its command. Fails if the pod is already running,
busy with another operation, or its definition is invalid.`,
			output: `The pod's new state, e.g. "started web: running, pid 4242". With --json,
the pod object as "pod --json" prints it.`,
			dbus:    "org.autopod.Agent1.StartPod(s name)",
			example: "sudo autopodctl start web",
		},
		{
			name:    "stop",
			args:    []string{"NAME"},
			root:    true,
			summary: "Stop a running pod.",
			desc: `Asks the agent to stop the pod's processes. The pod stays defined and can
be started again; its checkpoints are kept.`,
			output:  `The pod's new state, e.g. "stopped web: stopped". With --json, the pod object.`,
			dbus:    "org.autopod.Agent1.StopPod(s name)",
			example: "sudo autopodctl stop web",
		},
		{
			name:    "checkpoint",
			args:    []string{"NAME"},
			flags:   "[--leave-running]",
			accepts: []string{"leave-running"},
			timeout: defaultLongTimeout,
			root:    true,
			summary: "Checkpoint a running pod with CRIU.",
			desc: `Asks the agent to dump the running pod with CRIU into a new image
directory: memory, open files, and TCP connections. By default the pod is
stopped by the dump and left in state "checkpointed", ready for "restore"
here or on another host. A checkpoint takes as long as writing the pod's
memory to disk; the default timeout is 5 minutes. If the timeout expires
the agent still finishes the checkpoint: check with "autopodctl pod NAME".`,
			options: `--leave-running
    Keep the pod running after the dump (a snapshot, e.g. for a backup or
    a migration test).`,
			output: `The image directory and its size, e.g.
  "checkpointed web: 12.0 MiB in /var/lib/autopod/pods/web/checkpoints/20261130T040205.009385820Z".
With --json: {"name": "...", "dir": "...", "bytes": N, "leave_running": B}.`,
			dbus:    "org.autopod.Agent1.Checkpoint(s name, b leave_running) -> (s dir, t bytes)",
			example: "sudo autopodctl checkpoint web\nsudo autopodctl checkpoint --leave-running --timeout 20m db",
		},
		{
			name:    "restore",
			args:    []string{"NAME"},
			timeout: defaultLongTimeout,
			root:    true,
			summary: "Restore a pod from its newest checkpoint.",
			desc: `Asks the agent to restore the pod with CRIU from its newest checkpoint.
The pod resumes where it was dumped, with its memory, files, address and
TCP connections. Fails if the pod is running or has no checkpoint. The
default timeout is 5 minutes.`,
			output:  `The pod's new state, e.g. "restored web: running, pid 5120". With --json, the pod object.`,
			dbus:    "org.autopod.Agent1.Restore(s name)",
			example: "sudo autopodctl restore web",
		},
		{
			name:     "migrate",
			args:     []string{"NAME"},
			flags:    "--to PEER [--strategy S]",
			accepts:  []string{"to", "strategy"},
			requires: []string{"to"},
			timeout:  defaultMigrationTimeout,
			root:     true,
			summary:  "Move a running pod live to a peer host.",
			desc: `Asks the agent to move the running pod NAME to the pinned peer PEER
without stopping it: the pod's files are copied while it still serves,
then it is frozen, the files that changed since and its CRIU images are
streamed to the peer, and the peer restores it. The pod keeps its
address, which moves to the peer, and its established TCP connections;
packets that reach it while it is frozen are held and delivered on the
peer, so clients see a pause of about the "frozen" time in the result.

How the memory moves is the strategy: migration_strategy in
autopod.toml, or --strategy for this migration. With post-copy ("auto"
picks it where both hosts can run it) the pod resumes on the peer before
its memory has moved, which then follows while it runs: the freeze no
longer grows with the pod's memory. Should that transfer fail, the
peer's incomplete copy is destroyed and the pod resumes here as it was
when frozen. With pre-copy ("auto"'s second choice) the memory is copied
in rounds while the pod runs, each round sending what the pod wrote
during the one before (the kernel's soft-dirty tracking), until a round
is small or stops shrinking (at most 5 rounds); the freeze then moves
only what is still dirty. With stop-and-copy all of it moves during the
freeze. "autopodctl status" lists the strategies this host can run and
why not the others; a strategy this host cannot run fails at once, one
the peer cannot run makes the peer refuse, both before anything is
frozen.

The pod's copy here is destroyed only after the peer confirmed the
restore. Any failure before that (peer unreachable or refusing, link cut,
restore error, timeout) resumes the pod here and the command fails with
the cause. A peer that cannot run the pod (another CRIU, missing CPU
features or files) refuses it before anything is frozen.

Afterwards the pod's state here is "migrated" and "autopodctl pod NAME"
shows where it runs; "autopodctl return" brings it back. PEER must be
pinned here with "peer add", and this host there.

autopodctl prints each phase as the agent reports it (see OUTPUT).
Interrupting autopodctl, or its timeout (default 30 minutes), does not
stop the migration: the agent completes it or rolls it back; "autopodctl
pod NAME" tells which.`,
			options: `--to PEER
    The pinned peer to move the pod to (required). "autopodctl peer list"
    shows the names.
--strategy S
    How to move the pod's memory this time: auto, stop-and-copy,
    post-copy or pre-copy. Default: migration_strategy in autopod.toml.`,
			output: `One line each time the migration enters a phase, with the bytes sent so
far, then the result: how long the pod was frozen, how long the whole
migration took, and the bytes sent:
  kv → hostb: offer 0 B
  kv → hostb: files 0 B
  kv → hostb: freeze 1.0 MiB
  kv → hostb: dump 1.0 MiB
  kv → hostb: images 1.0 MiB
  kv → hostb: restore 109.3 MiB
  kv → hostb: commit 109.3 MiB
  kv → hostb: done 110.3 MiB
  migrated kv to hostb: frozen 812 ms, total 1.9 s, 110.3 MiB
Phases, in order: offer, files, pre-copy (pre-copy only, once per
round, while the pod still runs here), freeze, dump, files-delta,
images, restore, memory (post-copy only: the pod runs on the peer while
its memory follows), commit, done; rollback when a failure resumes the
pod here. With --json, no progress, only the result:
  {"pod": "kv", "peer": "hostb", "frozen_usec": N, "total_usec": N, "bytes": N}
(and "strategy" when --strategy was given).`,
			dbus: `org.autopod.Agent1.Migrate(s name, s peer) -> (t frozen_usec, t total_usec, t bytes)
org.autopod.Agent1.MigrateWith(s name, s peer, a{sv} options) -> (as Migrate)
    (with --strategy: options {"strategy": <s S>})
signal org.autopod.Agent1.MigrationProgress(s pod, s peer, s phase, t bytes)
    (subscribed to before the call, from the agent's unique bus name)`,
			example: "sudo autopodctl migrate kv --to hostb\nsudo autopodctl migrate kv --to hostb --strategy pre-copy\nsudo autopodctl --json migrate kv --to hostb | jq '.frozen_usec / 1000'",
		},
		{
			name:     "evacuate",
			flags:    "--to PEER",
			accepts:  []string{"to"},
			requires: []string{"to"},
			timeout:  defaultMigrationTimeout,
			root:     true,
			summary:  "Move every running pod to a peer host.",
			desc: `Asks the agent to migrate every running pod to the pinned peer PEER, one
after another, each as "migrate" moves one. Pods that are not running
stay here. A pod that cannot be moved keeps running here and the others
are still tried; the command then fails (exit status 1) with a message
that names the pods that were moved and says why each other one was not.

The default timeout of 30 minutes is for all pods together; give more
with --timeout for many or large pods. As with migrate, the agent
completes or rolls back every migration even if autopodctl stops
waiting.`,
			options: `--to PEER
    The pinned peer to move the pods to (required).`,
			output: `Progress lines as for migrate, pod after pod, then
  evacuated 2 pods to hostb: kv, web
or "evacuated no pods to hostb: none is running". With --json, no
progress, only the result:
  {"peer": "hostb", "migrated": ["kv", "web"]}`,
			dbus: `org.autopod.Agent1.Evacuate(s peer) -> (as migrated)
signal org.autopod.Agent1.MigrationProgress(s pod, s peer, s phase, t bytes)`,
			example: "sudo autopodctl evacuate --to hostb\nsudo autopodctl evacuate --to hostb --timeout 2h",
		},
		{
			name:    "return",
			timeout: defaultMigrationTimeout,
			root:    true,
			summary: "Bring this host's pods back from their peers.",
			desc: `Asks the agent to bring home every pod of this host that runs on a peer
(state "migrated" here): each moves back from its peer as "migrate"
moved it away, with its address and connections. A pod that cannot come
back keeps running on its peer and the others are still tried; the
command then fails with a message that names the pods that came back.`,
			output: `Progress lines as for migrate, the arrow pointing home:
  kv ← hostb: images 104.9 MiB
then "returned 2 pods: kv, web", or "returned no pods: none runs on a
peer". With --json, no progress, only the result:
  {"returned": ["kv", "web"]}`,
			dbus: `org.autopod.Agent1.Return() -> (as returned)
signal org.autopod.Agent1.MigrationProgress(s pod, s peer, s phase, t bytes)`,
			example: "sudo autopodctl return",
		},
		{
			name:    "update",
			flags:   "[--check | --dry-run | --cancel] [--now]",
			accepts: []string{"check", "dry-run", "now", "cancel"},
			timeout: 5 * time.Minute,
			root:    true,
			summary: "Check for updates, show the update plan, start or cancel an update cycle.",
			desc: `Drives the update cycle: the agent moves this host's pods to a peer,
installs the pending updates, reboots (through systemd-logind, or kexec)
and pulls the pods back, holding the fleet lease so that no two peers
update at once and a logind delay lock while the pods move.

Without options it starts a cycle: one that waits for the maintenance
window (in notify mode this is the operator's go-ahead), or at once with
--now. The command returns as soon as the cycle is under way, printing its
plan; "autopodctl status" follows it.

--dry-run prints the plan instead, changing nothing: the packages, which
pods go to which peer (every peer is asked, and a refusal says why),
when, how the host reboots and why the cycle would run. --check asks the
package manager now and lists what is pending. --cancel stops a cycle
that has not begun installing: the pods come home and the lease is
released; once packages are being installed the cycle must finish.`,
			options: `--check
    List the pending updates and whether a reboot is required.
--dry-run
    Print the plan without doing anything; with --now, as if started now.
--now
    Ignore the maintenance window.
--cancel
    Cancel the running cycle (before it installs).`,
			output: `--check: a table PACKAGE VERSION CLASS (kernel, boot, other), then
"reboot required: yes|no". Otherwise "key: value" lines: Updates, Reboot
required, When, Pods go to (and each pod), Refused by PEER (and why),
Reboot, Why. With --json, the plan or the check result as an object.`,
			dbus: `org.autopod.Agent1.CheckUpdates() -> (a(sss) updates, b reboot_required)
org.autopod.Agent1.StartUpdate(b dry_run) -> (s plan_json)
org.autopod.Agent1.StartUpdateNow(b dry_run) -> (s plan_json)
org.autopod.Agent1.Cancel()
signal org.autopod.Agent1.UpdateStateChanged(s from, s to, s reason)`,
			example: "sudo autopodctl update --check\nsudo autopodctl update --dry-run --now\nsudo autopodctl update --now\nsudo autopodctl update --cancel",
		},
		{
			name:    "hook",
			group:   true,
			summary: "The package managers' hooks (run by apt and dnf, not by people).",
			desc: `apt (DPkg::Pre-Install-Pkgs and DPkg::Post-Invoke in
/etc/apt/apt.conf.d/99autopod) and dnf (the autopod plugin) run these
before and after they install packages. When a package the update policy
acts on is about to be installed (a kernel, by default), the hook asks
the agent to move the pods to a peer first and waits, with a timeout,
printing how it goes; if that fails, the install stops with a message
saying why and how to go on. Other installs go ahead at once. An agent
that cannot be reached stops only kernel installs. AUTOPOD_HOOK=skip in
the environment turns the hooks off for one run. unattended-upgrades is
configured to leave the reboot to autopod
(/etc/apt/apt.conf.d/99autopod-unattended-upgrades).`,
		},
		{
			name:    "hook apt-pre-install",
			timeout: 2 * time.Hour,
			root:    true,
			summary: "apt's DPkg::Pre-Install-Pkgs hook (protocol version 3 on stdin).",
			desc:    `Reads what apt is about to do and, for packages the policy acts on, waits until the agent has moved the pods away.`,
			dbus:    "org.autopod.Agent1.ExternalInstallBegin(s tool, a(ss) packages) -> (b needed)\norg.autopod.Agent1.WaitInstallReady()",
			example: "(run by apt)",
		},
		{
			name:    "hook apt-post-invoke",
			root:    true,
			summary: "apt's DPkg::Post-Invoke hook: tells the agent apt has finished.",
			desc:    `Tells the agent that apt's run has ended and whether the packages it installed are configured.`,
			dbus:    "org.autopod.Agent1.ExternalInstallEnd(b ok, s detail)",
			example: "(run by apt)",
		},
		{
			name:    "hook dnf-pre-transaction",
			timeout: 2 * time.Hour,
			root:    true,
			summary: "The dnf plugin's pre-transaction hook (one package a line on stdin).",
			desc:    `Reads the transaction's packages and, for packages the policy acts on, waits until the agent has moved the pods away.`,
			dbus:    "org.autopod.Agent1.ExternalInstallBegin(s tool, a(ss) packages) -> (b needed)\norg.autopod.Agent1.WaitInstallReady()",
			example: "(run by dnf)",
		},
		{
			name:    "hook dnf-post-transaction",
			flags:   "[--failed]",
			accepts: []string{"failed"},
			root:    true,
			summary: "The dnf plugin's post-transaction hook.",
			desc:    `Tells the agent that dnf's transaction has ended; --failed when it did not complete.`,
			options: `--failed
    The transaction failed.`,
			dbus:    "org.autopod.Agent1.ExternalInstallEnd(b ok, s detail)",
			example: "(run by dnf)",
		},
		{
			name:    "peer",
			group:   true,
			summary: "Manage this host's peer identity and the pinned peers.",
			desc: `Hosts that move pods to each other are peers. They authenticate each
other with mutual TLS on the peer port (7781 by default): every host has
its own key and self-signed certificate ("peer init"), and pins, by
name, the certificates of the hosts it trusts ("peer add"). Nothing is
ever sent to, or accepted from, a host whose certificate is not pinned.

Pairing two hosts, hosta (192.0.2.1) and hostb (192.0.2.2):
  hosta# autopodctl peer init > hosta.pem
  hostb# autopodctl peer init > hostb.pem
  copy each file to the other host, and compare the fingerprints that
  "peer init" printed with those "peer add" prints
  hosta# autopodctl peer add hostb 192.0.2.2 --cert hostb.pem
  hostb# autopodctl peer add hosta 192.0.2.1 --cert hosta.pem`,
			example: "sudo autopodctl peer init > $(hostname).pem\nautopodctl peer list",
		},
		{
			name:    "peer init",
			flags:   "[--force]",
			accepts: []string{"force"},
			root:    true,
			summary: "Create this host's peer key and certificate.",
			desc: `Asks the agent to create this host's peer identity: an ECDSA key, which
never leaves this host, and a self-signed certificate, which the other
hosts pin with "peer add". Refuses if this host has an identity already,
unless --force.`,
			options: `--force
    Replace an existing identity. Every peer that pinned the old
    certificate refuses this host until it pins the new one.`,
			output: `The certificate (PEM) on standard output, to redirect into a file for the
other hosts, and "fingerprint: sha256:..." on standard error. With
--json, only one document on standard output:
  {"cert_pem": "-----BEGIN CERTIFICATE-----\n...", "fingerprint": "sha256:..."}`,
			dbus:    "org.autopod.Agent1.PeerInit(b force) -> (s cert_pem, s fingerprint)",
			example: "sudo autopodctl peer init > hosta.pem\nsudo autopodctl peer init --force > hosta.pem",
		},
		{
			name:    "peer cert",
			summary: "Print this host's peer certificate for other hosts to pin.",
			desc: `Prints the certificate "peer init" created, to hand to other hosts'
"peer add". Anyone may ask: the certificate is public, the key stays
with the agent. Fails if "peer init" has not run.`,
			output: `The certificate (PEM) on standard output and "fingerprint: sha256:..."
on standard error. With --json, only: {"cert_pem": "...", "fingerprint": "..."}`,
			dbus:    "org.autopod.Agent1.PeerCert() -> (s cert_pem, s fingerprint)",
			example: "autopodctl peer cert > $(hostname).pem\nautopodctl --json peer cert | jq -r .fingerprint",
		},
		{
			name:     "peer add",
			args:     []string{"NAME", "ADDRESS"},
			flags:    "--cert FILE",
			accepts:  []string{"cert"},
			requires: []string{"cert"},
			root:     true,
			summary:  "Pin a peer: its name, address and certificate.",
			desc: `Pins the peer NAME: from then on the agent sends pods to it at ADDRESS
and accepts pods from it, as long as it presents exactly the certificate
in FILE. NAME is how other commands refer to the peer (1 to 63 of a-z,
0-9, '.' and '-'). ADDRESS is HOST or HOST:PORT; HOST is an IPv4
address, an IPv6 address in brackets ([fd00::2]:7781) or a DNS name, and
the port defaults to 7781. autopodctl reads FILE itself and sends its
content to the agent, so FILE need only be readable by the caller.

Check the printed fingerprint against the one "peer init" printed on
the peer: it is what the pin trusts.`,
			options: `--cert FILE
    The peer's certificate, as its "peer init" or "peer cert" printed it
    (required). Only the certificate: a file holding a key is refused.`,
			output: `"added peer hostb at 192.0.2.2:7781, fingerprint sha256:...". With --json:
  {"name": "hostb", "address": "192.0.2.2:7781", "fingerprint": "sha256:..."}`,
			dbus:    "org.autopod.Agent1.PeerAdd(s name, s address, s cert_pem) -> (s fingerprint)\norg.autopod.Agent1.ListPeers() -> a(sss)   (for the address as stored)",
			example: "sudo autopodctl peer add hostb 192.0.2.2 --cert hostb.pem\nsudo autopodctl peer add hostc '[fd00::3]:7000' --cert hostc.pem",
		},
		{
			name:    "peer remove",
			aliases: []string{"peer rm"},
			args:    []string{"NAME"},
			root:    true,
			summary: "Unpin a peer.",
			desc: `Unpins the peer NAME: the agent no longer sends pods to it nor accepts
connections from it. Pods of this host that run on it stay there; bring
them back first with "return".`,
			output:  `"removed peer hostb". With --json: {"name": "hostb"}`,
			dbus:    "org.autopod.Agent1.PeerRemove(s name)",
			example: "sudo autopodctl peer remove hostb",
		},
		{
			name:    "peer list",
			aliases: []string{"peer ls"},
			summary: "List the pinned peers.",
			desc:    `Lists the pinned peers, sorted by name. Anyone may ask.`,
			output: `A table with the columns NAME ADDRESS FINGERPRINT. With --json, a JSON
array: [{"name": "...", "address": "HOST:PORT", "fingerprint": "sha256:..."}]
([] if none).`,
			dbus:    "org.autopod.Agent1.ListPeers() -> a(sss)",
			example: "autopodctl peer list\nautopodctl --json peer list | jq -r '.[].name'",
		},
		{
			name:    "version",
			summary: "Show the versions of autopodctl and the agent.",
			desc: `Prints autopodctl's own version, then asks the agent for its version.
autopodctl's line is printed even when the agent cannot be reached (exit
status 3 then).`,
			output:  `Two lines. With --json: {"autopodctl": "...", "agent": "..."} ("agent" is absent if unreachable).`,
			dbus:    `org.freedesktop.DBus.Properties.Get("org.autopod.Agent1", "Version")`,
			example: "autopodctl version",
		},
		{
			name:    "help",
			summary: "Show this help, or a command's (also: COMMAND --help).",
			desc:    `Prints the manual of autopodctl, or of one command.`,
			example: "autopodctl help checkpoint",
		},
	}
}

// writeHelp prints the manual: the whole program's if topic is "", else
// one command's.
func writeHelp(w io.Writer, topic string) error {
	if topic == "" {
		_, err := io.WriteString(w, mainHelp())
		return err
	}
	spec, ok := lookupCommand(topic)
	if !ok {
		return usagef("no help for unknown command %q", topic)
	}
	_, err := io.WriteString(w, commandHelp(spec))
	return err
}

func indent(text, prefix string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

func mainHelp() string {
	var b strings.Builder
	b.WriteString(`NAME
    autopodctl - control the autopod agent

SYNOPSIS
    autopodctl [--json] [--timeout DURATION] [--bus ADDRESS] COMMAND [ARG...]
    autopodctl help [COMMAND]
    autopodctl COMMAND --help

DESCRIPTION
    autopodctl talks to the autopod agent, autopod(8), over D-Bus: the
    agent's object /org/autopod/Agent1 under the name org.autopod.Agent1 on
    the system bus. The agent runs pods, groups of processes in their own
    namespaces, checkpoints and restores them with CRIU so that they
    survive kernel updates, and moves them live to peer hosts, address and
    TCP connections included. Everything autopodctl does is one or two
    calls of the agent's D-Bus interface, which busctl(1) and other tools
    can make just as well; each command's help names its calls.

    Anyone may query the agent. Starting, stopping, checkpointing,
    restoring and migrating pods, and managing peers, requires root: the
    agent checks the caller's uid.

COMMANDS
`)
	for _, c := range commandTable() {
		if c.group {
			continue // its sub-commands are listed
		}
		name := c.synopsis()
		if len(c.aliases) > 0 {
			name += " (" + strings.Join(c.aliases, ", ") + ")"
		}
		if c.name == "help" {
			name = "help [COMMAND]"
		}
		root := ""
		if c.root {
			root = " Root only."
		}
		fmt.Fprintf(&b, "    %s\n        %s%s\n", name, c.summary, root)
	}
	b.WriteString(`
OPTIONS
    Options may come before or after the command. "--" ends the options,
    for a pod whose name starts with "-".

    --json
        Print machine-readable output instead of tables: exactly one JSON
        document on standard output, and nothing else there. Errors still
        go to standard error.

    --timeout DURATION
        Give up waiting for the agent after DURATION (Go syntax: 30s, 10m,
        1h30m). It bounds the whole command, connecting included. Default:
        30m for migrate, evacuate and return, 5m for checkpoint and
        restore, 10s for everything else. An operation that times out may
        still complete in the agent.

    --bus ADDRESS
        Talk to the bus at this D-Bus address (e.g.
        unix:path=/run/dbus/system_bus_socket) instead of the system bus.
        Useful for test buses.

    --leave-running
        checkpoint only: keep the pod running after the dump.

    --to PEER
        migrate and evacuate: the pinned peer to move pods to.

    --strategy S
        migrate only: the migration strategy for this migration (auto,
        stop-and-copy, post-copy, pre-copy) instead of the agent's
        migration_strategy.

    --force
        peer init only: replace an existing identity.

    --cert FILE
        peer add only: the file holding the peer's certificate (PEM).

    -h, --help
        Show this help, or with a command, that command's help.

EXIT STATUS
    0   Success.
    1   The operation failed. The agent's error message is printed on
        standard error, prefixed with "autopodctl: " (for example: no such
        pod, pod is running, pod is busy with another operation, access
        denied because the command needs root), or the call timed out.
    2   Usage error: unknown command or option, wrong number of arguments.
    3   The agent cannot be reached: the bus is not running, or no agent
        owns org.autopod.Agent1 and D-Bus activation could not start one.
        Start it with "systemctl start autopod", or run "autopod" as root.

ENVIRONMENT
    DBUS_SYSTEM_BUS_ADDRESS
        Address of the system bus, used when --bus is not given. If unset,
        unix:path=/run/dbus/system_bus_socket.

FILES
    /usr/share/dbus-1/system.d/org.autopod.Agent1.conf
        The bus policy that lets root own org.autopod.Agent1 and everyone
        call it. Without it the bus refuses every call to the agent.
    /usr/share/dbus-1/system-services/org.autopod.Agent1.service
        Lets the bus start autopod.service on the first call.

EXAMPLES
    List pods, then the names of the failed ones:
        autopodctl pods
        autopodctl --json pods | jq -r '.[] | select(.state == "failed") | .name'

    Snapshot a pod without stopping it, allowing 20 minutes:
        sudo autopodctl checkpoint web --leave-running --timeout 20m

    Stop a pod by checkpointing it, then bring it back:
        sudo autopodctl checkpoint web
        sudo autopodctl restore web

    Pair this host with hostb, move a pod there, then bring it back:
        sudo autopodctl peer init > $(hostname).pem
        sudo autopodctl peer add hostb 192.0.2.2 --cert hostb.pem
        sudo autopodctl migrate kv --to hostb
        sudo autopodctl return

    The same query without autopodctl:
        busctl call org.autopod.Agent1 /org/autopod/Agent1 org.autopod.Agent1 ListPods

    Use a private test bus:
        autopodctl --bus unix:path=/tmp/autopod-test/bus status

SEE ALSO
    autopod(8), busctl(1), systemctl(1), criu(8), docs/dbus-api.md
`)
	return b.String()
}

func commandHelp(c commandSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "NAME\n    autopodctl %s - %s\n\n", c.name, strings.TrimSuffix(lowerFirst(c.summary), "."))
	b.WriteString("SYNOPSIS\n")
	switch {
	case c.name == "help":
		b.WriteString("    autopodctl help [COMMAND]\n\n")
	case c.group:
		for _, sub := range subcommands(c.name) {
			fmt.Fprintf(&b, "    autopodctl [OPTIONS] %s\n", sub.synopsis())
		}
		b.WriteString("\n")
	default:
		fmt.Fprintf(&b, "    autopodctl [--json] [--timeout DURATION] [--bus ADDRESS] %s\n", c.synopsis())
		for _, a := range c.aliases {
			fmt.Fprintf(&b, "    autopodctl [OPTIONS] %s\n", strings.Replace(c.synopsis(), c.name, a, 1))
		}
		b.WriteString("\n")
	}
	b.WriteString("DESCRIPTION\n" + indent(c.desc, "    "))
	if c.root {
		b.WriteString("\n    Requires root; the agent refuses other callers (exit status 1).\n")
	}
	b.WriteString("\n")
	if c.group {
		b.WriteString("SUB-COMMANDS\n")
		for _, sub := range subcommands(c.name) {
			root := ""
			if sub.root {
				root = " Root only."
			}
			fmt.Fprintf(&b, "    %s\n        %s%s\n", sub.synopsis(), sub.summary, root)
		}
		fmt.Fprintf(&b, "\n    \"autopodctl help %s SUB-COMMAND\" shows one in full.\n\n", c.name)
	} else if c.name != "help" {
		b.WriteString("OPTIONS\n")
		if c.options != "" {
			b.WriteString(indent(c.options, "    ") + "\n")
		}
		timeout := defaultTimeout
		if c.timeout > 0 {
			timeout = c.timeout
		}
		fmt.Fprintf(&b, "    --json, --bus ADDRESS: see autopodctl --help.\n"+
			"    --timeout DURATION: how long to wait for the agent; default %s.\n\n", shortDuration(timeout))
	}
	if c.output != "" {
		b.WriteString("OUTPUT\n" + indent(c.output, "    ") + "\n")
	}
	if c.name != "help" {
		b.WriteString(`EXIT STATUS
    0 success, 1 the agent refused or failed the operation (its message is
    printed), 2 usage error, 3 the agent cannot be reached (start it with
    "systemctl start autopod" or run "autopod").

`)
	}
	if c.dbus != "" {
		b.WriteString("D-BUS CALLS\n" + indent(c.dbus, "    ") + "\n")
	}
	b.WriteString("EXAMPLES\n" + indent(c.example, "    ") + "\n")
	b.WriteString("SEE ALSO\n    autopodctl --help, docs/dbus-api.md\n")
	return b.String()
}

// subcommands returns the sub-commands of group, in table order.
func subcommands(group string) []commandSpec {
	var out []commandSpec
	for _, c := range commandTable() {
		if strings.HasPrefix(c.name, group+" ") {
			out = append(out, c)
		}
	}
	return out
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// shortDuration prints 5m rather than time.Duration's 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
