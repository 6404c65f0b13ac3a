package peer

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// newCertPEM returns the certificate of a fresh identity.
func newCertPEM(t testing.TB) []byte {
	t.Helper()
	id, err := InitIdentity(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return id.CertPEM
}

func TestStoreAddGetRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ps, err := s.List(); err != nil || len(ps) != 0 {
		t.Fatalf("empty store: %v %v", ps, err)
	}
	certB, certA := newCertPEM(t), newCertPEM(t)
	b, err := s.Add("host-b", "10.0.0.2", certB)
	if err != nil {
		t.Fatal(err)
	}
	if b.Address != "10.0.0.2:7781" || b.Name != "host-b" || !validFingerprint(b.Fingerprint) {
		t.Errorf("stored %+v", b)
	}
	c, _ := ParseCertPEM(certB)
	if b.Fingerprint != Fingerprint(c.Raw) {
		t.Error("fingerprint is not the certificate's")
	}
	a, err := s.Add("a.example", "[fd00::1]:9000", append([]byte("comment\n"), certA...))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(a.CertPEM, "comment") {
		t.Error("text around the certificate was stored")
	}

	got, err := s.Get("host-b")
	if err != nil || got != b {
		t.Fatalf("Get: %+v %v", got, err)
	}
	if p, ok := s.ByFingerprint(a.Fingerprint); !ok || p != a {
		t.Errorf("ByFingerprint: %+v %v", p, ok)
	}
	if _, ok := s.ByFingerprint(Fingerprint([]byte("x"))); ok {
		t.Error("ByFingerprint found an unknown certificate")
	}
	if ps, _ := s.List(); !reflect.DeepEqual(ps, []Peer{a, b}) {
		t.Errorf("List not sorted by name: %+v", ps)
	}

	// Persistence: another Store on the same directory sees the same peers.
	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ps, _ := s2.List(); !reflect.DeepEqual(ps, []Peer{a, b}) {
		t.Errorf("reopened: %+v", ps)
	}

	// Re-adding a name replaces it, certificate and address.
	b2, err := s.Add("host-b", "host-b.lan:7000", certA)
	if err == nil {
		t.Fatal("pinned one certificate under two names")
	} else if !strings.Contains(err.Error(), `already pinned as peer "a.example"`) {
		t.Errorf("duplicate certificate: %v", err)
	}
	certB2 := newCertPEM(t)
	b2, err = s.Add("host-b", "host-b.lan:7000", certB2)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.ByFingerprint(b.Fingerprint); ok {
		t.Error("replaced certificate still accepted")
	}
	if got, _ := s2.Get("host-b"); got != b2 {
		t.Errorf("other Store did not see the replacement: %+v", got)
	}

	if err := s.Remove("host-b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("host-b"); !errors.Is(err, ErrUnknownPeer) || !strings.Contains(err.Error(), `"host-b"`) {
		t.Errorf("second Remove: %v", err)
	}
	if _, err := s.Get("host-b"); !errors.Is(err, ErrUnknownPeer) || !strings.Contains(err.Error(), `unknown peer "host-b"`) {
		t.Errorf("Get removed: %v", err)
	}
	// The other Store, like a running agent after `autopodctl peer remove`,
	// stops accepting the removed peer at once.
	if _, ok := s2.ByFingerprint(b2.Fingerprint); ok {
		t.Error("removed peer still accepted by the other Store")
	}
	s3, _ := OpenStore(dir)
	if ps, _ := s3.List(); !reflect.DeepEqual(ps, []Peer{a}) {
		t.Errorf("after remove: %+v", ps)
	}
	fi, err := os.Stat(filepath.Join(dir, StoreFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("peers.json: %v %v", fi.Mode(), err)
	}
}

func TestStoreValidation(t *testing.T) {
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert := newCertPEM(t)
	for _, tc := range []struct {
		name, addr, cert, want string
	}{
		{"", "h", "", "invalid peer name"},
		{"Host", "h", "", "invalid peer name"},
		{"-h", "h", "", "invalid peer name"},
		{"h_b", "h", "", "invalid peer name"},
		{strings.Repeat("a", 64), "h", "", "invalid peer name"},
		{"h", "", "", "empty"},
		{"h", "fd00::1", "", "must be in brackets"},
		{"h", "fd00::1:7781", "", "must be in brackets"},
		{"h", "[fd00::1", "", "missing ']'"},
		{"h", "[10.0.0.1]:1", "", "must hold an IPv6 address"},
		{"h", "[fd00::1]7781", "", "want [IPV6]:PORT"},
		{"h", "host:0", "", "port must be"},
		{"h", "host:65536", "", "port must be"},
		{"h", "host:", "", "port must be"},
		{"h", "host:http", "", "port must be"},
		{"h", "host:-1", "", "port must be"},
		{"h", "10.0.0.256", "", "not a valid IPv4"},
		{"h", "a..b", "", "labels"},
		{"h", "-a.b", "", "labels"},
		{"h", "a b", "", "not allowed"},
		{"h", "host/x", "", "not allowed"},
		{"h", strings.Repeat("a", 64) + ".b", "", "labels"},
		{"h", "h", "", "empty input"},
		{"h", "h", "junk", "no PEM certificate"},
	} {
		c := []byte(tc.cert)
		if tc.cert == "" && !strings.Contains(tc.want, "empty input") {
			c = cert
		}
		_, err := s.Add(tc.name, tc.addr, c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Add(%q, %q): %v, want %q", tc.name, tc.addr, err, tc.want)
		}
	}
	if ps, _ := s.List(); len(ps) != 0 {
		t.Errorf("invalid adds stored %v", ps)
	}

	for in, want := range map[string]string{
		"h":                 "h:7781",
		"H.Example.COM:1":   "H.Example.COM:1",
		"10.1.2.3":          "10.1.2.3:7781",
		"10.1.2.3:65535":    "10.1.2.3:65535",
		"[fd00::2]":         "[fd00::2]:7781",
		"[::1]:7000":        "[::1]:7000",
		"[fe80::1%eth0]:80": "[fe80::1%eth0]:80",
		"a-1.b2:007781":     "a-1.b2:7781",
		"1host":             "1host:7781",
	} {
		if got, err := NormalizeAddress(in); err != nil || got != want {
			t.Errorf("NormalizeAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, ok := range []string{"a", "0", "a.b-c", strings.Repeat("z", 63)} {
		if _, err := s.Add(ok, "h", cert); err != nil {
			t.Errorf("name %q: %v", ok, err)
		}
		s.Remove(ok)
	}
}

func TestStoreBadFile(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert := newCertPEM(t)
	p, err := s.Add("b", "h", cert)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, StoreFile)
	good, _ := os.ReadFile(path)

	for name, content := range map[string]string{
		"not json":        "{",
		"unknown field":   `{"peers": [], "extra": 1}`,
		"bad fingerprint": strings.Replace(string(good), p.Fingerprint, Fingerprint([]byte("x")), 1),
		"bad name":        strings.Replace(string(good), `"name": "b"`, `"name": "B"`, 1),
	} {
		os.WriteFile(path, []byte(content), 0o600)
		if _, err := OpenStore(dir); err == nil {
			t.Errorf("%s: opened", name)
		}
		// A running Store re-reads the changed file and, unable to, admits nobody.
		if _, ok := s.ByFingerprint(p.Fingerprint); ok {
			t.Errorf("%s: still admits the peer", name)
		}
		if _, err := s.List(); err == nil {
			t.Errorf("%s: List succeeded", name)
		}
		if _, err := s.Add("c", "h", newCertPEM(t)); err == nil {
			t.Errorf("%s: Add over a broken file succeeded", name)
		}
	}
	os.WriteFile(path, good, 0o600)
	if got, ok := s.ByFingerprint(p.Fingerprint); !ok || got != p {
		t.Error("repaired file not re-read")
	}
}

func TestStoreConcurrentAdds(t *testing.T) {
	dir := t.TempDir()
	// Two Stores on one directory stand for the agent and autopodctl: neither
	// loses the other's writes.
	s1, _ := OpenStore(dir)
	s2, _ := OpenStore(dir)
	certs := make([][]byte, 16)
	for i := range certs {
		certs[i] = newCertPEM(t)
	}
	var wg sync.WaitGroup
	for i := range certs {
		s := s1
		if i%2 == 1 {
			s = s2
		}
		wg.Go(func() {
			if _, err := s.Add("p"+string(rune('a'+i)), "h", certs[i]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	s3, _ := OpenStore(dir)
	for _, s := range []*Store{s1, s2, s3} {
		if ps, err := s.List(); err != nil || len(ps) != len(certs) {
			t.Errorf("%d peers, want %d: %v", len(ps), len(certs), err)
		}
	}
}
