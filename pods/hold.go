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

	"golang.org/x/sys/unix"
)

// While a migrating pod is frozen, packets for it keep arriving at the
// source: a client's request, its retransmissions. Dropped, they leave the
// client waiting on its TCP retransmission timer, which has backed off by
// then (200 ms, 400 ms, 800 ms...): measured, the pause clients saw was
// the freeze plus up to one more backoff step. So the source holds them
// instead: a tc filter on the pod's host-side veth drops every frame in
// both directions (the pod is cut off) by redirecting them into a capture
// veth pair, where a packet socket keeps those bound for the pod. They
// travel with the commit, and the destination delivers them to the
// restored pod right after exposing it: the client's request is answered
// at once, and its retransmission timer never matters.

const (
	// holdMaxBytes bounds what a hold keeps; beyond it, frames are
	// dropped as before and their senders retransmit.
	holdMaxBytes = 4 << 20
	// holdMaxFrame is the largest frame kept: an aggregated (GSO) frame
	// larger than a link's MTU cannot be sent again as one.
	holdMaxFrame = 9216
)

// trafficHold captures the frames bound for one pod.
type trafficHold struct {
	veth       string // the pod's host-side veth
	capA, capB string // the capture pair: mirrored to A, read on B
	file       *os.File

	releaseOnce sync.Once

	mu     sync.Mutex
	frames [][]byte
	bytes  int
	closed bool
	done   chan struct{}
}

// capturePair names the capture veth pair of a pod's host veth.
func capturePair(veth string) (string, string) {
	h := sha256.Sum256([]byte(veth))
	id := hex.EncodeToString(h[:4])
	return "aph" + id + "a", "aph" + id + "b"
}

// prepareHold sets up, while the pod still runs, what holding its traffic
// needs: the capture pair, the packet socket reading it, and a clsact
// qdisc on the pod's veth. Nothing changes for the pod until hold.
func prepareHold(ctx context.Context, veth string) (*trafficHold, error) {
	h := &trafficHold{veth: veth, done: make(chan struct{})}
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
	ifi, err := net.InterfaceByName(h.capB)
	if err != nil {
		return nil, fmt.Errorf("hold traffic: %w", err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("hold traffic: packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("hold traffic: bind packet socket to %s: %w", h.capB, err)
	}
	h.file = os.NewFile(uintptr(fd), "packet:"+h.capB)
	if _, err := run(ctx, "tc", "qdisc", "replace", "dev", veth, "clsact"); err != nil {
		return nil, fmt.Errorf("hold traffic: %w", err)
	}
	go h.capture()
	ok = true
	return h, nil
}

// hold cuts the pod off: frames bound for it are redirected into the
// capture pair (to be read at its far end), frames from it into the pair's
// other direction, where nothing reads them and the kernel drops them
// (the pair has no addresses). One tc run, in the freeze. u32 and mirred
// are what kernels without the matchall classifier or the drop action
// (gact) offer.
func (h *trafficHold) hold(ctx context.Context) error {
	batch := fmt.Sprintf(`filter add dev %[1]s egress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev %[2]s
filter add dev %[1]s ingress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev %[3]s
`, h.veth, h.capA, h.capB)
	if _, err := runInput(ctx, batch, "tc", "-batch", "-"); err != nil {
		return fmt.Errorf("hold traffic: %w", err)
	}
	return nil
}

// capture reads mirrored frames until the hold is released.
func (h *trafficHold) capture() {
	defer close(h.done)
	rc, err := h.file.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 65536)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
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
			h.frames = append(h.frames, append([]byte(nil), buf[:n]...))
			h.bytes += n
		}
		h.mu.Unlock()
	}
}

// take stops keeping frames and returns those held so far. The pod stays
// cut off.
func (h *trafficHold) take() [][]byte {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	f := h.frames
	h.frames = nil
	return f
}

// release removes the hold: the filters (the pod's port passes traffic
// again, unless the caller disabled it), the capture pair and the socket.
func (h *trafficHold) release() {
	h.releaseOnce.Do(func() {
		ctx := context.Background()
		_, _ = run(ctx, "tc", "qdisc", "del", "dev", h.veth, "clsact")
		if h.file != nil {
			h.file.Close()
			<-h.done
		}
		_, _ = run(ctx, "ip", "link", "del", h.capA)
	})
}

// deliverFrames sends held frames to the pod behind the host-side veth,
// as if they had just arrived. Checksums are recomputed: frames mirrored
// inside one host may carry partial (offloaded) ones.
func deliverFrames(veth string, frames [][]byte) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	ifi, err := net.InterfaceByName(veth)
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
		if len(f) < 14 || len(f) > ifi.MTU+14 {
			continue
		}
		fixChecksums(f)
		to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		copy(to.Addr[:], f[:6])
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			errs = append(errs, err)
			continue
		}
		sent++
	}
	return sent, errors.Join(errs...)
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

// deliverHeld hands the frames the source held to the restored pod.
func (m *Manager) deliverHeld(s Spec, frames [][]byte) {
	if len(frames) == 0 || !s.Network.Address.IsValid() {
		return
	}
	n, err := deliverFrames(hostVeth(s.Name), frames)
	if err != nil {
		m.cfg.Log.Warn("deliver held frames", "pod", s.Name, "err", err)
	}
	m.cfg.Log.Debug("delivered frames held during the freeze", "pod", s.Name, "frames", n, "of", len(frames))
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
	_, _ = run(ctx, "tc", "qdisc", "del", "dev", veth, "clsact")
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
