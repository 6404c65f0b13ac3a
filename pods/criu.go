package pods

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/checkpoint-restore/go-criu/v7/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// MinCriuVersion is the oldest CRIU autopod accepts (4.1.0): older ones
// fail on current kernels (Debian 12's 3.17 cannot even read the vDSO).
const MinCriuVersion = 40100

// CriuInfo is what autopod learned about its CRIU binary at start.
type CriuInfo struct {
	Path     string          `json:"path"`
	Version  string          `json:"version"`  // e.g. "4.2.1"
	Features map[string]bool `json:"features"` // from `criu check --feature`
	Error    string          `json:"error,omitempty"`
}

// probedFeatures are the `criu check --feature` names autopod cares about.
var probedFeatures = []string{"mem_dirty_track", "uffd-noncoop", "tcp_half_closed", "network_lock_nftables", "pidfd_store", "cgroupns"}

// ProbeCriu runs the CRIU binary at path: its version, `criu check`, and
// the features that decide what autopod can do. Problems are reported in
// Error (the agent keeps serving read-only calls without a working CRIU).
func ProbeCriu(ctx context.Context, path string) CriuInfo {
	info := CriuInfo{Path: path, Features: map[string]bool{}}
	if info.Version = criuVersion(ctx, path); info.Version == "" {
		info.Error = fmt.Sprintf("%s --version does not run or print a version", path)
		return info
	}
	if n := criuVersionNumber(info.Version); n < MinCriuVersion {
		info.Error = fmt.Sprintf("CRIU %s at %s is too old: autopod needs 4.1 or newer (set criu_path in autopod.toml)", info.Version, path)
		return info
	}
	if out, err := exec.CommandContext(ctx, path, "check").CombinedOutput(); err != nil {
		info.Error = fmt.Sprintf("criu check fails on this kernel: %s", criuErrorLines(string(out)))
		return info
	}
	// go-criu's FeatureCheck echoes requests back on CRIU 4.2; the CLI is truthful.
	for _, f := range probedFeatures {
		err := exec.CommandContext(ctx, path, "check", "--feature", f).Run()
		info.Features[f] = err == nil
	}
	return info
}

// criuVersion returns the version string `criu --version` prints.
func criuVersion(ctx context.Context, path string) string {
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Version: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// faultNotify hands CRIU's action-script notifications to a test's fault
// function: returning an error there makes CRIU abort at that step, the
// realest way to exercise autopod's failure paths.
type faultNotify struct {
	criu.NoNotify
	fault func(step string) error
}

func (f faultNotify) PreDump() error              { return f.fault("pre-dump") }
func (f faultNotify) NetworkLock() error          { return f.fault("network-lock") }
func (f faultNotify) PostDump() error             { return f.fault("post-dump") }
func (f faultNotify) PreRestore() error           { return f.fault("pre-restore") }
func (f faultNotify) SetupNamespaces(int32) error { return f.fault("setup-namespaces") }
func (f faultNotify) PostRestore(int32) error     { return f.fault("post-restore") }

// criuVersionNumber turns "4.2.1" into 40201 (0 when unparsable).
func criuVersionNumber(v string) int {
	parts := strings.SplitN(v, ".", 3)
	n := 0
	for i, mul := range []int{10000, 100, 1} {
		if i >= len(parts) {
			break
		}
		digits := parts[i]
		if j := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
			digits = digits[:j] // "2-rc1" -> "2"
		}
		x, err := strconv.Atoi(digits)
		if err != nil {
			return 0
		}
		n += x * mul
	}
	return n
}

// criuErrorLines returns CRIU's own error lines from a log (or output),
// the last few of them, joined: go-criu reports only a generic failure.
func criuErrorLines(log string) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "Error (") || strings.Contains(l, "Error:") || strings.HasPrefix(strings.TrimSpace(l), "Error") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) == 0 {
		return strings.TrimSpace(lastLines(log, 3))
	}
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// CriuError is a failed CRIU operation with CRIU's own error lines.
type CriuError struct {
	Op    string // "dump" or "restore"
	Log   string // path of the full log
	Lines string // CRIU's error lines from the log
	Err   error  // what go-criu returned
}

