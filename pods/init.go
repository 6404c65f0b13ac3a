package pods

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The pod's init runs in two stages, both in the autopod binary:
//
//  1. InitSetupArg: started by the agent in new pid, mount, uts, ipc and net
//     namespaces. It waits for the agent to place it in its cgroups and wire
//     its network, then unshares the cgroup namespace, builds the pod's mount
//     tree, pivots into it and re-executes itself from /run/autopod/init.
//  2. InitRunArg: the pod's PID 1. It starts the workload and reaps every
//     orphan until the workload exits.
//
// Stage 2 runs from a copy of the binary bind-mounted inside the pod so that
// every file the dumped tree maps or holds open lives inside the pod's own
// mounts: CRIU can then dump and restore the pod, on this host or a peer,
// without depending on the agent binary that happens to be installed.
const (
	InitSetupArg = "__autopod-init-setup"
	InitRunArg   = "__autopod-init"

	// Paths inside the pod.
	podRunDir     = "/run/autopod"
	podInitPath   = podRunDir + "/init"
	podLogPath    = podRunDir + "/console.log"
	initConfigEnv = "AUTOPOD_INIT"
)

// initConfig is what the agent hands the pod's init over the setup pipe.
type initConfig struct {
	Spec     Spec   `json:"spec"`
	RootFS   string `json:"rootfs"`    // directory bound as the pod's root ("/" for host mode)
	Staging  string `json:"staging"`   // empty host directory used as the mount point while building the tree
	InitFile string `json:"init_file"` // host path of the init binary copy
	LogFile  string `json:"log_file"`  // host path of the console log
	UID      int    `json:"uid"`
	GID      int    `json:"gid"`
	Groups   []int  `json:"groups,omitempty"`
	HasNet   bool   `json:"has_net"`
}

// IsInit reports whether args ask for one of the init stages; cmd/autopod
// calls RunInit before anything else when it does.
func IsInit(args []string) bool {
	return len(args) > 1 && (args[1] == InitSetupArg || args[1] == InitRunArg)
}

// RunInit runs the init stage named by args[1] and never returns.
func RunInit(args []string) {
	var err error
	switch args[1] {
	case InitSetupArg:
		err = initSetup()
	case InitRunArg:
		var code int
		code, err = initRun()
		if err == nil {
			os.Exit(code)
		}
	}
	fmt.Fprintf(os.Stderr, "autopod-init: %v\n", err)
	os.Exit(127)
}

// initSetup is stage 1. Its stdout/stderr are the pod's console log opened by
// the agent; fd 3 is the setup pipe.
func initSetup() error {
	// The cgroup namespace and the final exec must happen on one OS thread:
	// unshare(CLONE_NEWCGROUP) applies to the calling thread only.
	runtime.LockOSThread()

	pipe := os.NewFile(3, "setup")
	data, err := io.ReadAll(pipe) // the agent closes it once cgroups and network are ready
	pipe.Close()
	if err != nil {
		return fmt.Errorf("read setup pipe: %w", err)
	}
	if len(data) == 0 {
		return fmt.Errorf("agent closed the setup pipe without a configuration")
	}
	var cfg initConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("decode setup: %w", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("unshare cgroup namespace: %w", err)
	}
	if err := unix.Sethostname([]byte(cfg.Spec.Hostname)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := buildMounts(&cfg); err != nil {
		return err
	}
	// The console log, now through the pod's own mount of it.
	// The console log and /dev/null, now through the pod's own mounts: the
	// descriptors the agent passed in belong to the host's mounts.
	logf, err := os.OpenFile(podLogPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", podLogPath, err)
	}
	null, err := os.OpenFile("/dev/null", os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/null: %w", err)
	}
	for fd, f := range map[int]*os.File{0: null, 1: logf, 2: logf} {
		if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
			return fmt.Errorf("dup fd %d: %w", fd, err)
		}
	}
	logf.Close()
	null.Close()
	closeExtraFDs()
	env := []string{initConfigEnv + "=" + string(data)}
	return unix.Exec(podInitPath, []string{"autopod-init", InitRunArg}, env)
}

