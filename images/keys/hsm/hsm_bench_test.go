//go:build cgo

package hsm_test

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/keys/hsm"
	"github.com/labfleet/labfleet/images/keys/hsm/hsmtest"
)

// BenchmarkBuildSignatures is what one HSM-signed build asks of a SoftHSM2
// token: log in, find the UKI (RSA-4096) and PCR (RSA-2048) keys, three
// UKI signatures (imager, re-sign with SOURCE_DATE_EPOCH, systemd-boot) and
// four PCR policy signatures (one per boot phase), log out.
//
//	CGO_ENABLED=1 go test -run '^$' -bench . ./images/keys/hsm/
func BenchmarkBuildSignatures(b *testing.B) {
	cfg := hsmtest.SoftHSM(b)

	tok, err := hsm.Open(cfg, hsmtest.PIN)
	if err != nil {
		b.Fatal(err)
	}

	for label, bits := range map[string]int{cfg.UKIKeyLabel: keys.UKISigningKeyBits, cfg.PCRKeyLabel: keys.PCRSigningKeyBits} {
		if _, err := tok.GenerateRSA(label, bits); err != nil {
			b.Fatal(err)
		}
	}

	tok.Close() //nolint:errcheck

	digest := sha256.Sum256([]byte("labfleet"))

	for b.Loop() {
		tok, err := hsm.Open(cfg, hsmtest.PIN)
		if err != nil {
			b.Fatal(err)
		}

		for label, n := range map[string]int{cfg.UKIKeyLabel: 3, cfg.PCRKeyLabel: 4} {
			s, err := tok.Signer(label)
			if err != nil {
				b.Fatal(err)
			}

			for range n {
				if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		}

		tok.Close() //nolint:errcheck
	}
}
