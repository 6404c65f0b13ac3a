package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/cycle"
	"github.com/autopod/autopod/pods"
)

// answerConn is a pods.MigrationConn that records what the handler sends.
type answerConn struct {
	peer string
	sent []string
	body []any
}

func (c *answerConn) PeerName() string { return c.peer }
func (c *answerConn) Send(t string, body any) error {
	c.sent = append(c.sent, t)
	c.body = append(c.body, body)
	return nil
}
func (c *answerConn) Recv() (string, json.RawMessage, error)      { return "", nil, io.EOF }
func (c *answerConn) Expect(string, any) error                    { return io.EOF }
func (c *answerConn) SendError(error) error                       { return nil }
func (c *answerConn) SendStream(io.Reader) (int64, string, error) { return 0, "", nil }
func (c *answerConn) RecvStream(io.Writer) (int64, string, error) { return 0, "", nil }
func (c *answerConn) SetDeadline(time.Time) error                 { return nil }
func (c *answerConn) Raw() pods.RawConn                           { return nil }
func (c *answerConn) Close() error                                { return nil }

func handle(t *testing.T, s *UpdatePeerService, peer, typ string, body any) peerAnswer {
	t.Helper()
	data, _ := json.Marshal(body)
	c := &answerConn{peer: peer}
	handled, err := s.Handle(context.Background(), c, typ, data)
	if !handled || err != nil || len(c.sent) != 1 || c.sent[0] != typ+"-answer" {
		t.Fatalf("%s from %s: handled %v, err %v, sent %v", typ, peer, handled, err, c.sent)
	}
	return c.body[0].(peerAnswer)
}

func TestLeaseBetweenPeers(t *testing.T) {
	store := NewLeaseStore(filepath.Join(t.TempDir(), "lease.json"))
	var busy error
	s := &UpdatePeerService{Store: store, Accept: func() error { return busy }}

	if a := handle(t, s, "hosta", reqLeaseAcquire, struct{}{}); !a.OK {
		t.Fatalf("first lease refused: %+v", a)
	}
	if a := handle(t, s, "hosta", reqLeaseAcquire, struct{}{}); !a.OK {
		t.Fatalf("re-acquiring one's own lease refused: %+v", a)
	}
	if a := handle(t, s, "hostc", reqLeaseAcquire, struct{}{}); a.OK || !strings.Contains(a.Reason, "held by hosta") {
		t.Fatalf("a second holder: %+v", a)
	}
	// Durable: another store on the same file (the agent restarted) knows.
	if h := NewLeaseStore(store.path).Holder(); h != "hosta" {
		t.Fatalf("after a restart the holder is %q", h)
	}
	// This host may not update while it let hosta: CycleLock refuses.
	l := CycleLock{Dialer: noPeers{}, Store: store}
	if err := l.Acquire(context.Background()); err == nil || !strings.Contains(err.Error(), "hosta") {
		t.Fatalf("own lease while hosta holds ours: %v", err)
	}
	if a := handle(t, s, "hostc", reqLeaseRelease, struct{}{}); !a.OK || store.Holder() != "hosta" {
		t.Fatalf("a release by another peer must not free hosta's lease: %+v, holder %q", a, store.Holder())
	}
	if a := handle(t, s, "hosta", reqLeaseRelease, struct{}{}); !a.OK || store.Holder() != "" {
		t.Fatalf("release: %+v, holder %q", a, store.Holder())
	}
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatalf("own lease with no peers and nothing granted: %v", err)
	}
	// A host whose own cycle runs grants nobody the lease.
	busy = cycle.ErrUpdating
	if a := handle(t, s, "hostc", reqLeaseAcquire, struct{}{}); a.OK || !strings.Contains(a.Reason, "updating") {
		t.Fatalf("lease from a host that updates itself: %+v", a)
	}
}

func TestCanTake(t *testing.T) {
	var busy error
	avail := uint64(4 << 30)
	s := &UpdatePeerService{Store: NewLeaseStore(filepath.Join(t.TempDir(), "lease.json")),
		Accept: func() error { return busy }, MemAvailable: func() (uint64, error) { return avail, nil }}
	if a := handle(t, s, "hosta", reqCanTake, canTakeReq{Pods: []string{"kv"}, Memory: 1 << 30}); !a.OK {
		t.Fatalf("room for 1 GiB in 4: %+v", a)
	}
	if a := handle(t, s, "hosta", reqCanTake, canTakeReq{Pods: []string{"kv"}, Memory: 4 << 30}); a.OK || !strings.Contains(a.Reason, "not enough memory") {
		t.Fatalf("4 GiB (plus margin) in 4: %+v", a)
	}
	if a := handle(t, s, "hosta", reqCanTake, canTakeReq{Pods: []string{"kv"}}); !a.OK {
		t.Fatalf("unlimited pods: %+v", a)
	}
	busy = cycle.ErrUpdating
	if a := handle(t, s, "hosta", reqCanTake, canTakeReq{Pods: []string{"kv"}}); a.OK || !strings.Contains(a.Reason, "updating") {
		t.Fatalf("a host that updates itself: %+v", a)
	}
	avail, busy = 0, nil
	s.MemAvailable = func() (uint64, error) { return 0, errors.New("no /proc") }
	if a := handle(t, s, "hosta", reqCanTake, canTakeReq{Memory: 1}); a.OK {
		t.Fatalf("unknown free memory: %+v", a)
	}
	// Not ours: left to the pod runtime.
	if handled, _ := s.Handle(context.Background(), &answerConn{peer: "hosta"}, "migrate-offer", nil); handled {
		t.Fatal("the update service took a migration request")
	}
	if _, err := memAvailable(); err != nil {
		t.Fatalf("this host's /proc/meminfo: %v", err)
	}
}

// noPeers is a peerDialer with no pinned peers.
type noPeers struct{}

func (noPeers) DialPeer(context.Context, string) (pods.MigrationConn, error) {
	return nil, errors.New("no peers")
}
func (noPeers) ListPeers() ([]PeerInfo, error) { return nil, nil }
