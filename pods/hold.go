package pods

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/autopod/autopod/osthread"
	"golang.org/x/sys/unix"
)

// While a migrating pod is frozen, packets for it keep arriving at the
// source: a client's request, its retransmissions. Dropped, they leave the
// client waiting on its TCP retransmission timer, which has backed off by
// then (200 ms, 400 ms, 800 ms...): measured, the pause clients saw was
// the freeze plus up to one more backoff step. So the source holds them
// instead: tc filters on the pod's host-side veth cut it off, and redirect
// the frames bound for it into a capture veth pair, where a packet socket
// keeps them. The held frames
// travel with the commit, and the destination delivers them to the
// restored pod right after exposing it: the client's request is answered
// at once, and its retransmission timer never matters.

const (
	// holdMaxBytes bounds what a hold keeps; beyond it, frames are
	// dropped as before and their senders retransmit.
	holdMaxBytes = 4 << 20
	// holdMaxFrame is the largest frame kept: an aggregated (GSO) frame
	// of up to 64 KiB (a TCP one is cut to the link's MTU when sent again,
	// see segmentTCP).
	holdMaxFrame = 14 + 65535
)

// trafficHold captures the frames bound for one pod, and, for a pod
// restored here until its exposure, what it sends.
type trafficHold struct {
	veth string // the pod's host-side veth
	// The capture pair: frames bound for the pod are redirected to capA
	// and read at capB, frames from it the other way (read at capA when
	// the hold keeps them, dropped there when not).
	capA, capB string
	file       *os.File // reads at capB
	outFile    *os.File // reads at capA; nil: what the pod sends is dropped

	releaseOnce sync.Once

	mu      sync.Mutex
	frames  [][]byte // bound for the pod
	sent    [][]byte // IPv4 TCP frames the pod sent (outFile)
	bytes   int
	closed  bool
	done    chan struct{}
	outDone chan struct{}
}

// capturePair names the capture veth pair of a pod's host veth.
func capturePair(veth string) (string, string) {
	h := sha256.Sum256([]byte(veth))
	id := hex.EncodeToString(h[:4])
	return "aph" + id + "a", "aph" + id + "b"
}

// prepareHold sets up, while the pod still runs, what holding its traffic
// needs: the capture pair, the packet sockets reading it, and a clsact
// qdisc on the pod's veth. keepSent: keep the IPv4 TCP frames the pod
// sends while cut off, rather than drop them. Nothing changes for the pod
// until hold.
func prepareHold(ctx context.Context, veth string, keepSent bool) (*trafficHold, error) {
	h := &trafficHold{veth: veth, done: make(chan struct{}), outDone: make(chan struct{})}
	h.capA, h.capB = capturePair(veth)
	_, _ = run(ctx, "ip", "link", "del", h.capA) // a leftover of a crash
	if _, err := run(ctx, "ip", "link", "add", h.capA, "type", "veth", "peer", "name", h.capB); err != nil {
		return nil, fmt.Errorf("hold traffic: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			h.release()
		}
	}()
	for _, dev := range []string{h.capA, h.capB} {
		// No addresses, no IPv6 chatter of its own: the pair carries
		// mirrored frames only.
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6", []byte("1"), 0o644)
		if _, err := run(ctx, "ip", "link", "set", dev, "up"); err != nil {
			return nil, fmt.Errorf("hold traffic: %w", err)
		}
	}
	var err error
	if h.file, err = captureSocket(h.capB); err != nil {
		return nil, err
	}
	if keepSent {
		if h.outFile, err = captureSocket(h.capA); err != nil {
			return nil, err
		}
	}
	// A no-op on a link that has its clsact qdisc (buildNetns adds it);
	// the veth of a pod that an older agent started gets it here.
	if err := addClsact(ctx, veth); err != nil {
		return nil, fmt.Errorf("hold traffic: %w", err)
	}
	go h.capture(h.file, h.done, func(f []byte) { h.frames = append(h.frames, f) })
	if h.outFile != nil {
		go h.capture(h.outFile, h.outDone, func(f []byte) {
			if isIPv4TCP(f) {
				h.sent = append(h.sent, f)
			}
		})
	} else {
		close(h.outDone)
	}
	ok = true
	return h, nil
}

// addClsact gives the host end of a pod's veth the clsact qdisc that a
// traffic hold hangs its filters on. Grafting that qdisc, or deleting it,
// deactivates the link for an RCU grace period, and the frames sent to the
// pod meanwhile are dropped: measured, 11-12 frames of a 30,000-ping
// flood over 50 adds and deletes, none over as many of filters; and, when
// a migration added it, in 6 post-copy moves of 20 a client's request that
// arrived right then, which it sent again only at its retransmission
// timeout (~0.2 s later). So the qdisc is added once, while the link is
// down where it can be, and stays: a hold adds and deletes filters only.
func addClsact(ctx context.Context, veth string) error {
	_, err := run(ctx, "tc", "qdisc", "replace", "dev", veth, "clsact")
	return err
}

