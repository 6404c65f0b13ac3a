package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Exit codes; documented in the help text.
const (
	exitOK          = 0
	exitFailed      = 1 // the agent (or the bus) refused or failed the operation
	exitUsage       = 2
	exitUnreachable = 3 // no bus, or nothing owns org.autopod.Agent1
)

// Default deadlines for the whole command, every D-Bus call included.
// Checkpoint and restore move a pod's whole memory through CRIU, and a
// migration moves its memory and files over the network (an evacuation,
// every pod's); the rest are answered from the agent's memory.
const (
	defaultTimeout          = 10 * time.Second
	defaultLongTimeout      = 5 * time.Minute
	defaultMigrationTimeout = 30 * time.Minute
)

// options is the parsed command line.
type options struct {
	json         bool
	timeout      time.Duration // 0: the command's default
	bus          string        // "" : DBUS_SYSTEM_BUS_ADDRESS, then the standard socket
	leaveRunning bool
	to           string // --to PEER: migrate, evacuate
	strategy     string // --strategy S: migrate ("" : the agent's migration_strategy)
	force        bool   // peer init
	cert         string // --cert FILE: peer add
	dryRun       bool   // update
	now          bool   // update
	cancel       bool   // update
	check        bool   // update
	failed       bool   // hook dnf-post-transaction
	help         bool   // -h/--help, or the help command

	command string   // canonical command name; "" only with help
	args    []string // positional arguments after the command
}

// strategies are the migration strategies --strategy takes (the agent's
// pods.Strategies; a test keeps the two equal).
var strategies = []string{"auto", "stop-and-copy", "post-copy", "pre-copy"}

// usageError is a command line autopodctl cannot act on (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

func isUsage(err error) bool {
	var u *usageError
	return errors.As(err, &u)
}

