//go:build e2e

package vm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Image is a cache entry made by scripts/vm-image.sh.
type Image struct {
	Dir    string
	Disk   string // raw ext4 root; never written, guests boot copies
	Kernel string
	Initrd string
	Key    string // ssh private key root accepts
}

// BuildImage runs scripts/vm-image.sh (a no-op when the cache has the
// image) and returns the entry. The script's progress goes to the test log.
func BuildImage(ctx context.Context, t *testing.T, repo string) *Image {
	t.Helper()
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "scripts", "vm-image.sh"))
	progress := &lineLogger{t: t}
	cmd.Stdout, cmd.Stderr = &stdout, progress
	err := cmd.Run()
	progress.flush()
	if err != nil {
		t.Fatalf("scripts/vm-image.sh: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := lines[len(lines)-1]
	img := &Image{Dir: dir, Disk: filepath.Join(dir, "disk.raw"), Kernel: filepath.Join(dir, "vmlinuz"),
		Initrd: filepath.Join(dir, "initrd.img"), Key: filepath.Join(dir, "id_ed25519")}
	for _, f := range []string{img.Disk, img.Kernel, img.Initrd, img.Key} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("image entry %s is incomplete: %v", dir, err)
		}
	}
	return img
}

// lineLogger sends a command's output to the test log line by line, as it
// comes (a cache miss takes minutes).
type lineLogger struct {
	t   *testing.T
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.t.Log(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
}

func (l *lineLogger) flush() {
	if len(l.buf) > 0 {
		l.t.Log(string(l.buf))
		l.buf = nil
	}
}

// Link is a private L2 segment between two guests: a qemu UDP socket netdev
// on loopback. It survives either side's restart (the TCP variant does not).
type Link struct {
	PortA, PortB int // UDP ports on 127.0.0.1 where guest A and B receive
}

// NewLink picks two free UDP ports on loopback.
func NewLink(t *testing.T) Link {
	t.Helper()
	a, err := freePort("udp")
	if err != nil {
		t.Fatal(err)
	}
	b, err := freePort("udp")
	if err != nil {
		t.Fatal(err)
	}
	return Link{PortA: a, PortB: b}
}

// GuestConfig describes one guest. Index (1, 2, …) makes MAC addresses
// unique; LinkAddr is its address on the private link (e.g. 10.44.0.1/24).
type GuestConfig struct {
	Name     string
	Index    int
	Image    *Image
	Link     Link
	Side     int // 0: guest A of Link, 1: guest B
	LinkAddr string
	// Bridge, if set, is a bridge (autopod's pod bridge) that carries the
	// link NIC and holds LinkAddr, so that pods are on the link.
	Bridge    string
	MemoryMiB int // default 1024
}

// Guest is a qemu TCG guest booted from a sparse copy of an Image, with
// ssh on a forwarded loopback port. Every process and file it makes is
// removed at test cleanup.
type Guest struct {
	t       *testing.T
	cfg     GuestConfig
	dir     string
	disk    string
	kernel  string
	initrd  string
	sshPort int
	ctl     string // ssh ControlPath

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	booted  chan string // kernel release from the BOOTED marker
	Kernel  string      // release the guest last booted
	console *os.File
	boots   int
}

var bootedRE = regexp.MustCompile(`BOOTED ([0-9][^\s]*)`)

// Boot copies the image and boots the guest, waiting for the BOOTED marker
// on its serial console. It may be called from any goroutine; the guest is
// destroyed at test cleanup, even when Boot fails.
func Boot(ctx context.Context, t *testing.T, cfg GuestConfig) (*Guest, error) {
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
	}
	dir, err := os.MkdirTemp("", "autopod-e2e-"+cfg.Name+"-")
	if err != nil {
		return nil, err
	}
	g := &Guest{t: t, cfg: cfg, dir: dir, disk: filepath.Join(dir, "disk.raw"),
		kernel: cfg.Image.Kernel, initrd: cfg.Image.Initrd, ctl: filepath.Join(dir, "ssh.ctl")}
	t.Cleanup(g.destroy)
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", cfg.Image.Disk, g.disk).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy image for %s: %w\n%s", cfg.Name, err, out)
	}
	if g.sshPort, err = freePort("tcp"); err != nil {
		return nil, err
	}
	if err := g.start(ctx); err != nil {
		return nil, err
	}
	if err := g.waitBooted(ctx, 5*time.Minute); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *Guest) macUser() string { return fmt.Sprintf("52:54:00:12:34:%02x", g.cfg.Index) }
func (g *Guest) macLink() string { return fmt.Sprintf("52:54:00:44:00:%02x", g.cfg.Index) }

