package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// commandSpec describes one subcommand: how it is parsed and its manual
// page. Parsing and help come from the same table so they cannot disagree.
type commandSpec struct {
	name    string
	aliases []string
	args    []string // positional arguments, all required
	long    bool     // default timeout defaultLongTimeout instead of defaultTimeout
	flags   string   // command-specific options, as in the synopsis
	root    bool     // the agent requires root
	summary string   // one line, for the command list
	desc    string   // DESCRIPTION
	options string   // command-specific OPTIONS entries, if any
	output  string   // OUTPUT
	dbus    string   // the D-Bus call(s) it makes
	example string   // EXAMPLES
}

func (c commandSpec) synopsis() string {
	parts := []string{c.name}
	if c.flags != "" {
		parts = append(parts, c.flags)
	}
	parts = append(parts, c.args...)
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
			summary: "Show the agent's version, its CRIU and the number of pods.",
			desc: `Shows what the agent learned about itself at start: its version, the CRIU
binary it uses (path, version, and which optional CRIU features the
running kernel supports), why CRIU is unusable if it is, and how many pods
the agent knows. Checkpoints need a working CRIU; "CRIU error" names the
problem when there is one.`,
			output: `People get one "key: value" line per item. With --json, one object:
  {"version": "...", "criu": {"path": "...", "version": "...",
   "features": {"NAME": true|false, ...}, "error": "..."}, "pods": N}`,
			dbus:    "org.autopod.Agent1.Status() -> a{sv}",
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
restoring, failed, invalid.`,
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
restarted, its newest checkpoint directory and its last error.`,
			output: `People get one "key: value" line per field. With --json, the pod object:
  {"name": "...", "state": "...", "pid": N, "address": "...", "file": "...",
   "since": "RFC 3339", "restarts": N, "checkpoint": "...", "error": "..."}
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
			long:    true,
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
			long:    true,
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
    namespaces, and checkpoints and restores them with CRIU so that they
    survive kernel updates. Everything autopodctl does is one or two calls
    of the agent's D-Bus interface, which busctl(1) and other tools can make
    just as well; each command's help names its calls.

    Anyone may query the agent. Starting, stopping, checkpointing and
    restoring pods requires root: the agent checks the caller's uid.

COMMANDS
`)
	for _, c := range commandTable() {
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
        5m for checkpoint and restore, 10s for everything else. An
        operation that times out may still complete in the agent.

    --bus ADDRESS
        Talk to the bus at this D-Bus address (e.g.
        unix:path=/run/dbus/system_bus_socket) instead of the system bus.
        Useful for test buses.

    --leave-running
        checkpoint only: keep the pod running after the dump.

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
	if c.name == "help" {
		b.WriteString("    autopodctl help [COMMAND]\n\n")
	} else {
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
	if c.name != "help" {
		b.WriteString("OPTIONS\n")
		if c.options != "" {
			b.WriteString(indent(c.options, "    ") + "\n")
		}
		timeout := defaultTimeout
		if c.long {
			timeout = defaultLongTimeout
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
