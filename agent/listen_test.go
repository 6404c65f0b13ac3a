package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const peerTestVersion = "1.2.3-test"

var wantPeerBanner = "autopod " + peerTestVersion + " peer-protocol=0 not-ready\n"

// Environment of the child running TestHelperPeerListener.
const (
	peerChildEnv       = "AUTOPOD_TEST_PEER_HELPER"
	peerChildSetPIDEnv = "AUTOPOD_TEST_SET_LISTEN_PID"
)

var listenEnvVars = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}

// TestHelperPeerListener is not a test: it is the agent side of the socket
// activation tests, run as a child process (as in go-systemd's activation tests)
// because the passed socket must be fd 3 and LISTEN_PID must name the process that
// calls PeerListener. It prints one "peer-child: ..." line on stdout, then serves peers
// until SIGTERM.
func TestHelperPeerListener(t *testing.T) {
	if os.Getenv(peerChildEnv) != "1" {
		t.Skip("child process of the socket activation tests")
	}
	// Only systemd (or systemd-socket-activate) knows the pid it execs, so a Go
	// parent that starts us with exec.Cmd cannot; it asks us to fill in our own.
	if os.Getenv(peerChildSetPIDEnv) == "1" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	l, activated, err := PeerListener(0)
	var left []string
	for _, v := range listenEnvVars {
		if _, ok := os.LookupEnv(v); ok {
			left = append(left, v)
		}
	}
	if err != nil {
		fmt.Printf("peer-child: error=%q env-left=%q\n", err.Error(), left)
		return
	}
	fmt.Printf("peer-child: activated=%t addr=%s env-left=%q\n", activated, l.Addr(), left)
	ServePeers(ctx, l, peerTestVersion, slog.New(slog.NewTextHandler(os.Stderr, nil)))
}

// peerChild is a running TestHelperPeerListener child.
type peerChild struct {
	cmd     *exec.Cmd
	line    chan string    // its "peer-child: ..." line
	readers sync.WaitGroup // goroutines reading its pipes

	mu     sync.Mutex
	output []string // everything else it printed, shown if the test fails
}

// startPeerChild starts cmd and collects its output; a caller that took cmd's
// StderrPipe reads it with h.read.
func startPeerChild(t *testing.T, cmd *exec.Cmd) *peerChild {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	h := &peerChild{cmd: cmd, line: make(chan string, 1)}
	h.read(stdout, func(l string) {
		if strings.HasPrefix(l, "peer-child: ") {
			h.line <- l
		} else {
			h.note(l) // go test's own output: PASS, FAIL and why
		}
	})
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			h.wait()
		}
		if t.Failed() {
			h.mu.Lock()
			t.Logf("child output:\n%s", strings.Join(h.output, "\n"))
			h.mu.Unlock()
		}
	})
	return h
}

func (h *peerChild) note(line string) {
	h.mu.Lock()
	h.output = append(h.output, line)
	h.mu.Unlock()
}

// read hands each line of r to fn until EOF.
func (h *peerChild) read(r io.Reader, fn func(line string)) {
	h.readers.Add(1)
	go func() {
		defer h.readers.Done()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			fn(sc.Text())
		}
	}()
}

// wait reaps the child; exec.Cmd wants its pipes read to the end first.
func (h *peerChild) wait() error {
	h.readers.Wait()
	return h.cmd.Wait()
}

func (h *peerChild) result(t *testing.T) string {
	t.Helper()
	select {
	case l := <-h.line:
		return l
	case <-time.After(30 * time.Second):
		t.Fatal("child printed no result")
		return ""
	}
}

// stop ends the child the way systemd stops the agent and checks that ServePeers
// returned on cancel and the child exited cleanly.
func (h *peerChild) stop(t *testing.T) {
	t.Helper()
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- h.wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("child after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("child did not stop on SIGTERM")
	}
}

// peerChildCmd runs this test binary's TestHelperPeerListener via argv (which may
// start with a wrapper such as systemd-socket-activate).
func peerChildCmd(ctx context.Context, argv ...string) *exec.Cmd {
	argv = append(argv, os.Args[0], "-test.run=^TestHelperPeerListener$", "-test.count=1")
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// envWithoutListen is the test's environment without any LISTEN_* of its own.
func envWithoutListen() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") {
			env = append(env, kv)
		}
	}
	return env
}

