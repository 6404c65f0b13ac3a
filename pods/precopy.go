package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Pre-copy, as CRIU and P.Haul do it: while the pod runs, rounds of
// `criu pre-dump --track-mem` copy its memory to a CRIU page server on
// the peer (through the page relay, as stop-and-copy's dump does); each
// round after the first sends only the pages the pod wrote since the one
// before (the kernel's soft-dirty bits) and records the others as being
// in its parent round. When a round is small enough, or stops shrinking,
// the pod is frozen and the final dump sends what is still dirty; the
// peer restores from the final images, and CRIU follows their "parent"
// links to the pages of the earlier rounds.
//
// On both hosts the rounds live beside the final images in the
// migration's work directory, with the same relative names, so that one
// relative parent path holds on both:
//
//	work/precopy-1/            round 1: all the pod's memory
//	work/precopy-2/  parent -> ../precopy-1
//	work/images/     parent -> ../precopy-N   the final (frozen) dump
//
// The conversation, on the migration's connection, after the first pass
// of files:
//
//	source                          destination
//	precopy-round {round: n}   →    starts a page server for precopy-n
//	                           ←    precopy-ready
//	(pre-dump through the relay)
//	precopy-round-done {pages} →    checks what the relay received
//	                           ←    precopy-round-ok
//	... until the stop rules say so, then
//	precopy-final {parent}     →    starts the page server for images/
//	                           ←    precopy-ready
//
// and then stop-and-copy's freeze, dump and restore. Any failure on either
// side before the peer confirms the restore ends in the usual rollback:
// the pod runs on here.

// PhasePreCopy is reported after each pre-copy round, with the bytes sent.
const PhasePreCopy = "pre-copy"

// precopyPolicy holds the stop rules of the pre-copy rounds.
type precopyPolicy struct {
	// MaxRounds is the most pre-dump rounds before the final dump.
	MaxRounds int
	// SmallBytes: a round that wrote less than this is the last; the
	// final dump will not send much more.
	SmallBytes int64
	// SmallFraction: a round that wrote less than this fraction of the
	// first round is the last.
	SmallFraction float64
}

// defaultPrecopyPolicy stops after 5 rounds, or at a round under 4 MiB
// or 10 % of the first, or at one that did not shrink (the pod writes
// faster than the link moves its pages: more rounds would not help).
var defaultPrecopyPolicy = precopyPolicy{MaxRounds: 5, SmallBytes: 4 << 20, SmallFraction: 0.10}

// next decides, from the bytes each round so far wrote (round 1 first),
// whether another round should run; when not, why.
func (p precopyPolicy) next(rounds []int64) (more bool, why string) {
	n := len(rounds)
	if n == 0 {
		return true, ""
	}
	last := rounds[n-1]
	switch {
	case last < p.SmallBytes:
		return false, fmt.Sprintf("round %d wrote %s, under %s", n, byteSize(last), byteSize(p.SmallBytes))
	case n > 1 && float64(last) < p.SmallFraction*float64(rounds[0]):
		return false, fmt.Sprintf("round %d wrote %s, under %g%% of round 1's %s", n, byteSize(last), 100*p.SmallFraction, byteSize(rounds[0]))
	case n > 1 && last >= rounds[n-2]:
		return false, fmt.Sprintf("round %d wrote %s, no less than round %d's %s", n, byteSize(last), n-1, byteSize(rounds[n-2]))
	case n >= p.MaxRounds:
		return false, fmt.Sprintf("%d rounds, the most allowed", n)
	}
	return true, ""
}

// roundResult is what one pre-copy round did.
type roundResult struct {
	Written int64 // bytes of pages CRIU wrote (its pages_written)
	Sent    int64 // bytes through the relay (pages and page-server protocol)
}

// runPrecopyRounds runs rounds (round 1 first) until the policy stops
// them; it returns what each round did and why it stopped. A round's
// error ends the series.
func runPrecopyRounds(ctx context.Context, p precopyPolicy, round func(ctx context.Context, n int) (roundResult, error)) ([]roundResult, string, error) {
	var done []roundResult
	var written []int64
	for {
		if err := ctx.Err(); err != nil {
			return done, "", err
		}
		r, err := round(ctx, len(done)+1)
		if err != nil {
			return done, "", fmt.Errorf("pre-copy round %d: %w", len(done)+1, err)
		}
		done = append(done, r)
		written = append(written, r.Written)
		if more, why := p.next(written); !more {
			return done, why, nil
		}
	}
}

