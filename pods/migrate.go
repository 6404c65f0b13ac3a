package pods

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// MigrationConn is an authenticated, framed connection to one peer (the
// peer package's *Conn). Control messages are JSON; streams carry bytes
// with a checksum the receiver verifies.
type MigrationConn interface {
	PeerName() string
	Send(msgType string, body any) error
	Recv() (string, json.RawMessage, error)
	Expect(msgType string, body any) error
	SendError(err error) error
	SendStream(r io.Reader) (int64, string, error)
	RecvStream(w io.Writer) (int64, string, error)
	SetDeadline(t time.Time) error
	// Raw hands the connection over to an unframed byte stream (the
	// relay of CRIU's page-server protocol) after the messages that set
	// it up; afterwards only SetDeadline and Close may be called.
	Raw() RawConn
	Close() error
}

// RawConn is a connection handed over by MigrationConn.Raw. CloseWrite
// ends the stream in one direction; the other side reads EOF.
type RawConn interface {
	io.ReadWriter
	CloseWrite() error
}

// ErrRemote wraps an error that the peer reported over the connection
// (as opposed to the connection failing); MigrationConn implementations
// return errors that match it with errors.Is.
var ErrRemote = errors.New("peer reported")

// PeerDialer opens a MigrationConn to a pinned peer by name.
type PeerDialer interface {
	DialPeer(ctx context.Context, name string) (MigrationConn, error)
}

// SetPeerDialer lets the manager reach peers (Migrate, Return, and the
// recovery of migrations interrupted by a crash).
func (m *Manager) SetPeerDialer(d PeerDialer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dialer = d
}

func (m *Manager) peerDialer() (PeerDialer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dialer == nil {
		return nil, errors.New("no peer transport configured")
	}
	return m.dialer, nil
}

// migrationState is persisted while a migration is in flight. The source
// is the coordinator of a two-phase commit: its durable decision
// ("commit", written before it destroys its copy) is the truth that the
// destination asks for if the connection breaks, so that at no moment two
// copies of the pod answer on its address and no pod is lost.
type migrationState struct {
	Txn   string `json:"txn"`
	Peer  string `json:"peer"`
	Role  string `json:"role"`  // "out" (this host is the source) or "in"
	Phase string `json:"phase"` // out: "transfer", "commit"; in: "transfer", "restored"
}

// Migration phases reported to progress callbacks.
const (
	PhaseOffer    = "offer"
	PhaseFiles    = "files"
	PhaseFreeze   = "freeze"
	PhaseDump     = "dump"
	PhaseDelta    = "files-delta"
	PhaseImages   = "images"
	PhaseRestore  = "restore"
	PhaseMemory   = "memory" // post-copy: the pod runs on the peer, its memory follows
	PhaseCommit   = "commit"
	PhaseDone     = "done"
	PhaseRollback = "rollback"
)

// MigrationProgress is one step of a migration as it happens.
type MigrationProgress struct {
	Pod   string `json:"pod"`
	Peer  string `json:"peer"`
	Phase string `json:"phase"`
	Bytes int64  `json:"bytes"` // sent so far
}

// MigrationResult describes a finished migration.
type MigrationResult struct {
	Pod        string `json:"pod"`
	Peer       string `json:"peer"`
	FileBytes  int64  `json:"file_bytes"`
	ImageBytes int64  `json:"image_bytes"`
	PageBytes  int64  `json:"page_bytes"` // post-copy: memory moved after the pod resumed
	// PreCopyBytes is what the pre-copy rounds sent while the pod ran,
	// in PreCopyRounds rounds.
	PreCopyBytes  int64         `json:"precopy_bytes,omitempty"`
	PreCopyRounds int           `json:"precopy_rounds,omitempty"`
	Strategy      string        `json:"strategy"`
	Frozen        time.Duration `json:"frozen_ns"` // from isolating the pod to its exposure on the peer
	Total         time.Duration `json:"total_ns"`
}

// wire messages
type migrateOffer struct {
	Txn         string   `json:"txn"`
	Pod         Spec     `json:"pod"`
	InitHash    string   `json:"init_hash"`
	CriuVersion string   `json:"criu_version"`
	Kernel      string   `json:"kernel"`
	Roots       []string `json:"roots"` // directories and files copied with the pod
	// Strategy is the one the source asks for ("auto" lets the peer pick
	// the best both can run); Support is what the source can run.
	Strategy string          `json:"strategy,omitempty"`
	Support  StrategySupport `json:"support"`
	// Neighbours are the pod's resolved neighbours, seeded into the
	// restored pod's empty ARP table.
	Neighbours []neighbour `json:"neighbours,omitempty"`
	// ExtNetns: the source can dump the pod's network namespace as
	// external, if the peer builds one for the pod (see prepareNetns).
	ExtNetns bool `json:"ext_netns,omitempty"`
	// Tmpfs: the source can move the pod's tmpfs contents itself, if the
	// peer mounts tmpfs for them (see tmpfs.go).
	Tmpfs bool `json:"tmpfs,omitempty"`
}
type migrateAccept struct {
	NeedInit bool   `json:"need_init"`
	Strategy string `json:"strategy,omitempty"` // "" from peers that know only stop-and-copy
	// StreamPages: a stop-and-copy dump sends its pages straight to a
	// page server on the peer (through the relay) rather than writing
	// them here first.
	StreamPages bool `json:"stream_pages,omitempty"`
	// ExtNetns: the peer has built the pod's network namespace; the dump
	// must leave it out.
	ExtNetns bool `json:"ext_netns,omitempty"`
	// TmpfsDir: the peer has mounted tmpfs for the pod's /tmp, /run and
	// /dev/shm below this directory; their contents go there with the
	// files, and the dump leaves them out.
	TmpfsDir string `json:"tmpfs_dir,omitempty"`
}
type imagesMsg struct {
	Files []ImageFile `json:"files"`
	// Pages is what the source relayed to the peer's page server: the
	// peer checks it against what its end of the relay received.
	Pages *streamSum `json:"pages,omitempty"`
}
type streamSum struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// commitMsg lets the destination expose its copy, and hands it the
// frames the source held for the pod while it was frozen.
type commitMsg struct {
	Frames [][]byte `json:"frames,omitempty"`
}
type restoredMsg struct {
	Pid int `json:"pid"` // host pid on the destination
}
type podRef struct {
	Pod string `json:"pod"`
}
type txnRef struct {
	Txn string `json:"txn"`
}
type txnDecision struct {
	Decision string `json:"decision"` // "commit" or "abort"
}

// syncRoots lists what a pod needs besides its memory: its data bind
// mounts and, for a pod with its own root, that directory.
func syncRoots(s Spec) []string {
	var roots []string
	if s.Root.Mode == RootDir {
		roots = append(roots, s.Root.Path)
	}
	for _, b := range s.Mounts {
		roots = append(roots, b.Source)
	}
	return roots
}

func newTxn() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func kernelRelease() string {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return unix.ByteSliceToString(uts.Release[:])
}

// MigrateOptions are one migration's choices; the zero value takes the
// configured defaults.
type MigrateOptions struct {
	// Strategy overrides ManagerConfig.MigrationStrategy: "auto" or one
	// of Strategies; "" keeps the configured one.
	Strategy string
}

// Migrate moves a running pod to the named peer: the pod keeps its
// address, memory and TCP connections. Until the peer confirms a restore,
// any failure resumes the pod here.
func (m *Manager) Migrate(ctx context.Context, name, peer string, progress func(MigrationProgress)) (MigrationResult, error) {
	return m.MigrateWith(ctx, name, peer, MigrateOptions{}, progress)
}