func (e *CriuError) Error() string {
	return fmt.Sprintf("criu %s failed: %v\n%s\n(full log: %s)", e.Op, e.Err, e.Lines, e.Log)
}
func (e *CriuError) Unwrap() error { return e.Err }

// criuRequest is autopod's own description of one CRIU call, kept free of
// go-criu's protobuf types.
type criuRequest struct {
	ImagesDir    string
	WorkDir      string // where CRIU writes its log
	LogName      string
	Pid          int    // dump: the pod's init
	Root         string // restore: the pod's root directory
	LeaveRunning bool
	// FreezeCgroup is the freezer cgroup CRIU freezes the tree with. When
	// the cgroup is already frozen, CRIU leaves it frozen after the dump.
	FreezeCgroup string
	// ExtMounts maps the pod's bind mount targets to host sources; dumps
	// use only the keys (CRIU marks them external), restores the sources.
	ExtMounts map[string]string
	// Veth is the host end of the pod's veth and Bridge its bridge; on
	// restore CRIU recreates the pair and enslaves the host end.
	Veth, Bridge string
	// ExtNetns makes a dump treat the pod's network namespace as external
	// (CRIU saves its sockets but not the namespace: links, addresses,
	// routes, firewall, sysctls); the restore then needs Netns.
	ExtNetns bool
	// Netns, for a restore, is the network namespace, already set up, that
	// the pod goes into (for images dumped with ExtNetns). Veth and Bridge
	// are then unused.
	Netns *os.File
	// notify, when set, gets CRIU's action-script notifications.
	notify criu.Notify
	// CgroupRoot is where the restored tree's cgroups go ("/autopod/NAME"):
	// the images name the cgroups of the host that dumped them.
	CgroupRoot        string
	CgroupControllers []string // controller names as /proc/PID/cgroup shows them
	// proc, for a restore, is its CRIU process, started ahead; nil: the
	// restore starts one.
	proc *restoreProc
	// postRestore runs when CRIU has restored the tree (pid is its init),
	// before the tasks resume and before the network lock is lifted.
	postRestore func(pid int) error
	// Lazy dumps everything but the memory and then serves the pages on
	// PageServerPort (every address; see guardPort) until a lazy-pages
	// daemon took them all; the Dump call returns only then. On restore
	// it fetches pages on demand through the daemon sharing WorkDir.
	Lazy           bool
	PageServerPort int
	// PageServerAddr, for a dump that is not lazy, sends the pages to
	// the page server at PageServerAddr:PageServerPort instead of
	// writing them into ImagesDir.
	PageServerAddr string
	// abort, closed while a restore runs, says that the restore cannot
	// succeed any more for a reason CRIU may not notice by itself (its
	// lazy-pages daemon died). CRIU gets abortGrace to fail on its own,
	// then it is killed.
	abort <-chan struct{}
	// postDump runs when a dump has written its images (for a lazy dump:
	// all but the memory, before the page server opens).
	postDump func() error
	// TrackMem makes a (pre-)dump use and reset the kernel's soft-dirty
	// bits, so that the next one in a pre-copy series dumps only the
	// pages written since.
	TrackMem bool
	// CutOff says that the caller has cut the pod off the network before
	// this dump and keeps it cut off until the pod is thawed or killed
	// (a migration's traffic hold, or its disabled bridge port). CRIU's
	// own network lock would then guard nothing and only cost time: it
	// deletes its nftables table in the pod's namespace after a dump that
	// leaves the tasks alive, 8-15 ms inside the freeze here. Its
	// network-lock notifications still come.
	CutOff bool
	// ParentImg is the previous (pre-)dump's images directory, relative
	// to ImagesDir ("../precopy-1"): pages unchanged since then are
	// recorded as being in the parent rather than dumped again.
	ParentImg string
}

// dumpNotify calls postDump, then the inner notifications.
type dumpNotify struct {
	criu.Notify
	post func() error
}

func (n dumpNotify) PostDump() error {
	if err := n.Notify.PostDump(); err != nil {
		return err
	}
	return n.post()
}