// buildMounts assembles the pod's file system tree on cfg.Staging and pivots
// into it. The tree is deliberately small and fully known — root, /proc,
// /sys, /dev (+pts, shm, mqueue), tmpfs /tmp and /run, the data binds and
// /run/autopod — so that CRIU can dump and recreate every mount in it.
func buildMounts(cfg *initConfig) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := cfg.Staging
	flags := uintptr(unix.MS_BIND)
	if err := unix.Mount(cfg.RootFS, root, "", flags, ""); err != nil {
		return fmt.Errorf("bind root %s: %w", cfg.RootFS, err)
	}
	if cfg.Spec.Root.ReadOnly {
		if err := unix.Mount("", root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount root read-only: %w", err)
		}
	}
	type mnt struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}
	ms := []mnt{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY, ""},
		{"/dev", "/dev", "", unix.MS_BIND, ""},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
		{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=755"},
	}
	for _, m := range ms {
		t := filepath.Join(root, m.target)
		if err := os.MkdirAll(t, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.target, err)
		}
		if err := unix.Mount(m.src, t, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype+m.src, m.target, err)
		}
	}
	// /run/autopod: the init binary (read-only) and the console log.
	if err := os.MkdirAll(filepath.Join(root, podRunDir), 0o755); err != nil {
		return err
	}
	binds := []Mount{
		{Source: cfg.InitFile, Target: podInitPath, ReadOnly: true},
		{Source: cfg.LogFile, Target: podLogPath},
	}
	binds = append(binds, cfg.Spec.Mounts...)
	for _, b := range binds {
		if err := bindInto(root, b); err != nil {
			return err
		}
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	// pivot_root(".", ".") stacks the old root under the new one; detaching
	// it leaves the pod with only its own tree.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	return os.Chdir("/")
}

func bindInto(root string, b Mount) error {
	t := filepath.Join(root, b.Target)
	fi, err := os.Stat(b.Source)
	if err != nil {
		return fmt.Errorf("bind source: %w", err)
	}
	if fi.IsDir() {
		err = os.MkdirAll(t, 0o755)
	} else {
		if err = os.MkdirAll(filepath.Dir(t), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(t, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", b.Target, err)
	}
	if err := unix.Mount(b.Source, t, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", b.Source, b.Target, err)
	}
	if b.ReadOnly {
		if err := unix.Mount("", t, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", b.Target, err)
		}
	}
	return nil
}

// closeExtraFDs closes every descriptor above 2: a pod must not hold files
// opened outside its mount namespace, or CRIU cannot dump it.
func closeExtraFDs() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// initRun is stage 2, the pod's PID 1.
func initRun() (int, error) {
	var cfg initConfig
	if err := json.Unmarshal([]byte(os.Getenv(initConfigEnv)), &cfg); err != nil {
		return 0, fmt.Errorf("decode %s: %w", initConfigEnv, err)
	}
	os.Unsetenv(initConfigEnv)
	s := cfg.Spec

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2, unix.SIGCHLD)

	env := make([]string, 0, len(s.Env)+3)
	env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME="+s.Hostname)
	for k, v := range s.Env {
		env = append(env, k+"="+v)
	}
	attr := &syscall.ProcAttr{
		Dir:   s.WorkDir,
		Env:   env,
		Files: []uintptr{0, 1, 2},
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(cfg.UID), Gid: uint32(cfg.GID), Groups: toU32(cfg.Groups)},
		},
	}
	// Plain fork+exec: os/exec would hold a pidfd, which this init does not need.
	child, err := syscall.ForkExec(s.Command, append([]string{s.Command}, s.Args...), attr)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", s.Command, err)
	}
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			_ = unix.Kill(child, sig.(syscall.Signal))
			continue
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err != nil || pid <= 0 {
				break
			}
			if pid == child {
				if ws.Signaled() {
					return 128 + int(ws.Signal()), nil
				}
				return ws.ExitStatus(), nil
			}
		}
	}
	return 0, nil
}

func toU32(in []int) []uint32 {
	out := make([]uint32, len(in))
	for i, v := range in {
		out[i] = uint32(v)
	}
	return out
}

// initCmdline tells whether /proc/PID/cmdline is a pod init (used when
// re-adopting pods after an agent restart, to avoid adopting a reused pid).
func initCmdline(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return strings.Contains(string(b), InitRunArg) || strings.Contains(string(b), InitSetupArg)
}
