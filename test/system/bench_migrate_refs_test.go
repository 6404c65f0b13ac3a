//go:build roottest && bench

package system

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autopod/autopod/test/benchkit"
	"github.com/autopod/autopod/test/resp"
	"github.com/autopod/autopod/test/testbed"
)

// The references of TestBenchMigrate, on the same test-bed: the raw CRIU
// pipeline, the cold restart, the plain copy, and what counts the bytes
// on the link.

// dialer connects from the test-bed's client host.
func (m *migBench) dialer(addr string) benchkit.Dialer {
	return func(ctx context.Context) (net.Conn, error) { return m.bed.Dial(ctx, addr) }
}

func benchRun(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func benchMust(t testing.TB, args ...string) string {
	t.Helper()
	out, err := benchRun(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// linkCounter counts the IP bytes that each of two hosts sends to the
// other, with an nftables counter in each host's own network namespace:
// what crossed the link between them. The tables go with the namespaces.
type linkCounter struct{ hosts []*testbed.Host }

func newLinkCounter(t testing.TB, a, b *testbed.Host) *linkCounter {
	for _, p := range [][2]*testbed.Host{{a, b}, {b, a}} {
		rules := fmt.Sprintf("table inet aptb_bench {\n\tcounter sent { }\n\tchain out {\n\t\ttype filter hook output priority 0; policy accept;\n\t\tip daddr %s counter name \"sent\"\n\t}\n}\n", p[1].Addr)
		cmd := exec.Command("nsenter", "--net=/run/netns/"+p[0].Netns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: nft: %v: %s", p[0].Name, err, out)
		}
	}
	return &linkCounter{hosts: []*testbed.Host{a, b}}
}

var nftBytes = regexp.MustCompile(`bytes (\d+)`)

// bytes is the total sent so far, both directions.
func (c *linkCounter) bytes(t testing.TB) int64 {
	var n int64
	for _, h := range c.hosts {
		out := benchMust(t, "nsenter", "--net=/run/netns/"+h.Netns, "nft", "list", "counter", "inet", "aptb_bench", "sent")
		mm := nftBytes.FindStringSubmatch(out)
		if mm == nil {
			t.Fatalf("%s: nft counter: %q", h.Name, out)
		}
		v, _ := strconv.ParseInt(mm[1], 10, 64)
		n += v
	}
	return n
}

// benchWriter sends INCR on one connection as fast as replies come, while
// it runs; every acknowledged write must be there at the end.
type benchWriter struct {
	c     *resp.Conn
	on    atomic.Bool
	acked atomic.Int64
	mu    sync.Mutex
	err   error
	quit  chan struct{}
	done  chan struct{}
}

func startBenchWriter(t *testing.T, bed *testbed.Bed, addr string) *benchWriter {
	w := &benchWriter{c: dialRedis(t, bed, addr), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.quit:
				return
			default:
			}
			if !w.on.Load() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			v, err := w.c.Do(2*time.Minute, []byte("INCR"), []byte("counter"))
			if err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				return
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			w.acked.Store(n)
		}
	}()
	return w
}

func (w *benchWriter) run(on bool) { w.on.Store(on) }

func (w *benchWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return fmt.Errorf("the writing client's connection broke: %w", w.err)
	}
	return nil
}

// finish stops the writer and checks that the server holds every write
// it acknowledged; it returns their number.
func (w *benchWriter) finish(t testing.TB) int64 {
	close(w.quit)
	<-w.done
	if err := w.failed(); err != nil {
		t.Fatal(err)
	}
	defer w.c.Close()
	acked := w.acked.Load()
	v, err := w.c.Cmd("GET", "counter")
	if err != nil {
		t.Fatal(err)
	}
	if acked > 0 && v != strconv.FormatInt(acked, 10) {
		t.Fatalf("counter %s, but %d writes were acknowledged", v, acked)
	}
	return acked
}

// redisArgs runs redis as in the autopod pod, without persistence.
func benchRedisArgs(dir string) []string {
	return []string{"--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no",
		"--dir", dir, "--dbfilename", "dump.rdb"}
}

// rawPod is a redis that no autopod manages: a bare process tree in a
// network namespace of its own, whose veth sits in a test-bed host's pod
// bridge, moved between hosts by the criu command line alone.
type rawPod struct {
	t    testing.TB
	criu string
	ip   string
	veth string // its veth's host end: the same name on either host
	img  string // images and logs, in tmpfs
	pid  int
	cmd  *exec.Cmd // the first process, until its first dump
	on   *testbed.Host
	n    int
}

