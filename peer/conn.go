package peer

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Frame kinds; see the package documentation.
const (
	kindJSON  = 'J'
	kindData  = 'D'
	kindEnd   = 'E'
	kindError = 'X'
)

const (
	headerLen = 5
	// MaxFrameSize bounds a frame's payload. A larger length in a header is an
	// error, not an allocation: a confused or malicious peer cannot make this host
	// reserve gigabytes by sending five bytes.
	MaxFrameSize = 16 << 20
	// streamChunk is the payload of the data frames SendStream sends.
	streamChunk = 1 << 20
	// endLen is the payload of an end-of-stream frame: length and SHA-256.
	endLen = 8 + sha256.Size
	// ioBufSize sizes the buffered reader and writer: several TLS records.
	ioBufSize = 64 << 10
)

var (
	// ErrChecksum means a received stream's length or SHA-256 differs from what the
	// sender counted: the data written out must not be used.
	ErrChecksum = errors.New("stream checksum mismatch")
	// ErrFrameTooLarge means a frame header announced, or a message needed, more
	// than MaxFrameSize bytes.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrProtocol means the other side sent something this protocol does not allow
	// at that point, such as stream data where a message was expected.
	ErrProtocol = errors.New("peer protocol violation")
	// ErrUnexpectedMessage means Expect received a message of another type.
	ErrUnexpectedMessage = errors.New("unexpected message")
)

// RemoteError is an error the other side reported with SendError, or by cutting a
// stream short, received by Recv, Expect or RecvStream.
type RemoteError struct {
	// Peer is the name of the peer that sent it, "" when unknown.
	Peer string
	// Msg is the error text the peer sent.
	Msg string
}

func (e *RemoteError) Error() string {
	if e.Peer == "" {
		return "peer reported: " + e.Msg
	}
	return "peer " + e.Peer + " reported: " + e.Msg
}

// Conn is an authenticated connection to a peer, from Dial or Accept, carrying
// framed messages and streams.
//
// One goroutine may receive (Recv, Expect, RecvStream) while another sends (Send,
// SendError, SendStream); calls on the same side are serialised, and a stream holds
// its side for its whole length. Reads and writes block until the deadline set with
// SetDeadline; to tie them to a context, close the Conn when it is done
// (context.AfterFunc(ctx, func() { c.Close() })).
//
// After an error that leaves the frames out of step (a broken connection, a frame
// this protocol does not allow, an abandoned stream), every later call on that side
// returns the same error. A RemoteError or ErrChecksum leaves the Conn usable.
type Conn struct {
	// Peer is the authenticated peer at the other end.
	Peer Peer

	nc net.Conn // the TLS connection; nil in framing-only tests

	rmu   sync.Mutex
	r     *bufio.Reader
	rerr  error
	rhdr  [headerLen]byte
	rend  [endLen]byte
	rbuf  []byte // stream chunks, allocated on first use
	rhash hash.Hash
	rsum  [sha256.Size]byte

	wmu   sync.Mutex
	w     *bufio.Writer
	wraw  io.Writer // below w: data frames go straight out, without a copy
	werr  error
	whdr  [headerLen]byte
	wbuf  []byte // header and payload of a data frame, allocated on first use
	whash hash.Hash
	wsum  [endLen]byte
}

// newConn frames messages on nc, a connection already authenticated as p.
func newConn(nc net.Conn, p Peer) *Conn {
	c := newFrameConn(nc, nc)
	c.nc, c.Peer = nc, p
	return c
}

// newFrameConn frames messages over r and w with no transport below: for tests of
// the framing layer and fuzzing.
func newFrameConn(r io.Reader, w io.Writer) *Conn {
	return &Conn{
		r:     bufio.NewReaderSize(r, ioBufSize),
		w:     bufio.NewWriterSize(w, ioBufSize),
		wraw:  w,
		rhash: sha256.New(),
		whash: sha256.New(),
	}
}

// Close closes the connection, telling the peer with a TLS close_notify. Blocked
// calls on c return.
func (c *Conn) Close() error {
	if c.nc == nil {
		return nil
	}
	return c.nc.Close()
}