func (r criuRequest) opts(imgDir, workDir *os.File) *rpc.CriuOpts {
	o := &rpc.CriuOpts{
		ImagesDirFd:       proto.Int32(int32(imgDir.Fd())),
		WorkDirFd:         proto.Int32(int32(workDir.Fd())),
		LogFile:           proto.String(r.LogName),
		LogLevel:          proto.Int32(4),
		TcpEstablished:    proto.Bool(true),
		FileLocks:         proto.Bool(true),
		NetworkLock:       rpc.CriuNetworkLockMethod_NFTABLES.Enum(),
		ManageCgroups:     proto.Bool(true),
		ManageCgroupsMode: rpc.CriuCgMode_SOFT.Enum(),
		OrphanPtsMaster:   proto.Bool(true),
	}
	return o
}

// criuRunner runs CRIU through go-criu's swrk RPC.
type criuRunner struct {
	path string
	// yard, when set, is the cgroup yard CRIU's dumps and restores use
	// instead of mounting their own (see cgyard.go).
	yard *cgroupYard
}

// yardFor returns the cgroup yard for one CRIU run ("" for none: CRIU
// then mounts its own) and what to call when that run has ended. A yard
// that cannot be had costs only time; NewManager logs why.
func (c criuRunner) yardFor() (string, []string, func()) {
	if c.yard == nil {
		return "", nil, func() {}
	}
	path, dirs, release, err := c.yard.acquire()
	if err != nil {
		return "", nil, func() {}
	}
	return path, dirs, release
}

func (c criuRunner) open(r criuRequest) (img, work *os.File, err error) {
	if img, err = os.Open(r.ImagesDir); err != nil {
		return nil, nil, err
	}
	if work, err = os.Open(r.WorkDir); err != nil {
		img.Close()
		return nil, nil, err
	}
	return img, work, nil
}

func (c criuRunner) fail(op string, r criuRequest, err error) error {
	logPath := filepath.Join(r.WorkDir, r.LogName)
	data, _ := os.ReadFile(logPath)
	return &CriuError{Op: op, Log: logPath, Lines: criuErrorLines(string(data)), Err: err}
}

// Dump checkpoints the process tree rooted at r.Pid into r.ImagesDir.
// go-criu offers no cancellation; ctx is checked before starting.
func (c criuRunner) Dump(ctx context.Context, r criuRequest) error {
	cr := criu.MakeCriu()
	cr.SetCriuPath(c.path)
	yard, _, release := c.yardFor()
	defer release()
	return c.dump(ctx, cr, rpc.CriuReqType_DUMP, r, yard)
}

// dump runs one dump or pre-dump (typ) on cr, a CRIU process that has
// (or, started by this call, will have) the cgroup yard yard.
func (c criuRunner) dump(ctx context.Context, cr *criu.Criu, typ rpc.CriuReqType, r criuRequest, yard string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	img, work, err := c.open(r)
	if err != nil {
		return err
	}
	defer img.Close()
	defer work.Close()
	o := r.opts(img, work)
	o.Pid = proto.Int32(int32(r.Pid))
	o.LeaveRunning = proto.Bool(r.LeaveRunning)
	if yard != "" {
		o.CgroupYard = proto.String(yard)
	}
	if r.FreezeCgroup != "" {
		o.FreezeCgroup = proto.String(r.FreezeCgroup)
	}
	if r.CutOff {
		o.NetworkLock = rpc.CriuNetworkLockMethod_SKIP.Enum()
	}
	if r.TrackMem {
		o.TrackMem = proto.Bool(true)
	}
	if r.ParentImg != "" {
		o.ParentImg = proto.String(r.ParentImg)
	}
	for target := range r.ExtMounts {
		o.External = append(o.External, "mnt["+target+"]:"+target)
	}
	if r.ExtNetns {
		ino, err := netnsInode(r.Pid)
		if err != nil {
			return fmt.Errorf("the pod's network namespace: %w", err)
		}
		o.External = append(o.External, fmt.Sprintf("net[%d]:%s", ino, netnsKey))
	}
	switch {
	case r.Lazy:
		o.LazyPages = proto.Bool(true)
		o.Ps = &rpc.CriuPageServerInfo{Port: proto.Int32(int32(r.PageServerPort))}
	case r.PageServerAddr != "":
		o.Ps = &rpc.CriuPageServerInfo{Address: proto.String(r.PageServerAddr), Port: proto.Int32(int32(r.PageServerPort))}
	}
	var nfy criu.Notify = criu.NoNotify{}
	if r.notify != nil {
		nfy = r.notify
	}
	if r.postDump != nil {
		nfy = dumpNotify{Notify: nfy, post: r.postDump}
	}
	op, call := "dump", cr.Dump
	if typ == rpc.CriuReqType_PRE_DUMP {
		op, call = "pre-dump", cr.PreDump
	}
	if err := call(o, nfy); err != nil {
		return c.fail(op, r, err)
	}
	return nil
}

