package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// host is one side of a test: its identity and its store of pinned peers.
type host struct {
	name  string
	id    Identity
	store *Store
}

func newHost(t testing.TB, name string) *host {
	t.Helper()
	id, err := InitIdentity(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &host{name: name, id: id, store: s}
}

// pin makes h trust other under other's name, at addr.
func (h *host) pin(t testing.TB, other *host, addr string) Peer {
	t.Helper()
	p, err := h.store.Add(other.name, addr, other.id.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type accepted struct {
	c   *Conn
	err error
}

// serve listens on loopback and runs Accept for srv on the first connection.
func serve(t testing.TB, srv *host) (addr string, result <-chan accepted) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan accepted, 1)
	go func() {
		raw, err := l.Accept()
		if err != nil {
			ch <- accepted{err: err}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Accept(ctx, raw, srv.id, srv.store)
		ch <- accepted{c, err}
	}()
	return l.Addr().String(), ch
}

// connect runs a handshake from cli to srv and returns both ends.
func connect(t testing.TB, cli, srv *host) (client, server *Conn) {
	t.Helper()
	srv.pin(t, cli, "192.0.2.1") // the address a server keeps is not used to accept
	addr, res := serve(t, srv)
	p := cli.pin(t, srv, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := Dial(ctx, cli.id, p)
	if err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

func TestHandshake(t *testing.T) {
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	// Both ways, each side identifies the other.
	for _, dir := range [][2]*host{{a, b}, {b, a}} {
		cli, srv := dir[0], dir[1]
		c, s := connect(t, cli, srv)
		if c.Peer.Name != srv.name || c.Peer.Fingerprint != srv.id.Fingerprint {
			t.Errorf("client sees %+v, want %s", c.Peer, srv.name)
		}
		if s.Peer.Name != cli.name || s.Peer.Fingerprint != cli.id.Fingerprint {
			t.Errorf("server sees %+v, want %s", s.Peer, cli.name)
		}
		st := c.nc.(*tls.Conn).ConnectionState()
		if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != ALPN || st.DidResume {
			t.Errorf("connection state: version %x alpn %q resumed %v", st.Version, st.NegotiatedProtocol, st.DidResume)
		}
		// Application data flows both ways.
		if err := c.Send("ping", map[string]int{"n": 1}); err != nil {
			t.Fatal(err)
		}
		var body struct{ N int }
		if err := s.Expect("ping", &body); err != nil || body.N != 1 {
			t.Fatalf("server: %v %+v", err, body)
		}
		if err := s.Send("pong", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Expect("pong", nil); err != nil {
			t.Fatal(err)
		}
		// Re-pin for the other direction from clean stores.
		a.store, _ = OpenStore(t.TempDir())
		b.store, _ = OpenStore(t.TempDir())
	}
}

// refusal runs a failing handshake and returns both sides' errors.
func refusal(t *testing.T, dial func(ctx context.Context, addr string) (*Conn, error), srv *host) (dialErr, acceptErr error) {
	t.Helper()
	addr, res := serve(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, dialErr := dial(ctx, addr)
	if dialErr == nil {
		c.Close()
		t.Fatal("Dial succeeded")
	}
	r := <-res
	if r.err == nil {
		r.c.Close()
		t.Fatal("Accept succeeded")
	}
	if r.c != nil || c != nil {
		t.Error("a failed handshake returned a Conn")
	}
	t.Logf("dial: %v", dialErr)
	t.Logf("accept: %v", r.err)
	return dialErr, r.err
}

func TestHandshakeUnpinnedClient(t *testing.T) {
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	// b does not know a; a pinned b correctly.
	dialErr, acceptErr := refusal(t, func(ctx context.Context, addr string) (*Conn, error) {
		return Dial(ctx, a.id, a.pin(t, b, addr))
	}, b)
	if !errors.Is(acceptErr, ErrUnpinnedPeer) || !strings.Contains(acceptErr.Error(), "unpinned peer certificate "+a.id.Fingerprint) {
		t.Errorf("accept: %v", acceptErr)
	}
	if !errors.Is(dialErr, ErrRefused) || !strings.Contains(dialErr.Error(), a.id.Fingerprint) || !strings.Contains(dialErr.Error(), "host-b") {
		t.Errorf("dial: %v", dialErr)
	}
}

func TestHandshakeWrongServerCertificate(t *testing.T) {
	a, b, impostor := newHost(t, "host-a"), newHost(t, "host-b"), newHost(t, "host-b")
	// The impostor answers on b's address and even pins a, but a pinned the real b.
	impostor.pin(t, a, "192.0.2.1")
	dialErr, acceptErr := refusal(t, func(ctx context.Context, addr string) (*Conn, error) {
		return Dial(ctx, a.id, a.pin(t, b, addr))
	}, impostor)
	if !errors.Is(dialErr, ErrCertificateMismatch) ||
		!strings.Contains(dialErr.Error(), "host-b") ||
		!strings.Contains(dialErr.Error(), "presented "+impostor.id.Fingerprint) ||
		!strings.Contains(dialErr.Error(), "pinned is "+b.id.Fingerprint) {
		t.Errorf("dial: %v", dialErr)
	}
	if !errors.Is(acceptErr, ErrRefused) {
		t.Errorf("accept: %v", acceptErr)
	}
}

func TestHandshakeClientWithoutCertificate(t *testing.T) {
	b := newHost(t, "host-b")
	dialErr, acceptErr := refusal(t, func(ctx context.Context, addr string) (*Conn, error) {
		tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}})
		if err != nil {
			return nil, err
		}
		defer tc.Close()
		// The client's handshake completes in TLS 1.3; its data must go nowhere.
		tc.Write([]byte("J\x00\x00\x00\x02{}"))
		var buf [1]byte
		_, err = tc.Read(buf[:])
		return nil, err
	}, b)
	if acceptErr == nil || !strings.Contains(acceptErr.Error(), "didn't provide a certificate") {
		t.Errorf("accept: %v", acceptErr)
	}
	if !isRemoteAlert(dialErr) || !strings.Contains(dialErr.Error(), "certificate required") {
		t.Errorf("client: %v", dialErr)
	}
}

func TestHandshakeWrongProtocol(t *testing.T) {
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	b.pin(t, a, "192.0.2.1")
	dialErr, acceptErr := refusal(t, func(ctx context.Context, addr string) (*Conn, error) {
		tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{a.id.Cert}, NextProtos: []string{"autopod-peer/0"}})
		if err != nil {
			return nil, err
		}
		tc.Close()
		return nil, errors.New("handshake succeeded")
	}, b)
	if !strings.Contains(acceptErr.Error(), "application protocol") || !strings.Contains(dialErr.Error(), "no application protocol") {
		t.Errorf("accept: %v; dial: %v", acceptErr, dialErr)
	}
}

func TestHandshakeUnpinnedAfterRemove(t *testing.T) {
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	connect(t, a, b)
	if err := b.store.Remove("host-a"); err != nil {
		t.Fatal(err)
	}
	// Another connection is checked against the store as it is now.
	addr, res := serve(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, _ := a.store.Get("host-b")
	p.Address = addr
	if c, err := Dial(ctx, a.id, p); err == nil {
		c.Close()
		t.Fatal("unpinned peer connected")
	}
	if r := <-res; !errors.Is(r.err, ErrUnpinnedPeer) {
		t.Errorf("accept: %v", r.err)
	}
}

func TestDialCancel(t *testing.T) {
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	// A listener that accepts TCP and then says nothing, like a hung agent.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p := a.pin(t, b, l.Addr().String())

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = Dial(ctx, a.id, p)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, a.id, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timeout: %v", err)
	}

	if _, err := Dial(ctx, a.id, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired ctx: %v", err)
	}
}

func TestDialServerNeverAccepts(t *testing.T) {
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	// A TLS server with b's certificate that completes the handshake but never
	// says hello: Dial waits for the hello within ctx too.
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{b.id.Cert},
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   []string{ALPN},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	handshaken := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			handshaken <- err
			return
		}
		defer c.Close()
		handshaken <- c.(*tls.Conn).Handshake()
		c.Read(make([]byte, 1)) // until the client gives up
	}()
	p := a.pin(t, b, l.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, a.id, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no hello: %v", err)
	}
	if err := <-handshaken; err != nil {
		t.Errorf("the TLS handshake itself failed: %v", err)
	}
}

func TestAcceptTimeout(t *testing.T) {
	b := newHost(t, "host-b")
	cli, srv := net.Pipe()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	// The client never sends its hello.
	_, err := Accept(ctx, srv, b.id, b.store)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent client: %v", err)
	}
}

func TestDialInvalidPeer(t *testing.T) {
	a := newHost(t, "host-a")
	_, err := Dial(context.Background(), a.id, Peer{Name: "x", Address: "127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "invalid pinned fingerprint") {
		t.Errorf("no fingerprint: %v", err)
	}
}