// SetDeadline sets the read and write deadline of the connection, as in net.Conn.
// A write that times out breaks the TLS session: the Conn is then unusable.
func (c *Conn) SetDeadline(t time.Time) error {
	return c.nc.SetDeadline(t)
}

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr {
	return c.nc.RemoteAddr()
}

// Raw hands the connection over to a byte stream that this protocol does not
// frame, such as a relay of CRIU's page-server protocol, after the messages that
// set it up. Reads continue with what the Conn had buffered; writes go straight to
// the TLS connection (every message is flushed when sent, so nothing is pending).
// TLS still authenticates and protects every byte. CloseWrite ends the stream in
// this direction (a TLS close_notify): the other side reads EOF and may still
// write. After Raw, use only the returned RawConn, SetDeadline and Close.
func (c *Conn) Raw() RawConn {
	return rawConn{r: c.r, w: c.wraw, nc: c.nc}
}

// RawConn is a connection handed over by Raw.
type RawConn interface {
	io.ReadWriter
	CloseWrite() error
}

type rawConn struct {
	r  io.Reader
	w  io.Writer
	nc net.Conn
}

func (rc rawConn) Read(p []byte) (int, error)  { return rc.r.Read(p) }
func (rc rawConn) Write(p []byte) (int, error) { return rc.w.Write(p) }
func (rc rawConn) CloseWrite() error {
	if cw, ok := rc.nc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connection cannot be half-closed")
}

// envelope is the payload of a JSON frame.
type envelope struct {
	Type string `json:"type"`
	Body any    `json:"body,omitempty"`
}

// Send sends a control message: msgType and body as JSON. body may be nil.
func (c *Conn) Send(msgType string, body any) error {
	if msgType == "" {
		return errors.New("send: empty message type")
	}
	payload, err := json.Marshal(envelope{Type: msgType, Body: body})
	if err != nil {
		return fmt.Errorf("send %q: %w", msgType, err)
	}
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("send %q: %w: %d bytes, limit %d", msgType, ErrFrameTooLarge, len(payload), MaxFrameSize)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.writeFrame(kindJSON, payload); err != nil {
		return fmt.Errorf("send %q: %w", msgType, err)
	}
	return nil
}

// SendError reports err to the peer, whose next Recv, Expect or RecvStream returns
// it as a *RemoteError.
func (c *Conn) SendError(err error) error {
	msg := "unknown error"
	if err != nil {
		msg = err.Error()
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.writeFrame(kindError, []byte(truncate(msg))); err != nil {
		return fmt.Errorf("send error: %w", err)
	}
	return nil
}

func truncate(msg string) string {
	if len(msg) <= MaxFrameSize {
		return msg
	}
	return strings.ToValidUTF8(msg[:MaxFrameSize], "")
}

// writeFrame writes and flushes one frame. c.wmu is held.
func (c *Conn) writeFrame(kind byte, payload []byte) error {
	if c.werr != nil {
		return c.werr
	}
	c.whdr[0] = kind
	binary.BigEndian.PutUint32(c.whdr[1:], uint32(len(payload)))
	c.w.Write(c.whdr[:])
	c.w.Write(payload)
	if err := c.w.Flush(); err != nil {
		c.werr = fmt.Errorf("connection broken: %w", err)
		return c.werr
	}
	return nil
}

// SendStream sends everything r yields until io.EOF as a stream, in chunks of up to
// 1 MiB, then an end frame carrying the length and SHA-256, and returns them (the
// sum as "sha256:HEX"). If reading r fails, the peer's RecvStream gets a
// RemoteError and the Conn stays usable; the error is returned.
func (c *Conn) SendStream(r io.Reader) (n int64, sum string, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, "", fmt.Errorf("send stream: %w", c.werr)
	}
	if c.wbuf == nil {
		c.wbuf = make([]byte, headerLen+streamChunk)
	}
	h := c.whash
	h.Reset()
	// Hashing runs inline. Overlapping it with the I/O on a second goroutine was
	// measured slower where both ends share two CPUs (this package's benchmark, and
	// the test-bed's hosts in network namespaces); it could pay between real hosts
	// with idle cores, beyond about 900 MB/s.
	for {
		k, rerr := io.ReadFull(r, c.wbuf[headerLen:])
		if k > 0 {
			h.Write(c.wbuf[headerLen : headerLen+k])
			c.wbuf[0] = kindData
			binary.BigEndian.PutUint32(c.wbuf[1:headerLen], uint32(k))
			// Straight to the connection: w is empty, since every message is
			// flushed, and a copy through it would cost a memcpy per byte.
			if _, err := c.wraw.Write(c.wbuf[:headerLen+k]); err != nil {
				c.werr = fmt.Errorf("connection broken: %w", err)
				return n, "", fmt.Errorf("send stream: %w", c.werr)
			}
			n += int64(k)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			// Tell the receiver, or it would wait for the rest of the stream.
			if err := c.writeFrame(kindError, []byte(truncate("stream source failed: "+rerr.Error()))); err != nil {
				return n, "", fmt.Errorf("send stream: read source: %w (and telling the peer: %w)", rerr, err)
			}
			return n, "", fmt.Errorf("send stream: read source: %w", rerr)
		}
	}
	binary.BigEndian.PutUint64(c.wsum[:8], uint64(n))
	h.Sum(c.wsum[8:8])
	if err := c.writeFrame(kindEnd, c.wsum[:]); err != nil {
		return n, "", fmt.Errorf("send stream: %w", err)
	}
	return n, fingerprintPrefix + hex.EncodeToString(c.wsum[8:]), nil
}