// dropHoldFilters removes the filters of a hold from veth, if it has any,
// and leaves its clsact qdisc (addClsact).
func dropHoldFilters(ctx context.Context, veth string) {
	_, _ = runInput(ctx, fmt.Sprintf("filter del dev %[1]s egress pref 1\nfilter del dev %[1]s ingress pref 1\n", veth),
		"tc", "-force", "-batch", "-")
}

// captureSocket opens a packet socket reading every frame that arrives at
// dev.
func captureSocket(dev string) (*os.File, error) {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return nil, fmt.Errorf("hold traffic: %w", err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("hold traffic: packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("hold traffic: bind packet socket to %s: %w", dev, err)
	}
	return os.NewFile(uintptr(fd), "packet:"+dev), nil
}

// isIPv4TCP says whether an Ethernet frame carries IPv4 TCP.
func isIPv4TCP(f []byte) bool {
	return len(f) >= 14+20 && binary.BigEndian.Uint16(f[12:14]) == unix.ETH_P_IP &&
		f[14]>>4 == 4 && f[14+9] == unix.IPPROTO_TCP
}

// hold cuts the pod off: frames bound for it are redirected into the
// capture pair and read at its far end, frames from it the other way
// (read there when the hold keeps them, dropped by the kernel when not:
// the pair has no addresses). One tc run. u32 and mirred are what kernels
// without the matchall classifier or the drop action (gact) offer.
func (h *trafficHold) hold(ctx context.Context) error {
	batch := fmt.Sprintf(`filter add dev %[1]s egress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev %[2]s
filter add dev %[1]s ingress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev %[3]s
`, h.veth, h.capA, h.capB)
	if _, err := runInput(ctx, batch, "tc", "-batch", "-"); err != nil {
		return fmt.Errorf("hold traffic: %w", err)
	}
	return nil
}

// capture reads the frames that arrive at one end of the capture pair
// until the hold is released, and passes each to keep (under h.mu).
func (h *trafficHold) capture(file *os.File, done chan struct{}, keep func([]byte)) {
	defer close(done)
	rc, err := file.SyscallConn()
	if err != nil {
		return
	}
	// Room for an aggregated (GSO) frame; MSG_TRUNC tells a larger one.
	buf := make([]byte, holdMaxFrame+1)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n < 14 || n > holdMaxFrame {
			continue
		}
		h.mu.Lock()
		if !h.closed && h.bytes+n <= holdMaxBytes {
			keep(append([]byte(nil), buf[:n]...))
			h.bytes += n
		}
		h.mu.Unlock()
	}
}

// take stops keeping frames and returns those held so far: bound for the
// pod, and the TCP frames it sent (keepSent). The pod stays cut off.
func (h *trafficHold) take() (in, sent [][]byte) {
	if h == nil {
		return nil, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	in, sent = h.frames, h.sent
	h.frames, h.sent = nil, nil
	return in, sent
}

// release removes the hold: the filters (the pod's port passes traffic
// again, unless the caller disabled it), the capture pair and the socket.
func (h *trafficHold) release() {
	h.releaseOnce.Do(func() {
		ctx := context.Background()
		dropHoldFilters(ctx, h.veth)
		if h.file != nil {
			h.file.Close()
			<-h.done
		}
		if h.outFile != nil {
			h.outFile.Close()
			<-h.outDone
		}
		_, _ = run(ctx, "ip", "link", "del", h.capA)
	})
}

// heldFor returns the frames a source's hold kept for the pod.
func heldFor(h *trafficHold) [][]byte {
	in, _ := h.take()
	return in
}

// deliverFrames sends frames on the link called dev (in the calling
// thread's network namespace): on a pod's host-side veth, they reach the
// pod as if they had just arrived; on its eth0, they leave as if it had
// sent them. Checksums are recomputed (frames mirrored inside one host may
// carry partial, offloaded, ones), and TCP frames aggregated beyond the
// link's MTU are cut to it.
func deliverFrames(dev string, frames [][]byte) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return 0, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("packet socket: %w", err)
	}
	// Closing a packet socket waits for an RCU grace period (8-13 ms
	// here), which the pod's exposure need not wait for.
	defer func() { go unix.Close(fd) }()
	sent := 0
	var errs []error
	for _, f := range frames {
		if len(f) < 14 {
			continue
		}
		segs := segmentTCP(f, ifi.MTU)
		ok := len(segs) > 0
		for _, seg := range segs {
			fixChecksums(seg)
			to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
			copy(to.Addr[:], seg[:6])
			if err := unix.Sendto(fd, seg, 0, to); err != nil {
				errs = append(errs, err)
				ok = false
			}
		}
		if ok {
			sent++
		}
	}
	return sent, errors.Join(errs...)
}

