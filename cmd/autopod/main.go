// Command autopod is the autopod agent: it runs the pods defined in
// /etc/autopod/pods, checkpoints and restores them with CRIU, and serves
// the org.autopod.Agent1 D-Bus API that autopodctl and busctl use.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"github.com/autopod/autopod/agent"
	"github.com/autopod/autopod/pods"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `NAME
    autopod - keep pods running across checkpoints, migrations and reboots

SYNOPSIS
    autopod [--config FILE] [--log-level LEVEL]
    autopod --version

DESCRIPTION
    autopod is the agent. At start it probes its CRIU binary (criu_path),
    reads every pod definition in pods_dir (/etc/autopod/pods/NAME.toml),
    re-adopts pods that kept running while it was away and starts the
    others, then owns org.autopod.Agent1 on the system bus and listens for
    peers on peer_port. A bad pod file is reported with its file, line and
    field; the valid pods are served regardless.

    Pods are not children of the agent's lifetime: stopping or restarting
    autopod leaves them running, and the next autopod re-adopts them.

    Under systemd (autopod.service, Type=notify) it sends READY=1 once the
    bus name is owned, STATUS= lines, STOPPING=1 and watchdog pings. Without
    systemd it runs the same in the foreground. Logs go to stderr.

OPTIONS
    --config FILE      configuration file (default /etc/autopod/autopod.toml;
                       a missing file means all defaults, see autopod.toml(5))
    --log-level LEVEL  debug, info, warn or error (overrides log_level)
    --version          print the version and exit

SIGNALS
    SIGTERM, SIGINT    stop serving and exit; pods keep running
    SIGHUP             re-read the pod definitions

ENVIRONMENT
    DBUS_SYSTEM_BUS_ADDRESS   the bus to serve on (default: the system bus)
    LISTEN_FDS, LISTEN_FDNAMES  sockets handed over by autopod.socket ("peer")
    NOTIFY_SOCKET, WATCHDOG_USEC  set by systemd

FILES
    /etc/autopod/autopod.toml   agent configuration
    /etc/autopod/pods/*.toml    pod definitions, see autopod-pod.toml(5)
    /var/lib/autopod            pod state and checkpoint images
    /var/log/autopod/NAME.log   each pod's stdout and stderr

EXIT STATUS
    0 on a clean stop, 1 when start-up fails, 2 on a usage error.

SEE ALSO
    autopodctl(8), autopod.toml(5), autopod-pod.toml(5), criu(8)
`

type options struct {
	config    string
	configSet bool
	logLevel  string
	version   bool
}

func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("autopod", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.config, "config", "/etc/autopod/autopod.toml", "")
	fs.StringVar(&o.logLevel, "log-level", "", "")
	fs.BoolVar(&o.version, "version", false, "")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			o.configSet = true
		}
	})
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch o.logLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return o, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	return o, nil
}

func main() {
	if pods.IsInit(os.Args) {
		pods.RunInit(os.Args) // a pod's init stage; never returns
	}
	o, err := parseArgs(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(usage)
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "autopod: %v\nTry 'autopod --help'.\n", err)
		os.Exit(2)
	}
	if o.version {
		fmt.Println("autopod", version)
		return
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "autopod: %v\n", err)
		os.Exit(1)
	}
}

// faultFromEnv reads AUTOPOD_FAULT_INJECT, a failure-test aid: "STEP"
// makes that step of a checkpoint, migration or update cycle fail,
// "crash:STEP" makes the agent exit abruptly there, as if killed, and
// "slow:STEP" makes the step take 5 s longer (to watch what the agent
// holds meanwhile), "stall:STEP" 10 s longer (a peer that stops answering
// for longer than a test's migration_timeout), "late:STEP" makes it fail
// after 2 s (a failure that keeps a migrating pod frozen for a while), and
// "corrupt:STEP" makes a step that handles data damage it instead
// (pods.ErrFaultCorrupt; the steps "image:NAME" of a migration's source).
// Unset in normal operation.
func faultFromEnv(log *slog.Logger) func(string) error {
	spec := os.Getenv("AUTOPOD_FAULT_INJECT")
	if spec == "" {
		return nil
	}
	os.Unsetenv("AUTOPOD_FAULT_INJECT")
	log.Warn("fault injection enabled (testing only)", "fault", spec)
	step, crash := strings.CutPrefix(spec, "crash:")
	step, slow := strings.CutPrefix(step, "slow:")
	step, stall := strings.CutPrefix(step, "stall:")
	step, late := strings.CutPrefix(step, "late:")
	step, corrupt := strings.CutPrefix(step, "corrupt:")
	return func(s string) error {
		if s != step {
			return nil
		}
		switch {
		case crash:
			log.Error("injected crash", "step", s)
			os.Exit(3)
		case slow:
			log.Warn("injected delay", "step", s)
			time.Sleep(5 * time.Second)
			return nil
		case stall:
			log.Warn("injected stall", "step", s)
			time.Sleep(10 * time.Second)
			return nil
		case late:
			log.Warn("injected late failure", "step", s)
			time.Sleep(2 * time.Second)
		case corrupt:
			log.Warn("injected corruption", "step", s)
			return fmt.Errorf("%w at %s", pods.ErrFaultCorrupt, s)
		}
		return fmt.Errorf("injected failure at %s", s)
	}
}

