package pods

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Post-copy, as the destination and the source see it after the restore.
//
// Destination: it restored the pod lazily, isolated, and said "restored".
// On "commit" it exposes the pod, says "exposed", and waits for CRIU's
// lazy-pages daemon to fetch every page; then the copy is complete and it
// says "committed". If the daemon fails, the copy cannot go on (a page it
// lacks would read as zeroes): it is killed before the source hears of it.
//
// Source: its frozen copy holds every page until the destination said
// "committed"; then it destroys that copy. If the destination reports a
// failure, the destination's copy is gone and this one resumes. If nobody
// knows (the link broke, an agent restarted), the source copy stays frozen
// and isolated, and the source asks the destination how it ended
// ("postcopy-status"), because only the destination knows whether its
// copy got all the memory.

// Answers to "postcopy-status".
const (
	postcopyComplete = "complete" // the destination's copy has every page and runs
	postcopyPending  = "pending"  // still fetching
	postcopyGone     = "gone"     // no copy there: it failed or never was
)

type postcopyStatusMsg struct {
	Status string `json:"status"`
}

// postCopyIn finishes an incoming post-copy migration once the pod is
// restored (isolated, with daemon fetching its memory).
func (m *Manager) postCopyIn(ctx context.Context, conn MigrationConn, p *pod, txn string, daemon *lazyDaemon,
	fail func(error) error, report func(string)) error {
	m.mu.Lock()
	s, pid := p.spec, p.st.Pid
	m.mu.Unlock()
	if err := conn.Send("restored", restoredMsg{Pid: pid}); err != nil {
		return fail(err)
	}
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	var cm commitMsg
	if err := conn.Expect("commit", &cm); err != nil {
		// Whatever the source decided, it keeps its frozen copy until it
		// hears "committed", which this copy will never earn now.
		return fail(err)
	}
	select {
	case <-daemon.failed:
		// The link broke while the pod was restored or waited for the
		// commit: this copy is dead or lacks its memory; say why.
		return fail(fmt.Errorf("post-copy: %w", daemon.wait(ctx)))
	default:
	}
	sent, held := m.unholdIncoming(ctx, s.Name)
	if err := exposePort(ctx, s, pid, held); err != nil {
		return fail(err)
	}
	m.deliverHeld(s, pid, cm.Frames, sent)
	if err := conn.Send("exposed", nil); err != nil {
		return fail(err)
	}
	report(PhaseMemory)
	if err := m.faultAt("postcopy-in"); err != nil {
		return fail(err)
	}
	memStart := time.Now()
	if err := daemon.wait(ctx); err != nil {
		return fail(fmt.Errorf("post-copy: %w", err))
	}
	m.cfg.Log.Debug("post-copy: the lazy-pages daemon has every page", "pod", s.Name, "after", time.Since(memStart))
	m.mu.Lock()
	p.st.Migration, p.st.LastTxn = nil, txn
	if m.received == nil {
		m.received = map[string]bool{}
	}
	m.received[txn] = true
	if p.st.Home == "" {
		p.st.Location = "" // back home
	}
	m.setState(p, StateRunning, "")
	m.mu.Unlock()
	m.cfg.Log.Info("pod restored from peer (post-copy)", "pod", s.Name, "pid", pid)
	report(PhaseCommit)
	if err := conn.Send("committed", nil); err != nil {
		// The source asks with postcopy-status.
		m.cfg.Log.Warn("could not confirm a finished post-copy; the source will ask", "pod", s.Name, "err", err)
	} else {
		awaitRelease(conn)
	}
	report(PhaseDone)
	return nil
}

// postcopyStatus answers a source asking how post-copy migration txn
// ended here.
func (m *Manager) postcopyStatus(txn, peer string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.received[txn] {
		return postcopyComplete
	}
	for _, p := range m.pods {
		if mg := p.st.Migration; mg != nil && mg.Txn == txn && mg.Role == "in" && mg.Peer == peer {
			return postcopyPending
		}
		if p.st.LastTxn == txn {
			return postcopyComplete
		}
	}
	return postcopyGone
}

// resolvePostcopy settles an outgoing post-copy migration whose outcome
// this host does not know: until the peer answers, the frozen copy here
// stays frozen and cut off.
func (m *Manager) resolvePostcopy(p *pod, txn, peer string) {
	log := m.cfg.Log.With("pod", p.spec.Name, "peer", peer, "txn", txn)
	for delay := 500 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		status, err := m.askPostcopy(ctx, txn, peer)
		cancel()
		switch {
		case err != nil:
			log.Warn("cannot learn the outcome of a post-copy migration yet; pod stays frozen here", "err", err)
		case status == postcopyComplete:
			log.Info("peer has the whole pod: destroying the frozen copy here")
			m.commitOut(p, txn, peer)
			return
		case status == postcopyGone:
			log.Warn("peer has no copy of the pod: resuming it here")
			m.resumeOut(context.Background(), p, "post-copy to "+peer+" failed; resumed here")
			return
		default:
			log.Info("peer still fetching the pod's memory", "status", status)
		}
		time.Sleep(delay)
	}
}

func (m *Manager) askPostcopy(ctx context.Context, txn, peer string) (string, error) {
	var st postcopyStatusMsg
	err := m.askPeer(ctx, peer, "postcopy-status", txnRef{Txn: txn}, "postcopy-status", &st)
	return st.Status, err
}

// commitOut decides durably that the pod left, and destroys the frozen
// source copy.
func (m *Manager) commitOut(p *pod, txn, peer string) {
	m.mu.Lock()
	name, pid := p.spec.Name, p.st.Pid
	if p.st.Migration != nil {
		p.st.Migration.Phase = "commit"
	}
	p.stopping = true
	if err := m.persist(p); err != nil {
		m.cfg.Log.Error("persist commit decision", "pod", name, "err", err)
	}
	ch := p.exited
	m.mu.Unlock()
	m.killFrozen(name, pid, ch)
	m.finishOut(p, txn, peer)
}

// resumeOut thaws the frozen source copy of a pod whose migration failed
// and lets it serve again.
func (m *Manager) resumeOut(ctx context.Context, p *pod, why string) {
	m.mu.Lock()
	name, pid, s := p.spec.Name, p.st.Pid, p.spec
	m.mu.Unlock()
	if pid <= 0 || !alive(pid) {
		m.cleanup(ctx, name)
		m.mu.Lock()
		p.st.Migration, p.st.Pid = nil, 0
		m.setState(p, StateFailed, why+", but the pod had died here")
		m.mu.Unlock()
		return
	}
	var errs []error
	if s.Network.Address.IsValid() {
		errs = append(errs, setPortForwarding(ctx, hostVeth(name), true))
	}
	if pid > 0 {
		errs = append(errs, releaseNetworkLock(ctx, pid))
	}
	errs = append(errs, m.cg.freeze(name, false))
	if err := errors.Join(errs...); err != nil {
		m.cfg.Log.Error("resume pod after a failed migration", "pod", name, "err", err)
	}
	m.mu.Lock()
	p.st.Migration = nil
	m.setState(p, StateRunning, why)
	m.mu.Unlock()
}
