package pods

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Post-copy moves a pod's memory after the pod resumed on the peer: CRIU's
// page server on the source answers the page requests of CRIU's lazy-pages
// daemon on the destination. Neither speaks TLS with autopod's pinned
// certificates, so each talks to its own agent on the loopback interface
// and the agents relay the bytes over an authenticated peer connection:
//
//	criu lazy-pages ──tcp 127.0.0.1──▶ dest agent ══TLS══▶ source agent ──tcp 127.0.0.1──▶ criu page server
//
// The source's page server listens on every address of the host (CRIU's
// RPC gives a lazy dump no address to bind); guardPort drops connections
// to it from anywhere but the loopback interface.

// relayStall is how long a relay may go without moving a byte in either
// direction while the lazy-pages daemon still waits for pages: CRIU sends
// pages in the background all the time, so a silent link is a broken one.
const relayStall = 10 * time.Second

type pageRelayReq struct {
	Txn string `json:"txn"`
}

// pageServer is a CRIU page server on this host that a peer may reach
// through the relay: a lazy dump's (post-copy, on the source) or a
// `criu page-server` receiving a dump's pages (stop-and-copy, on the
// destination).
type pageServer struct {
	peer     string
	port     int
	toPeer   *tally // what the relay sent to the peer
	fromPeer *tally // what it received
	done     chan error
}

// tally counts the bytes of one direction of a relay and, when it has a
// hash, digests them: the two ends of a relay compare digests before the
// pages are used.
type tally struct {
	mu sync.Mutex
	n  int64
	h  hash.Hash
}

func newTally(digest bool) *tally {
	t := &tally{}
	if digest {
		t.h = sha256.New()
	}
	return t
}

func (t *tally) add(p []byte) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.n += int64(len(p))
	if t.h != nil {
		t.h.Write(p)
	}
	t.mu.Unlock()
}

// result returns the byte count and the digest ("" without one).
func (t *tally) result() (int64, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.h == nil {
		return t.n, ""
	}
	return t.n, hex.EncodeToString(t.h.Sum(nil))
}

// addPageServer lets peer reach the page server of migration txn at port.
// The tallies (nil: not kept) count what the relay moves; done reports
// how the relay ended.
func (m *Manager) addPageServer(txn, peer string, port int, toPeer, fromPeer *tally) <-chan error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pageServers == nil {
		m.pageServers = map[string]pageServer{}
	}
	ps := pageServer{peer: peer, port: port, toPeer: toPeer, fromPeer: fromPeer, done: make(chan error, 1)}
	m.pageServers[txn] = ps
	return ps.done
}

func (m *Manager) dropPageServer(txn string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pageServers, txn)
}

// servePageRelay is the page server's end of the relay: the peer asked
// for the page server of migration txn.
func (m *Manager) servePageRelay(ctx context.Context, conn MigrationConn, req pageRelayReq) error {
	m.mu.Lock()
	ps, ok := m.pageServers[req.Txn]
	m.mu.Unlock()
	if !ok || ps.peer != conn.PeerName() {
		err := fmt.Errorf("no page server for migration %s to %s", req.Txn, conn.PeerName())
		conn.SendError(err)
		return err
	}
	// A lazy dump opens its page server when it has written everything
	// but the memory, about when the peer asks: a refused connection
	// means CRIU is not there yet, or no longer.
	var local net.Conn
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		var d net.Dialer
		local, err = d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ps.port)))
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		err = fmt.Errorf("reach CRIU's page server: %w", err)
		conn.SendError(err)
		ps.done <- err
		return err
	}
	defer local.Close()
	if err := conn.Send("page-relay-ok", nil); err != nil {
		return err
	}
	if err := m.faultAt("page-relay-now"); err != nil {
		// Failure tests: the link breaks as soon as the peer's
		// lazy-pages daemon has its page server, while the peer is
		// still restoring the pod.
		conn.Close()
		ps.done <- err
		return err
	}
	if err := m.faultAt("page-relay"); err != nil {
		// Failure tests: the link breaks while the memory moves.
		t := time.AfterFunc(50*time.Millisecond, func() { conn.Close(); local.Close() })
		defer t.Stop()
	}
	err = m.relay(local.(*net.TCPConn), conn, ps.toPeer, ps.fromPeer)
	ps.done <- err
	return err
}

// startPageRelay is the client's end: it listens on the loopback interface
// for a CRIU that connects to a page server (the lazy-pages daemon, or a
// dump sending its pages) and connects it to the page server of migration
// txn on peer. done reports how the relay ended.
func (m *Manager) startPageRelay(ctx context.Context, peer, txn string, toPeer, fromPeer *tally) (port int, done <-chan error, err error) {
	d, err := m.peerDialer()
	if err != nil {
		return 0, nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan error, 1)
	go func() {
		defer l.Close()
		l.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Minute))
		c, err := l.Accept()
		if err != nil {
			ch <- fmt.Errorf("page relay: CRIU did not connect: %w", err)
			return
		}
		defer c.Close()
		conn, err := d.DialPeer(ctx, peer)
		if err != nil {
			ch <- fmt.Errorf("page relay: %w", err)
			return
		}
		defer conn.Close()
		if err := conn.Send("page-relay", pageRelayReq{Txn: txn}); err != nil {
			ch <- fmt.Errorf("page relay: %w", err)
			return
		}
		if err := conn.Expect("page-relay-ok", nil); err != nil {
			ch <- fmt.Errorf("page relay: %w", err)
			return
		}
		ch <- m.relay(c.(*net.TCPConn), conn, toPeer, fromPeer)
	}()
	return l.Addr().(*net.TCPAddr).Port, ch, nil
}

