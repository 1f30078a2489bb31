package inspect

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"debug/pe"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()

	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o644))

	return p
}

func TestInspectSignedUKI(t *testing.T) {
	ks := testKeys(t)
	pcrKey := loadRSA(t, ks.PCRSigningKey)
	sections := ukiSections(t, pcrKey)

	signed := signPE(t, buildPE(t, sections), loadRSA(t, ks.UKISigningKey), loadCert(t, ks.UKISigningCert))
	path := writeFile(t, t.TempDir(), "uki.efi", signed)

	r, err := Inspect(path, Options{CertPath: ks.UKISigningCert})
	require.NoError(t, err)

	assert.Equal(t, KindPE, r.Kind)
	assert.Equal(t, int64(len(signed)), r.Size)
	sum := sha256.Sum256(signed)
	assert.Equal(t, hex.EncodeToString(sum[:]), r.SHA256)

	require.NotNil(t, r.PE)
	assert.Equal(t, "amd64", r.PE.Machine)
	require.Len(t, r.PE.Sections, len(sections))

	for i, s := range sections {
		want := sha256.Sum256(s.data)
		assert.Equal(t, s.name, r.PE.Sections[i].Name)
		assert.Equal(t, uint32(len(s.data)), r.PE.Sections[i].VirtualSize)
		assert.Equal(t, hex.EncodeToString(want[:]), r.PE.Sections[i].SHA256, s.name)
	}

	require.NotNil(t, r.PE.Verification)
	assert.True(t, r.PE.Verification.Verified, r.PE.Verification.Error)
	require.Len(t, r.PE.Signers, 1)
	assert.Contains(t, r.PE.Signers[0].Subject, "inspect-test UKI signing")

	assert.Equal(t, "Talos (v1.14.1)", r.PE.OSRelease["PRETTY_NAME"])
	assert.Equal(t, "talos", r.PE.OSRelease["ID"])
	assert.Equal(t, "console=ttyS0 talos.platform=metal", r.PE.Cmdline)
	assert.Equal(t, "6.12.48-talos", r.PE.Uname)
	assert.Contains(t, r.PE.SBAT, "sbat,1,SBAT Version")

	require.NotNil(t, r.PE.PCRPublicKey)
	assert.Equal(t, 2048, r.PE.PCRPublicKey.Bits)

	require.Len(t, r.PE.PCRSignature["sha256"], 1)
	e := r.PE.PCRSignature["sha256"][0]
	assert.Equal(t, []int{11}, e.PCRs)
	assert.Equal(t, r.PE.PCRPublicKey.Fingerprint, e.PKFP)
	require.NotNil(t, e.Verified)
	assert.True(t, *e.Verified)

	checked, ok, failures := r.Verification()
	assert.True(t, checked)
	assert.True(t, ok, failures)

	var text bytes.Buffer
	require.NoError(t, r.WriteText(&text))

	for _, want := range []string{".pcrsig", "6.12.48-talos", "PRETTY_NAME", "verification: OK", "pcrs [11]", "valid"} {
		assert.Contains(t, text.String(), want)
	}

	b, err := json.Marshal(r)
	require.NoError(t, err)

	var back Report
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, r.PE.Sections, back.PE.Sections)
}

func TestInspectPCRSignatureFromAnotherKey(t *testing.T) {
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	sections := ukiSections(t, other)
	// Swap in a .pcrpkey that did not sign the policy.
	mine, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	sections[4] = ukiSections(t, mine)[4]

	path := writeFile(t, t.TempDir(), "uki.efi", buildPE(t, sections))

	r, err := Inspect(path, Options{})
	require.NoError(t, err)

	e := r.PE.PCRSignature["sha256"][0]
	require.NotNil(t, e.Verified)
	assert.False(t, *e.Verified)

	checked, _, _ := r.Verification()
	assert.False(t, checked, "no certificate given: nothing checked")
	assert.Empty(t, r.PE.Signers)
}

