// Command e2eclient is the redis client that the end-to-end tier runs in a
// guest while the pod it talks to moves between hosts.
//
//	e2eclient fill   -addr ADDR -n N -size BYTES   store N random values
//	e2eclient write  -addr ADDR -state FILE        write until SIGTERM
//	e2eclient verify -addr ADDR -n N               check N acknowledged writes
//
// "write" holds one TCP connection and appends 0, 1, 2, ... to the list
// e2e:log (RPUSH), one at a time, every 5 ms. redis answers each append with
// the list's length, so a reply other than i+1 means that acknowledged
// writes were lost. Every gap between two acknowledgements longer than
// 50 ms is recorded as a pause. The state (connection, acknowledged count,
// pauses, the error that stopped it) is rewritten to FILE, atomically, four
// times a second and at the end. A broken connection stops the client: the
// test requires the same connection throughout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/autopod/autopod/test/resp"
)

// State is what "write" reports in its state file.
type State struct {
	Local   string  `json:"local"`  // the connection's local address
	Remote  string  `json:"remote"` // and its remote one
	Acked   int     `json:"acked"`  // appends redis acknowledged
	Pauses  []Pause `json:"pauses"`
	Error   string  `json:"error,omitempty"`
	Stopped bool    `json:"stopped"`
}

// Pause is a gap between two acknowledgements.
type Pause struct {
	Start   int64   `json:"start_unix_ms"` // when the last acknowledgement before it came
	Seconds float64 `json:"seconds"`
	After   int     `json:"after"` // acknowledged appends before it
}

const key = "e2e:log"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: e2eclient fill|write|verify -addr ADDR ...")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "", "redis address (HOST:PORT)")
	n := fs.Int("n", 0, "fill: values to store; verify: acknowledged appends to check")
	size := fs.Int("size", 16384, "fill: bytes per value")
	state := fs.String("state", "", "write: state file")
	fs.Parse(os.Args[2:])
	if *addr == "" {
		fmt.Fprintln(os.Stderr, "e2eclient: -addr is required")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := resp.Dial(ctx, *addr)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2eclient:", err)
		os.Exit(1)
	}
	defer c.Close()
	switch os.Args[1] {
	case "fill":
		err = c.FillRandom(*n, *size)
	case "write":
		err = write(c, *state)
	case "verify":
		err = verify(c, *n)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2eclient:", err)
		os.Exit(1)
	}
}

func write(c *resp.Conn, path string) error {
	if path == "" {
		return fmt.Errorf("write needs -state FILE")
	}
	st := State{Local: c.C.LocalAddr().String(), Remote: c.C.RemoteAddr().String()}
	save := func() {
		data, _ := json.Marshal(st)
		tmp := path + ".tmp"
		if os.WriteFile(tmp, data, 0o644) == nil {
			os.Rename(tmp, path)
		}
	}
	if _, err := c.Cmd("DEL", key); err != nil {
		st.Error = "DEL: " + err.Error()
		save()
		return err
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	lastAck, lastSave := time.Now(), time.Now()
	for i := 0; ; i++ {
		select {
		case <-stop:
			st.Stopped = true
			save()
			return nil
		case <-tick.C:
		}
		// A migration under TCG can freeze the pod for seconds; the
		// connection must outlive it, so the timeout is generous.
		reply, err := c.Do(3*time.Minute, []byte("RPUSH"), []byte(key), []byte(strconv.Itoa(i)))
		now := time.Now()
		if err != nil {
			st.Error = fmt.Sprintf("append %d: %v", i, err)
			save()
			return err
		}
		if reply != strconv.Itoa(i+1) {
			st.Error = fmt.Sprintf("append %d: redis says the list has %s entries, want %d: acknowledged writes were lost", i, reply, i+1)
			save()
			return fmt.Errorf("%s", st.Error)
		}
		if gap := now.Sub(lastAck); gap > 50*time.Millisecond {
			st.Pauses = append(st.Pauses, Pause{Start: lastAck.UnixMilli(), Seconds: gap.Seconds(), After: i})
		}
		st.Acked, lastAck = i+1, now
		if now.Sub(lastSave) >= 250*time.Millisecond {
			save()
			lastSave = now
		}
	}
}

// verify checks that the list holds exactly 0..n-1 at its start (at least
// n entries, each where it belongs), reading it in chunks.
func verify(c *resp.Conn, n int) error {
	l, err := c.Cmd("LLEN", key)
	if err != nil {
		return err
	}
	have, _ := strconv.Atoi(l)
	if have < n {
		return fmt.Errorf("%s has %d entries, %d were acknowledged: %d lost", key, have, n, n-have)
	}
	const chunk = 5000
	for i := 0; i < n; i += chunk {
		vals, err := c.Strings(time.Minute, "LRANGE", key, strconv.Itoa(i), strconv.Itoa(min(i+chunk, n)-1))
		if err != nil {
			return err
		}
		for j, v := range vals {
			if v != strconv.Itoa(i+j) {
				return fmt.Errorf("%s[%d] = %q, want %d", key, i+j, v, i+j)
			}
		}
		if len(vals) != min(chunk, n-i) {
			return fmt.Errorf("LRANGE %d..: %d entries, want %d", i, len(vals), min(chunk, n-i))
		}
	}
	fmt.Printf("verified %d acknowledged appends (%d in the list)\n", n, have)
	return nil
}
