package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/autopod/autopod/osthread"
)

// Migration strategies. The pod is frozen only for the final step of each.
const (
	// StrategyAuto picks the best strategy both hosts can run.
	StrategyAuto = "auto"
	// StrategyStopAndCopy freezes the pod, dumps all of it, moves the
	// images and restores: the pause grows with the pod's memory.
	StrategyStopAndCopy = "stop-and-copy"
	// StrategyPostCopy freezes the pod, moves everything but its memory,
	// resumes it on the peer, and moves the memory afterwards: pages the
	// pod touches first are fetched on demand (userfaultfd), the rest in
	// the background. The pause no longer grows with memory size.
	StrategyPostCopy = "post-copy"
	// StrategyPreCopy copies memory in rounds while the pod runs
	// (soft-dirty tracking) before the final stop-and-copy.
	StrategyPreCopy = "pre-copy"
)

// Strategies lists the names a configuration may use.
var Strategies = []string{StrategyAuto, StrategyStopAndCopy, StrategyPostCopy, StrategyPreCopy}

// minPipeSize is the fs.pipe-max-size CRIU's lazy dump needs: it keeps the
// pod's pages in pipes of up to this size until the peer takes them.
const minPipeSize = 4 << 20

var pipeMaxSizePath = "/proc/sys/fs/pipe-max-size"

// StrategySupport says which strategies this host can run, and why not.
type StrategySupport struct {
	// Unavailable maps a strategy to the reason it cannot run here.
	Unavailable map[string]string `json:"unavailable,omitempty"`
}

// Can reports whether strategy s can run on this host.
func (ss StrategySupport) Can(s string) bool {
	_, no := ss.Unavailable[s]
	return !no
}

// ProbeStrategies decides, from CRIU's feature probe and the kernel's
// settings, which strategies this host can run.
func ProbeStrategies(info CriuInfo) StrategySupport {
	ss := StrategySupport{Unavailable: map[string]string{}}
	if info.Error != "" {
		for _, s := range []string{StrategyStopAndCopy, StrategyPostCopy, StrategyPreCopy} {
			ss.Unavailable[s] = info.Error
		}
		return ss
	}
	if !info.Features["mem_dirty_track"] {
		ss.Unavailable[StrategyPreCopy] = "the kernel does not track dirty memory (CONFIG_MEM_SOFT_DIRTY; `criu check --feature mem_dirty_track` fails)"
	}
	if !info.Features["uffd-noncoop"] {
		ss.Unavailable[StrategyPostCopy] = "the kernel lacks non-cooperative userfaultfd (`criu check --feature uffd-noncoop` fails)"
	}
	return ss
}

// autoOrder is what "auto" tries, best first. Post-copy's freeze does not
// grow with the pod's memory at all; pre-copy's grows with what the pod
// writes during the last round only, but it moves some memory more than
// once; stop-and-copy's grows with all of the memory.
var autoOrder = []string{StrategyPostCopy, StrategyPreCopy, StrategyStopAndCopy}

// pickStrategy resolves the configured strategy against what this host
// (local) and the peer (remote) can run. A strategy asked for by name
// that either side cannot run is an error that names the reason.
func pickStrategy(want string, local, remote StrategySupport) (string, error) {
	if want == "" || want == StrategyAuto {
		for _, s := range autoOrder {
			if local.Can(s) && remote.Can(s) {
				return s, nil
			}
		}
		return "", fmt.Errorf("no migration strategy runs on both hosts: here %s; on the peer %s",
			local.Unavailable[StrategyStopAndCopy], remote.Unavailable[StrategyStopAndCopy])
	}
	if why, no := local.Unavailable[want]; no {
		return "", fmt.Errorf("migration strategy %s cannot run on this host: %s", want, why)
	}
	if why, no := remote.Unavailable[want]; no {
		return "", fmt.Errorf("migration strategy %s cannot run on the peer: %s", want, why)
	}
	return want, nil
}

// ensurePipeSize raises fs.pipe-max-size to what a lazy dump needs. Root
// without CAP_SYS_RESOURCE cannot make pipes larger than that limit, and
// CRIU's lazy dump fails with EPERM on F_SETPIPE_SZ.
func ensurePipeSize() error {
	data, err := os.ReadFile(pipeMaxSizePath)
	if err != nil {
		return fmt.Errorf("read %s: %w", pipeMaxSizePath, err)
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("read %s: %w", pipeMaxSizePath, err)
	}
	if cur >= minPipeSize {
		return nil
	}
	if err := os.WriteFile(pipeMaxSizePath, []byte(strconv.Itoa(minPipeSize)), 0o644); err != nil {
		return fmt.Errorf("post-copy needs fs.pipe-max-size >= %d (it is %d): %w", minPipeSize, cur, err)
	}
	return nil
}

// criuDaemon is a CRIU process running beside a migration: the
// lazy-pages daemon on the destination of a post-copy migration (it serves
// the restored pod's page faults from the source's page server), or the
// page server receiving a stop-and-copy dump's pages.
type criuDaemon struct {
	cmd  *exec.Cmd
	done chan error
	// failed is closed when the daemon has exited with an error.
	failed chan struct{}
	log    string
}