// Recv receives the next control message. A message the peer sent with SendError
// is returned as a *RemoteError. Stream frames are an error (ErrProtocol): a stream
// must be read with RecvStream. io.EOF means the peer closed the connection between
// messages.
func (c *Conn) Recv() (msgType string, body json.RawMessage, err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	kind, size, err := c.readHeader()
	if err != nil {
		return "", nil, err
	}
	switch kind {
	case kindJSON:
		payload, err := c.readPayload(size)
		if err != nil {
			return "", nil, err
		}
		var env struct {
			Type string          `json:"type"`
			Body json.RawMessage `json:"body"`
		}
		// The frame was read whole, so a bad message leaves the frames in step.
		if err := json.Unmarshal(payload, &env); err != nil {
			return "", nil, fmt.Errorf("%w: malformed message: %w", ErrProtocol, err)
		}
		if env.Type == "" {
			return "", nil, fmt.Errorf("%w: message without a type", ErrProtocol)
		}
		return env.Type, env.Body, nil
	case kindError:
		return "", nil, c.readRemoteError(size)
	default:
		return "", nil, c.failRead(fmt.Errorf("%w: %s frame outside a stream", ErrProtocol, kindName(kind)))
	}
}

// Expect receives the next message, checks that its type is msgType and decodes
// its body into body (unless body is nil). A message of another type is an error
// wrapping ErrUnexpectedMessage.
func (c *Conn) Expect(msgType string, body any) error {
	t, raw, err := c.Recv()
	if err != nil {
		return fmt.Errorf("waiting for %q: %w", msgType, err)
	}
	if t != msgType {
		return fmt.Errorf("%w %q, want %q", ErrUnexpectedMessage, t, msgType)
	}
	if body == nil || len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, body); err != nil {
		return fmt.Errorf("%w: decode %q: %w", ErrProtocol, msgType, err)
	}
	return nil
}