func TestVerificationFailures(t *testing.T) {
	ks := testKeys(t)
	dir := t.TempDir()
	rogueKey, rogue, roguePath := rogueCert(t, dir)

	unsigned := buildPE(t, ukiSections(t, loadRSA(t, ks.PCRSigningKey)))
	signed := signPE(t, unsigned, loadRSA(t, ks.UKISigningKey), loadCert(t, ks.UKISigningCert))

	tampered := bytes.Clone(signed)
	// The last section (.linux) ends just before the signature table; flip
	// a byte inside it.
	tampered[len(unsigned)-600] ^= 0x01

	for _, tc := range []struct {
		name  string
		data  []byte
		cert  string
		error string
	}{
		{"unsigned", unsigned, ks.UKISigningCert, "the binary is not signed"},
		{"signed, checked against another cert", signed, roguePath, "no signature by this certificate"},
		{"signed by a rogue key", signPE(t, unsigned, rogueKey, rogue), ks.UKISigningCert, "signed by: CN=rogue"},
		{"modified after signing", tampered, ks.UKISigningCert, "modified after signing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), "x.efi", tc.data)

			r, err := Inspect(path, Options{CertPath: tc.cert})
			require.NoError(t, err)
			require.NotNil(t, r.PE.Verification)
			assert.False(t, r.PE.Verification.Verified)
			assert.Contains(t, r.PE.Verification.Error, tc.error)

			checked, ok, failures := r.Verification()
			assert.True(t, checked)
			assert.False(t, ok)
			require.NotEmpty(t, failures)
			assert.Contains(t, failures[0], tc.error)

			// A flipped .linux byte also breaks the PCR policy; nothing else does.
			if tc.name == "modified after signing" {
				require.Len(t, failures, 2)
				assert.Contains(t, failures[1], "pcrsig mismatch")
			} else {
				require.Len(t, failures, 1)
			}
		})
	}
}

func TestInspectErrors(t *testing.T) {
	dir := t.TempDir()
	junk := writeFile(t, dir, "junk.bin", bytes.Repeat([]byte{0x42}, 4096))
	notCert := writeFile(t, dir, "key.pem", []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"))

	for _, tc := range []struct {
		name string
		path string
		opts Options
		want string
	}{
		{"unknown format", junk, Options{}, "not a PE/EFI binary or a GPT disk image"},
		{"missing file", filepath.Join(dir, "nope"), Options{}, "no such file"},
		{"cert is a key", junk, Options{CertPath: notCert}, `PEM block is "RSA PRIVATE KEY", want CERTIFICATE`},
		{"truncated PE", writeFile(t, dir, "short.efi", []byte("MZ\x00\x00")), Options{}, "parsing PE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Inspect(tc.path, tc.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// requireTool finds a host binary; missing tools fail in CI and skip
// elsewhere.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()

	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found: install Debian package %s (hack/install-deps.sh)", name, pkg)
		}

		t.Skipf("%s not found (Debian package %s)", name, pkg)
	}

	return p
}

// The signatures go-uefi writes (and the keys package's certificates) must
// satisfy the reference tool, and sbsign's must satisfy Inspect.
func TestSbsigntoolInterop(t *testing.T) {
	sbverify := requireTool(t, "sbverify", "sbsigntool")
	sbsign := requireTool(t, "sbsign", "sbsigntool")

	ks := testKeys(t)
	dir := t.TempDir()

	unsigned := buildPE(t, ukiSections(t, loadRSA(t, ks.PCRSigningKey)))
	unsignedPath := writeFile(t, dir, "unsigned.efi", unsigned)
	ours := writeFile(t, dir, "ours.efi", signPE(t, unsigned, loadRSA(t, ks.UKISigningKey), loadCert(t, ks.UKISigningCert)))

	out, err := exec.Command(sbverify, "--cert", ks.UKISigningCert, ours).CombinedOutput()
	require.NoError(t, err, "sbverify rejected our signature: %s", out)

	_, _, roguePath := rogueCert(t, dir)
	out, err = exec.Command(sbverify, "--cert", roguePath, ours).CombinedOutput()
	require.Error(t, err, "sbverify must reject the wrong certificate: %s", out)

	theirs := filepath.Join(dir, "theirs.efi")
	out, err = exec.Command(sbsign, "--key", ks.UKISigningKey, "--cert", ks.UKISigningCert, "--output", theirs, unsignedPath).CombinedOutput()
	require.NoError(t, err, "sbsign: %s", out)

	r, err := Inspect(theirs, Options{CertPath: ks.UKISigningCert})
	require.NoError(t, err)
	assert.True(t, r.PE.Verification.Verified, r.PE.Verification.Error)
}

// Damaged files are errors or partial reports, never a crash.
func TestInspectDamagedPE(t *testing.T) {
	ks := testKeys(t)
	signed := signPE(t, buildPE(t, ukiSections(t, loadRSA(t, ks.PCRSigningKey))), loadRSA(t, ks.UKISigningKey), loadCert(t, ks.UKISigningCert))
	dir := t.TempDir()

	for cut := 0; cut < len(signed); cut += 61 {
		path := writeFile(t, dir, "cut.efi", signed[:cut])
		assert.NotPanics(t, func() { _, _ = Inspect(path, Options{CertPath: ks.UKISigningCert}) }, "cut at %d", cut)
	}

	// A certificate table entry whose length is below its own header size.
	bad := bytes.Clone(signed)
	binary.LittleEndian.PutUint32(bad[len(bad)-int(certTableSize(t, signed)):], 4)
	path := writeFile(t, dir, "badcert.efi", bad)

	_, err := Inspect(path, Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "certificate table")
}

func certTableSize(t *testing.T, data []byte) uint32 {
	t.Helper()

	f, err := pe.NewFile(bytes.NewReader(data))
	require.NoError(t, err)

	return f.OptionalHeader.(*pe.OptionalHeader64).DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY].Size
}