// rawImages holds the raw pipeline's images; what a killed run left there
// goes at the next start.
const rawImages = "/dev/shm/aptb-bench-raw-"

func startRawPod(t testing.TB, bed *testbed.Bed, criu string, h *testbed.Host, last int) *rawPod {
	old, _ := filepath.Glob(rawImages + "*")
	for _, d := range old {
		killLeftover(filepath.Join(d, "pid"))
		os.RemoveAll(d)
	}
	img, err := os.MkdirTemp("/dev/shm", filepath.Base(rawImages))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(bed.Dir, "raw")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &rawPod{t: t, criu: criu, ip: testbed.PodAddr(last), veth: "aptb-raw", img: img, on: h}
	// A session leader (criu dumps no shell job) in a new network
	// namespace, in the root mount namespace: its files are the same on
	// both hosts, so only the namespace and the process move.
	r.cmd = exec.Command("/usr/bin/redis-server", benchRedisArgs(dir)...)
	r.cmd.Dir = dir
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWNET}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.pid = r.cmd.Process.Pid
	t.Cleanup(r.stop)
	r.notePid()
	pid := strconv.Itoa(r.pid)
	benchMust(t, "ip", "-n", h.Netns, "link", "add", r.veth, "type", "veth", "peer", "name", "eth0", "netns", pid)
	benchMust(t, "ip", "-n", h.Netns, "link", "set", r.veth, "master", "autopod0", "up")
	in := "--net=/proc/" + pid + "/ns/net"
	benchMust(t, "nsenter", in, "ip", "addr", "add", r.ip+"/24", "dev", "eth0")
	benchMust(t, "nsenter", in, "ip", "link", "set", "eth0", "up")
	benchMust(t, "nsenter", in, "ip", "link", "set", "lo", "up")
	return r
}

func (r *rawPod) addr() string { return r.ip + ":6379" }

// notePid records the redis's pid beside its images, so that the next run
// can end it if this one is killed before its clean-up.
func (r *rawPod) notePid() {
	os.WriteFile(filepath.Join(r.img, "pid"), []byte(strconv.Itoa(r.pid)), 0o644)
}

// killLeftover ends the raw pipeline's redis that a killed run left, by the
// pid it noted, if that process is still such a redis.
func killLeftover(pidfile string) {
	data, err := os.ReadFile(pidfile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	// redis rewrites its command line ("/usr/bin/redis-server 0.0.0.0:6379");
	// autopod's pods run redis too, but in cgroups of their own.
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	cgroups, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if strings.HasPrefix(string(cmdline), "/usr/bin/redis-server") && !strings.Contains(string(cgroups), "autopod") {
		unix.Kill(pid, unix.SIGKILL)
	}
}

// stop kills the redis and removes its images.
func (r *rawPod) stop() {
	if r.pid > 0 {
		unix.Kill(r.pid, unix.SIGKILL)
		r.reap()
	}
	os.RemoveAll(r.img)
}

// reap collects the dead redis: the first process is this process's
// child, and so is each restored one (criu restore --restore-sibling).
func (r *rawPod) reap() {
	if r.cmd != nil {
		r.cmd.Wait()
		r.cmd = nil
	} else {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var ws unix.WaitStatus
			if p, err := unix.Wait4(r.pid, &ws, unix.WNOHANG, nil); p == r.pid || errors.Is(err, unix.ECHILD) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	r.pid = 0
}

func (r *rawPod) criuFailed(op string, err error, out []byte, log string) error {
	data, _ := os.ReadFile(log)
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "Error") {
			lines = append(lines, l)
		}
	}
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return fmt.Errorf("criu %s: %w: %s\n%s\n(log %s)", op, err, strings.TrimSpace(string(out)), strings.Join(lines, "\n"), log)
}