// MigrateWith is Migrate with per-migration options. A strategy that is
// unknown or that this host cannot run fails at once (ErrStrategy),
// before the peer is contacted.
func (m *Manager) MigrateWith(ctx context.Context, name, peer string, opts MigrateOptions, progress func(MigrationProgress)) (MigrationResult, error) {
	want := m.strategyFor(opts)
	if err := m.checkStrategy(want); err != nil {
		return MigrationResult{}, fmt.Errorf("migrate %s: %w", name, err)
	}
	p, err := m.claim(name, StateRunning)
	if err != nil {
		return MigrationResult{}, err
	}
	defer m.release(p)
	d, err := m.peerDialer()
	if err != nil {
		return MigrationResult{}, err
	}
	conn, err := d.DialPeer(ctx, peer)
	if err != nil {
		return MigrationResult{}, fmt.Errorf("migrate %s: %w", name, err)
	}
	defer conn.Close()
	return m.migrateOut(ctx, p, conn, want, progress)
}

// strategyFor is the strategy a migration asks for.
func (m *Manager) strategyFor(opts MigrateOptions) string {
	if opts.Strategy != "" {
		return opts.Strategy
	}
	if m.cfg.MigrationStrategy != "" {
		return m.cfg.MigrationStrategy
	}
	return StrategyAuto
}

// checkStrategy refuses a strategy that is unknown or that this host
// cannot run, with the reason.
func (m *Manager) checkStrategy(want string) error {
	if !slices.Contains(Strategies, want) {
		return fmt.Errorf("%w %q is unknown (want one of %s)", ErrStrategy, want, strings.Join(Strategies, ", "))
	}
	if why, no := m.strategies.Unavailable[want]; no && want != StrategyAuto {
		return fmt.Errorf("%w %s cannot run on this host: %s", ErrStrategy, want, why)
	}
	return nil
}

// Evacuate migrates every running pod to peer, one after another, and
// returns the first error after trying them all.
func (m *Manager) Evacuate(ctx context.Context, peer string, progress func(MigrationProgress)) ([]MigrationResult, error) {
	var names []string
	for _, s := range m.List(ctx) {
		if s.State == StateRunning {
			names = append(names, s.Name)
		}
	}
	var res []MigrationResult
	var errs []error
	for _, n := range names {
		r, err := m.Migrate(ctx, n, peer, progress)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res = append(res, r)
	}
	return res, errors.Join(errs...)
}

// Return brings this host's migrated pods back from the peers they run on.
func (m *Manager) Return(ctx context.Context, progress func(MigrationProgress)) ([]string, error) {
	type away struct{ name, peer string }
	var pods []away
	m.mu.Lock()
	for _, p := range m.pods {
		if p.st.State == StateMigrated && p.st.Location != "" {
			pods = append(pods, away{p.spec.Name, p.st.Location})
		}
	}
	m.mu.Unlock()
	sort.Slice(pods, func(i, j int) bool { return pods[i].name < pods[j].name })
	d, err := m.peerDialer()
	if err != nil && len(pods) > 0 {
		return nil, err
	}
	var back []string
	var errs []error
	for _, a := range pods {
		err := func() error {
			conn, err := d.DialPeer(ctx, a.peer)
			if err != nil {
				return err
			}
			defer conn.Close()
			if err := conn.Send("return-request", podRef{Pod: a.name}); err != nil {
				return err
			}
			var offer migrateOffer
			if err := conn.Expect("migrate-offer", &offer); err != nil {
				return err
			}
			return m.migrateIn(ctx, conn, offer, progress)
		}()
		if err != nil {
			errs = append(errs, fmt.Errorf("return %s from %s: %w", a.name, a.peer, err))
			continue
		}
		back = append(back, a.name)
	}
	return back, errors.Join(errs...)
}

// ServePeer handles one authenticated connection from a peer.
func (m *Manager) ServePeer(ctx context.Context, conn MigrationConn) error {
	typ, body, err := conn.Recv()
	if err != nil {
		return err
	}
	switch typ {
	case "migrate-offer":
		var offer migrateOffer
		if err := json.Unmarshal(body, &offer); err != nil {
			return err
		}
		return m.migrateIn(ctx, conn, offer, nil)
	case "return-request":
		var ref podRef
		if err := json.Unmarshal(body, &ref); err != nil {
			return err
		}
		p, err := m.claim(ref.Pod, StateRunning)
		if err == nil && p.st.Home != conn.PeerName() {
			m.release(p)
			err = fmt.Errorf("pod %s does not belong to %s", ref.Pod, conn.PeerName())
		}
		if err != nil {
			conn.SendError(err)
			return err
		}
		defer m.release(p)
		_, err = m.migrateOut(ctx, p, conn, m.strategyFor(MigrateOptions{}), nil)
		return err
	case "postcopy-status":
		var ref txnRef
		if err := json.Unmarshal(body, &ref); err != nil {
			return err
		}
		return conn.Send("postcopy-status", postcopyStatusMsg{Status: m.postcopyStatus(ref.Txn, conn.PeerName())})
	case "page-relay":
		var req pageRelayReq
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return m.servePageRelay(ctx, conn, req)
	case "txn-status":
		var ref txnRef
		if err := json.Unmarshal(body, &ref); err != nil {
			return err
		}
		return conn.Send("txn-decision", txnDecision{Decision: m.decision(ref.Txn, conn.PeerName())})
	}
	m.mu.Lock()
	extra := m.requests
	m.mu.Unlock()
	if extra != nil {
		if handled, err := extra(ctx, conn, typ, body); handled {
			return err
		}
	}
	err = fmt.Errorf("unexpected peer request %q", typ)
	conn.SendError(err)
	return err
}