// readPeerBanner talks to a peer server like a client that speaks first, then reads
// everything up to the server's close.
func readPeerBanner(t *testing.T, conn net.Conn) string {
	t.Helper()
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	// Unread input makes a careless server's close a reset that eats the banner.
	if _, err := conn.Write([]byte("hello from a peer of the future\n")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading banner: %v (got %q)", err, got)
	}
	return string(got)
}

// The go-systemd way: a listening socket inherited as fd 3 with LISTEN_FDS=1 and
// LISTEN_FDNAMES=peer, the way systemd starts autopod.service from autopod.socket.
func TestPeerListenerActivated(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}

	cmd := peerChildCmd(t.Context())
	cmd.ExtraFiles = []*os.File{f} // fd 3
	cmd.Env = append(envWithoutListen(), peerChildEnv+"=1", peerChildSetPIDEnv+"=1",
		"LISTEN_FDS=1", "LISTEN_FDNAMES=peer")
	h := startPeerChild(t, cmd)
	// Only the child holds the socket from here on, so whatever answers is the child.
	f.Close()
	ln.Close()

	want := fmt.Sprintf("peer-child: activated=true addr=%s env-left=[]", addr)
	if got := h.result(t); got != want {
		t.Fatalf("child said %q, want %q", got, want)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if got := readPeerBanner(t, conn); got != wantPeerBanner {
		t.Errorf("banner %q, want %q", got, wantPeerBanner)
	}
	h.stop(t)
}

// A socket under another name is a misconfigured unit, reported as such, not
// ignored in favour of a port of our own.
func TestPeerListenerActivatedWrongName(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	cmd := peerChildCmd(t.Context())
	cmd.ExtraFiles = []*os.File{f}
	cmd.Env = append(envWithoutListen(), peerChildEnv+"=1", peerChildSetPIDEnv+"=1",
		"LISTEN_FDS=1", "LISTEN_FDNAMES=control")
	h := startPeerChild(t, cmd)
	got := h.result(t)
	if !strings.HasPrefix(got, "peer-child: error=") || !strings.Contains(got, `\"peer\"`) ||
		!strings.HasSuffix(got, "env-left=[]") {
		t.Fatalf("child said %q, want an error naming %q and no LISTEN_* left", got, "peer")
	}
	if err := h.wait(); err != nil {
		t.Fatalf("peer-child: %v", err)
	}
}

// The realest test short of systemd as PID 1: systemd's own systemd-socket-activate
// binds the port, waits for the first connection, then execs the agent with
// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES exactly as systemd sets them. The
// connection that arrives before the agent exists must be answered by it.
func TestPeerListenerSystemdSocketActivate(t *testing.T) {
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (it comes with the systemd package); the go-systemd style test above still covers activation")
	}

	// systemd-socket-activate cannot bind port 0, so borrow a free port; another
	// process may grab it in between, hence the retries.
	var h *peerChild
	var addr string
	for attempt := 0; h == nil && attempt < 5; attempt++ {
		addr = freeTCPAddr(t)
		cmd := peerChildCmd(t.Context(), ssa, "--listen="+addr, "--fdname=peer", "--setenv="+peerChildEnv+"=1")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		hh := startPeerChild(t, cmd)
		if waitSocketActivate(t, hh, stderr, addr) {
			h = hh
		} else {
			cmd.Process.Kill()
			hh.wait()
		}
	}
	if h == nil {
		t.Fatal("systemd-socket-activate never listened")
	}

	// No agent runs yet: this connection makes systemd-socket-activate exec it.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("peer-child: activated=true addr=%s env-left=[]", addr)
	if got := h.result(t); got != want {
		t.Fatalf("child said %q, want %q", got, want)
	}
	if got := readPeerBanner(t, conn); got != wantPeerBanner {
		t.Errorf("banner %q, want %q", got, wantPeerBanner)
	}
	// And the agent keeps serving the activated socket.
	conn, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if got := readPeerBanner(t, conn); got != wantPeerBanner {
		t.Errorf("second banner %q, want %q", got, wantPeerBanner)
	}
	h.stop(t) // systemd-socket-activate exec'd the child: same pid
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitSocketActivate reads systemd-socket-activate's stderr until it reports the socket
// bound (true) or fails (false); the stderr of both it and, after the exec, the
// child goes to h's output.
func waitSocketActivate(t *testing.T, h *peerChild, stderr io.Reader, addr string) bool {
	t.Helper()
	res := make(chan bool, 1)
	reported := false
	h.read(stderr, func(l string) {
		h.note(l)
		if !reported && strings.HasPrefix(l, "Listening on "+addr) {
			reported = true
			res <- true
		}
	})
	go func() {
		// Exited without binding: tell the caller now rather than at the timeout.
		h.readers.Wait()
		if !reported {
			res <- false
		}
	}()
	select {
	case ok := <-res:
		return ok
	case <-time.After(30 * time.Second):
		t.Fatal("systemd-socket-activate said neither that it listens nor why not")
		return false
	}
}