// relay copies bytes both ways between a local CRIU connection and a peer
// connection until both directions have ended, passing each end of stream
// on as a half-close (CRIU's page server waits to read EOF after its last
// answer). A direction that moves nothing for relayStall while the other
// has not finished breaks the relay. Once CRIU has sent its first bytes,
// its end of local is uncorked (uncorkCriuEnd).
func (m *Manager) relay(local *net.TCPConn, conn MigrationConn, toPeer, fromPeer *tally) error {
	raw := conn.Raw()
	var (
		mu   sync.Mutex
		last = time.Now()
	)
	touch := func() {
		mu.Lock()
		last = time.Now()
		mu.Unlock()
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				mu.Lock()
				idle := time.Since(last)
				mu.Unlock()
				if idle > relayStall {
					local.Close()
					conn.Close()
					return
				}
			}
		}
	}()
	errc := make(chan error, 2)
	go func() {
		from := &firstRead{r: local, fn: func() { go m.uncork(local) }}
		_, err := io.CopyBuffer(touchWriter{raw, touch, toPeer}, from, make([]byte, 256<<10))
		if err == nil {
			err = raw.CloseWrite()
		}
		errc <- err
	}()
	go func() {
		_, err := io.CopyBuffer(touchWriter{local, touch, fromPeer}, raw, make([]byte, 256<<10))
		if err == nil {
			err = local.CloseWrite()
		}
		errc <- err
	}()
	var errs []error
	for range 2 {
		if err := <-errc; err != nil {
			errs = append(errs, err)
			// The other direction may be blocked for good: end it.
			local.Close()
			conn.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("page relay: %w", err)
	}
	return nil
}

// uncork uncorks CRIU's end of a relay's local connection, if it can: a
// corked end only costs time.
func (m *Manager) uncork(c *net.TCPConn) {
	start := time.Now()
	found, err := uncorkCriuEnd(c, m.criu.path)
	switch {
	case err != nil:
		m.cfg.Log.Debug("page relay: could not uncork CRIU's end", "err", err)
	case !found:
		m.cfg.Log.Debug("page relay: CRIU's end not found to uncork", "conn", c.RemoteAddr())
	default:
		m.cfg.Log.Debug("page relay: uncorked CRIU's end", "conn", c.RemoteAddr(), "took", time.Since(start))
	}
}

// firstRead calls fn after the first read that returned bytes.
type firstRead struct {
	r    io.Reader
	fn   func()
	done bool
}

func (f *firstRead) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && !f.done {
		f.done = true
		f.fn()
	}
	return n, err
}

type touchWriter struct {
	w     io.Writer
	touch func()
	count *tally
}

func (t touchWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if n > 0 {
		t.touch()
		t.count.add(p[:n])
	}
	return n, err
}

// guardPort makes port on this host reachable from the loopback interface
// only, with an nftables table of its own; the returned function removes
// it.
func guardPort(ctx context.Context, port int) (func(), error) {
	table := "autopod-ps-" + strconv.Itoa(port)
	rules := fmt.Sprintf(`table inet %s {
	chain input {
		type filter hook input priority -300; policy accept;
		iifname != "lo" tcp dport %d drop
	}
}
`, table, port)
	if _, err := runInput(ctx, rules, "nft", "-f", "-"); err != nil {
		return nil, fmt.Errorf("guard page-server port %d: %w", port, err)
	}
	return func() {
		_, _ = run(context.Background(), "nft", "delete", "table", "inet", table)
	}, nil
}

// freePort returns a TCP port that nothing listens on right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// abandonLazyDump ends a lazy dump whose pages nobody will fetch, and
// waits for it: CRIU holds the pod's tasks until its page server ends. A
// page server that nobody reached yet ends when a connection closes
// without a request; one already serving ends when its peer goes away,
// which the caller brings about by reporting the failure to the peer.
func (m *Manager) abandonLazyDump(port int, done chan error) {
	// The page server opens shortly after the images are written; until
	// then a connection is refused, and once it serves a peer it accepts
	// no other: knock until it answers or the dump ends.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	knock := time.NewTicker(10 * time.Millisecond)
	defer knock.Stop()
	giveUp := time.After(30 * time.Second)
	knocked := false
	for {
		select {
		case err := <-done:
			done <- err
			return
		case <-giveUp:
			m.cfg.Log.Warn("lazy dump did not end after its migration was abandoned", "port", port)
			return
		case <-knock.C:
			if knocked {
				continue
			}
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				knocked = true
			}
		}
	}
}

// sweepPageServerGuards removes the guards of page servers that a crashed
// agent left (no migration runs before Load).
func sweepPageServerGuards(ctx context.Context) {
	out, err := run(ctx, "nft", "list", "tables", "inet")
	if err != nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" && strings.HasPrefix(f[2], "autopod-ps-") {
			_, _ = run(ctx, "nft", "delete", "table", "inet", f[2])
		}
	}
}
