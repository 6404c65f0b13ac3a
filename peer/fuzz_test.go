package peer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzReadFrames feeds arbitrary bytes, as a confused or malicious peer could send
// them, to the frame reader. It must neither panic nor hang nor allocate what a
// header claims rather than what arrives, and a stream it accepts must be exactly
// what the end frame vouched for.
func FuzzReadFrames(f *testing.F) {
	// Seeds: what a real sender writes.
	var seed bytes.Buffer
	w := newFrameConn(strings.NewReader(""), &seed)
	w.Send("hello", nil)
	w.Send("spec", map[string]any{"pod": "redis", "mem": 100 << 20})
	w.SendStream(strings.NewReader(strings.Repeat("page", 1000)))
	w.SendError(errors.New("restore failed"))
	w.SendStream(strings.NewReader(""))
	f.Add(byte(0), seed.Bytes())
	f.Add(byte(0xff), seed.Bytes())
	f.Add(byte(1), rawFrame(kindData, []byte("abc")))
	f.Add(byte(1), append(rawFrame(kindData, []byte("abc")), endFrame(3, []byte("abc"))...))
	f.Add(byte(0), []byte{kindJSON, 0xff, 0xff, 0xff, 0xff})
	f.Add(byte(0), []byte{kindJSON, 0x01, 0, 0, 0, '{'})

	f.Fuzz(func(t *testing.T, modes byte, data []byte) {
		c := newFrameConn(bytes.NewReader(data), io.Discard)
		// Each bit of modes picks Recv or RecvStream for the next call.
		for i := range 64 {
			var err error
			if modes>>(i%8)&1 == 0 {
				_, _, err = c.Recv()
			} else {
				var out bytes.Buffer
				var n int64
				var sum string
				n, sum, err = c.RecvStream(&out)
				if err == nil {
					got := sha256.Sum256(out.Bytes())
					if n != int64(out.Len()) || sum != "sha256:"+hex.EncodeToString(got[:]) {
						t.Fatalf("accepted stream of %d bytes %s, wrote %d bytes", n, sum, out.Len())
					}
				}
			}
			if c.rerr != nil {
				// Once out of step, always out of step.
				if _, _, again := c.Recv(); again != c.rerr {
					t.Fatalf("after %v, Recv returned %v", c.rerr, again)
				}
				return
			}
			_ = err
		}
	})
}