// move is one trial: dump on the current host, copy, restore on to.
func (r *rawPod) move(to *testbed.Host) (benchkit.Sample, error) {
	from := r.on
	r.n++
	src := filepath.Join(r.img, fmt.Sprintf("%d-%s", r.n, from.Name))
	dst := filepath.Join(r.img, fmt.Sprintf("%d-%s", r.n, to.Name))
	logs := filepath.Join(r.img, "logs")
	pidfile := filepath.Join(logs, fmt.Sprintf("pid-%d", r.n))
	for _, d := range []string{src, dst, logs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	// The host end of the veth of an earlier stay there went with that
	// namespace; make sure, as criu restore creates it again.
	if _, err := benchRun("ip", "-n", to.Netns, "link", "show", r.veth); err == nil {
		benchRun("ip", "-n", to.Netns, "link", "del", r.veth)
	}
	defer os.RemoveAll(src)
	defer os.RemoveAll(dst)

	t0 := time.Now()
	dumpLog := fmt.Sprintf("dump-%d.log", r.n)
	out, err := exec.Command("nsenter", "--net=/run/netns/"+from.Netns, r.criu, "dump", "-t", strconv.Itoa(r.pid),
		"-D", src, "-W", logs, "-o", dumpLog, "-v4",
		"--tcp-established", "--file-locks", "--network-lock", "nftables", "--manage-cgroups=ignore").CombinedOutput()
	if err != nil {
		return nil, r.criuFailed("dump", err, out, filepath.Join(logs, dumpLog))
	}
	t1 := time.Now()
	r.reap()
	n, err := sendDir(from, to, src, dst)
	if err != nil {
		return nil, err
	}
	t2 := time.Now()
	restoreLog := fmt.Sprintf("restore-%d.log", r.n)
	out, err = exec.Command("nsenter", "--net=/run/netns/"+to.Netns, r.criu, "restore", "-d", "--restore-sibling",
		"-D", dst, "-W", logs, "-o", restoreLog, "-v4", "--pidfile", pidfile,
		"--tcp-established", "--file-locks", "--network-lock", "nftables", "--manage-cgroups=ignore",
		"--external", "veth[eth0]:"+r.veth+"@autopod0").CombinedOutput()
	if err != nil {
		return nil, r.criuFailed("restore", err, out, filepath.Join(logs, restoreLog))
	}
	raw, err := os.ReadFile(pidfile)
	if err != nil {
		return nil, err
	}
	if r.pid, err = strconv.Atoi(strings.TrimSpace(string(raw))); err != nil {
		return nil, fmt.Errorf("criu --pidfile: %q", raw)
	}
	r.on = to
	r.notePid()
	// Tell the LAN where the address went (its bridges still send its MAC
	// to the old port); arping waits a second after sending, so it is
	// started and left to finish.
	arp := exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(r.pid)+"/ns/net", "arping", "-q", "-U", "-c", "1", "-I", "eth0", r.ip)
	if err := arp.Start(); err != nil {
		return nil, err
	}
	t3 := time.Now()
	go arp.Wait()
	r.t.Logf("raw %s→%s: dump %s, copy %s (%d B), restore and ARP %s", from.Name, to.Name,
		t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), n, t3.Sub(t2).Round(time.Millisecond))
	return benchkit.Sample{"frozen": migMs(t3.Sub(t0)), "total": t3.Sub(t0).Seconds(),
		"p_dump": t1.Sub(t0).Seconds(), "p_copy": t2.Sub(t1).Seconds(), "p_restore": t3.Sub(t2).Seconds()}, nil
}

// sendDir copies the files of directory src on host from into dst on host
// to over one plain TCP connection, as a tar stream (what tar and nc would
// do), and returns the bytes of the files.
func sendDir(from, to *testbed.Host, src, dst string) (int64, error) {
	var l net.Listener
	if err := testbed.InNetns(to.Netns, func() (err error) {
		l, err = net.Listen("tcp", to.Addr+":0")
		return err
	}); err != nil {
		return 0, err
	}
	defer l.Close()
	got := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		got <- untarInto(bufio.NewReaderSize(c, 1<<20), dst)
	}()
	var n int64
	err := testbed.InNetns(from.Netns, func() error {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		bw := bufio.NewWriterSize(c, 1<<20)
		tw := tar.NewWriter(bw)
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		buf := make([]byte, 1<<20)
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			f, err := os.Open(filepath.Join(src, e.Name()))
			if err != nil {
				return err
			}
			fi, err := f.Stat()
			if err == nil {
				err = tw.WriteHeader(&tar.Header{Name: e.Name(), Mode: 0o600, Size: fi.Size(), Typeflag: tar.TypeReg})
			}
			if err == nil {
				_, err = io.CopyBuffer(tw, struct{ io.Reader }{f}, buf)
			}
			f.Close()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		if err := tw.Close(); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		c.(*net.TCPConn).CloseWrite()
		return <-got
	})
	return n, err
}

