package peer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInitLoadIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "peer")
	id, err := InitIdentity(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, KeyFile): 0o600, filepath.Join(dir, CertFile): 0o644} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
	}
	leaf := id.Cert.Leaf
	if leaf == nil {
		t.Fatal("Cert.Leaf not set")
	}
	host, _ := os.Hostname()
	if host != "" && leaf.Subject.CommonName != host {
		t.Errorf("CN %q, want host name %q", leaf.Subject.CommonName, host)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if d := leaf.NotAfter.Sub(time.Now()); d < 9*365*24*time.Hour {
		t.Errorf("valid for %v only", d)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %v: want a large random positive number", leaf.SerialNumber)
	}
	if id.Fingerprint != Fingerprint(leaf.Raw) || !validFingerprint(id.Fingerprint) {
		t.Errorf("fingerprint %q", id.Fingerprint)
	}
	if c, err := ParseCertPEM(id.CertPEM); err != nil || !c.Equal(leaf) {
		t.Errorf("CertPEM does not hold the certificate: %v", err)
	}

	loaded, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Fingerprint != id.Fingerprint || string(loaded.CertPEM) != string(id.CertPEM) {
		t.Errorf("loaded %s, created %s", loaded.Fingerprint, id.Fingerprint)
	}
	if loaded.Cert.Leaf == nil || loaded.Cert.PrivateKey == nil {
		t.Error("loaded key pair incomplete")
	}

	// Two identities never share a serial or a fingerprint.
	other, err := InitIdentity(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	if other.Fingerprint == id.Fingerprint || other.Cert.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("second identity equals the first")
	}
}

func TestInitIdentityRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	id, err := InitIdentity(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = InitIdentity(dir, false)
	if !errors.Is(err, ErrIdentityExists) || !strings.Contains(err.Error(), "key.pem and cert.pem exists") {
		t.Fatalf("second init: %v, want ErrIdentityExists naming both files", err)
	}
	if again, err := LoadIdentity(dir); err != nil || again.Fingerprint != id.Fingerprint {
		t.Fatalf("refused init changed the identity: %v", err)
	}

	// Only one file left over from something is still refused, and named.
	os.Remove(filepath.Join(dir, CertFile))
	_, err = InitIdentity(dir, false)
	if !errors.Is(err, ErrIdentityExists) || !strings.Contains(err.Error(), "(key.pem exists)") {
		t.Fatalf("init over key.pem: %v", err)
	}

	forced, err := InitIdentity(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if forced.Fingerprint == id.Fingerprint {
		t.Error("force kept the old certificate")
	}
	loaded, err := LoadIdentity(dir)
	if err != nil || loaded.Fingerprint != forced.Fingerprint {
		t.Fatalf("after force: %v, %s want %s", err, loaded.Fingerprint, forced.Fingerprint)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("dir holds %d entries, want key.pem and cert.pem", len(ents))
	}
}

func TestLoadIdentityErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadIdentity(dir)
	want := "no peer identity in " + dir + "; run `autopodctl peer init`"
	if !errors.Is(err, ErrNoIdentity) || err.Error() != want {
		t.Fatalf("empty dir: %v, want %q", err, want)
	}
	if _, err := LoadIdentity(filepath.Join(dir, "missing")); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("missing dir: %v", err)
	}

	if _, err := InitIdentity(dir, false); err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	if _, err := InitIdentity(otherDir, false); err != nil {
		t.Fatal(err)
	}
	otherKey, _ := os.ReadFile(filepath.Join(otherDir, KeyFile))

	// A crash between the two writes of a forced init leaves a key without its
	// certificate.
	os.WriteFile(filepath.Join(dir, KeyFile), otherKey, 0o600)
	if _, err := LoadIdentity(dir); err == nil || !strings.Contains(err.Error(), "key.pem does not go with cert.pem") {
		t.Errorf("mismatched key: %v", err)
	}
	os.Remove(filepath.Join(dir, CertFile))
	if _, err := LoadIdentity(dir); err == nil || !strings.Contains(err.Error(), "cert.pem is missing") {
		t.Errorf("missing cert: %v", err)
	}
	os.WriteFile(filepath.Join(dir, CertFile), []byte("garbage"), 0o644)
	if _, err := LoadIdentity(dir); err == nil || !strings.Contains(err.Error(), "cert.pem: no PEM certificate") {
		t.Errorf("garbage cert: %v", err)
	}
}

func TestParseCertPEM(t *testing.T) {
	id, err := InitIdentity(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	other, err := InitIdentity(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	cert := string(id.CertPEM)

	if c, err := ParseCertPEM([]byte("pinned on Monday:\n" + cert + "\nthanks\n")); err != nil || Fingerprint(c.Raw) != id.Fingerprint {
		t.Errorf("text around the block: %v", err)
	}
	for _, tc := range []struct{ name, in, want string }{
		{"empty", " \n", "empty input"},
		{"not pem", "hello", "no PEM certificate found"},
		{"key", string(key), `unexpected PEM block "PRIVATE KEY"`},
		{"cert and key", cert + string(key), `unexpected PEM block "PRIVATE KEY"`},
		{"two certs", cert + string(other.CertPEM), "more than one certificate"},
		{"bad der", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "parse certificate"},
	} {
		_, err := ParseCertPEM([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestFingerprint(t *testing.T) {
	// sha256("abc"), the FIPS 180-2 example.
	want := "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := Fingerprint([]byte("abc")); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	for fp, ok := range map[string]bool{
		want:                     true,
		strings.ToUpper(want):    false,
		want[:len(want)-1]:       false,
		"sha1:" + want[7:]:       false,
		want[:len(want)-1] + "g": false,
	} {
		if validFingerprint(fp) != ok {
			t.Errorf("validFingerprint(%q) = %v", fp, !ok)
		}
	}
}
