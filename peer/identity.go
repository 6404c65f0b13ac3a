package peer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/autopod/autopod/atomicfile"
)

// File names of an identity inside its directory.
const (
	KeyFile  = "key.pem"
	CertFile = "cert.pem"
)

// certValidity is long because nothing checks it: trust is the pinned fingerprint,
// and a certificate that expired would only make a working pair of hosts stop
// talking to each other one day. It is set at all because X.509 requires it.
const certValidity = 10 * 365 * 24 * time.Hour

var (
	// ErrNoIdentity means the directory holds no identity (neither key nor
	// certificate).
	ErrNoIdentity = errors.New("no peer identity")
	// ErrIdentityExists means InitIdentity found an identity and was not told to
	// replace it. Replacing it breaks every peer that pinned the old certificate.
	ErrIdentityExists = errors.New("peer identity already exists")
)

// Identity is this host's key and self-signed certificate, as presented to peers.
type Identity struct {
	// Cert is the key pair for tls.Config.Certificates; Cert.Leaf is set.
	Cert tls.Certificate
	// CertPEM is the certificate to hand to other hosts' `autopodctl peer add`.
	CertPEM []byte
	// Fingerprint is Fingerprint of the certificate, what peers pin.
	Fingerprint string
}

// InitIdentity creates this host's identity in dir: an ECDSA P-256 key in dir/key.pem
// (mode 0600) and a self-signed certificate in dir/cert.pem, valid for 10 years, whose
// common name is the host name. It creates dir (mode 0700) if needed.
//
// It refuses, with an error wrapping ErrIdentityExists, when either file exists,
// unless force is set. Each file is written durably; a crash between the two leaves
// a key that does not match the certificate, which LoadIdentity reports, and running
// InitIdentity with force again repairs it.
func InitIdentity(dir string, force bool) (Identity, error) {
	keyPath, certPath := filepath.Join(dir, KeyFile), filepath.Join(dir, CertFile)
	if !force {
		var exist []string
		for _, p := range []string{keyPath, certPath} {
			if _, err := os.Lstat(p); err == nil {
				exist = append(exist, filepath.Base(p))
			} else if !errors.Is(err, fs.ErrNotExist) {
				return Identity{}, fmt.Errorf("init peer identity: %w", err)
			}
		}
		if len(exist) > 0 {
			return Identity{}, fmt.Errorf("%w in %s (%s exists); replacing it breaks every peer that pinned this host's certificate",
				ErrIdentityExists, dir, strings.Join(exist, " and "))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Identity{}, fmt.Errorf("init peer identity: %w", err)
	}

	keyPEM, certPEM, err := newSelfSigned()
	if err != nil {
		return Identity{}, fmt.Errorf("init peer identity: %w", err)
	}
	id, err := parseIdentity(certPEM, keyPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("init peer identity: %w", err)
	}
	if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return Identity{}, fmt.Errorf("init peer identity: write key: %w", err)
	}
	if err := atomicfile.WriteFile(certPath, certPEM, 0o644); err != nil {
		return Identity{}, fmt.Errorf("init peer identity: write certificate: %w", err)
	}
	return id, nil
}

func newSelfSigned() (keyPEM, certPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("serial number: %w", err)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "autopod"
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)), // positive, never zero
		Subject:      pkix.Name{CommonName: host},
		// An hour back so that a peer whose clock is a little behind does not see a
		// certificate from the future in its logs; validity is not checked anyway.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	return keyPEM, certPEM, nil
}

// LoadIdentity reads the identity InitIdentity wrote to dir. When dir holds neither
// file the error wraps ErrNoIdentity and tells to run `autopodctl peer init`.
func LoadIdentity(dir string) (Identity, error) {
	keyPEM, keyErr := os.ReadFile(filepath.Join(dir, KeyFile))
	certPEM, certErr := os.ReadFile(filepath.Join(dir, CertFile))
	keyMissing, certMissing := errors.Is(keyErr, fs.ErrNotExist), errors.Is(certErr, fs.ErrNotExist)
	switch {
	case keyMissing && certMissing:
		return Identity{}, fmt.Errorf("%w in %s; run `autopodctl peer init`", ErrNoIdentity, dir)
	case keyMissing || certMissing:
		missing := KeyFile
		if certMissing {
			missing = CertFile
		}
		return Identity{}, fmt.Errorf("incomplete peer identity in %s: %s is missing; run `autopodctl peer init --force` (peers must then pin the new certificate)", dir, missing)
	case keyErr != nil:
		return Identity{}, fmt.Errorf("load peer identity: %w", keyErr)
	case certErr != nil:
		return Identity{}, fmt.Errorf("load peer identity: %w", certErr)
	}
	id, err := parseIdentity(certPEM, keyPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("load peer identity from %s: %w", dir, err)
	}
	return id, nil
}

func parseIdentity(certPEM, keyPEM []byte) (Identity, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("%s: %w", CertFile, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("%s does not go with %s: %w", KeyFile, CertFile, err)
	}
	pair.Leaf = cert
	return Identity{
		Cert:        pair,
		CertPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		Fingerprint: Fingerprint(cert.Raw),
	}, nil
}

// Fingerprint returns "sha256:" followed by the lowercase hex SHA-256 of a DER
// certificate: the form peers are pinned by and errors name them by.
func Fingerprint(certDER []byte) string {
	sum := sha256.Sum256(certDER)
	return fingerprintPrefix + hex.EncodeToString(sum[:])
}

const fingerprintPrefix = "sha256:"

// validFingerprint reports whether fp has the form Fingerprint returns.
func validFingerprint(fp string) bool {
	h, ok := strings.CutPrefix(fp, fingerprintPrefix)
	if !ok || len(h) != 2*sha256.Size {
		return false
	}
	for _, c := range []byte(h) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ParseCertPEM parses PEM text holding exactly one certificate, as written by
// InitIdentity. Text around the PEM block is ignored; other PEM blocks (a private
// key given by mistake, a chain) are an error, so that what gets pinned is never in
// doubt.
func ParseCertPEM(pemBytes []byte) (*x509.Certificate, error) {
	var (
		der   []byte
		other []string
	)
	rest := pemBytes
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			other = append(other, b.Type)
			continue
		}
		if der != nil {
			return nil, errors.New("more than one certificate; give only the peer's own certificate (its cert.pem)")
		}
		der = b.Bytes
	}
	switch {
	case len(other) > 0:
		return nil, fmt.Errorf("unexpected PEM block %q; give only the peer's certificate (its cert.pem, never its key)", other[0])
	case der == nil && len(bytes.TrimSpace(pemBytes)) == 0:
		return nil, errors.New("no certificate: empty input")
	case der == nil:
		return nil, errors.New("no PEM certificate found (want -----BEGIN CERTIFICATE-----)")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}
