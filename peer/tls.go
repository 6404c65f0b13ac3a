package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// ALPN is the TLS application protocol of the peer protocol, and its version: a
// host speaking another version fails the handshake instead of misreading frames.
const ALPN = "autopod-peer/1"

// helloType is the message Accept sends once it has accepted the client.
const helloType = "hello"

var (
	// ErrUnpinnedPeer means the connecting host's certificate is not pinned in the
	// store (Accept). The error names the certificate's fingerprint.
	ErrUnpinnedPeer = errors.New("unpinned peer certificate")
	// ErrCertificateMismatch means the host Dial reached presented another
	// certificate than the one pinned for that peer.
	ErrCertificateMismatch = errors.New("peer certificate does not match the pinned one")
	// ErrRefused means the other side refused this host's certificate during the
	// handshake: it has not pinned it, or pinned another.
	ErrRefused = errors.New("refused by the peer")
)

// Dial connects to p and authenticates both ways: the server must present exactly
// the certificate pinned for p, and this host presents id, which the server must
// have pinned. It returns once the server has accepted; ctx bounds the whole of it.
func Dial(ctx context.Context, id Identity, p Peer) (*Conn, error) {
	fail := func(err error) (*Conn, error) {
		return nil, fmt.Errorf("connect to peer %s (%s): %w", p.Name, p.Address, err)
	}
	if !validFingerprint(p.Fingerprint) {
		return fail(fmt.Errorf("invalid pinned fingerprint %q", p.Fingerprint))
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", p.Address)
	if err != nil {
		return fail(err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		NextProtos:   []string{ALPN},
		// There is no CA and no name to check: the pin below replaces both.
		// VerifyConnection runs on every handshake whatever this is set to.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("peer presented no certificate")
			}
			if got := Fingerprint(cs.PeerCertificates[0].Raw); got != p.Fingerprint {
				return fmt.Errorf("%w: it presented %s, pinned is %s (another host, or its identity was re-created)", ErrCertificateMismatch, got, p.Fingerprint)
			}
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("peer does not speak %s", ALPN)
			}
			return nil
		},
	}
	tc := tls.Client(raw, cfg)
	var c *Conn
	err = bounded(ctx, raw, func() error {
		if err := tc.Handshake(); err != nil {
			return err
		}
		c = newConn(tc, p)
		// In TLS 1.3 the client finishes its handshake before the server has
		// looked at the client's certificate: only the server's hello says that
		// it accepted this host.
		return c.Expect(helloType, nil)
	})
	if err != nil {
		raw.Close()
		if isRemoteAlert(err) {
			err = fmt.Errorf("%w (is this host's certificate %s pinned there?): %w", ErrRefused, id.Fingerprint, err)
		}
		return fail(err)
	}
	return c, nil
}

// Accept authenticates a connection a peer opened to this host's peer port: the
// client must present a certificate pinned in s, and this host presents id. The
// returned Conn's Peer is the peer the client's certificate is pinned as. ctx
// bounds the handshake. On failure Accept closes raw, having sent nothing but the
// TLS handshake and its alert, and read no application data.
func Accept(ctx context.Context, raw net.Conn, id Identity, s *Store) (*Conn, error) {
	var who Peer
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		NextProtos:   []string{ALPN},
		ClientAuth:   tls.RequireAnyClientCert,
		// A resumed session skips certificate checks, so a peer unpinned since
		// its last connection could come back on an old ticket. No tickets: every
		// connection is checked against the store as it is now.
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("client presented no certificate")
			}
			fp := Fingerprint(cs.PeerCertificates[0].Raw)
			p, ok := s.ByFingerprint(fp)
			if !ok {
				return fmt.Errorf("%w %s", ErrUnpinnedPeer, fp)
			}
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("peer %s does not speak %s", p.Name, ALPN)
			}
			who = p
			return nil
		},
	}
	tc := tls.Server(raw, cfg)
	var c *Conn
	err := bounded(ctx, raw, func() error {
		if err := tc.Handshake(); err != nil {
			return err
		}
		c = newConn(tc, who)
		return c.Send(helloType, nil)
	})
	if err != nil {
		raw.Close()
		if isRemoteAlert(err) {
			err = fmt.Errorf("%w: it has not pinned this host's certificate %s, or pinned another: %w", ErrRefused, id.Fingerprint, err)
		}
		if who.Name != "" {
			return nil, fmt.Errorf("peer connection from %s (peer %s): %w", raw.RemoteAddr(), who.Name, err)
		}
		return nil, fmt.Errorf("peer connection from %s: %w", raw.RemoteAddr(), err)
	}
	return c, nil
}

// bounded runs f, which does I/O on raw, until ctx is done: then raw's deadline is
// moved to the past, f fails, and bounded returns ctx's error.
func bounded(ctx context.Context, raw net.Conn, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	err := f()
	if !stop() {
		// ctx ended while f ran; even if f just succeeded, the deadline may be
		// set, and the caller asked to give up.
		if err != nil {
			return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		return context.Cause(ctx)
	}
	return err
}

// isRemoteAlert reports whether err is a TLS alert the other side sent, which is
// how it refuses a certificate.
func isRemoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}