// TestInspectPCRSigMustMatchSections: a UKI whose .cmdline changed after
// its PCR policy was signed, then re-signed for Secure Boot, passes
// Authenticode and the .pcrsig signature check, yet the TPM would refuse
// to unseal with it: inspect must fail naming the pcrsig mismatch.
func TestInspectPCRSigMustMatchSections(t *testing.T) {
	ks := testKeys(t)
	pcrKey := loadRSA(t, ks.PCRSigningKey)

	good := ukiSections(t, pcrKey)
	// The policy was signed for the original command line; the file carries another.
	changed := ukiSectionsSignedFor(t, pcrKey, func(s []testSection) []testSection {
		s[1] = testSection{".cmdline", []byte("console=ttyS0 talos.platform=metal\x00")}
		return s
	})
	changed[1] = testSection{".cmdline", []byte("console=ttyS0 init=/bin/sh talos\x00")}

	for _, tc := range []struct {
		name     string
		sections []testSection
		want     string
	}{
		{name: "matching", sections: good},
		{name: "changed cmdline", sections: changed, want: "pcrsig mismatch: sha256[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signed := signPE(t, buildPE(t, tc.sections), loadRSA(t, ks.UKISigningKey), loadCert(t, ks.UKISigningCert))
			path := writeFile(t, t.TempDir(), "uki.efi", signed)

			r, err := Inspect(path, Options{CertPath: ks.UKISigningCert})
			require.NoError(t, err)
			require.True(t, r.PE.Verification.Verified, "Authenticode must still verify")

			e := r.PE.PCRSignature["sha256"][0]
			require.True(t, *e.Verified, "the policy signature itself is valid")
			require.NotNil(t, e.MatchesSections)

			_, ok, failures := r.Verification()

			if tc.want == "" {
				require.True(t, *e.MatchesSections)
				require.Equal(t, "talos:enter-initrd:leave-initrd:enter-machined", e.Phase)
				require.True(t, ok, failures)
				require.Empty(t, r.PCRFailures())

				return
			}

			require.False(t, *e.MatchesSections)
			require.False(t, ok)
			require.Len(t, r.PCRFailures(), 1, "the mismatch is reported without a certificate too")
			require.Contains(t, r.PCRFailures()[0], tc.want)
			require.Contains(t, strings.Join(failures, "\n"), tc.want)

			var text bytes.Buffer
			require.NoError(t, r.WriteText(&text))
			require.Contains(t, text.String(), "DOES NOT MATCH the sections")
		})
	}
}
