package pods

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// respConn is the smallest Redis client that the tests need: one TCP
// connection speaking RESP, so a test can prove that the same connection
// survives a checkpoint.
type respConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRedis(ctx context.Context, addr string) (*respConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &respConn{c: c, r: bufio.NewReaderSize(c, 1<<16)}, nil
}

func (r *respConn) Close() error { return r.c.Close() }

// Do sends one command and reads one reply (simple string, integer, bulk or error).
func (r *respConn) Do(timeout time.Duration, args ...[]byte) (string, error) {
	r.c.SetDeadline(time.Now().Add(timeout))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n", len(a))
		b.Write(a)
		b.WriteString("\r\n")
	}
	if _, err := io.WriteString(r.c, b.String()); err != nil {
		return "", err
	}
	line, err := r.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis: unexpected reply %q", line)
}

func (r *respConn) Cmd(args ...string) (string, error) {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	return r.Do(10*time.Second, bs...)
}

// fillRandom stores n values of size bytes of random (incompressible) data.
func (r *respConn) fillRandom(n, size int) error {
	val := make([]byte, size)
	for i := 0; i < n; i++ {
		if _, err := rand.Read(val); err != nil {
			return err
		}
		if _, err := r.Do(30*time.Second, []byte("SET"), []byte("key:"+strconv.Itoa(i)), val); err != nil {
			return err
		}
	}
	return nil
}
