package inspect

import (
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkInspectSignedUKI inspects and verifies a signed UKI with a
// 32 MiB kernel section (Talos UKIs are 60-100 MiB): the cost is hashing,
// done as a stream.
func BenchmarkInspectSignedUKI(b *testing.B) {
	t := b
	ks := testKeys(t)

	sections := ukiSections(t, loadRSA(t, ks.PCRSigningKey))
	big := make([]byte, 32<<20)
	_, err := rand.Read(big)
	require.NoError(b, err)

	sections[len(sections)-1].data = big
	signed := signPE(t, buildPE(t, sections), loadRSA(t, ks.UKISigningKey), loadCert(t, ks.UKISigningCert))
	path := filepath.Join(b.TempDir(), "uki.efi")
	require.NoError(b, writeFileErr(path, signed))

	b.SetBytes(int64(len(signed)))
	b.ResetTimer()

	for b.Loop() {
		r, err := Inspect(path, Options{CertPath: ks.UKISigningCert})
		if err != nil || !r.PE.Verification.Verified {
			b.Fatalf("inspect: %v", err)
		}
	}
}