// criuSession is one CRIU service process (swrk) that runs a pre-copy
// series: pre-dumps, then the final dump. CRIU's RPC wants the series on
// one connection: after a PRE_DUMP it waits for the next PRE_DUMP or the
// DUMP, and a connection closed in between makes it exit with an error
// (go-criu's one-shot PreDump would report every pre-dump as failed).
type criuSession struct {
	c           criuRunner
	cr          *criu.Criu
	yard        string
	releaseYard func()
}

func (c criuRunner) session() (*criuSession, error) {
	cr := criu.MakeCriu()
	cr.SetCriuPath(c.path)
	// The process starts now, and inherits the yard now.
	yard, _, release := c.yardFor()
	if err := cr.Prepare(); err != nil {
		release()
		return nil, fmt.Errorf("start criu swrk: %w", err)
	}
	return &criuSession{c: c, cr: cr, yard: yard, releaseYard: release}, nil
}

// PreDump copies the pod's memory into r.ImagesDir (or to its page
// server) while the pod runs: CRIU stops the tasks only to collect their
// pages. After a failure the session is over.
func (s *criuSession) PreDump(ctx context.Context, r criuRequest) error {
	return s.c.dump(ctx, s.cr, rpc.CriuReqType_PRE_DUMP, r, s.yard)
}

// Dump is the series' final dump.
func (s *criuSession) Dump(ctx context.Context, r criuRequest) error {
	return s.c.dump(ctx, s.cr, rpc.CriuReqType_DUMP, r, s.yard)
}

// Close ends the CRIU process. It exits with an error when the series
// ended without its final dump, which is not news to the caller.
func (s *criuSession) Close() error {
	defer s.releaseYard()
	return s.cr.Cleanup()
}

// dumpStats reads what a (pre-)dump wrote into its stats-dump image. CRIU
// writes it into its work directory, which is the images directory only
// when no other is given: dirs are tried in order.
func dumpStats(dirs ...string) (*stats.DumpStatsEntry, error) {
	var data []byte
	var err error
	var dir string
	for _, dir = range dirs {
		if data, err = os.ReadFile(filepath.Join(dir, stats.StatsDump)); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read CRIU's dump statistics: %w", err)
	}
	st, err := parseDumpStats(data)
	if err != nil {
		return nil, fmt.Errorf("read CRIU's dump statistics in %s: %w", dir, err)
	}
	return st, nil
}

// parseDumpStats decodes a stats-dump image: two magic numbers, the
// payload's size, a StatsEntry. (go-criu's reader trusts the size.)
func parseDumpStats(data []byte) (*stats.DumpStatsEntry, error) {
	if len(data) < stats.PayloadOffset {
		return nil, fmt.Errorf("stats image too short (%d bytes)", len(data))
	}
	if binary.LittleEndian.Uint32(data[stats.PrimaryMagicOffset:]) != stats.ImgServiceMagic ||
		binary.LittleEndian.Uint32(data[stats.SecondaryMagicOffset:]) != stats.StatsMagic {
		return nil, errors.New("not a CRIU stats image (bad magic)")
	}
	size := int64(binary.LittleEndian.Uint32(data[stats.SizeOffset:]))
	if size > int64(len(data)-stats.PayloadOffset) {
		return nil, fmt.Errorf("stats image truncated: %d payload bytes announced, %d present", size, len(data)-stats.PayloadOffset)
	}
	var st stats.StatsEntry
	// Partial: only pages_written matters, whichever fields a CRIU writes.
	if err := (proto.UnmarshalOptions{AllowPartial: true}).Unmarshal(data[stats.PayloadOffset:stats.PayloadOffset+size], &st); err != nil {
		return nil, fmt.Errorf("stats image: %w", err)
	}
	if st.GetDump() == nil {
		return nil, errors.New("stats image holds no dump statistics")
	}
	return st.GetDump(), nil
}