// byteSize formats n bytes for log lines and messages.
func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " B"
}

func precopyDir(n int) string { return "precopy-" + strconv.Itoa(n) }

// parentOf is round n's parent, relative to its own directory ("" for
// the first round).
func parentOf(n int) string {
	if n <= 1 {
		return ""
	}
	return "../" + precopyDir(n-1)
}

// wire messages of the rounds
type precopyRoundMsg struct {
	Round int `json:"round"`
}
type precopyRoundDone struct {
	Round int       `json:"round"`
	Pages streamSum `json:"pages"` // what the source relayed
}
type precopyFinalMsg struct {
	Rounds int `json:"rounds"` // the final dump's parent is the last of them
}

// precopyOut runs the source's pre-copy rounds on a running pod: the
// rounds and the final dump share one CRIU session, which the caller
// closes after that dump. On error the pod is running and thawed, and
// nothing of the rounds runs on here (the destination's page servers end
// when the caller reports the failure to it).
func (m *Manager) precopyOut(ctx context.Context, conn MigrationConn, sess *criuSession, s, work, txn string, base criuRequest, sent func(int64)) (rounds int, err error) {
	peer := conn.PeerName()
	roundsDone, why, err := runPrecopyRounds(ctx, m.precopy, func(ctx context.Context, n int) (roundResult, error) {
		start := time.Now()
		dir := filepath.Join(work, precopyDir(n))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return roundResult{}, err
		}
		if err := conn.Send("precopy-round", precopyRoundMsg{Round: n}); err != nil {
			return roundResult{}, err
		}
		if err := conn.Expect("precopy-ready", nil); err != nil {
			return roundResult{}, err
		}
		pagesOut := newTally(true)
		port, relayDone, err := m.startPageRelay(ctx, peer, txn, pagesOut, nil)
		if err != nil {
			return roundResult{}, err
		}
		req := base
		req.ImagesDir, req.LogName = dir, "migrate-predump-"+strconv.Itoa(n)+".log"
		req.TrackMem, req.ParentImg = true, parentOf(n)
		req.PageServerAddr, req.PageServerPort = "127.0.0.1", port
		if err := m.faultAt("precopy-round"); err != nil {
			return roundResult{}, err
		}
		if err := sess.PreDump(ctx, req); err != nil {
			// CRIU thaws what it froze; if it died with the pod frozen
			// in the freezer cgroup, thaw it here.
			if terr := m.cg.freeze(s, false); terr != nil {
				err = errors.Join(err, terr)
			}
			return roundResult{}, err
		}
		select {
		case err := <-relayDone:
			if err != nil {
				return roundResult{}, err
			}
		case <-time.After(30 * time.Second):
			return roundResult{}, errors.New("page relay did not end after the pre-dump")
		}
		n64, sum := pagesOut.result()
		sent(n64)
		st, err := dumpStats(req.WorkDir, dir)
		if err != nil {
			return roundResult{}, err
		}
		// Private and shared (shmem) pages alike cross the relay.
		written := int64(st.GetPagesWritten()+st.GetShpagesWritten()) * int64(os.Getpagesize())
		if err := conn.Send("precopy-round-done", precopyRoundDone{Round: n, Pages: streamSum{Bytes: n64, SHA256: sum}}); err != nil {
			return roundResult{}, err
		}
		if err := conn.Expect("precopy-round-ok", nil); err != nil {
			return roundResult{}, err
		}
		m.cfg.Log.Info("pre-copy round", "pod", s, "peer", peer, "round", n,
			"pages_written", st.GetPagesWritten(), "pages_scanned", st.GetPagesScanned(),
			"pages_skipped_parent", st.GetPagesSkippedParent(), "shpages_written", st.GetShpagesWritten(), "written", byteSize(written),
			"relayed_bytes", n64, "frozen_us", st.GetFrozenTime(), "duration", time.Since(start))
		return roundResult{Written: written, Sent: n64}, nil
	})
	if err != nil {
		return len(roundsDone), err
	}
	m.cfg.Log.Info("pre-copy rounds done; freezing for the final dump", "pod", s, "peer", peer, "rounds", len(roundsDone), "why", why)
	if err := conn.Send("precopy-final", precopyFinalMsg{Rounds: len(roundsDone)}); err != nil {
		return len(roundsDone), err
	}
	if err := conn.Expect("precopy-ready", nil); err != nil {
		return len(roundsDone), err
	}
	return len(roundsDone), nil
}

