package pods

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// inventoryImage encodes e as CRIU writes inventory.img, with extra bytes
// appended to the entry (fields this go-criu does not know, as CRIU 4.2's
// plugins and dump run id).
func inventoryImage(t *testing.T, e *inventory.InventoryEntry, extra []byte) []byte {
	t.Helper()
	msg, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	msg = append(msg, extra...)
	out := binary.LittleEndian.AppendUint32(nil, inventoryMagic)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(msg)))
	return append(out, msg...)
}

func TestInventoryWithNetworkLock(t *testing.T) {
	runID := protowire.AppendTag(nil, 13, protowire.BytesType)
	runID = protowire.AppendString(runID, "37de7c77-565c-4909-95")
	in := &inventory.InventoryEntry{
		ImgVersion:        proto.Uint32(2),
		FdinfoPerId:       proto.Bool(true),
		NsPerId:           proto.Bool(true),
		RootCgSet:         proto.Uint32(1),
		DumpUptime:        proto.Uint64(123456789),
		TcpClose:          proto.Bool(false),
		NetworkLockMethod: proto.Uint32(1), // nftables
	}
	img := inventoryImage(t, in, runID)

	out, err := inventoryWithNetworkLock(img, criuNetworkLockSkip)
	if err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint32(out) != inventoryMagic {
		t.Fatal("magic lost")
	}
	size := binary.LittleEndian.Uint32(out[4:])
	if int(size) != len(out)-8 {
		t.Fatalf("entry size %d, %d bytes follow", size, len(out)-8)
	}
	var got inventory.InventoryEntry
	if err := proto.Unmarshal(out[8:], &got); err != nil {
		t.Fatal(err)
	}
	if got.GetNetworkLockMethod() != criuNetworkLockSkip {
		t.Errorf("network_lock_method %d, want %d", got.GetNetworkLockMethod(), criuNetworkLockSkip)
	}
	want := proto.Clone(in).(*inventory.InventoryEntry)
	want.NetworkLockMethod = proto.Uint32(criuNetworkLockSkip)
	got.ProtoReflect().SetUnknown(nil)
	if !proto.Equal(&got, want) {
		t.Errorf("fields changed:\n got %v\nwant %v", &got, want)
	}
	if !bytes.Contains(out[8:], runID) {
		t.Error("a field unknown to autopod was lost")
	}

	// Without a method in the image (older CRIU): one is added.
	in.NetworkLockMethod = nil
	out, err = inventoryWithNetworkLock(inventoryImage(t, in, nil), criuNetworkLockSkip)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(out[8:], &got); err != nil || got.GetNetworkLockMethod() != criuNetworkLockSkip {
		t.Errorf("added method: %v, %v", got.NetworkLockMethod, err)
	}

	for name, bad := range map[string][]byte{
		"empty":       nil,
		"other magic": append(binary.LittleEndian.AppendUint32(nil, 0x54564319), img[4:]...),
		"truncated":   img[:len(img)-3],
		"garbage":     append(append([]byte{}, img[:8]...), bytes.Repeat([]byte{0xff}, len(img)-8)...),
	} {
		if _, err := inventoryWithNetworkLock(bad, criuNetworkLockSkip); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
