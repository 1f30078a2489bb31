package build

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foxboron/go-uefi/authenticode"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/keys"
)

// sdBoot returns the pinned systemd-boot (hack/fetch-lab-assets.sh).
func sdBoot(t *testing.T) []byte {
	t.Helper()

	dir, err := os.Getwd()
	require.NoError(t, err)

	p := filepath.Join(dir, "..", "..", "_cache", "lab-assets", "systemd-boot.efi")
	if c := os.Getenv("LABFLEET_CACHE"); c != "" {
		p = filepath.Join(c, "lab-assets", "systemd-boot.efi")
	}

	data, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("lab assets missing: %v", err)
	}

	return data
}

// TestSignatureIsDeterministicAndAccepted: signing the same binary at
// different wall-clock times gives the same bytes; the signature's
// signingTime is SOURCE_DATE_EPOCH; re-signing a signed binary replaces
// its signature; and the host's verifiers (sbverify, osslsigncode, go-uefi)
// accept it with the db certificate. Issue 11: go-uefi stamped time.Now().
func TestSignatureIsDeterministicAndAccepted(t *testing.T) {
	bin := sdBoot(t)
	dir := t.TempDir()

	ks, key, cert := uKISigner(t, filepath.Join(dir, "keys"))

	epoch := time.Unix(1700000000, 0).UTC()

	a, err := signPE(bin, key, cert, epoch)
	require.NoError(t, err)
	time.Sleep(1100 * time.Millisecond)
	b, err := signPE(bin, key, cert, epoch)
	require.NoError(t, err)
	require.True(t, bytes.Equal(a, b), "two signatures of the same binary differ")

	// Re-signing a signed binary (the imager's UKI) replaces the signature.
	again, err := signPE(a, key, cert, epoch)
	require.NoError(t, err)
	require.True(t, bytes.Equal(a, again), "re-signing must replace, not append")

	pe, err := authenticode.Parse(bytes.NewReader(a))
	require.NoError(t, err)
	ok, err := pe.Verify(cert)
	require.NoError(t, err)
	require.True(t, ok)

	sigs, err := pe.Signatures()
	require.NoError(t, err)
	require.Len(t, sigs, 1)

	signed := filepath.Join(dir, "signed.efi")
	require.NoError(t, os.WriteFile(signed, a, 0o644))

	if _, err := exec.LookPath("sbverify"); err == nil {
		out, err := exec.Command("sbverify", "--cert", ks.UKISigningCert, signed).CombinedOutput()
		require.NoError(t, err, "sbverify: %s", out)
	}

	if _, err := exec.LookPath("osslsigncode"); err == nil {
		out, err := exec.Command("osslsigncode", "verify", "-CAfile", ks.UKISigningCert, "-in", signed).CombinedOutput()
		require.NoError(t, err, "osslsigncode: %s", out)
		require.Contains(t, string(out), "Signing time: Nov 14 22:13:20 2023 GMT", "signingTime must be SOURCE_DATE_EPOCH:\n%s", out)
		require.NotContains(t, strings.ToLower(string(out)), "failed")
	}

	// A signer of another key is refused by the verifiers: the test can fail.
	other, err := keys.Generate(filepath.Join(dir, "other"), keys.GenerateOptions{})
	require.NoError(t, err)

	if _, err := exec.LookPath("sbverify"); err == nil {
		out, err := exec.Command("sbverify", "--cert", other.UKISigningCert, signed).CombinedOutput()
		require.Error(t, err, "sbverify accepted a foreign certificate: %s", out)
	}
}

// TestSignPEInPlaceMatchesACopy: the UKI step re-signs the imager's UKI
// where it lies (signPEInPlace) rather than reading it into memory and
// writing a signed copy: the bytes must be exactly those of the copy, for an
// unsigned binary and for one the imager signed with another key and time.
func TestSignPEInPlaceMatchesACopy(t *testing.T) {
	bin := sdBoot(t)
	dir := t.TempDir()

	_, key, cert := uKISigner(t, filepath.Join(dir, "keys"))
	_, imagerKey, imagerCert := uKISigner(t, filepath.Join(dir, "imager"))
	epoch := time.Unix(1700000000, 0).UTC()

	// As the imager leaves it: signed by another signer, stamped now. An
	// odd length also makes the signer pad before its table.
	signedByImager, err := signPE(append(bytes.Clone(bin), 1, 2, 3), imagerKey, imagerCert, time.Now())
	require.NoError(t, err)

	for name, in := range map[string][]byte{"unsigned": bin, "signed by the imager": signedByImager} {
		t.Run(name, func(t *testing.T) {
			want, err := signPE(in, key, cert, epoch)
			require.NoError(t, err)

			p := filepath.Join(t.TempDir(), "uki.efi")
			require.NoError(t, os.WriteFile(p, in, 0o644))
			require.NoError(t, signPEInPlace(p, key, cert, epoch))

			got, err := os.ReadFile(p)
			require.NoError(t, err)
			require.Equal(t, len(want), len(got))
			require.True(t, bytes.Equal(want, got), "signing in place gave other bytes than a signed copy")
		})
	}

	// A certificate table that does not end the file is refused, naming the file.
	p := filepath.Join(dir, "trailing.efi")
	require.NoError(t, os.WriteFile(p, append(bytes.Clone(signedByImager), 0, 0, 0, 0, 0, 0, 0, 0), 0o644))
	err = signPEInPlace(p, key, cert, epoch)
	require.ErrorContains(t, err, p)
	require.ErrorContains(t, err, "is not at the end of the file")
}

// uKISigner generates a key set in dir and returns it with its UKI signing
// key and certificate.
func uKISigner(t *testing.T, dir string) (*keys.Set, crypto.Signer, *x509.Certificate) {
	t.Helper()

	ks, err := keys.Generate(dir, keys.GenerateOptions{})
	require.NoError(t, err)

	key, _, err := keys.ReadPrivateKey(ks.UKISigningKey)
	require.NoError(t, err)

	certPEM, err := os.ReadFile(ks.UKISigningCert)
	require.NoError(t, err)

	blk, _ := pem.Decode(certPEM)
	require.NotNil(t, blk)
	cert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)

	return ks, key, cert
}
