package tpmseal_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/labfleet/labfleet/lab/labos/internal/swtpmtest"
	"github.com/labfleet/labfleet/lab/labos/pcrphase"
	"github.com/labfleet/labfleet/lab/labos/tpmseal"
)

// BenchmarkUnseal measures one boot's unseal (SRK, load, policy session,
// signature check, unseal) against swtpm, the work labos adds per boot.
func BenchmarkUnseal(b *testing.B) {
	tpm := swtpmtest.Start(b)

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}

	for _, p := range pcrphase.Signed {
		if err := pcrphase.Extend(tpm, p); err != nil {
			b.Fatal(err)
		}
	}

	sealed, err := tpmseal.Seal(tpm, make([]byte, 32), &key.PublicKey, []int{tpmseal.SecureBootStatePCR})
	if err != nil {
		b.Fatal(err)
	}

	entry, err := tpmseal.SignPolicy(key, pcrphase.Predict(crypto.SHA256, nil, pcrphase.Signed...))
	if err != nil {
		b.Fatal(err)
	}

	sig := &tpmseal.Signature{SHA256: []tpmseal.BankData{entry}}

	b.ResetTimer()

	for b.Loop() {
		if _, err := tpmseal.Unseal(tpm, sealed, &key.PublicKey, sig); err != nil {
			b.Fatal(err)
		}
	}
}