// parseArgs parses the arguments after the program name. Options may come
// before or after the command, in --name, -name, --name=value or
// --name value form, because people type "autopodctl pods --json" as often
// as "autopodctl --json pods". "--" ends options.
func parseArgs(args []string) (options, error) {
	var opts options
	var positional []string
	// given records the command-specific options on the command line, in
	// order, to check them against the command once it is known.
	var given []string
	set := func(name string, on bool) {
		given = slices.DeleteFunc(given, func(g string) bool { return g == name })
		if on {
			given = append(given, name)
		}
	}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			positional = append(positional, arg)
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
		name, value, hasValue := strings.Cut(name, "=")
		// value returns the option's argument, inline or the next word.
		needValue := func() (string, error) {
			if hasValue {
				return value, nil
			}
			if i+1 >= len(args) {
				return "", usagef("option --%s needs a value", name)
			}
			i++
			return args[i], nil
		}
		var err error
		switch name {
		case "h", "help":
			opts.help, err = boolValue(name, value, hasValue)
		case "json":
			opts.json, err = boolValue(name, value, hasValue)
		case "version", "V":
			// --version is the version command, as in most tools.
			var v bool
			if v, err = boolValue(name, value, hasValue); err == nil && v {
				positional = append([]string{"version"}, positional...)
			}
		case "leave-running":
			opts.leaveRunning, err = boolValue(name, value, hasValue)
			set(name, opts.leaveRunning)
		case "force":
			opts.force, err = boolValue(name, value, hasValue)
			set(name, opts.force)
		case "dry-run":
			opts.dryRun, err = boolValue(name, value, hasValue)
			set(name, opts.dryRun)
		case "now":
			opts.now, err = boolValue(name, value, hasValue)
			set(name, opts.now)
		case "cancel":
			opts.cancel, err = boolValue(name, value, hasValue)
			set(name, opts.cancel)
		case "failed":
			opts.failed, err = boolValue(name, value, hasValue)
			set(name, opts.failed)
		case "check":
			opts.check, err = boolValue(name, value, hasValue)
			set(name, opts.check)
		case "to":
			if opts.to, err = needValue(); err == nil && opts.to == "" {
				err = usagef("option --to needs a peer name")
			}
			set(name, true)
		case "strategy":
			if opts.strategy, err = needValue(); err == nil && !slices.Contains(strategies, opts.strategy) {
				err = usagef("option --strategy: %q is not one of %s", opts.strategy, strings.Join(strategies, ", "))
			}
			set(name, true)
		case "cert":
			if opts.cert, err = needValue(); err == nil && opts.cert == "" {
				err = usagef("option --cert needs a file name")
			}
			set(name, true)
		case "timeout":
			var v string
			if v, err = needValue(); err == nil {
				opts.timeout, err = time.ParseDuration(v)
				if err != nil || opts.timeout <= 0 {
					err = usagef("option --timeout: %q is not a positive duration (examples: 30s, 10m, 1h)", v)
				}
			}
		case "bus":
			if opts.bus, err = needValue(); err == nil && opts.bus == "" {
				err = usagef("option --bus needs a D-Bus address, e.g. unix:path=/run/dbus/system_bus_socket")
			}
		default:
			err = usagef("unknown option %s", arg)
		}
		if err != nil {
			return options{}, err
		}
	}

	if len(positional) == 0 {
		if opts.help {
			return opts, nil
		}
		return options{}, usagef("no command given")
	}
	spec, ok := lookupCommand(positional[0])
	if !ok {
		return options{}, usagef("unknown command %q", positional[0])
	}
	opts.command, opts.args = spec.name, positional[1:]

	if spec.name == "help" {
		opts.help = true
		switch {
		case len(opts.args) == 0:
			opts.command = ""
			return opts, nil
		case len(opts.args) > 2:
			return options{}, usagef("help takes at most one command")
		case len(opts.args) == 2:
			// Only a group's sub-command takes two words: "help peer add".
			if g, ok := lookupCommand(opts.args[0]); !ok || !g.group {
				return options{}, usagef("help takes at most one command")
			}
		}
		name := strings.Join(opts.args, " ")
		topic, ok := lookupCommand(name)
		if !ok {
			return options{}, usagef("no help for unknown command %q", name)
		}
		opts.command, opts.args = topic.name, nil
		return opts, nil
	}
	if spec.group {
		// "peer add ...": the first argument picks the sub-command.
		if len(opts.args) == 0 {
			if opts.help {
				return opts, nil // "autopodctl peer --help"
			}
			return options{}, usagef("%s needs a sub-command: %s", spec.name, strings.Join(subcommandNames(spec.name), ", "))
		}
		sub, ok := lookupCommand(spec.name + " " + opts.args[0])
		if !ok {
			return options{}, usagef("unknown %s sub-command %q (want one of: %s)", spec.name, opts.args[0], strings.Join(subcommandNames(spec.name), ", "))
		}
		spec, opts.command, opts.args = sub, sub.name, opts.args[1:]
	}
	if opts.help {
		return opts, nil // "autopodctl start --help" needs no NAME
	}
	if len(opts.args) != len(spec.args) {
		if len(spec.args) == 0 {
			return options{}, usagef("%s takes no arguments", spec.name)
		}
		return options{}, usagef("usage: autopodctl %s", spec.synopsis())
	}
	for _, name := range given {
		if !slices.Contains(spec.accepts, name) {
			return options{}, usagef("option --%s applies only to %s", name, strings.Join(commandsAccepting(name), " and "))
		}
	}
	for _, name := range spec.requires {
		if !slices.Contains(given, name) {
			return options{}, usagef("%s needs option --%s (usage: autopodctl %s)", spec.name, name, spec.synopsis())
		}
	}
	return opts, nil
}

// commandsAccepting names the commands that take the option name.
func commandsAccepting(name string) []string {
	var out []string
	for _, c := range commandTable() {
		if slices.Contains(c.accepts, name) {
			out = append(out, c.name)
		}
	}
	return out
}

// subcommandNames lists the sub-commands of group without the group's
// name: "init", "cert", ...
func subcommandNames(group string) []string {
	var out []string
	for _, c := range subcommands(group) {
		out = append(out, strings.TrimPrefix(c.name, group+" "))
	}
	return out
}

func boolValue(name, value string, hasValue bool) (bool, error) {
	if !hasValue {
		return true, nil
	}
	b, err := strconv.ParseBool(value)
	if err != nil {
		return false, usagef("option --%s: %q is not true or false", name, value)
	}
	return b, nil
}

// busAddress picks the bus: --bus, then DBUS_SYSTEM_BUS_ADDRESS (the
// variable libdbus and sd-bus honour too), then the standard socket.
func busAddress(flag string, getenv func(string) string) string {
	if flag != "" {
		return flag
	}
	if env := getenv("DBUS_SYSTEM_BUS_ADDRESS"); env != "" {
		return env
	}
	return "unix:path=/run/dbus/system_bus_socket"
}

// commandTimeout is the deadline for the whole command.
func commandTimeout(opts options) time.Duration {
	if opts.timeout > 0 {
		return opts.timeout
	}
	if spec, ok := lookupCommand(opts.command); ok && spec.timeout > 0 {
		return spec.timeout
	}
	return defaultTimeout
}