// SetRequestHandler lets fn answer peer requests of types the pod runtime
// does not know (the update cycle's lease and room questions). fn reports
// whether it handled the request.
func (m *Manager) SetRequestHandler(fn func(ctx context.Context, conn MigrationConn, typ string, body json.RawMessage) (handled bool, err error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests = fn
}

// decision answers a destination asking how a migration it took part in
// ended: "commit" only if this source durably decided so.
func (m *Manager) decision(txn, peer string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.pods {
		if mg := p.st.Migration; mg != nil && mg.Txn == txn && mg.Role == "out" && mg.Peer == peer {
			if mg.Phase == "commit" {
				return "commit"
			}
			return "abort"
		}
		if p.st.LastTxn == txn && p.st.State == StateMigrated {
			return "commit"
		}
	}
	if m.committed[txn] {
		return "commit"
	}
	return "abort"
}

// migrateOut runs the source side on conn. p is claimed by the caller.
func (m *Manager) migrateOut(ctx context.Context, p *pod, conn MigrationConn, want string, progress func(MigrationProgress)) (res MigrationResult, err error) {
	start := time.Now()
	m.mu.Lock()
	s, pid, initHash := p.spec, p.st.Pid, p.st.InitHash
	m.mu.Unlock()
	peer := conn.PeerName()
	res.Pod, res.Peer = s.Name, peer
	var sent int64
	report := func(phase string) {
		m.cfg.Log.Debug("migration phase", "pod", s.Name, "peer", peer, "phase", phase, "bytes", sent, "elapsed", time.Since(start))
		if progress != nil {
			progress(MigrationProgress{Pod: s.Name, Peer: peer, Phase: phase, Bytes: sent})
		}
	}
	if err := checkpointable(s); err != nil {
		conn.SendError(err)
		return res, fmt.Errorf("migrate %s: %w", s.Name, err)
	}
	if err := m.checkStrategy(want); err != nil {
		conn.SendError(err)
		return res, fmt.Errorf("migrate %s: %w", s.Name, err)
	}
	work, err := os.MkdirTemp(migrationTmp(), "autopod-out-"+s.Name+"-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(work)
	txn := newTxn()

	// 1. Offer, with everything the peer needs to refuse before anything
	// is frozen: CRIU version, CPU, the pod's files.
	report(PhaseOffer)
	cpuDir := filepath.Join(work, "cpuinfo")
	os.Mkdir(cpuDir, 0o700)
	if err := m.criu.CPUInfoDump(ctx, cpuDir); err != nil {
		conn.SendError(err)
		return res, err
	}
	roots := syncRoots(s)
	var neighbours []neighbour
	if s.Network.Address.IsValid() {
		if neighbours, err = podNeighbours(ctx, pid); err != nil {
			m.cfg.Log.Warn("list the pod's neighbours", "pod", s.Name, "err", err)
		}
	}
	offer := migrateOffer{Neighbours: neighbours, Txn: txn, Pod: s, InitHash: initHash, CriuVersion: m.criuVersion, Kernel: kernelRelease(), Roots: roots,
		Strategy: want, Support: m.strategies, ExtNetns: true, Tmpfs: true}
	if err := conn.Send("migrate-offer", offer); err != nil {
		return res, fmt.Errorf("migrate %s: %w", s.Name, err)
	}
	if err := sendFile(conn, filepath.Join(cpuDir, "cpuinfo.img")); err != nil {
		return res, fmt.Errorf("migrate %s: send cpuinfo: %w", s.Name, err)
	}
	var acc migrateAccept
	if err := conn.Expect("migrate-accept", &acc); err != nil {
		return res, fmt.Errorf("migrate %s to %s: %w: %w", s.Name, peer, ErrPeerRefused, err)
	}
	if acc.NeedInit {
		if err := sendFile(conn, m.initPath(initHash)); err != nil {
			return res, fmt.Errorf("migrate %s: send init: %w", s.Name, err)
		}
	}
	res.Strategy = acc.Strategy
	if res.Strategy == "" {
		res.Strategy = StrategyStopAndCopy
	}
	lazy := res.Strategy == StrategyPostCopy
	precopy := res.Strategy == StrategyPreCopy
	if precopy && !acc.StreamPages {
		err := errors.New("pre-copy: the peer has no page server for the rounds")
		conn.SendError(err)
		return res, fmt.Errorf("migrate %s to %s: %w", s.Name, peer, err)
	}
	var pagePort int
	if lazy {
		err := ensurePipeSize()
		if err == nil {
			pagePort, err = freePort()
		}
		var unguard func()
		if err == nil {
			unguard, err = guardPort(ctx, pagePort)
		}
		if err != nil {
			conn.SendError(err)
			return res, fmt.Errorf("migrate %s: post-copy: %w", s.Name, err)
		}
		defer unguard()
	}

	m.mu.Lock()
	p.st.Migration = &migrationState{Txn: txn, Peer: peer, Role: "out", Phase: "transfer"}
	m.setState(p, StateMigrating, "")
	m.mu.Unlock()

	frozen := false
	var freezeAt time.Time
	hasNet := s.Network.Address.IsValid()
	// pagesSent is what a streaming dump sent to the peer's page server.
	var pagesSent *streamSum
	// dumpDone reports the end of a lazy dump, which runs on while it
	// serves the pod's memory (lazyRunning).
	dumpDone := make(chan error, 1)
	lazyRunning := false
	var pageBytes *tally // what a lazy dump's page server sent
	var held *trafficHold
	var tmpfs *tmpfsSource // nil: CRIU saves the pod's tmpfs mounts
	rollback := func(cause error) (MigrationResult, error) {
		report(PhaseRollback)
		cause = peerReason(conn, cause)
		if errors.Is(cause, os.ErrDeadlineExceeded) {
			cause = fmt.Errorf("%s did not answer within migration_timeout (%s, plus 1 s per MiB to move): %w", peer, m.cfg.MigrationTimeout, cause)
		}
		conn.SendError(cause)
		if lazyRunning {
			m.abandonLazyDump(pagePort, dumpDone)
		}
		var frames [][]byte // what reached the pod while it was cut off
		if held != nil {
			frames = heldFor(held)
			held.release()
		}
		if hasNet {
			if err := setPortForwarding(context.Background(), hostVeth(s.Name), true); err != nil {
				cause = errors.Join(cause, err)
			}
		}
		if frozen {
			_ = releaseNetworkLock(context.Background(), pid)
			// The pod's sockets are as they were before the dump: what the
			// hold kept reaches them now, rather than when each client's
			// retransmission timer, backed off meanwhile, fires again.
			m.deliverHeld(s, pid, frames, nil)
			if err := m.cg.freeze(s.Name, false); err != nil {
				cause = errors.Join(cause, err)
			}
		}
		m.mu.Lock()
		p.st.Migration = nil
		m.setState(p, StateRunning, "migration to "+peer+" failed: "+firstLine(cause.Error()))
		m.mu.Unlock()
		m.cfg.Log.Error("migration failed; pod resumed here", "pod", s.Name, "peer", peer, "err", cause)
		return res, fmt.Errorf("migrate %s to %s: %w", s.Name, peer, cause)
	}

	scanRoots := roots // the pod's directories, then its tmpfs (below)
	// sendPass sends one pass of files and waits for the peer to apply it.
	sendPass := func(entries []fileEntry, deleted []string) error {
		var wire func(string) string
		if tmpfs != nil {
			wire = tmpfs.wirePath
		}
		n, err := sendFiles(conn, entries, deleted, scanRoots, wire)
		sent += n
		res.FileBytes += n
		if err != nil {
			return err
		}
		return conn.Expect("files-ok", nil)
	}

	// Ready to hold the pod's traffic during the freeze, rather than drop
	// it (see hold.go); without it, the pod's port is disabled instead.
	if hasNet {
		if held, err = prepareHold(ctx, hostVeth(s.Name), false); err != nil {
			m.cfg.Log.Warn("cannot hold the pod's traffic while it is frozen; it will be dropped", "pod", s.Name, "err", err)
			held = nil
		} else {
			defer held.release()
		}
	}

	// 2. Copy the pod's files while it runs.
	report(PhaseFiles)
	if acc.TmpfsDir != "" {
		tmpfs = newTmpfsSource(pid, acc.TmpfsDir)
		scanRoots = append(slices.Clip(roots), tmpfs.roots...)
	}
	tree1, err := scanTree(scanRoots, tmpfs.oneMount())
	if err != nil {
		return rollback(err)
	}
	if err := sendPass(tree1.entries, nil); err != nil {
		return rollback(err)
	}

	workDir := filepath.Join(m.podDir(s.Name), "criu-logs")
	os.MkdirAll(workDir, 0o700)
	fdir, _, _ := m.cg.freezerDir(s.Name)
	// Pre-copy: rounds of pre-dumps move the memory while the pod runs;
	// the final dump (same CRIU session) sends only what is still dirty.
	var sess *criuSession
	giveSess := func() {} // the lazy dump's goroutine takes sess over
	if precopy {
		if sess, err = m.criu.session(); err != nil {
			return rollback(err)
		}
		defer sess.Close()
		base := criuRequest{WorkDir: workDir, Pid: pid, FreezeCgroup: fdir, ExtMounts: m.extMounts(s, initHash)}
		res.PreCopyRounds, err = m.precopyOut(ctx, conn, sess, s.Name, work, txn, base, func(n int64) {
			sent += n
			res.PreCopyBytes += n
			report(PhasePreCopy)
		})
		if err != nil {
			return rollback(err)
		}
	}

	// The final dump's CRIU process starts now, so that its start (5-15 ms
	// of exec, linking and its first answer) is not part of the freeze.
	// Pre-copy's has run its rounds already. Whoever runs the dump closes
	// it; if none does, the way out.
	if !precopy {
		if sess, err = m.criu.session(); err != nil {
			return rollback(err)
		}
		sessOwned := true
		defer func() {
			if sessOwned {
				sess.Close()
			}
		}()
		if lazy {
			giveSess = func() { sessOwned = false }
		}
	}

	// 3. Freeze: freeze the pod, cut it off the network, dump it; it stays
	// frozen here until the peer has it or the migration is undone.
	report(PhaseFreeze)
	freezeAt = time.Now()
	frozen = true
	// Frozen through its cgroup, the pod stays frozen after a dump that
	// leaves it "running": CRIU then hands its TCP sockets back to the
	// kernel intact, so that a rollback simply thaws it. It is frozen
	// before it is cut off: what it sent until then is out (cut off first,
	// the segments it wrote in that moment were lost, and the restored
	// socket, which has no RTT estimate yet, sent them again only at its
	// first one-second timeout), and what reaches it until the cut waits
	// in its sockets' queues, which the dump keeps. Nothing its kernel
	// sends after the cut is missed: the dump has it, or it is a probe.
	// (Left open until after the dump, the cut let through segments
	// stamped later than the dump's TCP timestamp, and the client then
	// discarded the restored socket's as old, PAWS, for as long as the
	// dump took.)
	if err := m.cg.freeze(s.Name, true); err != nil {
		return rollback(err)
	}
	if held != nil {
		if err := held.hold(ctx); err != nil {
			return rollback(err)
		}
	} else if hasNet {
		if err := setPortForwarding(ctx, hostVeth(s.Name), false); err != nil {
			return rollback(err)
		}
	}
	imgDir := filepath.Join(work, "images")
	os.Mkdir(imgDir, 0o700)
	// The pod is cut off: held, its port disabled, or without a network.
	req := criuRequest{ImagesDir: imgDir, WorkDir: workDir, LogName: "migrate-dump.log", Pid: pid,
		LeaveRunning: true, FreezeCgroup: fdir, ExtMounts: m.extMounts(s, initHash), ExtNetns: acc.ExtNetns,
		CutOff: true}
	if tmpfs != nil {
		for _, t := range podTmpfsMounts {
			req.ExtMounts[t.target] = "" // a dump takes the targets only
		}
	}
	if m.fault != nil {
		req.notify = faultNotify{fault: m.fault}
	}
	report(PhaseDump)
	// A lazy dump writes all but the memory, says so (post-dump), then
	// serves the pages until the peer has them all: it runs on.
	if lazy {
		written := make(chan struct{})
		req.Lazy, req.PageServerPort = true, pagePort
		req.postDump = func() error { close(written); return nil }
		pageBytes = newTally(false)
		m.addPageServer(txn, peer, pagePort, pageBytes, nil)
		defer m.dropPageServer(txn)
		lazyRunning = true
		giveSess()
		go func(sess *criuSession) {
			dumpDone <- sess.Dump(ctx, req) // buffered
			sess.Close()
		}(sess)
		select {
		case <-written:
		case err := <-dumpDone:
			lazyRunning = false
			if err == nil {
				err = errors.New("lazy dump ended before it wrote its images")
			}
			return rollback(err)
		}
	} else {
		var pagesOut *tally
		var relayDone <-chan error
		if acc.StreamPages {
			pagesOut = newTally(true)
			port, done, err := m.startPageRelay(ctx, peer, txn, pagesOut, nil)
			if err != nil {
				return rollback(err)
			}
			req.PageServerAddr, req.PageServerPort, relayDone = "127.0.0.1", port, done
		}
		if precopy {
			req.TrackMem, req.ParentImg = true, parentOf(res.PreCopyRounds+1)
		}
		if err := sess.Dump(ctx, req); err != nil {
			return rollback(err)
		}
		if relayDone != nil {
			select {
			case err := <-relayDone:
				if err != nil {
					return rollback(err)
				}
			case <-time.After(30 * time.Second):
				return rollback(errors.New("page relay did not end after the dump"))
			}
			n, sum := pagesOut.result()
			pagesSent = &streamSum{Bytes: n, SHA256: sum}
			sent += n
			res.ImageBytes += n
		}
	}
	if err := m.faultAt("after-dump"); err != nil {
		return rollback(err)
	}

	// 4. What changed in the pod's files since the first pass.
	report(PhaseDelta)
	tree2, err := scanTree(scanRoots, tmpfs.oneMount())
	if err != nil {
		return rollback(err)
	}
	changed, deleted := tree2.changedSince(tree1)
	var changedBytes int64
	for _, e := range changed {
		changedBytes += e.Size
	}
	// From here on, a peer that stops answering leaves the pod frozen:
	// each wait for it has a deadline (MigrationTimeout).
	m.peerDeadline(conn, changedBytes)
	if err := sendPass(changed, deleted); err != nil {
		return rollback(err)
	}

	// 5. The images, each streamed with its checksum.
	report(PhaseImages)
	files, imageBytes, err := scanImages(imgDir)
	if err != nil {
		return rollback(err)
	}
	m.peerDeadline(conn, imageBytes)
	if err := conn.Send("images", imagesMsg{Files: files, Pages: pagesSent}); err != nil {
		return rollback(err)
	}
	for _, f := range files {
		if err := m.faultAt("image:" + f.Name); errors.Is(err, ErrFaultCorrupt) {
			// The image changes between its checksum and its sending.
			if err := flipByte(filepath.Join(imgDir, f.Name)); err != nil {
				return rollback(err)
			}
		} else if err != nil {
			return rollback(err)
		}
		if err := sendFile(conn, filepath.Join(imgDir, f.Name)); err != nil {
			return rollback(err)
		}
		sent += f.Size
		res.ImageBytes += f.Size
		report(PhaseImages)
	}

	// 6. The peer restores, isolated, and says so.
	report(PhaseRestore)
	m.peerDeadline(conn, 0)
	var restored restoredMsg
	if err := conn.Expect("restored", &restored); err != nil {
		return rollback(err)
	}
	if err := m.faultAt("before-commit"); err != nil {
		return rollback(err)
	}

	if lazy {
		// 6'. Post-copy: the peer exposes its copy and fetches the memory
		// while this copy stays frozen with all of it. Until the peer has
		// every page, a failure there destroys the peer's copy and this
		// one resumes; when the outcome is unknown this copy stays frozen
		// and isolated until the peer answers (resolvePostcopy).
		m.mu.Lock()
		p.st.Migration.Phase = "postcopy"
		if err := m.persist(p); err != nil {
			p.st.Migration.Phase = "transfer"
			m.mu.Unlock()
			return rollback(fmt.Errorf("persist post-copy phase: %w", err))
		}
		m.mu.Unlock()
		unknown := func(cause error) (MigrationResult, error) {
			go func() {
				if err := <-dumpDone; err != nil {
					m.cfg.Log.Warn("lazy dump ended", "pod", s.Name, "err", err)
				}
				m.resolvePostcopy(p, txn, peer)
			}()
			return res, fmt.Errorf("migrate %s to %s: post-copy interrupted (%w); the pod stays frozen here until %s says whether its copy got all the memory", s.Name, peer, cause, peer)
		}
		if err := conn.Send("commit", commitMsg{Frames: heldFor(held)}); err != nil {
			return unknown(err)
		}
		if err := conn.Expect("exposed", nil); err != nil {
			if errors.Is(err, ErrRemote) {
				lazyRunning = false
				return rollback(err)
			}
			return unknown(err)
		}
		res.Frozen = time.Since(freezeAt)
		report(PhaseMemory)
		if err := m.faultAt("postcopy-out"); err != nil {
			// Failure tests: as if the link broke here.
			conn.Close()
		}
		derr := <-dumpDone
		lazyRunning = false
		res.PageBytes, _ = pageBytes.result()
		conn.SetDeadline(time.Now().Add(2 * time.Minute))
		cerr := conn.Expect("committed", nil)
		switch {
		case errors.Is(cerr, ErrRemote):
			// The peer destroyed its incomplete copy before saying so.
			return rollback(errors.Join(cerr, derr))
		case cerr != nil:
			return unknown(errors.Join(cerr, derr))
		case derr != nil:
			// The peer has every page although the dump complains.
			m.cfg.Log.Warn("lazy dump reported an error after the peer had every page", "pod", s.Name, "err", derr)
		}
	}

	// 7. Commit: decide durably, destroy the source copy, let the peer
	// expose its copy. From here on the pod lives on the peer.
	report(PhaseCommit)
	m.mu.Lock()
	p.st.Migration.Phase = "commit"
	p.stopping = true
	if err := m.persist(p); err != nil {
		p.st.Migration.Phase = "transfer"
		p.stopping = false
		m.mu.Unlock()
		return rollback(fmt.Errorf("persist commit decision: %w", err))
	}
	ch := p.exited
	m.mu.Unlock()
	if err := m.faultAt("after-commit-decision"); err != nil {
		// Past the decision there is no rollback: a failure here is the
		// same as a crash, which recoverMigration finishes.
		m.cfg.Log.Error("fault after the commit decision", "err", err)
	}
	m.killFrozen(s.Name, pid, ch)
	if !lazy {
		m.peerDeadline(conn, 0)
		if err := conn.Send("commit", commitMsg{Frames: heldFor(held)}); err == nil {
			err = conn.Expect("committed", nil)
			if err != nil {
				// The peer asks for the decision when it cannot get this far.
				m.cfg.Log.Warn("peer did not confirm the commit; it will ask for the decision", "pod", s.Name, "peer", peer, "err", err)
			}
		}
		res.Frozen = time.Since(freezeAt)
	}
	m.finishOut(p, txn, peer)
	// The peer waits for this before it reports the pod arrived, so that
	// the pod is listed on one host only when the command returns.
	conn.Send("released", nil)
	res.Total = time.Since(start)
	report(PhaseDone)
	m.cfg.Log.Info("pod migrated", "pod", s.Name, "peer", peer, "strategy", res.Strategy, "frozen", res.Frozen, "total", res.Total,
		"file_bytes", res.FileBytes, "image_bytes", res.ImageBytes, "page_bytes", res.PageBytes,
		"precopy_rounds", res.PreCopyRounds, "precopy_bytes", res.PreCopyBytes)
	return res, nil
}

// killFrozen destroys the frozen source copy. Its bridge port is
// disabled, so nothing it sends while dying (resets, FINs) escapes; the
// cgroup is thawed after the SIGKILL so that the kill takes effect.
func (m *Manager) killFrozen(name string, pid int, exited chan struct{}) {
	for _, q := range m.cg.procs(name) {
		_ = unix.Kill(q, unix.SIGKILL)
	}
	_ = m.cg.freeze(name, false)
	if exited != nil {
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			m.cfg.Log.Warn("source copy did not exit", "pod", name, "pid", pid)
		}
	}
	m.cleanup(context.Background(), name)
}

// finishOut records that the pod left: a home pod becomes "migrated", a
// guest pod is forgotten (it went back home or on elsewhere).
func (m *Manager) finishOut(p *pod, txn, peer string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.committed[txn] = true
	p.st.Migration, p.st.Pid, p.st.LastTxn = nil, 0, txn
	if p.st.Home != "" {
		delete(m.pods, p.spec.Name)
		os.RemoveAll(m.podDir(p.spec.Name))
		for _, fn := range m.subs {
			fn(Event{Name: p.spec.Name, State: StateMigrated})
		}
		return
	}
	p.st.Location = peer
	m.setState(p, StateMigrated, "")
}

// peerDeadline gives the next exchange with the peer, which moves about
// bytes, MigrationTimeout plus the time to move them at 1 MiB/s.
func (m *Manager) peerDeadline(conn MigrationConn, bytes int64) {
	conn.SetDeadline(time.Now().Add(m.cfg.MigrationTimeout + time.Duration(bytes>>20)*time.Second))
}

// peerReason returns, for a cause that is the connection breaking while
// this side sent, the error the peer reported before it closed, if one is
// waiting to be read: a peer that refuses what it receives (an image that
// does not match its checksum, a full disk) says why and closes, and this
// side, still sending, sees only a reset. Otherwise cause.
func peerReason(conn MigrationConn, cause error) error {
	if errors.Is(cause, ErrRemote) || !(errors.Is(cause, unix.ECONNRESET) || errors.Is(cause, unix.EPIPE)) {
		return cause
	}
	conn.SetDeadline(time.Now().Add(time.Second))
	defer conn.SetDeadline(time.Time{})
	for range 100 { // messages the peer sent before its error
		_, _, err := conn.Recv()
		if errors.Is(err, ErrRemote) {
			return fmt.Errorf("%w (%w)", err, cause)
		}
		if err != nil {
			return cause
		}
	}
	return cause
}

// ErrFaultCorrupt, from a fault injected at a step ("corrupt:STEP"),
// asks the step to damage what it handles instead of failing.
var ErrFaultCorrupt = errors.New("injected corruption")

// flipByte inverts the middle byte of the file at path.
func flipByte(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		return fmt.Errorf("flip a byte of %s: empty", path)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, st.Size()/2); err != nil {
		return err
	}
	b[0] ^= 0xff
	_, err = f.WriteAt(b, st.Size()/2)
	return err
}

