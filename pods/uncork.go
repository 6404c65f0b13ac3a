package pods

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CRIU corks its page-server connections (TCP_CORK, set once when a
// connection opens) and pushes only what it thinks is urgent: a page
// request, the pages that answer it. The last message of a connection,
// the client's "close" and the server's one-word answer to it, is left
// corked, and the kernel holds a corked partial segment for up to 200 ms.
// Across the relay that is twice 200 ms at the end of every post-copy
// migration (the lazy-pages daemon cannot exit before the answer), and
// 200 ms inside the freeze of every stop-and-copy dump (its pages' last
// partial segment and its "close"). Uncorking the socket once CRIU has
// corked it makes each message go at once; CRIU never corks it again.

// uncorkCriuEnd finds the socket at the other end of c, a loopback
// connection between this agent and a CRIU process it started (criu is the
// binary's path), and clears TCP_CORK on it and sets TCP_NODELAY (through
// a copy of the socket taken with pidfd_getfd). It reports whether it found
// the socket. Call it once CRIU has sent something on the connection: CRIU
// corks right after connecting, or, as a server, before it reads.
func uncorkCriuEnd(c *net.TCPConn, criu string) (bool, error) {
	fd, err := otherEnd(c, criu)
	if fd < 0 {
		return false, err
	}
	defer unix.Close(fd)
	return true, errors.Join(
		os.NewSyscallError("setsockopt TCP_CORK", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, 0)),
		os.NewSyscallError("setsockopt TCP_NODELAY", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)))
}

// otherEnd returns a copy (pidfd_getfd) of the socket at the other end of
// c, a loopback connection to a process this one started from the binary
// exe, or -1 when none of them has it.
func otherEnd(c *net.TCPConn, exe string) (int, error) {
	local, ok1 := c.LocalAddr().(*net.TCPAddr)
	remote, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return -1, errors.New("not a TCP connection")
	}
	var errs []error
	for _, pid := range childrenRunning(exe) {
		fd, err := socketIn(pid, remote, local)
		if err != nil {
			errs = append(errs, fmt.Errorf("process %d: %w", pid, err))
		}
		if fd >= 0 {
			return fd, nil
		}
	}
	return -1, errors.Join(errs...)
}

// socketIn returns a copy of pid's socket bound to self and connected to
// peer, or -1.
func socketIn(pid int, self, peer *net.TCPAddr) (int, error) {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return -1, err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, os.NewSyscallError("pidfd_open", err)
	}
	defer unix.Close(pidfd)
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue
		}
		target, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, target, 0)
		if err != nil {
			return -1, os.NewSyscallError("pidfd_getfd", err)
		}
		if sockIs(fd, self, peer) {
			return fd, nil
		}
		unix.Close(fd)
	}
	return -1, nil
}

// sockIs reports whether fd is a TCP socket bound to self and connected to
// peer.
func sockIs(fd int, self, peer *net.TCPAddr) bool {
	sa, err := unix.Getsockname(fd)
	if err != nil || !sameAddr(sa, self) {
		return false
	}
	pa, err := unix.Getpeername(fd)
	return err == nil && sameAddr(pa, peer)
}

func sameAddr(sa unix.Sockaddr, a *net.TCPAddr) bool {
	switch s := sa.(type) {
	case *unix.SockaddrInet4:
		return s.Port == a.Port && net.IP(s.Addr[:]).Equal(a.IP)
	case *unix.SockaddrInet6:
		return s.Port == a.Port && net.IP(s.Addr[:]).Equal(a.IP)
	}
	return false
}
