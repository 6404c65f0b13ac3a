package peer

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/autopod/autopod/atomicfile"
)

// DefaultPort is the peer port an address without one gets.
const DefaultPort = 7781

// StoreFile is the name of the pinned peers file inside the store's directory.
const StoreFile = "peers.json"

// ErrUnknownPeer means no peer of that name is pinned. Errors wrap it with the name.
var ErrUnknownPeer = errors.New("unknown peer")

// Peer is a pinned peer host.
type Peer struct {
	// Name is how commands refer to the peer (`autopodctl migrate POD --to NAME`).
	Name string `json:"name"`
	// Address is host:port, as Dial connects to it; IPv6 hosts are in brackets.
	Address string `json:"address"`
	// Fingerprint is Fingerprint of the pinned certificate: the peer's identity.
	Fingerprint string `json:"fingerprint"`
	// CertPEM is the pinned certificate, kept so that `peer list` can show it and
	// the fingerprint can be checked against it.
	CertPEM string `json:"cert_pem"`
}

// storeFile is the layout of peers.json.
type storeFile struct {
	Peers []Peer `json:"peers"`
}

// Store is the set of pinned peers, kept in DIR/peers.json. It is safe for
// concurrent use, also by several processes: writers take an flock on
// DIR/peers.json.lock and write durably, and readers re-read the file when it has
// changed, so that a peer that `autopodctl peer remove` unpinned is refused by a
// running agent's next Accept.
type Store struct {
	dir, path string

	mu    sync.Mutex
	peers map[string]Peer // by name
	stamp fileStamp       // of the file peers was read from
	err   error           // why the file could not be read; reads then fail closed
}

// fileStamp tells whether peers.json changed since it was read. Writes replace the
// file by rename, which changes the inode; mtime and size catch edits in place.
type fileStamp struct {
	info fs.FileInfo // nil: no file
}

func (a fileStamp) same(b fileStamp) bool {
	if a.info == nil || b.info == nil {
		return a.info == nil && b.info == nil
	}
	return os.SameFile(a.info, b.info) && a.info.ModTime().Equal(b.info.ModTime()) && a.info.Size() == b.info.Size()
}

// OpenStore opens the peer store in dir. A missing file (or directory) is an empty
// store; a file that cannot be parsed is an error.
func OpenStore(dir string) (*Store, error) {
	s := &Store{dir: dir, path: filepath.Join(dir, StoreFile)}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// load reads the file into s. s.mu is held, or s is not shared yet.
func (s *Store) load() error {
	st, peers, err := readStoreFile(s.path)
	if err != nil {
		s.err = err
		return err
	}
	s.peers, s.stamp, s.err = peers, st, nil
	return nil
}

// refresh re-reads the file when it changed. s.mu is held.
func (s *Store) refresh() error {
	st, err := statFile(s.path)
	if err != nil {
		s.err = fmt.Errorf("peer store: %w", err)
		return s.err
	}
	if s.err == nil && st.same(s.stamp) {
		return nil
	}
	return s.load()
}

func statFile(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi}, nil
}

func readStoreFile(path string) (fileStamp, map[string]Peer, error) {
	peers := map[string]Peer{}
	// Stat before reading: if the file is replaced in between, the stamp is older
	// than the content and the next refresh reads it again, never the reverse.
	st, err := statFile(path)
	if err != nil {
		return fileStamp{}, nil, fmt.Errorf("peer store: %w", err)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, peers, nil
	}
	if err != nil {
		return fileStamp{}, nil, fmt.Errorf("peer store: %w", err)
	}
	var f storeFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return fileStamp{}, nil, fmt.Errorf("peer store %s: %w", path, err)
	}
	byFP := map[string]string{}
	for i, p := range f.Peers {
		checked, err := newPeer(p.Name, p.Address, []byte(p.CertPEM))
		if err != nil {
			return fileStamp{}, nil, fmt.Errorf("peer store %s: entry %d: %w", path, i+1, err)
		}
		if checked.Fingerprint != p.Fingerprint {
			return fileStamp{}, nil, fmt.Errorf("peer store %s: peer %q: fingerprint %s does not match its certificate (%s)", path, p.Name, p.Fingerprint, checked.Fingerprint)
		}
		if _, dup := peers[p.Name]; dup {
			return fileStamp{}, nil, fmt.Errorf("peer store %s: peer %q appears twice", path, p.Name)
		}
		if other, dup := byFP[p.Fingerprint]; dup {
			return fileStamp{}, nil, fmt.Errorf("peer store %s: peers %q and %q have the same certificate", path, other, p.Name)
		}
		peers[p.Name] = checked
		byFP[p.Fingerprint] = p.Name
	}
	return st, peers, nil
}

// Add pins certPEM (one PEM certificate, see ParseCertPEM) as peer name at address
// and returns the stored Peer. A name already pinned is replaced. The name must
// match ^[a-z0-9][a-z0-9.-]{0,62}$; the address is host or host:port (port
// DefaultPort when absent; an IPv6 host in brackets). One certificate can be pinned
// under one name only, because Accept names the connecting peer by its certificate.
func (s *Store) Add(name, address string, certPEM []byte) (Peer, error) {
	p, err := newPeer(name, address, certPEM)
	if err != nil {
		return Peer{}, err
	}
	err = s.update(func(peers map[string]Peer) error {
		for _, o := range peers {
			if o.Fingerprint == p.Fingerprint && o.Name != p.Name {
				return fmt.Errorf("certificate %s is already pinned as peer %q; remove that one first", p.Fingerprint, o.Name)
			}
		}
		peers[p.Name] = p
		return nil
	})
	if err != nil {
		return Peer{}, fmt.Errorf("add peer %q: %w", name, err)
	}
	return p, nil
}

