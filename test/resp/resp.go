// Package resp is the smallest Redis client autopod's tests need: one TCP
// connection speaking RESP, so a test can prove that the same connection
// survives a checkpoint or a migration.
package resp

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

// Conn is one RESP connection.
type Conn struct {
	C net.Conn
	r *bufio.Reader
}

// Dial connects to a Redis server.
func Dial(ctx context.Context, addr string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

// New speaks RESP over an established connection.
func New(c net.Conn) *Conn { return &Conn{C: c, r: bufio.NewReaderSize(c, 1<<16)} }

// Close closes the connection.
func (r *Conn) Close() error { return r.C.Close() }

// Do sends one command and reads one reply (simple string, integer, bulk or error).
func (r *Conn) Do(timeout time.Duration, args ...[]byte) (string, error) {
	line, err := r.send(timeout, args)
	if err != nil {
		return "", err
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '$':
		return r.bulk(line)
	}
	return "", fmt.Errorf("redis: unexpected reply %q", line)
}

// send writes one command and reads the first line of its reply; an error
// reply is returned as an error.
func (r *Conn) send(timeout time.Duration, args [][]byte) (string, error) {
	r.C.SetDeadline(time.Now().Add(timeout))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n", len(a))
		b.Write(a)
		b.WriteString("\r\n")
	}
	if _, err := io.WriteString(r.C, b.String()); err != nil {
		return "", err
	}
	line, err := r.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("redis: empty reply line")
	}
	if line[0] == '-' {
		return "", fmt.Errorf("redis: %s", line[1:])
	}
	return line, nil
}

// bulk reads the body of a bulk string whose header line is line ("$N").
func (r *Conn) bulk(line string) (string, error) {
	n, err := strconv.Atoi(line[1:])
	if err != nil {
		return "", fmt.Errorf("redis: bad bulk header %q", line)
	}
	if n < 0 {
		return "", nil
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r.r, buf); err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// Cmd is Do with string arguments and a 10 s timeout.
func (r *Conn) Cmd(args ...string) (string, error) {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	return r.Do(10*time.Second, bs...)
}

// FillRandom stores n values of size bytes of random (incompressible) data.
func (r *Conn) FillRandom(n, size int) error {
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

// Strings sends one command whose reply is an array of bulk strings
// (LRANGE, MGET) and returns it; nil elements come back as "".
func (r *Conn) Strings(timeout time.Duration, args ...string) ([]string, error) {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	line, err := r.send(timeout, bs)
	if err != nil {
		return nil, err
	}
	if line[0] != '*' {
		return nil, fmt.Errorf("redis: expected an array, got %q", line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil {
		return nil, fmt.Errorf("redis: bad array header %q", line)
	}
	out := make([]string, 0, max(n, 0))
	for i := 0; i < n; i++ {
		el, err := r.r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		el = strings.TrimRight(el, "\r\n")
		if el == "" || el[0] != '$' {
			return nil, fmt.Errorf("redis: array element %d: unexpected %q", i, el)
		}
		v, err := r.bulk(el)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