func (m *Manager) faultAt(step string) error {
	if m.fault == nil {
		return nil
	}
	return m.fault(step)
}

func sendFile(conn MigrationConn, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, _, err = conn.SendStream(f)
	return err
}

// migrationTmp is where images pass through: memory (tmpfs), so that the
// pod's pages are not written back to disk on their way to the peer.
func migrationTmp() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// migrateIn runs the destination side of a migration offered on conn.
func (m *Manager) migrateIn(ctx context.Context, conn MigrationConn, offer migrateOffer, progress func(MigrationProgress)) (err error) {
	peer := conn.PeerName()
	s := offer.Pod
	var received int64
	start := time.Now()
	report := func(phase string) {
		m.cfg.Log.Debug("incoming migration phase", "pod", s.Name, "peer", peer, "phase", phase, "bytes", received, "elapsed", time.Since(start))
		if progress != nil {
			progress(MigrationProgress{Pod: s.Name, Peer: peer, Phase: phase, Bytes: received})
		}
	}
	refuse := func(err error) error {
		conn.SendError(err)
		m.cfg.Log.Warn("refused incoming migration", "pod", s.Name, "peer", peer, "err", err)
		return err
	}
	if !podNameRE.MatchString(s.Name) {
		return refuse(fmt.Errorf("offered pod has an invalid name %q", s.Name))
	}
	if err := validateSpec(&s); err != nil {
		return refuse(fmt.Errorf("offered pod: %w", err))
	}
	work, err := os.MkdirTemp(migrationTmp(), "autopod-in-"+s.Name+"-")
	if err != nil {
		return refuse(err)
	}
	defer os.RemoveAll(work)
	cpuDir := filepath.Join(work, "cpuinfo")
	os.Mkdir(cpuDir, 0o700)
	if _, _, err := recvToFile(conn, filepath.Join(cpuDir, "cpuinfo.img"), 0o600); err != nil {
		return err
	}
	if criuVersionNumber(m.criuVersion) < criuVersionNumber(offer.CriuVersion) {
		return refuse(fmt.Errorf("CRIU %s here is older than the peer's %s", m.criuVersion, offer.CriuVersion))
	}
	if err := m.criu.CPUInfoCheck(ctx, cpuDir); err != nil {
		return refuse(err)
	}
	if err := checkpointable(s); err != nil {
		return refuse(err)
	}
	for _, r := range offer.Roots {
		if !filepath.IsAbs(r) || filepath.Clean(r) != r || r == "/" {
			return refuse(fmt.Errorf("bad directory in offer: %q", r))
		}
	}
	strategy := StrategyStopAndCopy
	if offer.Strategy != "" {
		if strategy, err = pickStrategy(offer.Strategy, m.strategies, offer.Support); err != nil {
			return refuse(err)
		}
	}
	lazy := strategy == StrategyPostCopy
	precopy := strategy == StrategyPreCopy

	// Register the pod: a new guest, or one of ours coming home.
	m.mu.Lock()
	p, exists := m.pods[s.Name]
	switch {
	case exists && p.busy:
		m.mu.Unlock()
		return refuse(fmt.Errorf("pod %s: %w", s.Name, ErrBusy))
	case exists && !(p.st.State == StateMigrated && p.st.Location == peer):
		m.mu.Unlock()
		return refuse(fmt.Errorf("a pod named %s already exists here (%s)", s.Name, p.st.State))
	case !exists:
		p = &pod{spec: s, st: persisted{State: StateStopped, Home: peer, Since: time.Now().UTC()}}
		m.pods[s.Name] = p
	}
	p.busy = true
	prev := p.st
	p.st.Migration = &migrationState{Txn: offer.Txn, Peer: peer, Role: "in", Phase: "transfer"}
	m.setState(p, StateMigrating, "")
	m.mu.Unlock()
	defer m.release(p)

	var pid int
	var daemon *criuDaemon
	var netns *os.File
	fail := func(cause error) error {
		// Clean up first, then tell the source: once it hears of the
		// failure, this host holds no copy.
		defer conn.SendError(cause)
		if daemon != nil {
			daemon.kill()
		}
		if netns != nil {
			netns.Close()
			netns = nil
		}
		if pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
			waitExit(pid)
		}
		m.cleanup(context.Background(), s.Name)
		m.mu.Lock()
		if exists {
			p.st = prev
			m.setState(p, prev.State, prev.Error)
		} else {
			delete(m.pods, s.Name)
			os.RemoveAll(m.podDir(s.Name))
		}
		m.mu.Unlock()
		m.cfg.Log.Error("incoming migration failed", "pod", s.Name, "peer", peer, "err", cause)
		return fmt.Errorf("receive %s from %s: %w", s.Name, peer, cause)
	}

	// Stop-and-copy: a page server takes the dump's pages as they come.
	imgDir := filepath.Join(work, "images")
	os.Mkdir(imgDir, 0o700)
	var pagesIn *tally
	var psDone <-chan error
	if precopy {
		// The rounds' page servers, then the final one, start as the
		// source asks; page servers are the only way pre-copy moves pages.
		defer m.dropPageServer(offer.Txn)
	} else if !lazy {
		if port, err := freePort(); err == nil {
			ps, err := m.criu.startPageServer(ctx, imgDir, "", work, "page-server.log", "127.0.0.1", port)
			if err != nil {
				m.cfg.Log.Warn("cannot receive pages from a page server; the source sends image files", "pod", s.Name, "err", err)
			} else {
				daemon = ps // killed by fail
				pagesIn = newTally(true)
				psDone = m.addPageServer(offer.Txn, peer, port, nil, pagesIn)
				defer m.dropPageServer(offer.Txn)
			}
		}
	}
	recvRoots := offer.Roots
	var tmpfsDirs map[string]string
	tmpfsBase := filepath.Join(m.podDir(s.Name), "tmpfs")
	if offer.Tmpfs && tmpfsMovable(s) {
		if tmpfsDirs, err = mountTmpfsDirs(tmpfsBase); err != nil {
			return fail(err)
		}
		for _, d := range tmpfsDirs {
			recvRoots = append(slices.Clip(recvRoots), d)
		}
	}
	if offer.ExtNetns {
		if netns, err = m.prepareNetns(ctx, s, offer.Neighbours); err != nil {
			return fail(fmt.Errorf("build the pod's network namespace: %w", err))
		}
		if s.Network.Address.IsValid() {
			if err := m.holdIncoming(ctx, s); err != nil {
				// The host end then stays down until the exposure, and
				// what the pod sends before it is lost.
				m.cfg.Log.Warn("hold the incoming pod's traffic", "pod", s.Name, "err", err)
			}
		}
		defer func() {
			if netns != nil {
				netns.Close()
			}
		}()
	}
	// The restore's CRIU process starts now, with the namespace, rather
	// than inside the freeze; restoreIsolated takes it over.
	rproc, err := m.criu.newRestoreProc(netns, true)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if rproc != nil {
			rproc.Close()
		}
	}()
	initPath := m.initPath(offer.InitHash)
	_, statErr := os.Stat(initPath)
	acc := migrateAccept{NeedInit: statErr != nil, Strategy: strategy, StreamPages: pagesIn != nil || precopy, ExtNetns: netns != nil}
	if tmpfsDirs != nil {
		acc.TmpfsDir = tmpfsBase
	}
	if err := conn.Send("migrate-accept", acc); err != nil {
		return fail(err)
	}
	if statErr != nil {
		if err := m.recvInit(conn, offer.InitHash); err != nil {
			return fail(err)
		}
	}
	report(PhaseFiles)
	for pass := 0; pass < 2; pass++ {
		n, err := recvFiles(conn, recvRoots)
		received += n
		if err != nil {
			return fail(err)
		}
		if err := conn.Send("files-ok", nil); err != nil {
			return fail(err)
		}
		if pass == 0 && precopy {
			// Between the bulk copy of files and the freeze: the rounds.
			if daemon, pagesIn, psDone, err = m.precopyIn(ctx, conn, s.Name, offer.Txn, work, imgDir, func(n int64) {
				received += n
				report(PhasePreCopy)
			}); err != nil {
				return fail(err)
			}
		}
	}
	if err := m.faultAt("recv-images"); err != nil {
		return fail(err)
	}
	var imgs imagesMsg
	if err := conn.Expect("images", &imgs); err != nil {
		return fail(err)
	}
	report(PhaseImages)
	if pagesIn != nil {
		// The page server has the pages once the relay ended and it exited;
		// the relay's digest here must match the source's.
		if imgs.Pages == nil {
			return fail(errors.New("the source sent no page stream summary"))
		}
		select {
		case err := <-psDone:
			if err != nil {
				return fail(err)
			}
		case <-time.After(30 * time.Second):
			return fail(errors.New("page relay did not end"))
		}
		if err := daemon.wait(ctx); err != nil {
			return fail(err)
		}
		daemon = nil
		n, sum := pagesIn.result()
		if n != imgs.Pages.Bytes || sum != imgs.Pages.SHA256 {
			return fail(fmt.Errorf("%w: page stream: received %d bytes sha256:%s, the source sent %d bytes sha256:%s",
				ErrImageCorrupt, n, sum, imgs.Pages.Bytes, imgs.Pages.SHA256))
		}
		received += n
	}
	for _, f := range imgs.Files {
		if f.Name != filepath.Base(f.Name) || strings.HasPrefix(f.Name, ".") {
			return fail(fmt.Errorf("bad image name %q", f.Name))
		}
		if err := recvImage(conn, imgDir, f); err != nil {
			return fail(err)
		}
		received += f.Size
	}
	report(PhaseRestore)
	// Restore isolated: the host end of the veth stays outside the bridge
	// until the source has destroyed its copy (post-copy: frozen it for
	// good, with the memory this copy fetches).
	pagePort := 0
	if lazy {
		port, relayDone, err := m.startPageRelay(ctx, peer, offer.Txn, nil, nil)
		if err != nil {
			return fail(err)
		}
		go func() {
			// The daemon's own failure says what became of the pod; this
			// says why.
			if err := <-relayDone; err != nil {
				m.cfg.Log.Warn("post-copy page relay ended", "pod", s.Name, "peer", peer, "err", err)
			}
		}()
		pagePort = port
	}
	proc := rproc
	rproc = nil
	pid, daemon, err = m.restoreIsolated(ctx, s, offer.InitHash, imgDir, pagePort, offer.Neighbours, netns, tmpfsDirs, proc)
	if err != nil {
		return fail(err)
	}
	if tmpfsDirs != nil {
		// The pod has its own mounts of them now.
		if err := unmountTmpfsDirs(tmpfsBase); err != nil {
			m.cfg.Log.Warn("detach the host's mounts of the pod's tmpfs", "pod", s.Name, "err", err)
		}
	}
	if netns != nil {
		netns.Close() // the pod's processes hold it now
		netns = nil
	}
	m.mu.Lock()
	p.spec = s
	p.st.Spec, p.st.InitHash, p.st.Pid = &s, offer.InitHash, pid
	p.st.StartTime, _ = procStartTime(pid)
	p.st.Migration.Phase = "restored"
	if lazy {
		// Incomplete until the daemon has every page: a restart kills it.
		p.st.Migration.Phase = "postcopy"
	}
	p.stopping = false
	p.exited = make(chan struct{})
	m.persist(p)
	m.mu.Unlock()
	go m.watch(p, pid)
	if err := m.faultAt("before-restored"); err != nil {
		return fail(err)
	}
	if lazy {
		return m.postCopyIn(ctx, conn, p, offer.Txn, daemon, fail, report)
	}
	if err := conn.Send("restored", restoredMsg{Pid: pid}); err != nil {
		go m.resolveIncoming(p, offer.Txn, peer)
		return err
	}
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	var cm commitMsg
	if err := conn.Expect("commit", &cm); err != nil {
		if errors.Is(err, ErrRemote) {
			// The source aborted and resumed its copy.
			return fail(err)
		}
		go m.resolveIncoming(p, offer.Txn, peer)
		return fmt.Errorf("receive %s from %s: no commit (%v); asking the source for its decision", s.Name, peer, err)
	}
	report(PhaseCommit)
	sent, err := m.expose(ctx, p)
	if err != nil {
		m.cfg.Log.Error("expose migrated pod", "pod", s.Name, "err", err)
	}
	m.deliverHeld(s, pid, cm.Frames, sent)
	if conn.Send("committed", nil) == nil {
		awaitRelease(conn)
	}
	report(PhaseDone)
	return nil
}