// CPUInfoDump writes this host's CPU description (cpuinfo.img) into dir.
func (c criuRunner) CPUInfoDump(ctx context.Context, dir string) error {
	out, err := exec.CommandContext(ctx, c.path, "cpuinfo", "dump", "-D", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("criu cpuinfo dump: %w: %s", err, criuErrorLines(string(out)))
	}
	return nil
}

// CPUInfoCheck checks that images dumped on the CPU described in dir can
// be restored on this host's CPU.
func (c criuRunner) CPUInfoCheck(ctx context.Context, dir string) error {
	out, err := exec.CommandContext(ctx, c.path, "cpuinfo", "check", "-D", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("criu cpuinfo check: this CPU cannot run images from the peer's: %w: %s", err, criuErrorLines(string(out)))
	}
	return nil
}

// restoreNotify records the restored init's pid.
type restoreNotify struct {
	criu.NoNotify
	pid   int
	inner criu.Notify
	post  func(pid int) error
}

func (n *restoreNotify) PostRestore(pid int32) error {
	n.pid = int(pid)
	// Isolation first: if anything after it fails, CRIU kills the tree
	// and nothing it sends while dying may reach a client.
	if n.post != nil {
		if err := n.post(int(pid)); err != nil {
			return err
		}
	}
	if n.inner != nil {
		return n.inner.PostRestore(pid)
	}
	return nil
}

// restoreProc is the CRIU process of one restore with what it inherits
// when it starts: the pod's network namespace (for images dumped with
// ExtNetns) and the cgroup yard. Started ahead (prestart), its start
// (5-15 ms of exec, linking and its first answer) is not in the freeze.
type restoreProc struct {
	cr       *criu.Criu
	netnsFd  int // -1: none
	yard     string
	yardDirs []string
	release  func()
}

// newRestoreProc prepares the process of a restore into netns (nil: CRIU
// makes the namespace) and, with start, starts it now; else the restore
// starts it. Restore closes it.
func (c criuRunner) newRestoreProc(netns *os.File, start bool) (*restoreProc, error) {
	p := &restoreProc{cr: criu.MakeCriu(), netnsFd: -1}
	p.cr.SetCriuPath(c.path)
	p.yard, p.yardDirs, p.release = c.yardFor()
	if netns != nil {
		// go-criu's worker inherits descriptors without close-on-exec,
		// under the same number: CRIU finds the namespace by its key.
		syscall.ForkLock.Lock()
		fd, err := unix.Dup(int(netns.Fd()))
		syscall.ForkLock.Unlock()
		if err != nil {
			p.release()
			return nil, fmt.Errorf("pass the network namespace to CRIU: %w", err)
		}
		p.netnsFd = fd
	}
	if start {
		if err := p.cr.Prepare(); err != nil {
			p.Close()
			return nil, fmt.Errorf("start criu swrk: %w", err)
		}
	}
	return p, nil
}

// Close ends the process (if it started) and closes what it inherited.
func (p *restoreProc) Close() error {
	err := p.cr.Cleanup()
	if p.netnsFd >= 0 {
		unix.Close(p.netnsFd)
		p.netnsFd = -1
	}
	p.release()
	return err
}

