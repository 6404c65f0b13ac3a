package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"
)

// run is the whole program behind main: it parses args, runs the command
// and returns the exit status. Output goes to stdout, diagnostics to stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	opts, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "autopodctl: %v\nRun 'autopodctl --help' for usage.\n", err)
		return exitUsage
	}
	if opts.help {
		if err := writeHelp(stdout, opts.command); err != nil {
			fmt.Fprintf(stderr, "autopodctl: %v\n", err)
			return exitFailed
		}
		return exitOK
	}

	timeout := commandTimeout(opts)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = execute(ctx, opts, busAddress(opts.bus, getenv), stdout, time.Now)
	return report(stderr, err, timeout)
}

// execute runs one command against the agent at addr. now is the clock
// for relative ages.
func execute(ctx context.Context, opts options, addr string, w io.Writer, now func() time.Time) error {
	if opts.command == "version" {
		return runVersion(ctx, opts, addr, w)
	}
	c, err := dialAgent(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()

	switch opts.command {
	case "status":
		st, err := c.status(ctx)
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, st)
		}
		return renderStatus(w, st)

	case "pods":
		if opts.json {
			raw, err := c.listPodsJSON(ctx)
			if err != nil {
				return err
			}
			return writeRawJSON(w, raw)
		}
		rows, err := c.listPods(ctx)
		if err != nil {
			return err
		}
		return renderPods(w, rows, now())

	case "pod":
		name := opts.args[0]
		if opts.json {
			raw, err := c.getPodJSON(ctx, name)
			if err != nil {
				return err
			}
			return writeRawJSON(w, raw)
		}
		p, err := c.getPod(ctx, name)
		if err != nil {
			return err
		}
		return renderPod(w, p, now())

	case "start", "stop", "restore":
		return runAction(ctx, c, opts, w)

	case "checkpoint":
		res, err := c.checkpoint(ctx, opts.args[0], opts.leaveRunning)
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, res)
		}
		return renderCheckpoint(w, res)
	}
	return usagef("unknown command %q", opts.command)
}

// runAction performs start, stop or restore and then shows the pod's new
// state, which is what the person asked about. The follow-up is best
// effort: the action has succeeded whatever it returns.
func runAction(ctx context.Context, c *agentClient, opts options, w io.Writer) error {
	method := map[string]string{"start": "StartPod", "stop": "StopPod", "restore": "Restore"}[opts.command]
	past := map[string]string{"start": "started", "stop": "stopped", "restore": "restored"}[opts.command]
	name := opts.args[0]
	if err := c.action(ctx, method, name); err != nil {
		return err
	}
	if opts.json {
		raw, err := c.getPodJSON(ctx, name)
		if err != nil {
			return writeJSON(w, map[string]string{"name": name})
		}
		return writeRawJSON(w, raw)
	}
	p, err := c.getPod(ctx, name)
	if err != nil {
		_, err = fmt.Fprintf(w, "%s %s\n", past, name)
		return err
	}
	state := p.State
	if p.Pid > 0 {
		state += fmt.Sprintf(", pid %d", p.Pid)
	}
	_, err = fmt.Fprintf(w, "%s %s: %s\n", past, name, state)
	return err
}

// versionInfo is the version command's --json document.
type versionInfo struct {
	Autopodctl string `json:"autopodctl"`
	Agent      string `json:"agent,omitempty"`
}

// runVersion reports autopodctl's version even without an agent, because
// "which client is this" is often the question when the agent is down.
func runVersion(ctx context.Context, opts options, addr string, w io.Writer) error {
	v := versionInfo{Autopodctl: clientVersion()}
	var agentErr error
	if c, err := dialAgent(ctx, addr); err != nil {
		agentErr = err
	} else {
		v.Agent, agentErr = c.version(ctx)
		c.Close()
	}
	if opts.json {
		if err := writeJSON(w, v); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "autopodctl %s\n", v.Autopodctl)
		if agentErr == nil {
			fmt.Fprintf(w, "autopod    %s\n", v.Agent)
		}
	}
	return agentErr
}

// clientVersion is the version stamped in by the build, else the module
// version the binary was built from, plus the VCS revision for builds from
// a work tree.
func clientVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += "+" + s.Value[:12]
			}
		}
	}
	return v
}

// report prints err the way the help text promises and returns the exit
// status.
func report(stderr io.Writer, err error, timeout time.Duration) int {
	if err == nil {
		return exitOK
	}
	var unreachable *unreachableError
	switch {
	case isUsage(err):
		fmt.Fprintf(stderr, "autopodctl: %v\nRun 'autopodctl --help' for usage.\n", err)
		return exitUsage
	case errors.As(err, &unreachable):
		fmt.Fprintf(stderr, "autopodctl: %v\n", err)
		fmt.Fprintln(stderr, "autopodctl: start the agent with 'systemctl start autopod', or run 'autopod' as root")
		return exitUnreachable
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(stderr, "autopodctl: no answer from the agent within %v; the operation may still complete (a longer --timeout waits longer)\n", timeout)
		return exitFailed
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "autopodctl: interrupted; the agent may still complete the operation")
		return exitFailed
	}
	// The agent's own message, as it wrote it.
	fmt.Fprintf(stderr, "autopodctl: %s\n", strings.TrimSpace(err.Error()))
	switch name := dbusErrorName(err); name {
	case agentInterface + ".Error.AccessDenied":
		fmt.Fprintln(stderr, "autopodctl: this command needs root; run it with sudo")
	case "org.freedesktop.DBus.Error.AccessDenied":
		fmt.Fprintln(stderr, "autopodctl: the bus refused the call; is /usr/share/dbus-1/system.d/org.autopod.Agent1.conf installed?")
	}
	return exitFailed
}