// Without systemd: PeerListener listens itself, and it still clears LISTEN_* that
// were meant for another process (inherited from an activated parent).
func TestPeerListenerNotActivated(t *testing.T) {
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()+1))
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_FDNAMES", "peer")

	l, activated, err := PeerListener(0)
	if err != nil {
		t.Fatal(err)
	}
	if activated {
		t.Error("activated = true without a socket from systemd")
	}
	for _, v := range listenEnvVars {
		if val, ok := os.LookupEnv(v); ok {
			t.Errorf("%s=%q still set; pods would inherit it", v, val)
		}
	}
	port := l.Addr().(*net.TCPAddr).Port
	if port == 0 {
		t.Fatalf("listening on %v, want a real port", l.Addr())
	}

	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan struct{})
	go func() {
		defer close(served)
		ServePeers(ctx, l, peerTestVersion, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	}()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for range 3 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := readPeerBanner(t, conn); got != wantPeerBanner {
			t.Errorf("banner %q, want %q", got, wantPeerBanner)
		}
	}

	// A client that connects and never closes must not hold up shutdown.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	cancel()
	select {
	case <-served:
	case <-time.After(peerGreetTimeout / 2):
		t.Fatal("ServePeers did not return promptly after cancel")
	}
	if conn, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
		conn.Close()
		t.Error("listener still accepts after ServePeers returned")
	}
}

func TestPeerListenerBadPort(t *testing.T) {
	for _, port := range []int{-1, 65536} {
		if l, _, err := PeerListener(port); err == nil {
			l.Close()
			t.Errorf("PeerListener(%d) succeeded", port)
		}
	}
}

// The peer protocol itself (TLS, migration) is served by Peers.Serve; these
// tests only need a listener that proves it was handed over, so the
// activated child greets each connection with a banner line.

// ServePeers answers peer connections on l until ctx is done, then closes l and
// every open peer connection and returns. l belongs to ServePeers from the call on.
//
// The peer protocol (TLS, migration) does not exist yet. Until it does, every
// connection gets one line, "autopod VERSION peer-protocol=0 not-ready", and is
// closed: enough to see that socket activation works, and honest that nothing else
// does, so no peer mistakes this host for one it can migrate to.
func ServePeers(ctx context.Context, l net.Listener, version string, log *slog.Logger) {
	banner := []byte(fmt.Sprintf("autopod %s peer-protocol=0 not-ready\n", version))
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()

	var wg sync.WaitGroup
	defer wg.Wait()

	var backoff time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				log.Error("peer listener closed; no longer serving peers", "addr", l.Addr().String())
				return
			}
			// Running out of descriptors and the like are transient; retrying at
			// once would only spin and flood the journal.
			backoff = min(max(2*backoff, 5*time.Millisecond), maxAcceptBackoff)
			log.Warn("accepting peer connection", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		wg.Go(func() { greetPeer(ctx, conn, banner, log) })
	}
}

func greetPeer(ctx context.Context, conn net.Conn, banner []byte, log *slog.Logger) {
	defer conn.Close()
	// Shutting down does not wait for slow peers.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	log.Debug("peer connected; peer protocol not implemented yet", "remote", conn.RemoteAddr().String())
	if err := conn.SetDeadline(time.Now().Add(peerGreetTimeout)); err != nil {
		log.Warn("peer connection", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	if _, err := conn.Write(banner); err != nil {
		log.Debug("writing peer banner", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	// Closing a TCP socket with unread input sends RST, and the peer may then lose the
	// banner: a future client that speaks first would see "connection reset" instead
	// of "not-ready". So send FIN first and drain until the peer closes its side.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
		}
	}
}