// segmentTCP returns frame f as frames of at most mtu bytes past their
// Ethernet header: f itself if it fits, an IPv4 TCP frame (an aggregated,
// GSO, one) cut into segments as the kernel would have, nothing for any
// other frame too large. Checksums are left to fixChecksums.
func segmentTCP(f []byte, mtu int) [][]byte {
	if len(f)-14 <= mtu {
		return [][]byte{f}
	}
	if !isIPv4TCP(f) {
		return nil
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total == 0 || total > len(ip) {
		total = len(ip) // a GSO frame's IPv4 length may be left 0
	}
	if ihl < 20 || len(ip) < ihl+20 {
		return nil
	}
	thl := int(ip[ihl+12]>>4) * 4
	if thl < 20 || total < ihl+thl {
		return nil
	}
	hdr := 14 + ihl + thl
	mss := mtu - ihl - thl
	if mss <= 0 {
		return nil
	}
	payload := f[hdr : 14+total]
	seq := binary.BigEndian.Uint32(ip[ihl+4:])
	id := binary.BigEndian.Uint16(ip[4:6])
	flags := ip[ihl+13]
	const fin, psh, cwr = 0x01, 0x08, 0x80
	var out [][]byte
	for off, i := 0, 0; off < len(payload); off, i = off+mss, i+1 {
		end := min(off+mss, len(payload))
		seg := make([]byte, hdr+end-off)
		copy(seg, f[:hdr])
		copy(seg[hdr:], payload[off:end])
		sip := seg[14:]
		binary.BigEndian.PutUint16(sip[2:4], uint16(ihl+thl+end-off))
		binary.BigEndian.PutUint16(sip[4:6], id+uint16(i))
		binary.BigEndian.PutUint32(sip[ihl+4:], seq+uint32(off))
		fl := flags
		if end < len(payload) {
			fl &^= fin | psh
		}
		if off > 0 {
			fl &^= cwr
		}
		sip[ihl+13] = fl
		out = append(out, seg)
	}
	return out
}

// fixChecksums recomputes the TCP or UDP checksum of an IPv4 frame in
// place (and the IPv4 header's). Other frames are left alone.
func fixChecksums(f []byte) {
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
		return
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ip[0]>>4 != 4 || ihl < 20 || total < ihl || total > len(ip) {
		return
	}
	ip = ip[:total]
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:12], ^fold(sum(ip[:ihl], 0)))
	if binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
		return // a fragment: its checksum covers the whole datagram
	}
	seg := ip[ihl:]
	var off int
	switch ip[9] {
	case unix.IPPROTO_TCP:
		off = 16
	case unix.IPPROTO_UDP:
		off = 6
		if len(seg) >= 8 && seg[6] == 0 && seg[7] == 0 {
			return // no checksum
		}
	default:
		return
	}
	if len(seg) < off+2 {
		return
	}
	seg[off], seg[off+1] = 0, 0
	var pseudo [12]byte
	copy(pseudo[0:8], ip[12:20])
	pseudo[9] = ip[9]
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(seg)))
	c := ^fold(sum(seg, sum(pseudo[:], 0)))
	if ip[9] == unix.IPPROTO_UDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(seg[off:off+2], c)
}

func sum(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

func fold(acc uint32) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// deliverHeld puts on the LAN the TCP frames the restored pod sent while
// it was held here (sent), then hands the frames the source held for it
// to it.
func (m *Manager) deliverHeld(s Spec, pid int, frames, sent [][]byte) {
	if !s.Network.Address.IsValid() {
		return
	}
	if len(sent) > 0 {
		n, err := sendFromPod(pid, sent)
		if err != nil {
			m.cfg.Log.Warn("send on the frames the pod sent while held", "pod", s.Name, "err", err)
		}
		m.cfg.Log.Debug("sent on frames the pod sent while held", "pod", s.Name, "frames", n, "of", len(sent))
	}
	if len(frames) == 0 {
		return
	}
	n, err := deliverFrames(hostVeth(s.Name), frames)
	if err != nil {
		m.cfg.Log.Warn("deliver held frames", "pod", s.Name, "err", err)
	}
	m.cfg.Log.Debug("delivered frames held during the freeze", "pod", s.Name, "frames", n, "of", len(frames))
}

// sendFromPod transmits frames on the eth0 of the network namespace of
// process pid, as if the pod sent them: they go where they were going,
// and on their way the bridges learn where the pod is now.
func sendFromPod(pid int, frames [][]byte) (int, error) {
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	osthread.Doomed(func() {
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("enter the pod's network namespace: %w", err)}
			return
		}
		n, err := deliverFrames("eth0", frames)
		ch <- result{n, err}
	})
	r := <-ch
	return r.n, r.err
}