// Remove unpins peer name. The error wraps ErrUnknownPeer when it is not pinned.
func (s *Store) Remove(name string) error {
	err := s.update(func(peers map[string]Peer) error {
		if _, ok := peers[name]; !ok {
			return fmt.Errorf("%w %q", ErrUnknownPeer, name)
		}
		delete(peers, name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove peer: %w", err)
	}
	return nil
}

// update applies change to the current peers under both locks and writes the
// result. Reading the file again under the flock keeps another process's write.
func (s *Store) update(change func(map[string]Peer) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	unlock, err := lockFile(s.path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.load(); err != nil {
		return err
	}
	peers := make(map[string]Peer, len(s.peers)+1)
	for k, v := range s.peers {
		peers[k] = v
	}
	if err := change(peers); err != nil {
		return err
	}
	f := storeFile{Peers: sortedPeers(peers)}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.path, append(data, '\n'), 0o600); err != nil {
		return err
	}
	st, err := statFile(s.path)
	if err != nil {
		return err
	}
	s.peers, s.stamp, s.err = peers, st, nil
	return nil
}

func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// Get returns peer name; the error wraps ErrUnknownPeer when it is not pinned.
func (s *Store) Get(name string) (Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refresh(); err != nil {
		return Peer{}, err
	}
	p, ok := s.peers[name]
	if !ok {
		return Peer{}, fmt.Errorf("%w %q", ErrUnknownPeer, name)
	}
	return p, nil
}

// List returns the pinned peers sorted by name. It fails only when peers.json
// changed and can no longer be read.
func (s *Store) List() ([]Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refresh(); err != nil {
		return nil, err
	}
	return sortedPeers(s.peers), nil
}

// ByFingerprint returns the peer pinned with certificate fingerprint fp. While
// peers.json cannot be read it finds none: an unreadable store admits nobody.
func (s *Store) ByFingerprint(fp string) (Peer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refresh(); err != nil {
		return Peer{}, false
	}
	for _, p := range s.peers {
		if p.Fingerprint == fp {
			return p, true
		}
	}
	return Peer{}, false
}

func sortedPeers(m map[string]Peer) []Peer {
	ps := make([]Peer, 0, len(m))
	for _, p := range m {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return ps
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// newPeer validates and normalises the parts of a Peer.
func newPeer(name, address string, certPEM []byte) (Peer, error) {
	if !nameRE.MatchString(name) {
		return Peer{}, fmt.Errorf("invalid peer name %q: want 1 to 63 of a-z, 0-9, '.' and '-', starting with a letter or digit", name)
	}
	addr, err := NormalizeAddress(address)
	if err != nil {
		return Peer{}, err
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return Peer{}, fmt.Errorf("certificate of peer %q: %w", name, err)
	}
	return Peer{
		Name:        name,
		Address:     addr,
		Fingerprint: Fingerprint(cert.Raw),
		CertPEM:     string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})),
	}, nil
}

// NormalizeAddress checks a peer address, host or host:port, and returns it as
// host:port with DefaultPort filled in. The host is an IPv4 address, an IPv6
// address in brackets ("[fd00::2]" or "[fd00::2]:7781") or a DNS name.
func NormalizeAddress(address string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("invalid peer address %q: %s", address, why)
	}
	var host, port string
	switch {
	case address == "":
		return bad("empty")
	case strings.HasPrefix(address, "["):
		end := strings.IndexByte(address, ']')
		if end < 0 {
			return bad("missing ']'")
		}
		host = address[1:end]
		if rest := address[end+1:]; rest != "" {
			var ok bool
			if port, ok = strings.CutPrefix(rest, ":"); !ok {
				return bad("want [IPV6]:PORT")
			}
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() {
			return bad("brackets must hold an IPv6 address")
		}
	default:
		switch strings.Count(address, ":") {
		case 0:
			host = address
		case 1:
			host, port, _ = strings.Cut(address, ":")
		default:
			return bad("an IPv6 address must be in brackets, e.g. [" + address + "]:" + strconv.Itoa(DefaultPort))
		}
		if _, err := netip.ParseAddr(host); err != nil {
			if why := checkHostname(host); why != "" {
				return bad(why)
			}
		}
	}
	p := DefaultPort
	if port != "" || strings.HasSuffix(address, ":") {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return bad("port must be a number from 1 to 65535")
		}
		p = int(n)
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// checkHostname says what is wrong with a DNS name, or "".
func checkHostname(h string) string {
	if h == "" {
		return "empty host"
	}
	if len(h) > 253 {
		return "host name longer than 253 characters"
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "host name labels must be 1 to 63 characters"
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "host name labels must not start or end with '-'"
		}
		for _, c := range []byte(l) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Sprintf("character %q not allowed in a host name", c)
			}
		}
	}
	// A name ending in digits only is a mistyped IPv4 address (10.0.0.256), never a
	// real top-level domain.
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "not a valid IPv4 address"
	}
	return ""
}
