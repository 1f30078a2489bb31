package build

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/foxboron/go-uefi/authenticode"
)

// signPE Authenticode-signs a PE binary (systemd-boot) with the UKI signing key.
func signPE(src, dst, keyPath, certPath string) error {
	key, cert, err := loadSigner(keyPath, certPath)
	if err != nil {
		return err
	}

	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening %s: %w", src, err)
	}
	defer f.Close() //nolint:errcheck

	bin, err := authenticode.Parse(f)
	if err != nil {
		return fmt.Errorf("parsing PE %s: %w", src, err)
	}

	if _, err := bin.Sign(key, cert); err != nil {
		return fmt.Errorf("signing %s: %w", src, err)
	}

	if err := os.WriteFile(dst, bin.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}

	return nil
}

func loadSigner(keyPath, certPath string) (crypto.Signer, *x509.Certificate, error) {
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading signing key: %w", err)
	}

	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("%s is not PEM: regenerate with `imagectl keys generate`", keyPath)
	}

	var key crypto.Signer

	if k, err := x509.ParsePKCS1PrivateKey(kb.Bytes); err == nil {
		key = k
	} else if k8, err8 := x509.ParsePKCS8PrivateKey(kb.Bytes); err8 == nil {
		s, ok := k8.(crypto.Signer)
		if !ok {
			return nil, nil, fmt.Errorf("%s: key type %T cannot sign", keyPath, k8)
		}

		key = s
	} else {
		return nil, nil, fmt.Errorf("%s: not an RSA private key (PKCS#1 or PKCS#8): %w", keyPath, errors.Join(err, err8))
	}

	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading signing certificate: %w", err)
	}

	cb, _ := pem.Decode(certPEM)
	if cb == nil {
		return nil, nil, fmt.Errorf("%s is not PEM", certPath)
	}

	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing %s: %w", certPath, err)
	}

	return key, cert, nil
}