// The destination restores a pod into the namespace it built, with the
// host end of its veth in the bridge but cut off by the same kind of hold
// (holdIncoming) until the exposure. When CRIU restores a TCP socket, it
// writes the data the pod had queued but not yet sent (its congestion
// window was full: the source held the client's acknowledgements) as new
// data, and the kernel sends it at once, before the exposure. Dropped,
// those segments would wait for the restored socket's first one-second
// retransmission timeout (it has no RTT estimate): seen as a client's
// 1.1 s pause in half the stop-and-copy moves of a pod that writes all
// the time. The hold keeps them, and the exposure sends them on.

// holdIncoming cuts the incoming pod s off with a traffic hold that keeps
// what it sends, and brings its host veth up behind it.
func (m *Manager) holdIncoming(ctx context.Context, s Spec) error {
	veth := hostVeth(s.Name)
	h, err := prepareHold(ctx, veth, true)
	if err != nil {
		return err
	}
	if err := h.hold(ctx); err != nil {
		h.release()
		return err
	}
	if err := linkUp(veth); err != nil {
		h.release()
		return err
	}
	m.mu.Lock()
	if m.inHolds == nil {
		m.inHolds = map[string]*trafficHold{}
	}
	m.inHolds[s.Name] = h
	m.mu.Unlock()
	return nil
}

// unholdIncoming ends the hold on the incoming pod called name, if there
// is one (also one left by an agent that stopped), and returns the TCP
// frames the pod sent while held; held says whether this agent held it
// (its host veth is then up and forwarding).
func (m *Manager) unholdIncoming(ctx context.Context, name string) (sent [][]byte, held bool) {
	h := m.takeIncomingHold(name)
	veth := hostVeth(name)
	if h != nil {
		// The pod passes traffic again once its filters are gone; closing
		// the capture sockets waits for RCU grace periods, and need not
		// delay the exposure.
		dropHoldFilters(ctx, veth)
		_, sent = h.take()
		go h.release()
		return sent, true
	}
	if capA, _ := capturePair(veth); linkExists(capA) {
		dropHoldFilters(ctx, veth)
		_, _ = run(ctx, "ip", "link", "del", capA)
	}
	return nil, false
}

// dropHolds removes the capture pair of the pod called name, and forgets
// an incoming hold on it, once its veth is gone.
func (m *Manager) dropHolds(name string) {
	if h := m.takeIncomingHold(name); h != nil {
		h.release()
	}
	if capA, _ := capturePair(hostVeth(name)); linkExists(capA) {
		_, _ = run(context.Background(), "ip", "link", "del", capA)
	}
}

// takeIncomingHold forgets the incoming hold on the pod called name and
// returns it (nil if there is none).
func (m *Manager) takeIncomingHold(name string) *trafficHold {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.inHolds[name]
	delete(m.inHolds, name)
	return h
}

// linkExists says whether this network namespace has a link called name
// (netlink: /sys/class/net may show another namespace's).
func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// clearOutgoing removes what an outgoing migration interrupted by a crash
// of the agent left around the pod: a CRIU still holding its tasks (a lazy
// dump waits for a peer that will never come), the hold on its traffic,
// the capture pair. The pod stays frozen; the caller decides its fate.
func (m *Manager) clearOutgoing(ctx context.Context, name string) {
	for _, pid := range m.cg.procs(name) {
		tracer := tracerPid(pid)
		if tracer <= 0 {
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", tracer)); filepath.Base(exe) == "criu" {
			m.cfg.Log.Warn("stopping a CRIU left from an interrupted migration", "pod", name, "criu_pid", tracer)
			_ = unix.Kill(tracer, unix.SIGKILL)
			waitExit(tracer)
		}
	}
	veth := hostVeth(name)
	dropHoldFilters(ctx, veth)
	capA, _ := capturePair(veth)
	_, _ = run(ctx, "ip", "link", "del", capA)
}

// tracerPid returns the pid ptrace-attached to pid, 0 if none.
func tracerPid(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
