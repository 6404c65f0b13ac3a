package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/autopod/autopod/agent"
	"github.com/autopod/autopod/cycle"
	"github.com/autopod/autopod/fleetlock"
	"github.com/autopod/autopod/hooks"
	"github.com/autopod/autopod/logind"
	"github.com/autopod/autopod/pods"
	"github.com/autopod/autopod/updater"
)

// Test hooks, like AUTOPOD_FAULT_INJECT: the network-namespace test-bed
// cannot reboot, so a "reboot" there is a command that records a new boot
// ID in a file and kills the agent, and the agent reads its boot ID from
// that file. Never set in production.
const (
	envTestReboot = "AUTOPOD_TEST_REBOOT"  // sh -c command instead of logind's Reboot
	envTestBootID = "AUTOPOD_TEST_BOOT_ID" // file holding the boot ID
)

// updateCycle is the agent's update cycle and what feeds it.
type updateCycle struct {
	machine *cycle.Machine
	service *agent.UpdateService
	peers   *agent.UpdatePeerService
	watch   []string
	log     *slog.Logger
}

// newUpdateCycle builds the cycle over the real systems. It returns nil
// (and says why) on a host without a package manager it knows.
func newUpdateCycle(cfg agent.Config, mgr *pods.Manager, peers *agent.Peers, conn *dbus.Conn, obj *agent.AgentObject,
	fault func(string) error, log *slog.Logger) (*updateCycle, error) {
	log = log.With("component", "update")
	env := []string{}
	if cfg.Update.AptConfig != "" {
		env = append(env, "APT_CONFIG="+cfg.Update.AptConfig)
	}
	det, err := updater.NewDetector(updater.Options{Env: env, Log: log})
	if errors.Is(err, updater.ErrNoBackend) {
		log.Warn("no apt or dnf here: the update cycle is off", "err", err)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	lc, err := logind.New(conn, logind.Options{})
	if err != nil {
		return nil, err
	}
	var fleet *fleetlock.Client
	if cfg.Update.FleetLockURL != "" {
		if fleet, err = fleetlock.New(fleetlock.Options{URL: cfg.Update.FleetLockURL, Group: cfg.Update.FleetLockGroup}); err != nil {
			return nil, fmt.Errorf("update.fleetlock_url: %w", err)
		}
	}
	store := agent.NewLeaseStore(filepath.Join(cfg.StateDir, "lease.json"))
	bootID := cycle.ReadBootID
	if f := os.Getenv(envTestBootID); f != "" {
		bootID = func() (string, error) {
			b, err := os.ReadFile(f)
			return strings.TrimSpace(string(b)), err
		}
	}
	watch, lock := watchPaths(det.Backend(), cfg.Update.AptConfig)
	m, err := cycle.New(cycle.Config{
		StateFile: filepath.Join(cfg.StateDir, "cycle.json"),
		// units/autopod-updates.path: PathExists=/var/lib/autopod/update-cycle-active
		ActiveFile: filepath.Join(cfg.StateDir, "update-cycle-active"),
		Policy:     cfg.Update.Policy,
		Detector:   agent.CycleDetector{D: det},
		Pods:       agent.CyclePods{Mgr: mgr, Progress: obj.Progress, Fault: fault},
		Peers:      agent.CyclePeers{Dialer: peers, Configured: cfg.Update.Peers},
		Lock:       agent.CycleLock{Dialer: peers, Configured: cfg.Update.Peers, Store: store, Fleet: fleet},
		Inhibitor:  agent.CycleInhibitor{Client: lc, Log: log},
		Installer:  agent.CycleInstaller{Backend: det.Backend(), AptConfig: cfg.Update.AptConfig, Log: log},
		Rebooter:   agent.CycleRebooter{Client: lc, Command: os.Getenv(envTestReboot), DpkgLock: lock, Log: log},
		BootID:     bootID,
		Notify:     obj.OnTransition,
		Log:        log,
	})
	if err != nil {
		return nil, err
	}
	u := &updateCycle{
		machine: m,
		service: &agent.UpdateService{M: m, Backend: det.Backend()},
		peers:   &agent.UpdatePeerService{Store: store, Accept: m.AcceptPods, Log: log},
		watch:   watch,
		log:     log,
	}
	return u, nil
}

// aptPaths are where a private apt configuration (apt_config) keeps its
// lists and dpkg's status file, from one run of apt-config; "" when it
// cannot tell.
func aptPaths(aptConfig string) (lists, status string) {
	cmd := exec.Command("apt-config", "shell", "LISTS", "Dir::State::lists/d", "STATUS", "Dir::State::status/f")
	cmd.Env = append(os.Environ(), "APT_CONFIG="+aptConfig)
	out, err := cmd.Output()
	if err != nil {
		return "", ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, "=")
		v = strings.TrimSuffix(strings.Trim(v, "'"), "/")
		switch {
		case ok && k == "LISTS":
			lists = v
		case ok && k == "STATUS":
			status = v
		}
	}
	return lists, status
}

// watchPaths are the files whose change means updates may be pending, and
// dpkgLock dpkg's frontend lock ("" without dpkg): the package manager's
// defaults, or those of a private apt configuration.
func watchPaths(b updater.Backend, aptConfig string) (watch []string, dpkgLock string) {
	switch {
	case b != updater.Apt:
		return updater.DefaultWatchPaths(b), ""
	case aptConfig == "":
		return updater.DefaultWatchPaths(b), hooks.DpkgFrontendLock
	}
	lists, status := aptPaths(aptConfig)
	if lists == "" || status == "" {
		return updater.DefaultWatchPaths(b), hooks.DpkgFrontendLock
	}
	return []string{lists, status}, filepath.Join(filepath.Dir(status), "lock-frontend")
}

// run drives the cycle until ctx ends: the machine itself, and a check
// whenever the package manager's files change.
func (u *updateCycle) run(ctx context.Context) {
	go func() {
		if err := u.machine.Run(ctx); err != nil && ctx.Err() == nil {
			u.log.Error("update cycle stopped", "err", err)
		}
	}()
	changes, err := updater.Watch(ctx, u.watch, 2*time.Second)
	if err != nil {
		u.log.Warn("cannot watch the package manager's files; checking every check_interval only", "err", err)
		return
	}
	u.log.Info("watching for updates", "paths", u.watch)
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				return
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			if _, err := u.machine.CheckUpdates(cctx); err != nil && !errors.Is(err, cycle.ErrBusy) {
				u.log.Warn("update check after a package change failed", "err", err)
			}
			cancel()
		}
	}
}
