package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/autopod/autopod/peer"
	"github.com/autopod/autopod/pods"
)

// Peers is the agent's side of the peer network: this host's identity,
// the pinned peers, outgoing connections for migrations and the server
// that accepts authenticated connections on the peer port.
type Peers struct {
	dir   string
	store *peer.Store
	log   *slog.Logger

	mu sync.Mutex
	id *peer.Identity // loaded lazily: `autopodctl peer init` may come later
}

// NewPeers opens the peer state in dir (STATE_DIR/peer).
func NewPeers(dir string, log *slog.Logger) (*Peers, error) {
	s, err := peer.OpenStore(dir)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Peers{dir: dir, store: s, log: log.With("component", "peers")}, nil
}

func (p *Peers) identity() (peer.Identity, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id != nil {
		return *p.id, nil
	}
	id, err := peer.LoadIdentity(p.dir)
	if err != nil {
		return id, err
	}
	p.id = &id
	return id, nil
}

// InitIdentity creates this host's key and certificate.
func (p *Peers) InitIdentity(force bool) (string, string, error) {
	id, err := peer.InitIdentity(p.dir, force)
	if err != nil {
		return "", "", err
	}
	p.mu.Lock()
	p.id = &id
	p.mu.Unlock()
	p.log.Info("peer identity created", "fingerprint", id.Fingerprint)
	return string(id.CertPEM), id.Fingerprint, nil
}

// Identity returns this host's certificate and fingerprint.
func (p *Peers) Identity() (string, string, error) {
	id, err := p.identity()
	if err != nil {
		return "", "", err
	}
	return string(id.CertPEM), id.Fingerprint, nil
}

func info(pr peer.Peer) PeerInfo {
	return PeerInfo{Name: pr.Name, Address: pr.Address, Fingerprint: pr.Fingerprint}
}

// AddPeer pins a peer's certificate under name.
func (p *Peers) AddPeer(name, address string, certPEM []byte) (PeerInfo, error) {
	pr, err := p.store.Add(name, address, certPEM)
	if err != nil {
		return PeerInfo{}, err
	}
	p.log.Info("peer pinned", "peer", name, "address", pr.Address, "fingerprint", pr.Fingerprint)
	return info(pr), nil
}

// RemovePeer unpins a peer.
func (p *Peers) RemovePeer(name string) error { return p.store.Remove(name) }

// ListPeers lists the pinned peers.
func (p *Peers) ListPeers() ([]PeerInfo, error) {
	ps, err := p.store.List()
	if err != nil {
		return nil, err
	}
	out := make([]PeerInfo, 0, len(ps))
	for _, pr := range ps {
		out = append(out, info(pr))
	}
	return out, nil
}

// DialPeer opens an authenticated connection to a pinned peer.
func (p *Peers) DialPeer(ctx context.Context, name string) (pods.MigrationConn, error) {
	id, err := p.identity()
	if err != nil {
		return nil, err
	}
	pr, err := p.store.Get(name)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := peer.Dial(dctx, id, pr)
	if err != nil {
		return nil, err
	}
	return migrationConn{c}, nil
}

// Serve accepts peer connections on l until ctx ends; each authenticated
// connection is handed to handle on its own goroutine. Connections from
// unpinned peers are refused during the TLS handshake, before any data.
func (p *Peers) Serve(ctx context.Context, l net.Listener, handle func(context.Context, pods.MigrationConn) error) {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		raw, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			p.log.Error("peer listener failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go p.serveConn(ctx, raw, handle)
	}
}

func (p *Peers) serveConn(ctx context.Context, raw net.Conn, handle func(context.Context, pods.MigrationConn) error) {
	id, err := p.identity()
	if err != nil {
		p.log.Warn("refusing peer connection: no identity yet", "from", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := peer.Accept(hctx, raw, id, p.store)
	cancel()
	if err != nil {
		p.log.Warn("refused peer connection", "from", raw.RemoteAddr().String(), "err", err)
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := handle(ctx, migrationConn{c}); err != nil && !errors.Is(err, io.EOF) {
		p.log.Warn("peer request failed", "peer", c.Peer.Name, "err", err)
	}
}

// migrationConn adapts *peer.Conn to pods.MigrationConn: errors the peer
// sent become pods.ErrRemote, which the migration code branches on.
type migrationConn struct{ c *peer.Conn }

func remote(err error) error {
	var re *peer.RemoteError
	if errors.As(err, &re) {
		return fmt.Errorf("%w: %w", pods.ErrRemote, err)
	}
	return err
}

func (m migrationConn) PeerName() string                { return m.c.Peer.Name }
func (m migrationConn) Send(t string, body any) error   { return m.c.Send(t, body) }
func (m migrationConn) SendError(err error) error       { return m.c.SendError(err) }
func (m migrationConn) SetDeadline(t time.Time) error   { return m.c.SetDeadline(t) }
func (m migrationConn) Close() error                    { return m.c.Close() }
func (m migrationConn) Expect(t string, body any) error { return remote(m.c.Expect(t, body)) }
func (m migrationConn) Raw() pods.RawConn               { return m.c.Raw() }
func (m migrationConn) SendStream(r io.Reader) (int64, string, error) {
	return m.c.SendStream(r)
}
func (m migrationConn) Recv() (string, json.RawMessage, error) {
	t, b, err := m.c.Recv()
	return t, b, remote(err)
}
func (m migrationConn) RecvStream(w io.Writer) (int64, string, error) {
	n, s, err := m.c.RecvStream(w)
	return n, s, remote(err)
}
