package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// peerFDName is FileDescriptorName= in units/autopod.socket.
const peerFDName = "peer"

// PeerListener returns the listener for peer hosts. Under socket activation it is
// the socket systemd passed under the name "peer" (autopod.socket), and activated is
// true; otherwise PeerListener listens on TCP port itself, on all addresses (0 picks
// a free port). Under activation port is ignored: the socket unit decides.
//
// It always removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment
// and marks passed descriptors close-on-exec, so that neither criu, the package
// manager nor the pods inherit them. That also makes it the only consumer of socket
// activation in the agent: call it once. Sockets passed under other names, or more
// than one "peer" socket, are an error rather than silently dropped.
func PeerListener(port int) (l net.Listener, activated bool, err error) {
	if port < 0 || port > 65535 {
		return nil, false, fmt.Errorf("peer port %d: out of range 0-65535", port)
	}
	named, err := activation.ListenersWithNames()
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: %w", err)
	}
	if len(named) > 0 {
		return fromSystemd(named)
	}
	l, err = net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, false, fmt.Errorf("listen for peers: %w", err)
	}
	return l, false, nil
}

// fromSystemd picks the one "peer" listener out of what systemd passed and closes
// the rest.
func fromSystemd(named map[string][]net.Listener) (net.Listener, bool, error) {
	var (
		names []string
		all   []net.Listener
	)
	for name, ls := range named {
		names = append(names, name)
		all = append(all, ls...)
	}
	slices.Sort(names)
	closeAll := func() {
		for _, l := range all {
			l.Close()
		}
	}
	peers := named[peerFDName]
	switch {
	case len(names) > 1 || len(peers) == 0:
		closeAll()
		return nil, false, fmt.Errorf("socket activation passed sockets named %q, want only %q (FileDescriptorName= in autopod.socket)", names, peerFDName)
	case len(peers) > 1:
		closeAll()
		return nil, false, fmt.Errorf("socket activation passed %d %q sockets, want one (one ListenStream= in autopod.socket)", len(peers), peerFDName)
	}
	return peers[0], true, nil
}

const (
	// peerGreetTimeout bounds how long one peer connection may take, so that silent
	// or slow clients cannot pile up goroutines and descriptors.
	peerGreetTimeout = 5 * time.Second
	// maxAcceptBackoff caps the retry delay after failed accepts (EMFILE and the like).
	maxAcceptBackoff = time.Second
)

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
