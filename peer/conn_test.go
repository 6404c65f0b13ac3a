package peer

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// pipePair returns two framing-only Conns over net.Pipe, without TLS, so that tests
// can reach the bytes between the frame layer and the transport. wrap, if set,
// wraps a's writer.
func pipePair(t *testing.T, wrap func(io.Writer) io.Writer) (a, b *Conn) {
	t.Helper()
	pa, pb := net.Pipe()
	t.Cleanup(func() { pa.Close(); pb.Close() })
	var w io.Writer = pa
	if wrap != nil {
		w = wrap(pa)
	}
	a = newFrameConn(pa, w)
	a.nc, a.Peer = pa, Peer{Name: "b"}
	b = newConn(pb, Peer{Name: "a"})
	return a, b
}

// async runs f on a goroutine and returns its error later.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func TestMessages(t *testing.T) {
	a, b := pipePair(t, nil)
	type body struct {
		Pod   string `json:"pod"`
		Bytes int64  `json:"bytes"`
	}
	done := async(func() error {
		if err := a.Send("spec", body{"redis", 1 << 40}); err != nil {
			return err
		}
		if err := a.Send("empty", nil); err != nil {
			return err
		}
		if err := a.Send("other", map[string]bool{"x": true}); err != nil {
			return err
		}
		return a.SendError(errors.New("restore failed: criu exited 1"))
	})
	typ, raw, err := b.Recv()
	if err != nil || typ != "spec" || string(raw) != `{"pod":"redis","bytes":1099511627776}` {
		t.Fatalf("Recv: %q %s %v", typ, raw, err)
	}
	if err := b.Expect("empty", nil); err != nil {
		t.Fatal(err)
	}
	var got body
	err = b.Expect("spec", &got)
	if !errors.Is(err, ErrUnexpectedMessage) || err.Error() != `unexpected message "other", want "spec"` {
		t.Errorf("Expect other type: %v", err)
	}
	_, _, err = b.Recv()
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "restore failed: criu exited 1" || re.Peer != "a" {
		t.Fatalf("remote error: %#v", err)
	}
	if err.Error() != "peer a reported: restore failed: criu exited 1" {
		t.Errorf("RemoteError text: %q", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The Conn is still usable after a RemoteError.
	done = async(func() error { return a.Send("spec", body{Pod: "web"}) })
	if err := b.Expect("spec", &got); err != nil || got.Pod != "web" {
		t.Fatalf("after remote error: %v %+v", err, got)
	}
	<-done

	// A RemoteError carries through Expect.
	done = async(func() error { return a.SendError(errors.New("disk full")) })
	if err := b.Expect("spec", &got); !errors.As(err, &re) || re.Msg != "disk full" {
		t.Errorf("Expect: %v", err)
	}
	<-done
}

func TestSendInvalid(t *testing.T) {
	a, _ := pipePair(t, nil)
	if err := a.Send("", nil); err == nil {
		t.Error("empty type sent")
	}
	if err := a.Send("x", func() {}); err == nil {
		t.Error("unencodable body sent")
	}
	if err := a.Send("x", strings.Repeat("a", MaxFrameSize)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("huge message: %v", err)
	}
}

func TestStream(t *testing.T) {
	a, b := pipePair(t, nil)
	for _, size := range []int{0, 1, streamChunk, 5*streamChunk + 12345} {
		data := make([]byte, size)
		rand.Read(data)
		want := sha256.Sum256(data)
		type result struct {
			n   int64
			sum string
			err error
		}
		sent := make(chan result, 1)
		go func() {
			n, sum, err := a.SendStream(bytes.NewReader(data))
			sent <- result{n, sum, err}
		}()
		var out bytes.Buffer
		n, sum, err := b.RecvStream(&out)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		s := <-sent
		if s.err != nil {
			t.Fatal(s.err)
		}
		wantSum := "sha256:" + hex.EncodeToString(want[:])
		if n != int64(size) || s.n != n || sum != wantSum || s.sum != wantSum || !bytes.Equal(out.Bytes(), data) {
			t.Errorf("%d bytes: received %d %s, sent %d %s", size, n, sum, s.n, s.sum)
		}
	}
	// Messages and streams interleave.
	done := async(func() error {
		if err := a.Send("files", nil); err != nil {
			return err
		}
		if _, _, err := a.SendStream(strings.NewReader("rootfs")); err != nil {
			return err
		}
		return a.Send("done", nil)
	})
	var out bytes.Buffer
	if err := b.Expect("files", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.RecvStream(&out); err != nil || out.String() != "rootfs" {
		t.Fatalf("stream: %v %q", err, out.String())
	}
	if err := b.Expect("done", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// flipper flips one bit of the byte at offset off of what goes through it, standing
// for corruption between the frame layer and the network.
type flipper struct {
	w   io.Writer
	off int64
	pos int64
}

func (f *flipper) Write(p []byte) (int, error) {
	if f.off >= f.pos && f.off < f.pos+int64(len(p)) {
		q := bytes.Clone(p)
		q[f.off-f.pos] ^= 0x10
		p = q
	}
	f.pos += int64(len(p))
	return f.w.Write(p)
}

func TestStreamCorrupted(t *testing.T) {
	// The second data frame's 1000th byte is flipped.
	a, b := pipePair(t, func(w io.Writer) io.Writer {
		return &flipper{w: w, off: headerLen + streamChunk + headerLen + 1000}
	})
	data := make([]byte, 3*streamChunk)
	rand.Read(data)
	done := async(func() error {
		if _, _, err := a.SendStream(bytes.NewReader(data)); err != nil {
			return err
		}
		return a.Send("next", nil)
	})
	var out bytes.Buffer
	n, _, err := b.RecvStream(&out)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("corrupted stream: %v", err)
	}
	if n != int64(len(data)) || !strings.Contains(err.Error(), fmt.Sprintf("received %d bytes sha256:", n)) {
		t.Errorf("error %v, n %d", err, n)
	}
	t.Log(err)
	// The frames are still in step: the Conn goes on.
	if err := b.Expect("next", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// rawFrame encodes one frame by hand.
func rawFrame(kind byte, payload []byte) []byte {
	f := make([]byte, headerLen, headerLen+len(payload))
	f[0] = kind
	binary.BigEndian.PutUint32(f[1:], uint32(len(payload)))
	return append(f, payload...)
}

func endFrame(n uint64, data []byte) []byte {
	sum := sha256.Sum256(data)
	p := binary.BigEndian.AppendUint64(nil, n)
	return rawFrame(kindEnd, append(p, sum[:]...))
}

func TestStreamBadFrames(t *testing.T) {
	recv := func(in []byte) (*Conn, error) {
		c := newFrameConn(bytes.NewReader(in), io.Discard)
		_, _, err := c.RecvStream(io.Discard)
		return c, err
	}
	data := []byte("0123456789")
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }

	if _, err := recv(cat(rawFrame(kindData, data), endFrame(10, data))); err != nil {
		t.Errorf("good stream: %v", err)
	}
	if _, err := recv(cat(rawFrame(kindData, data), endFrame(11, data))); !errors.Is(err, ErrChecksum) {
		t.Errorf("length mismatch: %v", err)
	}
	if _, err := recv(cat(rawFrame(kindData, data[:9]), endFrame(10, data))); !errors.Is(err, ErrChecksum) {
		t.Errorf("lost byte: %v", err)
	}
	for name, in := range map[string][]byte{
		"message inside":   cat(rawFrame(kindData, data), rawFrame(kindJSON, []byte(`{"type":"x"}`))),
		"short end":        cat(rawFrame(kindData, data), rawFrame(kindEnd, make([]byte, 8))),
		"unknown kind":     rawFrame('Q', nil),
		"truncated data":   rawFrame(kindData, data)[:8],
		"truncated header": []byte{kindData, 0},
		"eof":              nil,
	} {
		c, err := recv(in)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		// Frames out of step: the receiving side stays failed.
		if _, _, err2 := c.Recv(); err2 == nil || err2.Error() != errors.Unwrap(err).Error() && !errors.Is(err2, errors.Unwrap(err)) {
			t.Errorf("%s: then Recv: %v (first %v)", name, err2, err)
		}
	}
	// The sender cut the stream short: a RemoteError, and the Conn goes on.
	c := newFrameConn(bytes.NewReader(cat(rawFrame(kindData, data), rawFrame(kindError, []byte("read: EIO")), rawFrame(kindJSON, []byte(`{"type":"abort"}`)))), io.Discard)
	_, _, err := c.RecvStream(io.Discard)
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "read: EIO" {
		t.Errorf("cut stream: %v", err)
	}
	if err := c.Expect("abort", nil); err != nil {
		t.Errorf("after cut stream: %v", err)
	}
}

func TestRecvBadFrames(t *testing.T) {
	for name, tc := range map[string]struct {
		in     []byte
		want   error
		sticky bool
	}{
		"data outside stream": {rawFrame(kindData, []byte("x")), ErrProtocol, true},
		"end outside stream":  {rawFrame(kindEnd, nil), ErrProtocol, true},
		"bad json":            {rawFrame(kindJSON, []byte("{")), ErrProtocol, false},
		"no type":             {rawFrame(kindJSON, []byte(`{"body":1}`)), ErrProtocol, false},
		"truncated":           {rawFrame(kindJSON, []byte(`{"type":"x"}`))[:9], io.ErrUnexpectedEOF, true},
		"eof":                 {nil, io.EOF, true},
	} {
		in := tc.in
		if name != "eof" && name != "truncated" {
			// A good message follows: only a non-sticky error lets Recv reach it.
			in = append(in, rawFrame(kindJSON, []byte(`{"type":"next"}`))...)
		}
		c := newFrameConn(bytes.NewReader(in), io.Discard)
		_, _, err := c.Recv()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
		_, _, err2 := c.Recv()
		if tc.sticky && err2 == nil || !tc.sticky && err2 != nil {
			t.Errorf("%s: next Recv: %v", name, err2)
		}
	}
}

func TestOversizeFrame(t *testing.T) {
	for _, kind := range []byte{kindJSON, kindData, kindError} {
		hdr := []byte{kind, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], MaxFrameSize+1)
		// Only the header arrives: the reader must not wait for, nor allocate,
		// 16 MiB.
		c := newFrameConn(io.MultiReader(bytes.NewReader(hdr), blockingReader{}), io.Discard)
		var err error
		if kind == kindData {
			_, _, err = c.RecvStream(io.Discard)
		} else {
			_, _, err = c.Recv()
		}
		if !errors.Is(err, ErrFrameTooLarge) || !strings.Contains(err.Error(), "16777217 bytes") {
			t.Errorf("%c: %v", kind, err)
		}
	}
	// Exactly MaxFrameSize is allowed.
	payload := []byte(`{"type":"big","body":"` + strings.Repeat("a", MaxFrameSize-24) + `"}`)
	if len(payload) != MaxFrameSize {
		t.Fatalf("payload %d", len(payload))
	}
	c := newFrameConn(bytes.NewReader(rawFrame(kindJSON, payload)), io.Discard)
	if typ, _, err := c.Recv(); err != nil || typ != "big" {
		t.Errorf("max size: %q %v", typ, err)
	}
}

// blockingReader fails the test by hanging if read; it stands for a peer that
// sent a header and nothing more.
type blockingReader struct{}

func (blockingReader) Read([]byte) (int, error) { select {} }

type failReader struct{ n int }

func (r *failReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("input/output error")
	}
	k := min(len(p), r.n)
	r.n -= k
	return k, nil
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

func TestStreamFailures(t *testing.T) {
	a, b := pipePair(t, nil)
	// The source fails after 3.5 MiB: the receiver learns why and both go on.
	done := async(func() error {
		_, _, err := a.SendStream(&failReader{n: 3*streamChunk + streamChunk/2})
		if err == nil || !strings.Contains(err.Error(), "input/output error") {
			return fmt.Errorf("SendStream: %v", err)
		}
		return a.Send("next", nil)
	})
	_, _, err := b.RecvStream(io.Discard)
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Msg, "stream source failed: input/output error") {
		t.Errorf("RecvStream: %v", err)
	}
	if err := b.Expect("next", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// The receiver cannot write: it gives up the stream and the Conn.
	done = async(func() error {
		_, _, err := a.SendStream(io.LimitReader(zeroReader{}, 4*streamChunk))
		return err
	})
	_, _, err = b.RecvStream(failWriter{})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("RecvStream to a full disk: %v", err)
	}
	if _, _, err := b.Recv(); err == nil || !strings.Contains(err.Error(), "stream abandoned") {
		t.Errorf("Recv after abandoned stream: %v", err)
	}
	b.Close() // as the caller would; the sender then fails
	if err := <-done; err == nil {
		t.Error("sender did not notice")
	}
	if err := a.Send("x", nil); err == nil || !strings.Contains(err.Error(), "connection broken") {
		t.Errorf("Send after broken: %v", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestConcurrentSends(t *testing.T) {
	a, b := pipePair(t, nil)
	const senders, each = 8, 50
	var wg sync.WaitGroup
	for i := range senders {
		wg.Go(func() {
			for j := range each {
				if err := a.Send("m", []int{i, j}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	// A stream in the middle keeps its frames together.
	wg.Go(func() {
		if _, _, err := a.SendStream(io.LimitReader(zeroReader{}, 3*streamChunk)); err != nil {
			t.Error(err)
		}
	})
	seen := map[[2]int]bool{}
	streams := 0
	for len(seen) < senders*each || streams == 0 {
		b.SetDeadline(time.Now().Add(10 * time.Second))
		// Peek: a stream starts with a data frame.
		k, err := b.r.Peek(1)
		if err != nil {
			t.Fatal(err)
		}
		if k[0] == kindData {
			if n, _, err := b.RecvStream(io.Discard); err != nil || n != 3*streamChunk {
				t.Fatalf("stream: %d %v", n, err)
			}
			streams++
			continue
		}
		var ij [2]int
		if err := b.Expect("m", &ij); err != nil {
			t.Fatal(err)
		}
		seen[ij] = true
	}
	wg.Wait()
}

func TestRecvDeadlineKeepsStep(t *testing.T) {
	a, b := pipePair(t, nil)
	b.SetDeadline(time.Now().Add(20 * time.Millisecond))
	var ne net.Error
	if _, _, err := b.Recv(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Recv: %v", err)
	}
	// Nothing was read, so the Conn can wait again.
	b.SetDeadline(time.Time{})
	done := async(func() error { return a.Send("late", json.RawMessage(`{}`)) })
	if err := b.Expect("late", nil); err != nil {
		t.Fatal(err)
	}
	<-done
}