// precopyIn is the destination's side of the rounds, up to the page
// server that takes the final dump's pages into imgDir (returned running,
// with its relay's tally and end). On error nothing of it runs on.
func (m *Manager) precopyIn(ctx context.Context, conn MigrationConn, pod, txn, work, imgDir string, received func(int64)) (final *criuDaemon, pagesIn *tally, psDone <-chan error, err error) {
	peer := conn.PeerName()
	var daemon *criuDaemon
	defer func() {
		if err != nil && daemon != nil {
			daemon.kill()
		}
	}()
	start := func(dir, parent, logName string) error {
		port, err := freePort()
		if err != nil {
			return err
		}
		if daemon, err = m.criu.startPageServer(ctx, dir, parent, work, logName, "127.0.0.1", port); err != nil {
			return err
		}
		pagesIn = newTally(true)
		psDone = m.addPageServer(txn, peer, port, nil, pagesIn)
		return nil
	}
	for round := 1; ; round++ {
		typ, body, err := conn.Recv()
		if err != nil {
			return nil, nil, nil, err
		}
		switch typ {
		case "precopy-final":
			var f precopyFinalMsg
			if err := json.Unmarshal(body, &f); err != nil {
				return nil, nil, nil, err
			}
			if f.Rounds != round-1 || f.Rounds < 1 {
				return nil, nil, nil, fmt.Errorf("pre-copy: the final dump follows round %d, but %d rounds arrived", f.Rounds, round-1)
			}
			if err := start(imgDir, parentOf(round), "page-server.log"); err != nil {
				return nil, nil, nil, err
			}
			if err := conn.Send("precopy-ready", nil); err != nil {
				return nil, nil, nil, err
			}
			return daemon, pagesIn, psDone, nil
		case "precopy-round":
		default:
			return nil, nil, nil, fmt.Errorf("pre-copy: unexpected message %q", typ)
		}
		var r precopyRoundMsg
		if err := json.Unmarshal(body, &r); err != nil {
			return nil, nil, nil, err
		}
		if r.Round != round {
			return nil, nil, nil, fmt.Errorf("pre-copy: round %d arrived, round %d expected", r.Round, round)
		}
		dir := filepath.Join(work, precopyDir(round))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, nil, nil, err
		}
		if err := start(dir, parentOf(round), "page-server-"+precopyDir(round)+".log"); err != nil {
			return nil, nil, nil, err
		}
		if err := conn.Send("precopy-ready", nil); err != nil {
			return nil, nil, nil, err
		}
		var done precopyRoundDone
		if err := conn.Expect("precopy-round-done", &done); err != nil {
			return nil, nil, nil, err
		}
		select {
		case err := <-psDone:
			if err != nil {
				return nil, nil, nil, err
			}
		case <-time.After(30 * time.Second):
			return nil, nil, nil, errors.New("page relay did not end")
		}
		if err := daemon.wait(ctx); err != nil {
			return nil, nil, nil, err
		}
		daemon = nil
		n, sum := pagesIn.result()
		if n != done.Pages.Bytes || sum != done.Pages.SHA256 {
			return nil, nil, nil, fmt.Errorf("%w: pre-copy round %d: received %d bytes sha256:%s, the source sent %d bytes sha256:%s",
				ErrImageCorrupt, round, n, sum, done.Pages.Bytes, done.Pages.SHA256)
		}
		received(n)
		m.cfg.Log.Info("pre-copy round received", "pod", pod, "peer", peer, "round", round, "relayed_bytes", n)
		if err := conn.Send("precopy-round-ok", nil); err != nil {
			return nil, nil, nil, err
		}
	}
}
