package pods

import (
	"encoding/binary"
	"testing"
)

// frame builds an Ethernet/IPv4 frame carrying payload over proto with
// garbage checksums.
func frame(proto byte, l4 []byte) []byte {
	f := make([]byte, 14+20+len(l4))
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+len(l4)))
	ip[8], ip[9] = 64, proto
	copy(ip[12:16], []byte{10, 55, 0, 250})
	copy(ip[16:20], []byte{10, 55, 0, 100})
	ip[10], ip[11] = 0xde, 0xad
	copy(ip[20:], l4)
	return f
}

// valid reports whether the checksums of an IPv4 frame verify: a sum over
// the covered bytes, checksum included, folds to 0xffff.
func valid(t *testing.T, f []byte) {
	t.Helper()
	ip := f[14:]
	if got := fold(sum(ip[:20], 0)); got != 0xffff {
		t.Errorf("IPv4 header checksum does not verify: %#x", got)
	}
	seg := ip[20:]
	var pseudo [12]byte
	copy(pseudo[0:8], ip[12:20])
	pseudo[9] = ip[9]
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(seg)))
	if got := fold(sum(seg, sum(pseudo[:], 0))); got != 0xffff {
		t.Errorf("L4 checksum does not verify: %#x", got)
	}
}

func TestFixChecksums(t *testing.T) {
	tcp := make([]byte, 20+27)
	binary.BigEndian.PutUint16(tcp[0:2], 37816)
	binary.BigEndian.PutUint16(tcp[2:4], 6379)
	tcp[12] = 5 << 4
	tcp[16], tcp[17] = 0x12, 0x34 // partial, as offloading leaves it
	copy(tcp[20:], "*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n")
	f := frame(6, tcp)
	fixChecksums(f)
	valid(t, f)

	udp := make([]byte, 8+5)
	binary.BigEndian.PutUint16(udp[4:6], 13)
	udp[6], udp[7] = 0xff, 0x00
	copy(udp[8:], "hello") // odd length
	f = frame(17, udp)
	fixChecksums(f)
	valid(t, f)

	// A frame that is not IPv4 (ARP) or is cut short is left alone.
	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:14], 0x0806)
	arp[20] = 0xaa
	fixChecksums(arp)
	if arp[20] != 0xaa {
		t.Error("ARP frame changed")
	}
	short := frame(6, tcp)[:30]
	fixChecksums(short)
}

// TestSegmentTCP: an aggregated (GSO) TCP frame caught by a hold is cut
// into segments the link can carry, each with its own sequence number,
// length and checksums, the stream's bytes in order, FIN and PSH on the
// last only.
func TestSegmentTCP(t *testing.T) {
	const mtu = 1500
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	tcp := make([]byte, 32+len(payload)) // a header with timestamps
	binary.BigEndian.PutUint16(tcp[0:2], 7000)
	binary.BigEndian.PutUint16(tcp[2:4], 45016)
	binary.BigEndian.PutUint32(tcp[4:8], 0xfffff000) // wraps
	tcp[12] = 8 << 4
	tcp[13] = 0x18 | 0x01 // PSH ACK FIN
	copy(tcp[20:32], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	copy(tcp[32:], payload)
	f := frame(6, tcp)
	binary.BigEndian.PutUint16(f[14+4:], 0x1234) // IPv4 id

	segs := segmentTCP(f, mtu)
	if len(segs) != 3 { // 1448 + 1448 + 104
		t.Fatalf("%d segments, want 3", len(segs))
	}
	var got []byte
	for i, s := range segs {
		fixChecksums(s)
		valid(t, s)
		if len(s)-14 > mtu {
			t.Errorf("segment %d: %d bytes past Ethernet, MTU %d", i, len(s)-14, mtu)
		}
		ip := s[14:]
		if id := binary.BigEndian.Uint16(ip[4:]); id != 0x1234+uint16(i) {
			t.Errorf("segment %d: IPv4 id %#x", i, id)
		}
		th := ip[20:]
		if seq := binary.BigEndian.Uint32(th[4:]); seq != 0xfffff000+uint32(len(got)) {
			t.Errorf("segment %d: seq %#x, want %#x", i, seq, 0xfffff000+uint32(len(got)))
		}
		last := i == len(segs)-1
		if fin, psh := th[13]&0x01 != 0, th[13]&0x08 != 0; fin != last || psh != last || th[13]&0x10 == 0 {
			t.Errorf("segment %d: flags %#x", i, th[13])
		}
		got = append(got, th[32:]...)
	}
	if string(got) != string(payload) {
		t.Error("the segments do not carry the payload in order")
	}

	// What fits goes as it is; what is too large and not TCP is dropped.
	small := frame(6, tcp[:32+100])
	if s := segmentTCP(small, mtu); len(s) != 1 || &s[0][0] != &small[0] {
		t.Error("a frame that fits was changed")
	}
	if s := segmentTCP(frame(17, make([]byte, 2000)), mtu); len(s) != 0 {
		t.Error("an oversized UDP frame was kept")
	}
}
