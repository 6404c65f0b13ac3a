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
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
	return buildNetns(ctx, s, "/proc/"+strconv.Itoa(pid)+"/ns/net", false)
}

// buildNetns sets up the network namespace at nsPath as a pod's: loopback
// up and, when the pod has an address, a veth named eth0 inside with the
// pod's MAC, address and default route, its host end in the pod's bridge.
// An isolated host end stays down, so that no frame passes either way and
// the pod's end has no carrier (no IPv6 duplicate address detection, no
// announcement of any kind): a migration builds the destination's
// namespace this way while the pod still runs, and answers, on the
// source; exposePort brings it up. (A disabled bridge port would not do:
// the bridge enables a port again when its link comes up.)
func buildNetns(ctx context.Context, s Spec, nsPath string, isolated bool) error {
	in := func(name string, args ...string) (string, error) {
		return run(ctx, "nsenter", append([]string{"--net=" + nsPath, "--", name}, args...)...)
	}
	if _, err := in("ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	if !s.Network.Address.IsValid() {
		return nil
	}
	host := hostVeth(s.Name)
	var r [4]byte
	_, _ = rand.Read(r[:])
	peer := "aptmp" + hex.EncodeToString(r[:]) // renamed eth0 inside
	_, _ = run(ctx, "ip", "link", "del", host) // a leftover from a crash
	steps := [][]string{
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		// iproute2 takes a path (anything with a '/') for a namespace.
		{"ip", "link", "set", peer, "netns", nsPath},
		{"ip", "link", "set", host, "master", s.Network.Bridge},
		nil, // the qdisc, below
	}
	if !isolated {
		steps = append(steps, []string{"ip", "link", "set", host, "up"})
	}
	for _, st := range steps {
		if st == nil {
			// While the link is down, the qdisc a migration's traffic
			// hold needs (addClsact). A kernel without clsact still runs
			// the pod, and a migration then says it cannot hold its traffic.
			_ = addClsact(ctx, host)
			continue
		}
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
		if _, err := in(st[0], st[1:]...); err != nil {
			_, _ = run(ctx, "ip", "link", "del", host)
			return err
		}
	}
	// Tell neighbours (the bridge's ARP cache) where the address is now.
	_, _ = in("ip", "neigh", "flush", "dev", "eth0")
	return nil
}

// newNetns creates an empty network namespace and returns a descriptor
// that keeps it alive: closing the last one (with no process in it)
// destroys it, with the veth ends inside.
func newNetns() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Unshare affects this thread only; it returns to its namespace
		// before it serves other goroutines, or dies with this one.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("new network namespace: %w", err)}
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			if f != nil {
				f.Close()
			}
			ch <- result{err: fmt.Errorf("return to the agent's network namespace: %w", serr)}
			return // the thread stays locked and exits with the goroutine
		}
		runtime.UnlockOSThread()
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// fdPath names an open descriptor of this process by path, which tools
// (nsenter, ip) and CRIU can open.
func fdPath(f *os.File) string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
}

// netnsInode is the inode number of pid's network namespace: CRIU names
// an external namespace by it.
func netnsInode(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
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

// linkUp brings a link up (SIOCSIFFLAGS: no ip(8) run inside a
// migration's freeze).
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
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