// awaitRelease waits a little for the source to say it dropped the pod.
// The pod is here either way; this only orders what the two hosts list.
func awaitRelease(conn MigrationConn) {
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	_ = conn.Expect("released", nil)
}

// exposePort attaches a restored pod to its bridge and announces its
// address. held: its host veth is up and forwarding already, and its hold
// is gone (unholdIncoming).
func exposePort(ctx context.Context, s Spec, pid int, held bool) error {
	if !s.Network.Address.IsValid() {
		return nil
	}
	// A namespace built for the migration (prepareNetns) has its host
	// end down until now. The bridge makes a port forward (no spanning
	// tree) as soon as its link is operationally up, a moment after it is
	// brought up (link watch).
	veth := hostVeth(s.Name)
	ifc, err := net.InterfaceByName(veth)
	if err != nil {
		return fmt.Errorf("the pod's link %s is gone (did its processes die?): %w", veth, err)
	}
	if ifc.Flags&net.FlagUp == 0 {
		if err := linkUp(veth); err != nil {
			return err
		}
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
			ifc, err := net.InterfaceByName(veth)
			if err == nil && ifc.Flags&net.FlagRunning != 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the pod's link %s did not come up: %v", veth, err)
			}
		}
		go announce(context.Background(), pid, s)
		return nil
	}
	if held {
		go announce(context.Background(), pid, s)
		return nil
	}
	if err := setPortForwarding(ctx, veth, true); err != nil {
		host, _ := run(ctx, "ip", "-br", "link", "show", "dev", veth)
		pod, _ := inNetns(ctx, pid, "ip", "-br", "link", "show", "dev", "eth0")
		return fmt.Errorf("%w (host end: %s; pod end: %s)", err, strings.TrimSpace(host), strings.TrimSpace(pod))
	}
	// In the background: arping takes its time, and the source waits
	// for "committed" before it reports the migration done.
	go announce(context.Background(), pid, s)
	return nil
}