func (g *Guest) start(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.boots++
	local, remote := g.cfg.Link.PortA, g.cfg.Link.PortB
	if g.cfg.Side == 1 {
		local, remote = remote, local
	}
	kargs := []string{
		"console=ttyS0", "root=/dev/vda", "rw", "panic=5",
		"systemd.hostname=" + g.cfg.Name,
		"autopod.e2e.gw=10.0.2.2",
	}
	if g.cfg.Bridge != "" {
		kargs = append(kargs, fmt.Sprintf("autopod.e2e.net=%s=10.0.2.15/24", g.macUser()),
			fmt.Sprintf("autopod.e2e.bridge=%s=%s=%s", g.cfg.Bridge, g.macLink(), g.cfg.LinkAddr))
	} else {
		kargs = append(kargs, fmt.Sprintf("autopod.e2e.net=%s=10.0.2.15/24,%s=%s", g.macUser(), g.macLink(), g.cfg.LinkAddr))
	}
	appendArgs := strings.Join(kargs, " ")
	args := []string{
		"-name", g.cfg.Name,
		"-accel", "tcg,thread=multi", "-smp", "1", "-m", fmt.Sprint(g.cfg.MemoryMiB),
		"-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
		"-kernel", g.kernel, "-initrd", g.initrd, "-append", appendArgs,
		"-drive", "file=" + g.disk + ",format=raw,if=virtio,cache=unsafe",
		"-netdev", fmt.Sprintf("user,id=u,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", g.sshPort),
		"-device", "virtio-net-pci,netdev=u,mac=" + g.macUser(),
		"-netdev", fmt.Sprintf("socket,id=l,udp=127.0.0.1:%d,localaddr=127.0.0.1:%d", remote, local),
		"-device", "virtio-net-pci,netdev=l,mac=" + g.macLink(),
	}
	console, err := os.OpenFile(filepath.Join(g.dir, fmt.Sprintf("console-%d.log", g.boots)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	// Not CommandContext: the guest outlives the call that boots it.
	cmd := exec.Command("qemu-system-x86_64", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		console.Close()
		return err
	}
	cmd.Stderr = console
	if err := cmd.Start(); err != nil {
		console.Close()
		return fmt.Errorf("start qemu for %s: %w", g.cfg.Name, err)
	}
	g.cmd, g.console = cmd, console
	g.exited = make(chan struct{})
	g.booted = make(chan string, 1)
	exited, booted := g.exited, g.booted
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(console, line)
			if m := bootedRE.FindStringSubmatch(line); m != nil {
				select {
				case booted <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		console.Close()
		close(exited)
	}()
	return nil
}

func (g *Guest) waitBooted(ctx context.Context, limit time.Duration) error {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case k := <-g.booted:
		g.Kernel = k
		g.t.Logf("%s: booted kernel %s", g.cfg.Name, k)
		return nil
	case <-g.exited:
		return fmt.Errorf("%s: qemu exited before the guest booted (%v)\n%s", g.cfg.Name, g.cmd.ProcessState, g.consoleTail(40))
	case <-timer.C:
		return fmt.Errorf("%s: no BOOTED marker within %v\n%s", g.cfg.Name, limit, g.consoleTail(40))
	case <-ctx.Done():
		return fmt.Errorf("%s: waiting for boot: %w", g.cfg.Name, ctx.Err())
	}
}

func (g *Guest) consoleTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(g.dir, fmt.Sprintf("console-%d.log", g.boots)))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "console (last lines):\n" + strings.Join(lines, "\n")
}

func (g *Guest) sshArgs() []string {
	return []string{
		"-i", g.cfg.Image.Key, "-p", fmt.Sprint(g.sshPort),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=90",
		"-o", "ControlMaster=auto", "-o", "ControlPath=" + g.ctl, "-o", "ControlPersist=15m",
		"-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=6",
		"root@127.0.0.1",
	}
}

// Run runs a shell command in the guest as root and returns its stdout; the
// error carries stderr and the exit status. The first call opens the shared
// connection (10-20 s under TCG), later ones take a fraction of a second.
func (g *Guest) Run(ctx context.Context, command string) (string, error) {
	return g.RunInput(ctx, nil, command)
}

// RunInput is Run with stdin.
func (g *Guest) RunInput(ctx context.Context, stdin io.Reader, command string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ssh", append(g.sshArgs(), command)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %q: %w\nstdout:\n%s\nstderr:\n%s", g.cfg.Name, command, err,
			lastLines(stdout.String(), 20), lastLines(stderr.String(), 30))
	}
	return stdout.String(), nil
}

// MustRun is Run that fails the test.
func (g *Guest) MustRun(ctx context.Context, command string) string {
	g.t.Helper()
	out, err := g.Run(ctx, command)
	if err != nil {
		g.t.Fatal(err)
	}
	return out
}

// WaitSSH retries until ssh answers (sshd may still be starting when the
// marker appears on a slow boot).
func (g *Guest) WaitSSH(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		_, err := g.Run(ctx, "true")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("ssh to %s did not answer within %v: %w", g.cfg.Name, limit, err)
		}
		time.Sleep(2 * time.Second)
	}
}