// RecvStream receives a stream that SendStream sent and writes it to w. It returns
// the length and the SHA-256 ("sha256:HEX") of what it received once the end frame
// confirmed both; when they differ from the sender's the error wraps ErrChecksum
// and the data written to w must be discarded. A stream the sender cut short
// returns a *RemoteError. A failed write to w abandons the stream: the Conn is then
// unusable for receiving, and the caller should report the error and close it. On
// an error n counts the bytes that reached w.
func (c *Conn) RecvStream(w io.Writer) (n int64, sum string, err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rbuf == nil {
		c.rbuf = make([]byte, streamChunk)
	}
	h := c.rhash
	h.Reset()
	for {
		kind, size, err := c.readHeader()
		if err != nil {
			return n, "", fmt.Errorf("receive stream: %w", err)
		}
		switch kind {
		case kindData:
			for size > 0 {
				b := c.rbuf[:min(size, len(c.rbuf))]
				k, err := io.ReadFull(c.r, b)
				if err != nil {
					return n, "", fmt.Errorf("receive stream: %w", c.failRead(truncated(err)))
				}
				h.Write(b)
				if _, err := w.Write(b); err != nil {
					c.failRead(fmt.Errorf("stream abandoned after a failed write: %w", err))
					return n, "", fmt.Errorf("receive stream: write: %w", err)
				}
				n += int64(k)
				size -= k
			}
		case kindEnd:
			if size != endLen {
				return n, "", fmt.Errorf("receive stream: %w", c.failRead(fmt.Errorf("%w: end frame of %d bytes, want %d", ErrProtocol, size, endLen)))
			}
			if _, err := io.ReadFull(c.r, c.rend[:]); err != nil {
				return n, "", fmt.Errorf("receive stream: %w", c.failRead(truncated(err)))
			}
			sentN := binary.BigEndian.Uint64(c.rend[:8])
			sentSum := c.rend[8:]
			got := h.Sum(c.rsum[:0])
			sum = fingerprintPrefix + hex.EncodeToString(got)
			if sentN != uint64(n) || !bytes.Equal(sentSum, got) {
				return n, sum, fmt.Errorf("receive stream: %w: received %d bytes %s, sender sent %d bytes %s",
					ErrChecksum, n, sum, sentN, fingerprintPrefix+hex.EncodeToString(sentSum))
			}
			return n, sum, nil
		case kindError:
			return n, "", fmt.Errorf("receive stream: %w", c.readRemoteError(size))
		default:
			return n, "", fmt.Errorf("receive stream: %w", c.failRead(fmt.Errorf("%w: %s frame inside a stream", ErrProtocol, kindName(kind))))
		}
	}
}

// readHeader reads a frame header and checks it. c.rmu is held.
func (c *Conn) readHeader() (kind byte, size int, err error) {
	if c.rerr != nil {
		return 0, 0, c.rerr
	}
	k, err := io.ReadFull(c.r, c.rhdr[:])
	if err != nil {
		var ne net.Error
		if k == 0 && errors.As(err, &ne) && ne.Timeout() {
			return 0, 0, err // nothing read: still in step, may be retried
		}
		if k == 0 && err == io.EOF {
			return 0, 0, c.failRead(io.EOF)
		}
		return 0, 0, c.failRead(truncated(err))
	}
	kind, size32 := c.rhdr[0], binary.BigEndian.Uint32(c.rhdr[1:])
	switch kind {
	case kindJSON, kindData, kindEnd, kindError:
	default:
		return 0, 0, c.failRead(fmt.Errorf("%w: unknown frame kind 0x%02x", ErrProtocol, kind))
	}
	if size32 > MaxFrameSize {
		return 0, 0, c.failRead(fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrFrameTooLarge, kindName(kind), size32, MaxFrameSize))
	}
	return kind, int(size32), nil
}

// readPayload reads a whole message payload. Memory grows with the bytes that
// actually arrive, not with the length the header claims.
func (c *Conn) readPayload(size int) ([]byte, error) {
	if size <= ioBufSize {
		b := make([]byte, size)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return nil, c.failRead(truncated(err))
		}
		return b, nil
	}
	var buf bytes.Buffer
	if k, err := io.CopyN(&buf, c.r, int64(size)); err != nil {
		if err == io.EOF && k < int64(size) {
			err = io.ErrUnexpectedEOF
		}
		return nil, c.failRead(truncated(err))
	}
	return buf.Bytes(), nil
}

func (c *Conn) readRemoteError(size int) error {
	payload, err := c.readPayload(size)
	if err != nil {
		return err
	}
	msg := string(payload)
	if !utf8.ValidString(msg) {
		msg = strings.ToValidUTF8(msg, "\uFFFD")
	}
	return &RemoteError{Peer: c.Peer.Name, Msg: msg}
}

// failRead records err as the reason the receiving side is unusable. c.rmu is held.
func (c *Conn) failRead(err error) error {
	c.rerr = err
	return err
}

func truncated(err error) error {
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		return fmt.Errorf("%w: connection closed inside a frame", io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("connection broken: %w", err)
}

func kindName(kind byte) string {
	switch kind {
	case kindJSON:
		return "message"
	case kindData:
		return "stream data"
	case kindEnd:
		return "end-of-stream"
	case kindError:
		return "error"
	}
	return fmt.Sprintf("0x%02x", kind)
}
