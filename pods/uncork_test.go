package pods

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// corkedClientEnv makes the test binary a client that behaves like CRIU on
// a page-server connection: it connects to the address, corks the socket,
// writes a short message (which the kernel then holds), says "corked" on
// stdout and waits to be killed.
const corkedClientEnv = "AUTOPOD_TEST_CORKED_CLIENT"

func corkedClient(addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	rc, _ := c.(*net.TCPConn).SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 0)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1)
		}
	})
	if serr != nil {
		fmt.Println("cork:", serr)
		os.Exit(1)
	}
	if _, err := c.Write([]byte("close")); err != nil {
		fmt.Println("write:", err)
		os.Exit(1)
	}
	fmt.Println("corked")
	time.Sleep(time.Minute)
	os.Exit(0)
}

// startCorkedClient runs the test binary as a corked client of a new
// listener and returns the agent's end of its connection.
func startCorkedClient(t *testing.T, exe string) *net.TCPConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), corkedClientEnv+"="+l.Addr().String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "corked\n" {
		t.Fatalf("corked client said %q (%v)", line, err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// corkOf reads TCP_CORK of the client's end of c, through its process
// (a child running exe).
func corkOf(t *testing.T, c *net.TCPConn, exe string) int {
	t.Helper()
	fd, err := otherEnd(c, exe)
	if fd < 0 {
		t.Fatalf("the client's socket is not in any child process (%v)", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestUncorkCriuEnd: the agent uncorks the other end of a loopback
// connection in a process it started from the given binary, so that what
// that end holds corked comes at once; a process of another binary is left
// alone.
func TestUncorkCriuEnd(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	other := startCorkedClient(t, exe)
	found, err := uncorkCriuEnd(other, "/bin/true")
	if found || err != nil {
		t.Fatalf("uncork in a process of another binary: found %v, err %v", found, err)
	}
	if v := corkOf(t, other, exe); v != 1 {
		t.Fatalf("TCP_CORK %d in a process of another binary, want 1 (left alone)", v)
	}

	c := startCorkedClient(t, exe)
	if v := corkOf(t, c, exe); v != 1 {
		t.Fatalf("TCP_CORK %d before, want 1", v)
	}
	found, err = uncorkCriuEnd(c, exe)
	if !found || err != nil {
		t.Fatalf("uncork: found %v, err %v", found, err)
	}
	if v := corkOf(t, c, exe); v != 0 {
		t.Fatalf("TCP_CORK %d after, want 0", v)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "close" {
		t.Fatalf("read %q, %v; want the held message", buf, err)
	}
}