func untarInto(r io.Reader, dst string) error {
	tr := tar.NewReader(r)
	buf := make([]byte, 1<<20)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(dst, filepath.Base(h.Name)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.CopyBuffer(struct{ io.Writer }{f}, tr, buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
}

// coldRedis is redis in a network namespace of its own on a host's pod
// bridge; the namespace stays when redis restarts, as a service's would.
type coldRedis struct {
	t    testing.TB
	bed  *testbed.Bed
	ip   string
	dir  string
	cmd  *exec.Cmd
	netn string
}

func startColdRedis(t testing.TB, bed *testbed.Bed, h *testbed.Host, last int) *coldRedis {
	c := &coldRedis{t: t, bed: bed, ip: testbed.PodAddr(last), dir: filepath.Join(bed.Dir, "cold"), netn: "aptb-cold"}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// What a killed run left: redis in this namespace, and the namespace.
	if out, err := benchRun("ip", "netns", "pids", c.netn); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	benchRun("ip", "netns", "del", c.netn)
	benchMust(t, "ip", "netns", "add", c.netn)
	t.Cleanup(func() {
		c.kill()
		benchRun("ip", "netns", "del", c.netn)
	})
	benchMust(t, "ip", "-n", h.Netns, "link", "add", "aptb-cold", "type", "veth", "peer", "name", "eth0", "netns", c.netn)
	benchMust(t, "ip", "-n", h.Netns, "link", "set", "aptb-cold", "master", "autopod0", "up")
	benchMust(t, "ip", "-n", c.netn, "addr", "add", c.ip+"/24", "dev", "eth0")
	benchMust(t, "ip", "-n", c.netn, "link", "set", "eth0", "up")
	benchMust(t, "ip", "-n", c.netn, "link", "set", "lo", "up")
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *coldRedis) addr() string { return c.ip + ":6379" }

func (c *coldRedis) start() error {
	// nsenter enters the namespace and becomes redis.
	c.cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + c.netn, "/usr/bin/redis-server"}, benchRedisArgs(c.dir)...)...)
	c.cmd.Dir = c.dir
	return c.cmd.Start()
}

func (c *coldRedis) kill() {
	if c.cmd != nil {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		c.cmd = nil
	}
}

// restart is one trial: SAVE, stop redis (SIGTERM), start it again, until
// it has loaded the RDB file and answers.
func (c *coldRedis) restart() (benchkit.Sample, error) {
	nc, err := c.bed.Dial(context.Background(), c.addr())
	if err != nil {
		return nil, err
	}
	ctl := resp.New(nc)
	t0 := time.Now()
	_, err = ctl.Do(10*time.Minute, []byte("SAVE"))
	ctl.Close()
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	c.cmd.Process.Signal(syscall.SIGTERM)
	c.cmd.Wait()
	c.cmd = nil
	if err := c.start(); err != nil {
		return nil, err
	}
	dial := func(ctx context.Context) (net.Conn, error) { return c.bed.Dial(ctx, c.addr()) }
	if err := benchkit.WaitReady(dial, c.addr(), 5*time.Minute); err != nil {
		return nil, err
	}
	t2 := time.Now()
	var rdb int64
	if fi, err := os.Stat(filepath.Join(c.dir, "dump.rdb")); err == nil {
		rdb = fi.Size()
	}
	c.t.Logf("cold restart: SAVE %s (RDB %d B), stop, start and load %s", t1.Sub(t0).Round(time.Millisecond), rdb, t2.Sub(t1).Round(time.Millisecond))
	return benchkit.Sample{"frozen": migMs(t2.Sub(t0)), "total": t2.Sub(t0).Seconds(), "p_dump": t1.Sub(t0).Seconds(), "p_restore": t2.Sub(t1).Seconds()}, nil
}

// plainCopy sends n bytes from host a to host b over one TCP connection
// and returns the seconds it took, until b has read them all.
func plainCopy(a, b *testbed.Host, n int64) (float64, error) {
	var l net.Listener
	if err := testbed.InNetns(b.Netns, func() (err error) {
		l, err = net.Listen("tcp", b.Addr+":0")
		return err
	}); err != nil {
		return 0, err
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(io.Discard, c)
		c.Close()
		done <- err
	}()
	var took time.Duration
	err := testbed.InNetns(a.Netns, func() error {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		start := time.Now()
		for sent := int64(0); sent < n; sent += int64(len(buf)) {
			if _, err := c.Write(buf[:min(int64(len(buf)), n-sent)]); err != nil {
				return err
			}
		}
		c.(*net.TCPConn).CloseWrite()
		err = <-done
		took = time.Since(start)
		return err
	})
	return took.Seconds(), err
}
