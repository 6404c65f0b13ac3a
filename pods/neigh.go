package pods

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// A restored pod's kernel has an empty neighbour (ARP) table. The first
// packet the pod sends to a client, often the window probe CRIU's restore
// sends on every TCP connection, starts an ARP request while the pod is
// still cut off from the network; the request is lost, and the kernel
// tries again only after a second (retrans_time), holding the pod's
// replies back all that time: measured, it added a second to every
// migration's pause. So the source hands over the pod's neighbours, the
// destination seeds them before the pod resumes, and after the exposure
// it resolves at once whatever is still unresolved.

// neighbour is one entry of a pod's neighbour table.
type neighbour struct {
	IP  netip.Addr `json:"ip"`
	MAC string     `json:"mac"`
}

// podNeighbours lists the resolved neighbours of the pod whose init is
// pid, on its eth0.
func podNeighbours(ctx context.Context, pid int) ([]neighbour, error) {
	out, err := inNetns(ctx, pid, "ip", "-j", "neigh", "show", "dev", "eth0")
	if err != nil {
		return nil, err
	}
	return parseNeighbours([]byte(out))
}

// parseNeighbours reads `ip -j neigh show` output, keeping entries with a
// link-layer address in a usable state.
func parseNeighbours(data []byte) ([]neighbour, error) {
	var entries []struct {
		Dst    string   `json:"dst"`
		Lladdr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, nil
	}
	if err := json.Unmarshal(data, &entries); err != nil {
		return nil, fmt.Errorf("parse ip neigh output: %w", err)
	}
	var ns []neighbour
	for _, e := range entries {
		ip, err := netip.ParseAddr(e.Dst)
		if err != nil || !ip.Is4() {
			continue
		}
		if _, err := net.ParseMAC(e.Lladdr); err != nil {
			continue
		}
		usable := false
		for _, st := range e.State {
			switch st {
			case "REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP":
				usable = true
			}
		}
		if usable {
			ns = append(ns, neighbour{IP: ip, MAC: e.Lladdr})
		}
	}
	return ns, nil
}

// seedNeighbours adds ns to the neighbour table of the pod's network
// namespace at nsPath, as stale entries (used at once, confirmed by the kernel later).
// Only neighbours on the pod's own subnet are taken, and not its gateway:
// the gateway may be a different host on each side.
func seedNeighbours(ctx context.Context, nsPath string, s Spec, ns []neighbour) error {
	var batch strings.Builder
	for _, n := range ns {
		if !s.Network.Address.Contains(n.IP) || n.IP == s.Network.Gateway || n.IP == s.Network.Address.Addr() {
			continue
		}
		if _, err := net.ParseMAC(n.MAC); err != nil {
			continue
		}
		fmt.Fprintf(&batch, "neigh replace %s lladdr %s dev eth0 nud stale\n", n.IP, n.MAC)
	}
	if batch.Len() == 0 {
		return nil
	}
	_, err := runInput(ctx, batch.String(), "nsenter", "--net="+nsPath, "--", "ip", "-batch", "-")
	return err
}

// kickNeighbours resolves now the neighbours the pod is waiting for
// (incomplete entries): a reply to any ARP request completes them, and the
// packets queued behind them leave.
func kickNeighbours(ctx context.Context, pid int) {
	out, err := inNetns(ctx, pid, "ip", "-j", "neigh", "show", "dev", "eth0", "nud", "incomplete")
	if err != nil {
		return
	}
	var entries []struct {
		Dst string `json:"dst"`
	}
	if json.Unmarshal([]byte(out), &entries) != nil {
		return
	}
	var ips []string
	for _, e := range entries {
		if ip, err := netip.ParseAddr(e.Dst); err == nil && ip.Is4() && !slices.Contains(ips, e.Dst) {
			ips = append(ips, e.Dst)
		}
	}
	var wg sync.WaitGroup
	for _, ip := range ips {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = inNetns(ctx, pid, "arping", "-c", "1", "-w", "1", "-I", "eth0", ip)
		}()
	}
	wg.Wait()
}
