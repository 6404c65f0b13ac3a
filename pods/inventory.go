package pods

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protowire"
)

// CRIU restores with the network-lock method its dump recorded in
// inventory.img, whatever the restore request says. A pod restored into a
// network namespace that autopod built (see prepareNetns) has no lock
// there to lift: CRIU's nftables unlock at the end of the restore only
// fails, ~15-20 ms inside the freeze, looking in the host's namespace for
// the table the dump made in the pod's namespace on the other host. The
// namespace is cut off until autopod exposes the pod, so the restore needs
// no lock of its own either.

const (
	inventoryMagic = 0x58313116 // CRIU's INVENTORY_MAGIC; the file has no common magic before it
	// inventory_entry.network_lock_method, and CRIU's own value for
	// "skip" there (enum NETWORK_LOCK_METHOD: iptables 0, nftables 1,
	// skip 2; the RPC's enum differs).
	inventoryNetworkLockField = 11
	criuNetworkLockSkip       = 2
)

// setRestoreNetworkLockSkip rewrites the inventory of the images in dir so
// that CRIU's restore of them takes and lifts no network lock. Every other
// field is kept as it was, known to autopod or not.
func setRestoreNetworkLockSkip(dir string) error {
	p := filepath.Join(dir, "inventory.img")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	out, err := inventoryWithNetworkLock(b, criuNetworkLockSkip)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	// The images are a copy that this restore alone uses.
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// splitInventory returns the entry of the inventory image img (a
// protobuf InventoryEntry) and what follows it.
func splitInventory(img []byte) (entry, rest []byte, err error) {
	if len(img) < 8 || binary.LittleEndian.Uint32(img) != inventoryMagic {
		return nil, nil, errors.New("not a CRIU inventory image")
	}
	size := binary.LittleEndian.Uint32(img[4:])
	if uint64(len(img)-8) < uint64(size) {
		return nil, nil, errors.New("inventory image: truncated entry")
	}
	return img[8 : 8+size], img[8+size:], nil
}

// inventoryWithNetworkLock returns the inventory image img with its
// network_lock_method set to method.
func inventoryWithNetworkLock(img []byte, method uint64) ([]byte, error) {
	msg, rest, err := splitInventory(img)
	if err != nil {
		return nil, err
	}
	var entry []byte
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, fmt.Errorf("inventory image: %w", protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, msg[n:])
		if m < 0 {
			return nil, fmt.Errorf("inventory image: %w", protowire.ParseError(m))
		}
		if num != inventoryNetworkLockField {
			entry = append(entry, msg[:n+m]...)
		}
		msg = msg[n+m:]
	}
	entry = protowire.AppendTag(entry, inventoryNetworkLockField, protowire.VarintType)
	entry = protowire.AppendVarint(entry, method)
	out := binary.LittleEndian.AppendUint32(nil, inventoryMagic)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(entry)))
	out = append(out, entry...)
	return append(out, rest...), nil
}