// CopyIn copies a host file to path in the guest (over the shared ssh
// connection; no sftp server needed).
func (g *Guest) CopyIn(ctx context.Context, local, remote string) error {
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = g.RunInput(ctx, f, "cat >"+shellQuote(remote))
	return err
}

// Reboot reboots the guest with `systemctl reboot` and boots it again
// (see Restart); it returns the kernel release that booted.
func (g *Guest) Reboot(ctx context.Context) (string, error) {
	g.Run(ctx, "systemctl reboot") // the connection may drop before it answers
	return g.Restart(ctx, 3*time.Minute)
}

// Exited is closed when the guest's qemu exits (the guest rebooted or
// powered off: qemu runs with -no-reboot).
func (g *Guest) Exited() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.exited
}

// Restart waits up to limit for the guest to go down (a reboot that it, or
// something in it, started) and boots it again the way a host boots: qemu
// runs with -no-reboot and exits; the newest kernel and initramfs in the
// guest's /boot are read from its disk with debugfs (standing in for the
// boot loader) and qemu is started again. It returns the kernel release
// that booted.
func (g *Guest) Restart(ctx context.Context, limit time.Duration) (string, error) {
	select {
	case <-g.Exited():
	case <-time.After(limit):
		return "", fmt.Errorf("%s: qemu did not exit (the guest did not reboot) within %v", g.cfg.Name, limit)
	case <-ctx.Done():
		return "", ctx.Err()
	}
	g.closeSSH()
	kver, err := g.newestKernel(ctx)
	if err != nil {
		return "", err
	}
	g.kernel = filepath.Join(g.dir, "vmlinuz-"+kver)
	g.initrd = filepath.Join(g.dir, "initrd.img-"+kver)
	for src, dst := range map[string]string{"/boot/vmlinuz-" + kver: g.kernel, "/boot/initrd.img-" + kver: g.initrd} {
		if out, err := exec.CommandContext(ctx, "debugfs", "-R", fmt.Sprintf("dump %s %s", src, dst), g.disk).CombinedOutput(); err != nil {
			return "", fmt.Errorf("debugfs dump %s: %w\n%s", src, err, out)
		}
		if st, err := os.Stat(dst); err != nil || st.Size() == 0 {
			return "", fmt.Errorf("debugfs did not extract %s from %s", src, g.disk)
		}
	}
	if err := g.start(ctx); err != nil {
		return "", err
	}
	if err := g.waitBooted(ctx, 5*time.Minute); err != nil {
		return "", err
	}
	return g.Kernel, nil
}

// newestKernel lists the disk's /boot with debugfs and returns the highest
// release that has both a vmlinuz and an initrd.img.
func (g *Guest) newestKernel(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "ls -p /boot", g.disk).Output()
	if err != nil {
		return "", fmt.Errorf("debugfs ls /boot on %s: %w", g.disk, err)
	}
	have := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		// ls -p: /inode/mode/uid/gid/name/size/
		f := strings.Split(line, "/")
		if len(f) < 6 {
			continue
		}
		name := f[5]
		for _, p := range []string{"vmlinuz-", "initrd.img-"} {
			if strings.HasPrefix(name, p) {
				have[strings.TrimPrefix(name, p)]++
			}
		}
	}
	var vers []string
	for v, n := range have {
		if n == 2 {
			vers = append(vers, v)
		}
	}
	if len(vers) == 0 {
		return "", fmt.Errorf("no kernel with an initramfs in %s's /boot:\n%s", g.cfg.Name, out)
	}
	cmd := exec.CommandContext(ctx, "sort", "-V")
	cmd.Stdin = strings.NewReader(strings.Join(vers, "\n") + "\n")
	res, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("sort -V: %w", err)
	}
	l := strings.Split(strings.TrimSpace(string(res)), "\n")
	return l[len(l)-1], nil
}

func (g *Guest) closeSSH() {
	exec.Command("ssh", append([]string{"-O", "exit"}, g.sshArgs()...)...).Run()
	os.Remove(g.ctl)
}

// destroy stops qemu (killing it: the disk is thrown away) and removes the
// guest's directory.
func (g *Guest) destroy() {
	g.closeSSH()
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				g.t.Errorf("%s: qemu (pid %d) did not exit after SIGKILL", g.cfg.Name, cmd.Process.Pid)
			}
		}
	}
	if g.t.Failed() {
		g.t.Logf("%s: %s", g.cfg.Name, g.consoleTail(30))
	}
	if os.Getenv("AUTOPOD_E2E_KEEP") != "" {
		g.t.Logf("%s: kept %s (AUTOPOD_E2E_KEEP)", g.cfg.Name, g.dir)
		return
	}
	os.RemoveAll(g.dir)
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before qemu binds it; on a test machine that is unlikely.
func freePort(network string) (int, error) {
	if network == "tcp" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
