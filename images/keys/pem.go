package keys

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// keyFormat says how a private key PEM was encoded.
type keyFormat int

const (
	formatPKCS1 keyFormat = iota
	formatPKCS8
)

// parseRSAKey decodes a PEM private key and insists on RSA. It reports the
// encoding so Load can convert PKCS#8 keys for Talos's imager, which only
// reads PKCS#1 ("RSA PRIVATE KEY").
func parseRSAKey(data []byte) (*rsa.PrivateKey, keyFormat, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, 0, errors.New("no PEM block found (expected an RSA private key in PEM)")
	}

	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, 0, fmt.Errorf("parsing PKCS#1 RSA key: %w", err)
		}

		return k, formatPKCS1, nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, 0, fmt.Errorf("parsing PKCS#8 key: %w", err)
		}

		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, 0, fmt.Errorf("is a %s key; an RSA key is required", keyKind(k))
		}

		return rk, formatPKCS8, nil
	case "EC PRIVATE KEY":
		return nil, 0, errors.New("is an ECDSA key; an RSA key is required")
	case "ENCRYPTED PRIVATE KEY":
		return nil, 0, errors.New("is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.pem)")
	default:
		return nil, 0, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
}

func keyKind(k any) string {
	switch k.(type) {
	case *ecdsa.PrivateKey, *ecdsa.PublicKey:
		return "ECDSA"
	case ed25519.PrivateKey, ed25519.PublicKey:
		return "Ed25519"
	case *rsa.PrivateKey, *rsa.PublicKey:
		return "RSA"
	default:
		return fmt.Sprintf("%T", k)
	}
}

// parseCert decodes the first PEM certificate of data.
func parseCert(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}

	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate: %w", err)
	}

	return c, nil
}

func encodePKCS1(k *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// matches reports whether cert carries the public half of key.
func matches(cert *x509.Certificate, key *rsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(*rsa.PublicKey)

	return ok && pub.Equal(&key.PublicKey)
}

// ParseCertificatePEM parses one PEM certificate.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) { return parseCert(data) }
