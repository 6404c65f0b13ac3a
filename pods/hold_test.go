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