// lockStateDir takes an exclusive lock on STATE_DIR/agent.lock so that two
// agents never manage the same pods.
func lockStateDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dir+"/agent.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another autopod is running on %s (lock %s): %w", dir, f.Name(), err)
	}
	return func() { f.Close() }, nil
}

func parseLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

func run(o options) error {
	if o.configSet {
		// A path given on the command line must exist; only the default
		// path may be absent (then every setting is its default).
		if _, err := os.Stat(o.config); err != nil {
			return fmt.Errorf("--config: %w", err)
		}
	}
	cfg, err := agent.LoadConfig(o.config)
	if err != nil {
		return err
	}
	unlock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	if o.logLevel != "" {
		cfg.LogLevel = o.logLevel
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: parseLevel(cfg.LogLevel)}))

	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	// SIGHUP re-reads the pod definitions. Caught from the start: systemd
	// reports the unit active at READY=1, and a reload sent right then
	// must not find the default action (exit) still in place.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, unix.SIGHUP)

	notifier, err := agent.NewNotifier(log)
	if err != nil {
		return err
	}
	criu := pods.ProbeCriu(ctx, cfg.CriuPath)
	if criu.Error != "" {
		// Serve anyway: status and listing work, and status says what is wrong.
		log.Error("CRIU is not usable; checkpoint and restore will fail", "err", criu.Error)
	} else {
		log.Info("CRIU", "path", criu.Path, "version", criu.Version, "features", criu.Features)
	}
	fault := faultFromEnv(log)
	mgr, err := pods.NewManager(pods.ManagerConfig{
		PodsDir: cfg.PodsDir, StateDir: cfg.StateDir, LogDir: cfg.LogDir, CriuPath: cfg.CriuPath,
		Bridge: cfg.Bridge, BridgeAddress: cfg.BridgeAddress, CgroupName: cfg.CgroupRoot, Log: log,
		Fault: fault, Criu: &criu, MigrationStrategy: cfg.MigrationStrategy,
		MigrationTimeout: cfg.MigrationTimeout,
	})
	if err != nil {
		return err
	}
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		addr := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS")
		if addr == "" {
			addr = "unix:path=/run/dbus/system_bus_socket"
		}
		return fmt.Errorf("connect to the system bus at %s: %w", addr, err)
	}
	defer conn.Close()
	peers, err := agent.NewPeers(filepath.Join(cfg.StateDir, "peer"), log)
	if err != nil {
		return err
	}
	mgr.SetPeerDialer(peers)
	obj := agent.NewAgentObject(conn, mgr, agent.StatusInfo{Version: version, Criu: criu}, log)
	obj.SetMigration(mgr, peers)
	upd, err := newUpdateCycle(cfg, mgr, peers, conn, obj, fault, log)
	if err != nil {
		return fmt.Errorf("update cycle: %w", err)
	}
	if upd != nil {
		obj.SetUpdateCycle(upd.service)
		mgr.SetRequestHandler(upd.peers.Handle)
	}
	if err := obj.Export(); err != nil {
		return err
	}
	defer obj.Close()
	claimCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = obj.Claim(claimCtx)
	cancel()
	if err != nil {
		return err
	}
	// Pods are loaded (and started) only once this agent owns the bus name:
	// a second agent that loses the race must not start anything.
	_ = notifier.Status("loading pods")
	mgr.Load(ctx)

	l, activated, err := agent.PeerListener(cfg.PeerPort)
	if err != nil {
		return err
	}
	go peers.Serve(ctx, l, mgr.ServePeer)
	if upd != nil {
		// After the pods are loaded and peers can reach this host: a
		// cycle interrupted by a crash or the reboot carries on now.
		go upd.run(ctx)
	}
	log.Info("autopod ready", "version", version, "peer_addr", l.Addr().String(), "socket_activated", activated)

	n := len(mgr.List(ctx))
	_ = notifier.Ready(fmt.Sprintf("serving %d pods", n))
	if cfg.Watchdog {
		go notifier.RunWatchdog(ctx)
	}

	for {
		select {
		case <-hup:
			log.Info("re-reading pod definitions")
			mgr.Reload(ctx)
			_ = notifier.Status(fmt.Sprintf("serving %d pods", len(mgr.List(ctx))))
		case <-ctx.Done():
			log.Info("stopping; pods keep running")
			_ = notifier.Stopping()
			return nil
		}
	}
}