// lazyDaemon is the post-copy case.
type lazyDaemon = criuDaemon

// startLazyDaemon runs `criu lazy-pages` for the images in dir; it must
// share workDir with the restore, where CRIU puts the socket the two meet
// on. It returns once the daemon is ready for the restore.
//
// The daemon runs at lazyDaemonNice, with a short scheduler slice
// (lazyDaemonSlice). Once the restore is done, CRIU's daemon polls its
// sockets with a zero timeout while it waits for the pages it asked for
// (CRIU 4.2, criu/uffd.c handle_requests): it spins, and on a busy host
// takes the CPU that the relay, TLS and the pod itself need to get those
// pages to it. At nice 0 it burned 2.6 s of CPU moving 1 GiB in 4.4 s on
// two cores; niced, the same move took 3.3-4.2 s. It still gets the CPU
// when the pod waits on it: the pod is then not runnable, nor is the
// relay, until the next pages come.
func (c criuRunner) startLazyDaemon(ctx context.Context, dir, workDir, addr string, port int) (*criuDaemon, error) {
	d, err := c.startDaemon(ctx, workDir, "lazy-pages.log", "lazy-pages", "-D", dir, "-W", workDir,
		"--page-server", "--address", addr, "--port", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	// One thread: the process's scheduling is its only thread's. It
	// fails only when the daemon is gone, which the restore notices.
	_ = osthread.Yielding(d.cmd.Process.Pid, lazyDaemonNice)
	return d, nil
}

// lazyDaemonNice is the lazy-pages daemon's nice value (see
// startLazyDaemon): at 10 a CPU-bound task at nice 0 gets about nine
// tenths of a CPU they share and the daemon the rest.
const lazyDaemonNice = 10

// lazyDaemonSlice is the scheduler slice the lazy-pages daemon asks for
// (osthread.ShortSlice). The spinning daemon is on a CPU most of the time,
// so with the default slice each hop of a page request (the relay's reads
// and writes, the page server, the faulting pod) could wait for it to run
// its slice out. With 100 µs, 1 GiB moved in 3.2-3.5 s where nice alone
// took 3.8-4.2 s, in alternating runs (at 100 MiB: no change).
const lazyDaemonSlice = osthread.ShortSlice

// startPageServer runs `criu page-server` on addr:port, writing the pages
// a dump sends into dir; it returns once the server listens, and ends
// after one dump. With a parent (the previous pre-copy round's directory,
// relative to dir) the server links dir to it, as the dump's own images
// directory is linked: the dump asks the server whether a parent exists
// before it sends only the pages written since, and the restore follows
// the link to the pages that were not sent again.
func (c criuRunner) startPageServer(ctx context.Context, dir, parent, workDir, logName, addr string, port int) (*criuDaemon, error) {
	args := []string{"page-server", "-D", dir, "-W", workDir, "--address", addr, "--port", strconv.Itoa(port)}
	if parent != "" {
		// CRIU 4.1 and 4.2 make this link themselves from
		// --prev-images-dir (and accept one that exists); made here too,
		// it cannot be missing whatever the version does.
		if err := os.Symlink(parent, filepath.Join(dir, "parent")); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("link the images in %s to their parent: %w", dir, err)
		}
		args = append(args, "--prev-images-dir", parent)
	}
	return c.startDaemon(ctx, workDir, logName, args...)
}

func (c criuRunner) startDaemon(ctx context.Context, workDir, logName string, args ...string) (*criuDaemon, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(c.path, append(args, "-o", logName, "-v4", "--status-fd", "3")...)
	cmd.ExtraFiles = []*os.File{w}
	// It dies with the agent: the relay it talks through is in the agent,
	// and recovery after a restart decides what becomes of the pod.
	// Linux sends the parent-death signal when the *thread* that forked
	// the child ends, and the Go runtime ends a thread whenever a
	// goroutine exits locked to it (osthread.Doomed, for one): seen as a
	// lazy-pages daemon killed in the middle of a post-copy migration. So
	// the child is started, and waited for, on a thread locked for its
	// whole life, which nothing else can run on, let alone end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	d := &criuDaemon{cmd: cmd, done: make(chan error, 1), failed: make(chan struct{}), log: filepath.Join(workDir, logName)}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		err := cmd.Wait()
		d.done <- err
		if err != nil {
			close(d.failed)
		}
	}()
	err = <-started
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("start criu %s: %w", args[0], err)
	}
	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := r.Read(b)
		ready <- err
	}()
	select {
	case err := <-ready:
		if err == nil {
			return d, nil
		}
		d.kill()
		data, _ := os.ReadFile(d.log)
		return nil, fmt.Errorf("criu %s did not start: %s", args[0], criuErrorLines(string(data)))
	case <-ctx.Done():
		d.kill()
		return nil, ctx.Err()
	}
}

// wait returns when the daemon exits: nil if it did its job.
func (d *criuDaemon) wait(ctx context.Context) error {
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			data, _ := os.ReadFile(d.log)
			return fmt.Errorf("criu %s: %w: %s", d.cmd.Args[1], err, criuErrorLines(string(data)))
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *criuDaemon) kill() {
	_ = d.cmd.Process.Kill()
}