// expose attaches a restored pod to its bridge, announces its address and
// records that the pod runs here. It returns the TCP frames the pod sent
// while it was held (holdIncoming), for the caller to send on.
func (m *Manager) expose(ctx context.Context, p *pod) ([][]byte, error) {
	m.mu.Lock()
	s, pid, home := p.spec, p.st.Pid, p.st.Home
	m.mu.Unlock()
	sent, held := m.unholdIncoming(ctx, s.Name)
	err := exposePort(ctx, s, pid, held)
	m.mu.Lock()
	p.st.Migration = nil
	if home == "" {
		p.st.Location = "" // back home
	}
	m.setState(p, StateRunning, "")
	m.mu.Unlock()
	m.cfg.Log.Info("pod restored from peer", "pod", s.Name, "pid", pid, "home", home)
	return sent, err
}

// announce makes the switches and neighbours learn the pod's new place
// (gratuitous ARP from inside the pod; a ping to its gateway where arping
// fails), and resolves the neighbours the pod waits for.
func announce(ctx context.Context, pid int, s Spec) {
	addr := s.Network.Address.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		kickNeighbours(ctx, pid)
	}()
	// iputils arping: -U sends unsolicited ARP, one a second.
	if _, err := inNetns(ctx, pid, "arping", "-U", "-c", "1", "-w", "1", "-I", "eth0", addr); err != nil {
		_, _ = inNetns(ctx, pid, "ping", "-c", "1", "-W", "1", s.Network.Gateway.String())
	}
	<-done
}