// Restore brings the pod back from r.ImagesDir as a child of this process
// and returns the host pid of its init. If r.abort closes first, CRIU is
// killed after abortGrace; go-criu offers no cancellation, and ctx is
// checked before starting only. It runs in r.proc if set (and closes it),
// else in a CRIU process of its own.
func (c criuRunner) Restore(ctx context.Context, r criuRequest) (pid int, err error) {
	proc := r.proc
	if proc == nil {
		if proc, err = c.newRestoreProc(r.Netns, false); err != nil {
			return 0, err
		}
	}
	defer func() {
		if cerr := proc.Close(); cerr != nil && err != nil {
			err = fmt.Errorf("%w\n%v", err, cerr)
		}
	}()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	img, work, err := c.open(r)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	defer work.Close()
	o := r.opts(img, work)
	o.Root = proto.String(r.Root)
	if proc.yard != "" {
		// Only a yard with every hierarchy the images name: CRIU would
		// try to mount a missing one inside it, and fail.
		if want, err := imageHierarchies(r.ImagesDir); err == nil && subset(want, proc.yardDirs) {
			o.CgroupYard = proto.String(proc.yard)
		}
	}
	o.RstSibling = proto.Bool(true)
	if r.Lazy {
		o.LazyPages = proto.Bool(true)
	}
	for _, ctl := range r.CgroupControllers {
		// Only the hierarchies the pod has its own cgroup in are remapped;
		// the others (cpuset, devices...) stay where they were.
		o.CgRoot = append(o.CgRoot, &rpc.CgroupRoot{Ctrl: proto.String(ctl), Path: proto.String(r.CgroupRoot)})
	}
	for target, src := range r.ExtMounts {
		o.External = append(o.External, "mnt["+target+"]:"+src)
	}
	if r.Netns != nil {
		if proc.netnsFd < 0 {
			return 0, errors.New("restore into a network namespace: its CRIU process was started without it")
		}
		o.InheritFd = append(o.InheritFd, &rpc.InheritFd{Key: proto.String(netnsKey), Fd: proto.Int32(int32(proc.netnsFd))})
		// CRIU restores no lock into a namespace it did not create, and
		// its unlock at the end would only fail (~15 ms of nft finding
		// no table). The namespace is cut off until autopod exposes it.
		// CRIU takes the method from the images, not from the request.
		o.NetworkLock = rpc.CriuNetworkLockMethod_SKIP.Enum()
		if err := setRestoreNetworkLockSkip(r.ImagesDir); err != nil {
			return 0, err
		}
	} else if r.Veth != "" {
		ext := "veth[eth0]:" + r.Veth
		if r.Bridge != "" { // else the host end stays outside any bridge: isolated
			ext += "@" + r.Bridge
		}
		o.External = append(o.External, ext)
	}
	n := &restoreNotify{inner: r.notify, post: r.postRestore}
	stop := c.watchdog(r.abort, r.ImagesDir)
	err = proc.cr.Restore(o, n)
	killed := stop()
	if err != nil {
		if n.pid > 0 {
			// The restored init is this process's child (RstSibling);
			// whatever became of the tree, reap it.
			go waitExit(n.pid)
		}
		if killed != "" {
			err = fmt.Errorf("%w (CRIU killed: %s)", err, killed)
		}
		return 0, c.fail("restore", r, err)
	}
	if n.pid <= 0 {
		return 0, errors.New("criu restore reported no pid")
	}
	return n.pid, nil
}

// netnsKey names the pod's network namespace between a dump that treats it
// as external and the restore that inherits it.
const netnsKey = "autopod-netns"

// abortGrace is how long a CRIU restore that can no longer succeed gets
// to fail by itself before it is killed. CRIU 4.2's restore, told by its
// lazy-pages daemon's end that the pages are gone, kills the restored
// tasks and then waits for them for good.
const abortGrace = 2 * time.Second

// watchdog kills this process's CRIU worker that works on dir if abort
// closes before the returned stop is called. go-criu gives no
// cancellation and does not expose its `criu swrk` child, so the worker
// is found by what it has open. stop reports why CRIU was killed, if it
// was.
func (c criuRunner) watchdog(abort <-chan struct{}, dir string) (stop func() string) {
	done := make(chan struct{})
	why := make(chan string, 1)
	if abs, err := filepath.EvalSymlinks(dir); err == nil {
		dir = abs
	}
	go func() {
		select {
		case <-done:
			why <- ""
			return
		case <-abort:
		}
		select {
		case <-done:
			why <- ""
			return
		case <-time.After(abortGrace):
		}
		if pid := criuWorker(c.path, dir); pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
			why <- fmt.Sprintf("it was still running %v after its lazy-pages daemon failed", abortGrace)
			return
		}
		why <- ""
	}()
	return func() string {
		close(done)
		return <-why
	}
}

// criuWorker returns the pid of a child of this process that runs the
// CRIU binary at exe and holds dir open (as its working directory or a
// file descriptor), or 0.
func criuWorker(exe, dir string) int {
	for _, pid := range childrenRunning(exe) {
		if holds(pid, dir) {
			return pid
		}
	}
	return 0
}

// holds reports whether pid has dir as its working directory or open.
func holds(pid int, dir string) bool {
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && l == dir {
		return true
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && l == dir {
			return true
		}
	}
	return false
}
