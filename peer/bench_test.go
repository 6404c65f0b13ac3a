package peer

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time this process used so far, user and system: on a shared
// machine it measures cost where wall time measures the neighbours too.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time, both ends together, per MiB sent.
func reportCPU(b *testing.B, since time.Duration, bytes int64) {
	b.ReportMetric(float64((cpuTime()-since).Microseconds())/1000/(float64(bytes)/(1<<20)), "cpu-ms/MiB")
}

// patternReader yields size bytes from a fixed random block, without allocating:
// a stand-in for pod files and CRIU images (random, so nothing could compress it).
type patternReader struct {
	block []byte
	off   int
	left  int64
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.left)]
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.block[r.off:])
		n += k
		r.off = (r.off + k) % len(r.block)
	}
	r.left -= int64(n)
	return n, nil
}

const benchStreamSize = 256 << 20

// benchStream sends b.N streams of benchStreamSize from a to b and reports the
// throughput.
func benchStream(b *testing.B, a, z *Conn) {
	block := make([]byte, 1<<20+7)
	rand.Read(block)
	b.SetBytes(benchStreamSize)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	defer func() { reportCPU(b, cpu0, int64(b.N)*benchStreamSize) }()
	errc := make(chan error, 1)
	go func() {
		for range b.N {
			if _, _, err := a.SendStream(&patternReader{block: block, left: benchStreamSize}); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for range b.N {
		if n, _, err := z.RecvStream(io.Discard); err != nil || n != benchStreamSize {
			b.Fatal(n, err)
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStreamTLS measures SendStream to RecvStream over loopback TCP with TLS.
func BenchmarkStreamTLS(b *testing.B) {
	a, z := newHost(b, "host-a"), newHost(b, "host-b")
	c, s := connect(b, a, z)
	benchStream(b, c, s)
}

// BenchmarkStreamPlainTCP is the same without TLS: the cost of TLS is the
// difference.
func BenchmarkStreamPlainTCP(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	cc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	sc := <-accepted
	defer cc.Close()
	defer sc.Close()
	benchStream(b, newConn(cc, Peer{}), newConn(sc, Peer{}))
}

// BenchmarkRawTLSCopy is the ceiling: io.Copy over the same kind of TLS connection,
// with neither framing nor checksum.
func BenchmarkRawTLSCopy(b *testing.B) {
	a, z := newHost(b, "host-a"), newHost(b, "host-b")
	c, s := connect(b, a, z)
	block := make([]byte, 1<<20+7)
	rand.Read(block)
	b.SetBytes(benchStreamSize)
	b.ResetTimer()
	cpu0 := cpuTime()
	defer func() { reportCPU(b, cpu0, int64(b.N)*benchStreamSize) }()
	go func() {
		for range b.N {
			io.Copy(c.nc, &patternReader{block: block, left: benchStreamSize})
		}
	}()
	for range b.N {
		s.nc.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.CopyN(io.Discard, s.nc, benchStreamSize); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandshake measures Dial and Accept over loopback.
func BenchmarkHandshake(b *testing.B) {
	a, z := newHost(b, "host-a"), newHost(b, "host-b")
	z.pin(b, a, "192.0.2.1")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			raw, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				c, err := Accept(context.Background(), raw, z.id, z.store)
				if err == nil {
					c.Close()
				}
			}()
		}
	}()
	p := a.pin(b, z, l.Addr().String())
	b.ResetTimer()
	for range b.N {
		c, err := Dial(context.Background(), a.id, p)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