// resolveIncoming asks the source how a migration ended when the
// connection broke after this host restored the pod: expose the copy on
// "commit", destroy it on "abort"; keep it isolated while nobody knows.
func (m *Manager) resolveIncoming(p *pod, txn, peer string) {
	for delay := 500 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		dec, err := m.askDecision(ctx, txn, peer)
		cancel()
		if err == nil {
			m.applyDecision(p, dec)
			return
		}
		m.cfg.Log.Warn("cannot learn the outcome of a migration yet; pod stays isolated", "pod", p.spec.Name, "peer", peer, "err", err)
		time.Sleep(delay)
	}
}

func (m *Manager) askDecision(ctx context.Context, txn, peer string) (string, error) {
	var dec txnDecision
	err := m.askPeer(ctx, peer, "txn-status", txnRef{Txn: txn}, "txn-decision", &dec)
	return dec.Decision, err
}

// askPeer sends one request on a new connection to peer and reads the
// answer of type answer into body.
func (m *Manager) askPeer(ctx context.Context, peer, request string, req any, answer string, body any) error {
	d, err := m.peerDialer()
	if err != nil {
		return err
	}
	conn, err := d.DialPeer(ctx, peer)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.Send(request, req); err != nil {
		return err
	}
	return conn.Expect(answer, body)
}

