package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
	err = execute(ctx, opts, busAddress(opts.bus, getenv), stdout, stderr, time.Now)
	return report(stderr, err, timeout)
}

// execute runs one command against the agent at addr. Results go to w;
// ew gets what is for the person but must not mix into a result that is
// redirected (the fingerprint next to a certificate). now is the clock for
// relative ages.
func execute(ctx context.Context, opts options, addr string, w, ew io.Writer, now func() time.Time) error {
	if opts.command == "version" {
		return runVersion(ctx, opts, addr, w)
	}
	if strings.HasPrefix(opts.command, "hook ") {
		return runHook(ctx, opts, addr, os.Stdin, ew)
	}
	// Local input first: a missing file needs no agent to be reported.
	var certPEM string
	if opts.command == "peer add" {
		var err error
		if certPEM, err = readCertFile(opts.cert); err != nil {
			return err
		}
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
		if st.Update, err = c.updateStatus(ctx); err != nil {
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

	case "migrate", "evacuate", "return":
		return runMigration(ctx, c, opts, w)

	case "update":
		return runUpdate(ctx, c, opts, w)

	case "peer init", "peer cert":
		var id peerIdentity
		if opts.command == "peer init" {
			id, err = c.peerInit(ctx, opts.force)
		} else {
			id, err = c.peerCert(ctx)
		}
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, id)
		}
		// The certificate alone on stdout, so that "> host.pem" is a valid
		// file; the fingerprint, to compare out of band, on stderr.
		if _, err := io.WriteString(w, withNewline(id.CertPEM)); err != nil {
			return err
		}
		_, err = fmt.Fprintf(ew, "fingerprint: %s\n", id.Fingerprint)
		return err

	case "peer add":
		name, address := opts.args[0], opts.args[1]
		fp, err := c.peerAdd(ctx, name, address, certPEM)
		if err != nil {
			return err
		}
		// The agent stores the address normalised (port filled in); show
		// that one if it can be had. The peer is pinned either way.
		row := peerRow{Name: name, Address: address, Fingerprint: fp}
		if list, err := c.listPeers(ctx); err == nil {
			for _, p := range list {
				if p.Name == name {
					row.Address = p.Address
				}
			}
		}
		if opts.json {
			return writeJSON(w, row)
		}
		_, err = fmt.Fprintf(w, "added peer %s at %s, fingerprint %s\n", row.Name, row.Address, row.Fingerprint)
		return err

	case "peer remove":
		if err := c.peerRemove(ctx, opts.args[0]); err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, map[string]string{"name": opts.args[0]})
		}
		_, err := fmt.Fprintf(w, "removed peer %s\n", opts.args[0])
		return err

	case "peer list":
		rows, err := c.listPeers(ctx)
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, rows)
		}
		return renderPeers(w, rows)
	}
	return usagef("unknown command %q", opts.command)
}

// runMigration performs migrate, evacuate or return. Unless --json, it
// subscribes to the agent's progress signals first and prints a line each
// time a migration enters a phase, then the result.
func runMigration(ctx context.Context, c *agentClient, opts options, w io.Writer) error {
	var watch *progressWatch
	show := func(migrationProgress) {}
	if !opts.json {
		var err error
		if watch, err = c.watchProgress(ctx); err != nil {
			return err
		}
		pp := newProgressPrinter(w, opts.command == "return")
		switch opts.command {
		case "migrate": // only this pod's migration, not another client's
			show = func(p migrationProgress) {
				if p.Pod == opts.args[0] && p.Peer == opts.to {
					pp.show(p)
				}
			}
		case "evacuate":
			show = func(p migrationProgress) {
				if p.Peer == opts.to {
					pp.show(p)
				}
			}
		default:
			show = pp.show
		}
	}

	switch opts.command {
	case "migrate":
		res, err := c.migrate(ctx, watch, show, opts.args[0], opts.to, opts.strategy)
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, res)
		}
		return renderMigration(w, res)
	case "evacuate":
		res, err := c.evacuate(ctx, watch, show, opts.to)
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, res)
		}
		return renderEvacuation(w, res)
	default:
		res, err := c.returnPods(ctx, watch, show)
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, res)
		}
		return renderReturn(w, res)
	}
}

// maxCertFile bounds what peer add reads: a certificate is a few KiB, and
// the agent refuses more than 64 KiB.
const maxCertFile = 64 << 10

// readCertFile reads the certificate file for peer add. The agent checks
// the content; this only catches what is plainly not a certificate file.
func readCertFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read the peer's certificate: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCertFile+1))
	if err != nil {
		return "", fmt.Errorf("read the peer's certificate: %w", err)
	}
	switch {
	case len(data) > maxCertFile:
		return "", fmt.Errorf("certificate file %s is larger than %d KiB; give the file the peer's \"autopodctl peer init\" or \"peer cert\" wrote", path, maxCertFile>>10)
	case len(strings.TrimSpace(string(data))) == 0:
		return "", fmt.Errorf("certificate file %s is empty", path)
	}
	return string(data), nil
}

func withNewline(s string) string {
	if s == "" || strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
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
	var silent *silentError
	switch {
	case errors.As(err, &silent):
		return exitFailed // already explained
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
	case agentInterface + ".Error.UnknownPeer":
		fmt.Fprintln(stderr, "autopodctl: 'autopodctl peer list' shows the pinned peers; 'peer add' pins one")
	case agentInterface + ".Error.IdentityExists":
		fmt.Fprintln(stderr, "autopodctl: 'autopodctl peer cert' prints the existing certificate; --force replaces it")
	case "org.freedesktop.DBus.Error.AccessDenied":
		fmt.Fprintln(stderr, "autopodctl: the bus refused the call; is /usr/share/dbus-1/system.d/org.autopod.Agent1.conf installed?")
	}
	return exitFailed
}
