package pods

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// run executes a tool and returns its error with the tool's own output
// attached, so failures say what ip(8) or nft(8) said.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// runInput is run with stdin fed from input.
func runInput(ctx context.Context, input, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdin = strings.NewReader(input)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// inNetns runs a tool inside the network namespace of pid.
func inNetns(ctx context.Context, pid int, name string, args ...string) (string, error) {
	return run(ctx, "nsenter", append([]string{"--net=/proc/" + strconv.Itoa(pid) + "/ns/net", "--", name}, args...)...)
}

// EnsureBridge creates the host bridge with the given gateway address if
// it does not exist yet, and brings it up.
func EnsureBridge(ctx context.Context, name string, addr netip.Prefix) error {
	if _, err := run(ctx, "ip", "link", "show", "dev", name); err != nil {
		if _, err := run(ctx, "ip", "link", "add", name, "type", "bridge"); err != nil {
			return err
		}
	}
	if addr.IsValid() {
		out, err := run(ctx, "ip", "-o", "addr", "show", "dev", name)
		if err != nil {
			return err
		}
		if !strings.Contains(out, " "+addr.String()+" ") {
			if _, err := run(ctx, "ip", "addr", "add", addr.String(), "dev", name); err != nil {
				return err
			}
		}
	}
	if err := pinBridgeMAC(ctx, name, addr); err != nil {
		return err
	}
	_, err := run(ctx, "ip", "link", "set", name, "up")
	return err
}

// pinBridgeMAC sets the bridge's MAC address to the one it has now. A
// Linux bridge otherwise takes the lowest MAC of its ports and changes it
// whenever a pod's veth comes or goes, and neighbours holding the old one
// in their ARP caches lose the host: after a migration a peer could no
// longer reach this host to ask how the migration ended.
//
// A bridge left without ports has the MAC 00:00:00:00:00:00; it then gets
// one derived from its own address (as pods' are from theirs), or a random
// locally administered one.
func pinBridgeMAC(ctx context.Context, name string, addr netip.Prefix) error {
	out, err := run(ctx, "ip", "-o", "link", "show", "dev", name)
	if err != nil {
		return err
	}
	mac := ""
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "link/ether" {
			mac = f[i+1]
		}
	}
	if mac == "" {
		return fmt.Errorf("bridge %s has no MAC address: %s", name, strings.TrimSpace(out))
	}
	if mac == "00:00:00:00:00:00" {
		if addr.IsValid() && addr.Addr().Is4() {
			mac = podMAC(addr.Addr())
		} else {
			b := make([]byte, 6)
			rand.Read(b)
			b[0] = b[0]&0xfe | 0x02 // unicast, locally administered
			mac = net.HardwareAddr(b).String()
		}
	}
	_, err = run(ctx, "ip", "link", "set", "dev", name, "address", mac)
	return err
}

// hostVeth names the host end of a pod's veth: Linux allows 15 bytes, so
// long pod names are shortened with a hash that keeps them unique.
func hostVeth(pod string) string {
	if n := "ap-" + pod; len(n) <= 15 {
		return n
	}
	h := sha256.Sum256([]byte(pod))
	return "ap-" + pod[:4] + "-" + hex.EncodeToString(h[:3])
}

// setupNetwork gives the pod (whose init is pid) loopback and, when it has
// an address, a veth into the bridge carrying that address.
func setupNetwork(ctx context.Context, s Spec, pid int) error {
	if _, err := inNetns(ctx, pid, "ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	if !s.Network.Address.IsValid() {
		return nil
	}
	host, peer := hostVeth(s.Name), "aptmp"+strconv.Itoa(pid)
	if len(peer) > 15 {
		peer = peer[:15]
	}
	_, _ = run(ctx, "ip", "link", "del", host) // a leftover from a crash
	steps := [][]string{
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", strconv.Itoa(pid)},
		{"ip", "link", "set", host, "master", s.Network.Bridge, "up"},
	}
	for _, st := range steps {
		if _, err := run(ctx, st[0], st[1:]...); err != nil {
			_, _ = run(ctx, "ip", "link", "del", host)
			return err
		}
	}
	inner := [][]string{
		{"ip", "link", "set", peer, "name", "eth0"},
		{"ip", "link", "set", "eth0", "address", podMAC(s.Network.Address.Addr())},
		{"ip", "addr", "add", s.Network.Address.String(), "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", s.Network.Gateway.String()},
	}
	for _, st := range inner {
		if _, err := inNetns(ctx, pid, st[0], st[1:]...); err != nil {
			_, _ = run(ctx, "ip", "link", "del", host)
			return err
		}
	}
	// Tell neighbours (the bridge's ARP cache) where the address is now.
	_, _ = inNetns(ctx, pid, "ip", "neigh", "flush", "dev", "eth0")
	return nil
}

// setPortForwarding enables or disables the pod's port on its bridge. A
// disabled port drops every frame both ways while the pod's own link stays
// up: a migration isolates the frozen source copy and the not yet
// committed destination copy this way. (Taking the veth down instead would
// mark the pod's routes "linkdown" in the checkpoint, which `ip route
// restore` then refuses.)
func setPortForwarding(ctx context.Context, veth string, on bool) error {
	state := "0" // disabled
	if on {
		state = "3" // forwarding
	}
	_, err := run(ctx, "bridge", "link", "set", "dev", veth, "state", state)
	// A port may forward only once its link is operationally up, which the
	// kernel notes a little after a fresh veth's peer came up (link watch):
	// right after a restore, "Network is down" means "not yet".
	for deadline := time.Now().Add(2 * time.Second); on && err != nil && strings.Contains(err.Error(), "Network is down") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		_, err = run(ctx, "bridge", "link", "set", "dev", veth, "state", state)
	}
	return err
}

// podMAC derives the pod's MAC address from its IPv4 address (locally
// administered, 0a:58:a.b.c.d, as Kubernetes' bridge plugin does), so that
// a restarted pod keeps its MAC and neighbours' ARP caches stay right; a
// random MAC per start left clients sending to the old one for ~30 s.
func podMAC(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// removeVeth deletes the host end of the pod's veth if it is still there
// (the kernel removes it with the pod's network namespace, maybe while
// this runs: "does not exist" is success).
func removeVeth(ctx context.Context, pod string) error {
	if _, err := run(ctx, "ip", "link", "show", "dev", hostVeth(pod)); err != nil {
		return nil
	}
	out, err := run(ctx, "ip", "link", "del", hostVeth(pod))
	if err != nil && (strings.Contains(out, "Cannot find device") || strings.Contains(out, "No such device")) {
		return nil
	}
	return err
}

// criuLockTables lists the nftables tables CRIU's network lock left in the
// network namespace of pid ("inet CRIU-<pid>" and the like).
func criuLockTables(ctx context.Context, pid int) ([]string, error) {
	out, err := inNetns(ctx, pid, "nft", "list", "tables")
	if err != nil {
		return nil, err
	}
	var tables []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" && strings.HasPrefix(f[2], "CRIU") {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables, nil
}

// releaseNetworkLock removes any CRIU network lock from the pod's network
// namespace. Every failed checkpoint path calls it: CRIU normally unlocks
// on failure, but not on every path (a failed lazy dump was seen leaving
// its table behind), and a locked pod silently drops all traffic.
func releaseNetworkLock(ctx context.Context, pid int) error {
	tables, err := criuLockTables(ctx, pid)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tables {
		f := strings.Fields(t)
		if _, err := inNetns(ctx, pid, "nft", "delete", "table", f[0], f[1]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
