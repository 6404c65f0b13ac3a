package agent

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// peerFDName is FileDescriptorName= in units/autopod.socket.
const peerFDName = "peer"

// PeerListener returns the listener for peer hosts. Under socket activation it is
// the socket systemd passed under the name "peer" (autopod.socket), and activated is
// true; otherwise PeerListener listens on TCP port itself, on all addresses (0 picks
// a free port). Under activation port is ignored: the socket unit decides.
//
// It always removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment
// and marks passed descriptors close-on-exec, so that neither criu, the package
// manager nor the pods inherit them. That also makes it the only consumer of socket
// activation in the agent: call it once. Sockets passed under other names, or more
// than one "peer" socket, are an error rather than silently dropped.
func PeerListener(port int) (l net.Listener, activated bool, err error) {
	if port < 0 || port > 65535 {
		return nil, false, fmt.Errorf("peer port %d: out of range 0-65535", port)
	}
	named, err := activation.ListenersWithNames()
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: %w", err)
	}
	if len(named) > 0 {
		return fromSystemd(named)
	}
	l, err = net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, false, fmt.Errorf("listen for peers: %w", err)
	}
	return l, false, nil
}

// fromSystemd picks the one "peer" listener out of what systemd passed and closes
// the rest.
func fromSystemd(named map[string][]net.Listener) (net.Listener, bool, error) {
	var (
		names []string
		all   []net.Listener
	)
	for name, ls := range named {
		names = append(names, name)
		all = append(all, ls...)
	}
	slices.Sort(names)
	closeAll := func() {
		for _, l := range all {
			l.Close()
		}
	}
	peers := named[peerFDName]
	switch {
	case len(names) > 1 || len(peers) == 0:
		closeAll()
		return nil, false, fmt.Errorf("socket activation passed sockets named %q, want only %q (FileDescriptorName= in autopod.socket)", names, peerFDName)
	case len(peers) > 1:
		closeAll()
		return nil, false, fmt.Errorf("socket activation passed %d %q sockets, want one (one ListenStream= in autopod.socket)", len(peers), peerFDName)
	}
	return peers[0], true, nil
}

const (
	// peerGreetTimeout bounds how long one peer connection may take, so that silent
	// or slow clients cannot pile up goroutines and descriptors.
	peerGreetTimeout = 5 * time.Second
	// maxAcceptBackoff caps the retry delay after failed accepts (EMFILE and the like).
	maxAcceptBackoff = time.Second
)
