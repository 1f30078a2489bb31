// Package testpki makes Secure Boot signing material and signed PE files
// for tests.
package testpki

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"testing"
	"time"

	"github.com/foxboron/go-uefi/authenticode"
)

// HelloWorldEFI is a small PE from efitools, present wherever the lab's
// Debian packages are installed.
const HelloWorldEFI = "/usr/lib/efitools/x86_64-linux-gnu/HelloWorld.efi"

// Signer is a self-signed db key and certificate.
type Signer struct {
	Key  *rsa.PrivateKey
	Cert *x509.Certificate
}

// NewSigner creates a db signer.
func NewSigner(t testing.TB, cn string) *Signer {
	t.Helper()

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}

	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}

	return &Signer{Key: key, Cert: cert}
}

// UnsignedPE returns the test PE, failing in CI (skipping elsewhere) when
// efitools is missing.
func UnsignedPE(t testing.TB) []byte {
	t.Helper()

	b, err := os.ReadFile(HelloWorldEFI)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required (apt-get install efitools): %v", HelloWorldEFI, err)
		}

		t.Skipf("%s missing: %v", HelloWorldEFI, err)
	}

	return b
}

// Sign returns pe with an Authenticode signature by s.
func (s *Signer) Sign(t testing.TB, pe []byte) []byte {
	t.Helper()

	p, err := authenticode.Parse(bytes.NewReader(pe))
	if err != nil {
		t.Fatal(err)
	}

	if _, err := p.Sign(s.Key, s.Cert); err != nil {
		t.Fatal(err)
	}

	return p.Bytes()
}