func (m *Manager) applyDecision(p *pod, decision string) {
	if decision == "commit" {
		sent, _ := m.expose(context.Background(), p)
		m.mu.Lock()
		s, pid := p.spec, p.st.Pid
		m.mu.Unlock()
		m.deliverHeld(s, pid, nil, sent)
		return
	}
	m.mu.Lock()
	pid, name, home := p.st.Pid, p.spec.Name, p.st.Home
	p.stopping = true
	m.mu.Unlock()
	_ = unix.Kill(pid, unix.SIGKILL)
	waitExit(pid)
	m.cleanup(context.Background(), name)
	m.mu.Lock()
	defer m.mu.Unlock()
	p.st.Migration, p.st.Pid = nil, 0
	if home != "" {
		delete(m.pods, name)
		os.RemoveAll(m.podDir(name))
		return
	}
	m.setState(p, StateMigrated, "") // ours, still on the peer
	m.cfg.Log.Info("source aborted the migration; restored copy destroyed", "pod", name)
}

func (m *Manager) recvInit(conn MigrationConn, hash string) error {
	tmp := m.initPath(hash) + ".recv"
	if _, _, err := recvToFile(conn, tmp, 0o755); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil))[:16]; got != hash {
		os.Remove(tmp)
		return fmt.Errorf("init binary from peer hashes to %s, offer said %s", got, hash)
	}
	return os.Rename(tmp, m.initPath(hash))
}

// recvToFile receives a stream into the file at path and returns its
// length and checksum (RecvStream's).
func recvToFile(conn MigrationConn, path string, perm os.FileMode) (int64, string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return 0, "", err
	}
	n, sum, err := conn.RecvStream(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, sum, err
}

// recvImage receives the image file f into dir and checks it against the
// length and SHA-256 the source took of it after the dump: the stream's own
// checksum covers the way from the source's read to here, this the image
// from the dump on.
func recvImage(conn MigrationConn, dir string, f ImageFile) error {
	n, sum, err := recvToFile(conn, filepath.Join(dir, f.Name), 0o600)
	if err != nil {
		return err
	}
	if n != f.Size || sum != "sha256:"+f.SHA256 {
		return fmt.Errorf("%w: image %s: received %d bytes %s, the source dumped %d bytes sha256:%s",
			ErrImageCorrupt, f.Name, n, sum, f.Size, f.SHA256)
	}
	return nil
}

// restoreIsolated restores a migrated pod cut off from its bridge.
// With a pagePort it restores lazily: a CRIU lazy-pages daemon, returned
// running, fetches the memory from the page server reached at
// 127.0.0.1:pagePort (the relay to the source). With a netns (from
// prepareNetns) the pod goes into it; without, CRIU rebuilds the pod's
// namespace from the images. tmpfsDirs, by target in the pod, are the
// tmpfs that become the pod's own (see tmpfs.go).
func (m *Manager) restoreIsolated(ctx context.Context, s Spec, initHash, dir string, pagePort int, neighbours []neighbour, netns *os.File, tmpfsDirs map[string]string, proc *restoreProc) (pid int, daemon *lazyDaemon, err error) {
	defer func() {
		if proc != nil { // not handed to the restore
			proc.Close()
		}
	}()
	if err := m.cg.create(s.Name, s.Limits); err != nil {
		return 0, nil, err
	}
	defer func() {
		if err != nil {
			if daemon != nil {
				daemon.kill()
				daemon = nil
			}
			m.cleanup(context.Background(), s.Name)
		}
	}()
	workDir := filepath.Join(m.podDir(s.Name), "criu-logs")
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return 0, nil, err
	}
	if f, err := os.OpenFile(m.logPath(s.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640); err == nil {
		fmt.Fprintf(f, "--- autopod: restoring migrated pod %s at %s\n", s.Name, time.Now().UTC().Format(time.RFC3339))
		f.Close()
	}
	req := criuRequest{ImagesDir: dir, WorkDir: workDir, LogName: "migrate-restore.log",
		Root: rootFS(s), ExtMounts: m.extMounts(s, initHash), CgroupRoot: m.cg.relPath(s.Name), CgroupControllers: m.cg.controllers()}
	for target, d := range tmpfsDirs {
		req.ExtMounts[target] = d
	}
	if netns != nil {
		req.Netns = netns
	} else if s.Network.Address.IsValid() {
		br := m.bridgeFor(s)
		if err := m.ensureBridge(ctx, br); err != nil {
			return 0, nil, err
		}
		_ = removeVeth(ctx, s.Name)
		req.Veth, req.Bridge = hostVeth(s.Name), br
		// CRIU notifies post-restore before it resumes the tasks and lifts
		// its network lock: disable the port then, so that this copy stays
		// silent until the source has destroyed its own.
		req.postRestore = func(pid int) error {
			if err := setPortForwarding(ctx, hostVeth(s.Name), false); err != nil {
				return err
			}
			// Under CRIU's network lock still (addClsact); without it, a
			// later migration says that it cannot hold the pod's traffic.
			if err := addClsact(ctx, hostVeth(s.Name)); err != nil {
				m.cfg.Log.Warn("add clsact qdisc", "pod", s.Name, "err", err)
			}
			if err := seedNeighbours(ctx, "/proc/"+strconv.Itoa(pid)+"/ns/net", s, neighbours); err != nil {
				m.cfg.Log.Warn("seed the restored pod's neighbours", "pod", s.Name, "err", err)
			}
			return nil
		}
	}
	if m.fault != nil {
		req.notify = faultNotify{fault: m.fault}
	}
	if pagePort > 0 {
		// The daemon and the restore meet on a socket in their shared
		// work directory.
		os.Remove(filepath.Join(workDir, "lazy-pages.socket"))
		if daemon, err = m.criu.startLazyDaemon(ctx, dir, workDir, "127.0.0.1", pagePort); err != nil {
			return 0, nil, err
		}
		req.Lazy = true
		// A daemon that fails before the restore is done (the link to
		// the source broke) leaves CRIU waiting for good.
		req.abort = daemon.failed
	}
	req.proc, proc = proc, nil
	pid, err = m.criu.Restore(ctx, req)
	if err != nil {
		return 0, nil, err
	}
	return pid, daemon, nil
}

// prepareNetns builds here, while the pod still runs on the source, the
// network namespace it will be restored into: loopback, the veth with the
// pod's MAC and address, its default route and its neighbours (see
// buildNetns), the host end in the pod's bridge but down until the
// exposure. The source then dumps its namespace as external: CRIU moves
// the sockets, TCP connections included, but neither saves nor restores
// links, addresses, routes, firewall rules or sysctls, and the ip and
// iptables runs that cost it ~100 ms inside the freeze are gone. (Podman
// moves containers whose namespace it made itself the same way.) What the
// workload changed in its own namespace does not move.
func (m *Manager) prepareNetns(ctx context.Context, s Spec, neighbours []neighbour) (*os.File, error) {
	s.Network.Bridge = m.bridgeFor(s)
	if s.Network.Address.IsValid() {
		if err := m.ensureBridge(ctx, s.Network.Bridge); err != nil {
			return nil, err
		}
	}
	f, err := newNetns()
	if err != nil {
		return nil, err
	}
	if err := buildNetns(ctx, s, fdPath(f), true); err != nil {
		f.Close()
		return nil, err
	}
	if s.Network.Address.IsValid() {
		if err := seedNeighbours(ctx, fdPath(f), s, neighbours); err != nil {
			m.cfg.Log.Warn("seed the pod's neighbours", "pod", s.Name, "err", err)
		}
	}
	return f, nil
}
