package keys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foxboron/go-uefi/efivar"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// RSA-4096 generation costs about a second, so tests share one generated
// set and work on copies of it.
var (
	fixtureOnce sync.Once
	fixtureDir  string
	fixtureErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()

	if fixtureDir != "" {
		os.RemoveAll(filepath.Dir(fixtureDir)) //nolint:errcheck
	}

	os.Exit(code)
}

func fixture(t *testing.T) string {
	t.Helper()

	fixtureOnce.Do(func() {
		base, err := os.MkdirTemp("", "keys-fixture-")
		if err != nil {
			fixtureErr = err

			return
		}

		fixtureDir = filepath.Join(base, "keys")
		_, fixtureErr = Generate(fixtureDir, GenerateOptions{CommonName: "fixture"})
	})

	require.NoError(t, fixtureErr)

	return fixtureDir
}

// copySet copies the fixture into a fresh directory.
func copySet(t *testing.T) string {
	t.Helper()

	src := fixture(t)
	dst := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.Mkdir(dst, 0o700))

	for _, name := range allFiles {
		data, err := os.ReadFile(filepath.Join(src, name))
		require.NoError(t, err)

		st, err := os.Stat(filepath.Join(src, name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, name), data, st.Mode().Perm()))
	}

	return dst
}

func readKey(t *testing.T, path string) *rsa.PrivateKey {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err)

	block, _ := pem.Decode(data)
	require.NotNil(t, block, path)
	require.Equal(t, "RSA PRIVATE KEY", block.Type, "%s must be PKCS#1 for Talos's imager", path)

	k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	require.NoError(t, err)

	return k
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err)

	c, err := parseCert(data)
	require.NoError(t, err)

	return c
}

func readAuth(t *testing.T, path string) *AuthVar {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err)

	av, err := ParseAuthVar(data)
	require.NoError(t, err)

	return av
}

func TestGenerate(t *testing.T) {
	dir := fixture(t)

	s, err := Load(dir)
	require.NoError(t, err)
	assert.Empty(t, s.PKCS8)

	for _, name := range allFiles {
		st, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)

		want := os.FileMode(0o644)
		if privateFiles[name] {
			want = 0o600
		}

		assert.Equal(t, want, st.Mode().Perm(), name)
	}

	ukiKey := readKey(t, s.UKISigningKey)
	assert.Equal(t, 4096, ukiKey.N.BitLen())
	assert.Equal(t, 2048, readKey(t, s.PCRSigningKey).N.BitLen())

	ukiCert := readCert(t, s.UKISigningCert)
	assert.True(t, matches(ukiCert, ukiKey))
	assert.Equal(t, "fixture UKI signing", ukiCert.Subject.CommonName)
	assert.Contains(t, ukiCert.ExtKeyUsage, x509.ExtKeyUsageCodeSigning)

	tc, err := clientconfig.Open(s.Talosconfig)
	require.NoError(t, err)
	require.Contains(t, tc.Contexts, "fixture")
	assert.Equal(t, []string{"127.0.0.1"}, tc.Contexts["fixture"].Endpoints)

	bundle, err := secrets.LoadBundle(s.Secrets)
	require.NoError(t, err)

	// The client certificate must chain to the bundle's machine (OS) CA and
	// carry the os:admin role, or the node API refuses it.
	crtPEM, err := decodeB64(tc.Contexts["fixture"].Crt)
	require.NoError(t, err)

	clientCert, err := parseCert(crtPEM)
	require.NoError(t, err)
	assert.Equal(t, []string{"os:admin"}, clientCert.Subject.Organization)

	caCert, err := parseCert(bundle.Certs.OS.Crt)
	require.NoError(t, err)
	assert.NoError(t, clientCert.CheckSignatureFrom(caCert))
}

func TestAuthChain(t *testing.T) {
	dir := fixture(t)

	pk := readCert(t, filepath.Join(dir, PKCertFile))
	kek := readCert(t, filepath.Join(dir, KEKCertFile))
	uki := readCert(t, filepath.Join(dir, UKISigningCertFile))

	for _, tc := range []struct {
		file     string
		v        efivar.Efivar
		holds    *x509.Certificate
		signer   *x509.Certificate
		notOwner *x509.Certificate
	}{
		{PKAuthFile, efivar.PK, pk, pk, kek},
		{KEKAuthFile, efivar.KEK, kek, pk, kek},
		{DBAuthFile, efivar.Db, uki, kek, pk},
	} {
		t.Run(tc.file, func(t *testing.T) {
			av := readAuth(t, filepath.Join(dir, tc.file))

			require.Len(t, av.Certs, 1)
			assert.True(t, av.Contains(tc.holds))
			assert.NoError(t, av.Verify(tc.v, tc.signer))
			assert.Error(t, av.Verify(tc.v, tc.notOwner), "must not verify with the wrong signer")

			// The same signature must not validate as an update of another
			// variable: firmware hashes the variable name into the digest.
			other := efivar.Db
			if tc.v.Name == "db" {
				other = efivar.KEK
			}

			assert.Error(t, av.Verify(other, tc.signer))
		})
	}
}

func TestParseAuthVarNeverPanicsOnTruncation(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(fixture(t), DBAuthFile))
	require.NoError(t, err)

	accepted := 0

	for n := 0; n < len(data); n++ {
		av, err := ParseAuthVar(data[:n])
		if err == nil {
			// Only the cut right after the header parses: an empty payload
			// is a valid "delete this variable" update.
			assert.Empty(t, av.Certs, "truncated at %d bytes", n)

			accepted++
		}
	}

	assert.Equal(t, 1, accepted)
}

func TestGenerateRefusesOverwrite(t *testing.T) {
	dir := copySet(t)

	before, err := os.ReadFile(filepath.Join(dir, UKISigningKeyFile))
	require.NoError(t, err)

	_, err = Generate(dir, GenerateOptions{})
	require.ErrorIs(t, err, ErrExists)
	assert.Contains(t, err.Error(), "--force")
	assert.Contains(t, err.Error(), UKISigningKeyFile)

	after, err := os.ReadFile(filepath.Join(dir, UKISigningKeyFile))
	require.NoError(t, err)
	assert.Equal(t, before, after)
}

func TestGenerateRefusesEvenOneExistingFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, PCRSigningKeyFile), []byte("precious"), 0o600))

	_, err := Generate(dir, GenerateOptions{})
	require.ErrorIs(t, err, ErrExists)

	entries, err := os.ReadDir(filepath.Dir(dir))
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary directory may be left behind")
}

func TestGenerateForce(t *testing.T) {
	dir := copySet(t)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o644))

	old := readCert(t, filepath.Join(dir, UKISigningCertFile))

	s, err := Generate(dir, GenerateOptions{Force: true, CommonName: "forced"})
	require.NoError(t, err)

	fresh := readCert(t, s.UKISigningCert)
	assert.False(t, old.Equal(fresh), "force must replace the keys")
	assert.Equal(t, "forced UKI signing", fresh.Subject.CommonName)

	// Files that are not part of the set stay.
	notes, err := os.ReadFile(filepath.Join(dir, "notes.txt"))
	require.NoError(t, err)
	assert.Equal(t, "mine", string(notes))

	// The old set is kept whole beside it, and still loads.
	prev, err := Load(dir + PreviousSuffix)
	require.NoError(t, err)
	assert.True(t, old.Equal(readCert(t, prev.UKISigningCert)), "DIR.previous holds the replaced set")

	entries, err := os.ReadDir(filepath.Dir(dir))
	require.NoError(t, err)

	for _, e := range entries {
		assert.False(t, strings.Contains(e.Name(), ".tmp-"), "leftover %s", e.Name())
	}

	// A second --force replaces DIR.previous with the set just replaced.
	_, err = Generate(dir, GenerateOptions{Force: true, CommonName: "again"})
	require.NoError(t, err)

	prev, err = Load(dir + PreviousSuffix)
	require.NoError(t, err)
	assert.True(t, fresh.Equal(readCert(t, prev.UKISigningCert)))
}

// TestGenerateForceInterrupted fails a write in the middle of a new set (as
// a crash or a full disk would): the old set is untouched, file for file,
// no DIR.previous and no temporary folder are left. Finding 6 of issue 9:
// --force replaced files one by one.
func TestGenerateForceInterrupted(t *testing.T) {
	dir := copySet(t)
	before := map[string][]byte{}

	for _, name := range allFiles {
		b, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		before[name] = b
	}

	for _, failAt := range []string{UKISigningKeyFile, PKAuthFile, TalosconfigFile} {
		t.Run(failAt, func(t *testing.T) {
			writeHook = func(name string) error {
				if name == failAt {
					return errors.New("simulated power loss")
				}

				return nil
			}
			t.Cleanup(func() { writeHook = nil })

			_, err := Generate(dir, GenerateOptions{Force: true})
			require.ErrorContains(t, err, "writing "+failAt)

			for _, name := range allFiles {
				b, err := os.ReadFile(filepath.Join(dir, name))
				require.NoError(t, err)
				assert.Equal(t, before[name], b, "%s changed by an interrupted generate", name)
			}

			_, err = Load(dir)
			require.NoError(t, err)

			entries, err := os.ReadDir(filepath.Dir(dir))
			require.NoError(t, err)
			require.Len(t, entries, 1, "only DIR remains (no DIR.previous, no temporary folder)")
		})
	}
}

// isolatedHome points HOME, XDG_CACHE_HOME and TMPDIR at empty folders and
// returns a check that nothing was written under them (finding 6 of issue
// 9: Load wrote PKCS#1 copies of keys into ~/.cache/labfleet/keys-pkcs1).
func isolatedHome(t *testing.T) func() {
	t.Helper()

	root := t.TempDir()
	for _, env := range []string{"HOME", "XDG_CACHE_HOME", "TMPDIR"} {
		d := filepath.Join(root, env)
		require.NoError(t, os.Mkdir(d, 0o700))
		t.Setenv(env, d)
	}

	return func() {
		t.Helper()

		require.NoError(t, filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err == nil && !de.IsDir() {
				t.Errorf("a private key may not leave the keys folder: %s was written", p)
			}

			return err
		}))
	}
}

func TestLoadAcceptsPKCS8(t *testing.T) {
	dir := copySet(t)
	path := filepath.Join(dir, UKISigningKeyFile)
	orig := readKey(t, path)

	der, err := x509.MarshalPKCS8PrivateKey(orig)
	require.NoError(t, err)

	pkcs8 := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	require.NoError(t, os.WriteFile(path, pkcs8, 0o600))

	nothingWritten := isolatedHome(t)

	s, err := Load(dir)
	require.NoError(t, err)

	assert.Equal(t, path, s.UKISigningKey, "the set points at the keys folder's own file")
	assert.Equal(t, []string{UKISigningKeyFile}, s.PKCS8)

	k, pkcs1, err := ReadPrivateKey(s.UKISigningKey)
	require.NoError(t, err)
	assert.False(t, pkcs1)
	assert.True(t, orig.Equal(k), "converted in memory to the same key")

	left, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, pkcs8, left, "the keys directory is not rewritten")

	nothingWritten()
}

func pemKey(t *testing.T, k any) []byte {
	t.Helper()

	switch k := k.(type) {
	case *rsa.PrivateKey:
		return encodePKCS1(k)
	default:
		der, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)

		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
}

func TestLoadErrors(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)

	ecSEC1, err := x509.MarshalECPrivateKey(ec)
	require.NoError(t, err)

	for _, tc := range []struct {
		name    string
		mutate  func(t *testing.T, dir string)
		file    string
		message string
	}{
		{
			name:    "missing file",
			mutate:  func(t *testing.T, dir string) { require.NoError(t, os.Remove(filepath.Join(dir, DBAuthFile))) },
			file:    DBAuthFile,
			message: "missing",
		},
		{
			name: "ECDSA UKI key in PKCS#8",
			mutate: func(t *testing.T, dir string) {
				write(t, dir, UKISigningKeyFile, pemKey(t, ec))
			},
			file:    UKISigningKeyFile,
			message: "is a ECDSA key; an RSA key is required",
		},
		{
			name: "ECDSA PCR key in SEC1",
			mutate: func(t *testing.T, dir string) {
				write(t, dir, PCRSigningKeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecSEC1}))
			},
			file:    PCRSigningKeyFile,
			message: "ECDSA",
		},
		{
			name:    "PCR key of the wrong size",
			mutate:  func(t *testing.T, dir string) { write(t, dir, PCRSigningKeyFile, encodePKCS1(small)) },
			file:    PCRSigningKeyFile,
			message: "is RSA-1024; the PCR signing key must be RSA-2048",
		},
		{
			name: "UKI key too small (with a matching cert)",
			mutate: func(t *testing.T, dir string) {
				kp, err := newSelfSigned(GenerateOptions{Now: nowForTest(), Validity: 1e9}, "", 1024, "x", x509.KeyUsageDigitalSignature, nil)
				require.NoError(t, err)
				write(t, dir, UKISigningKeyFile, encodePKCS1(kp.key.(*rsa.PrivateKey)))
				write(t, dir, UKISigningCertFile, encodeCert(kp.cert.Raw))
			},
			file:    UKISigningKeyFile,
			message: "is RSA-1024; at least RSA-2048",
		},
		{
			name:    "UKI cert from another key",
			mutate:  func(t *testing.T, dir string) { copyFile(t, dir, PKCertFile, UKISigningCertFile) },
			file:    UKISigningCertFile,
			message: "does not belong to uki-signing-key.pem",
		},
		{
			name: "PK cert that PK.auth does not enroll",
			mutate: func(t *testing.T, dir string) {
				copyFile(t, dir, KEKCertFile, PKCertFile)
				copyFile(t, dir, KEKKeyFile, PKKeyFile)
			},
			file:    PKCertFile,
			message: "is not the PK that PK.auth enrolls",
		},
		{
			name:    "owner keys partly missing",
			mutate:  func(t *testing.T, dir string) { require.NoError(t, os.Remove(filepath.Join(dir, KEKKeyFile))) },
			file:    KEKKeyFile,
			message: "missing",
		},
		{
			name: "db.auth re-signed by the PK instead of a KEK",
			mutate: func(t *testing.T, dir string) {
				pk := keyPair{key: readKey(t, filepath.Join(dir, PKKeyFile)), cert: readCert(t, filepath.Join(dir, PKCertFile))}
				b, err := signedVariable(efivar.Db, readCert(t, filepath.Join(dir, UKISigningCertFile)), pk)
				require.NoError(t, err)
				write(t, dir, DBAuthFile, b)
			},
			file:    DBAuthFile,
			message: "is not signed by a KEK that KEK.auth enrolls",
		},
		{
			name:    "not PEM",
			mutate:  func(t *testing.T, dir string) { write(t, dir, KEKKeyFile, []byte("hello")) },
			file:    KEKKeyFile,
			message: "no PEM block",
		},
		{
			name:    "db.auth replaced by KEK.auth",
			mutate:  func(t *testing.T, dir string) { copyFile(t, dir, KEKAuthFile, DBAuthFile) },
			file:    DBAuthFile,
			message: "does not enroll uki-signing-cert.pem",
		},
		{
			name: "db.auth payload tampered",
			mutate: func(t *testing.T, dir string) {
				data, err := os.ReadFile(filepath.Join(dir, DBAuthFile))
				require.NoError(t, err)
				// Flip a byte in the certificate's signature at the very end.
				data[len(data)-10] ^= 0xff
				write(t, dir, DBAuthFile, data)
			},
			file:    DBAuthFile,
			message: "db.auth",
		},
		{
			name: "KEK.auth timestamp changed after signing",
			mutate: func(t *testing.T, dir string) {
				data, err := os.ReadFile(filepath.Join(dir, KEKAuthFile))
				require.NoError(t, err)
				data[0]++ // EFI_TIME.Year is covered by the signature
				write(t, dir, KEKAuthFile, data)
			},
			file:    KEKAuthFile,
			message: "is not signed by the PK that PK.auth enrolls (CN=fixture PK): signature does not cover this KEK payload",
		},
		{
			name:    "PK.auth truncated",
			mutate:  func(t *testing.T, dir string) { write(t, dir, PKAuthFile, []byte("short")) },
			file:    PKAuthFile,
			message: "is not a signed EFI variable",
		},
		{
			name:    "secrets not a bundle",
			mutate:  func(t *testing.T, dir string) { write(t, dir, SecretsFile, []byte("cluster: {}\n")) },
			file:    SecretsFile,
			message: "secrets.yaml",
		},
		{
			name:    "talosconfig garbage",
			mutate:  func(t *testing.T, dir string) { write(t, dir, TalosconfigFile, []byte("[")) },
			file:    TalosconfigFile,
			message: "is not a talosconfig",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copySet(t)
			tc.mutate(t, dir)

			_, err := Load(dir)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrInvalid), "%v must be ErrInvalid", err)
			assert.Contains(t, err.Error(), tc.file)
			assert.Contains(t, err.Error(), tc.message)
			assert.Contains(t, err.Error(), "imagectl keys generate --dir "+dir)
		})
	}
}

func TestLoadNoDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope")

	_, err := Load(dir)
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "imagectl keys generate --dir "+dir)
}

func write(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o600))
}

func copyFile(t *testing.T, dir, from, to string) {
	t.Helper()

	data, err := os.ReadFile(filepath.Join(dir, from))
	require.NoError(t, err)
	write(t, dir, to, data)
}

func TestPEMRoundTrip(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)

	got, format, err := parseRSAKey(encodePKCS1(k))
	require.NoError(t, err)
	assert.Equal(t, formatPKCS1, format)
	assert.True(t, k.Equal(got))

	got, format, err = parseRSAKey(pemKey(t, struct{ *rsa.PrivateKey }{k}.PrivateKey))
	require.NoError(t, err)
	assert.Equal(t, formatPKCS1, format)
	assert.True(t, bytes.Equal(x509.MarshalPKCS1PrivateKey(k), x509.MarshalPKCS1PrivateKey(got)))
}

func nowForTest() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// A folder made by Talos (talosctl gen secureboot) has no owner keys and
// signs PK, KEK and db with the UKI key; it must load unchanged.
func TestLoadTalosStyleFolder(t *testing.T) {
	dir := copySet(t)

	for name := range ownerFiles {
		require.NoError(t, os.Remove(filepath.Join(dir, name)))
	}

	uki := keyPair{key: readKey(t, filepath.Join(dir, UKISigningKeyFile)), cert: readCert(t, filepath.Join(dir, UKISigningCertFile))}

	for name, v := range map[string]efivar.Efivar{PKAuthFile: efivar.PK, KEKAuthFile: efivar.KEK, DBAuthFile: efivar.Db} {
		b, err := signedVariable(v, uki.cert, uki)
		require.NoError(t, err)
		write(t, dir, name, b)
	}

	s, err := Load(dir)
	require.NoError(t, err)
	assert.Empty(t, s.PKKey)
	assert.Empty(t, s.KEKCert)
	assert.Equal(t, filepath.Join(dir, DBAuthFile), s.DBAuth)
}

func TestParseAuthVarNeverPanicsOnCorruption(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(fixture(t), KEKAuthFile))
	require.NoError(t, err)

	for i := range data {
		for _, v := range []byte{0x00, 0xff, data[i] ^ 0x80} {
			bad := bytes.Clone(data)
			bad[i] = v

			assert.NotPanics(t, func() { _, _ = ParseAuthVar(bad) }, "byte %d = %#x", i, v)
		}
	}
}

// TestGenerateForceSwap covers the swap itself: a failed exchange leaves
// the old set in place and nothing else; without an atomic exchange the
// two-rename path still ends with the new set in DIR and the old one in
// DIR.previous.
func TestGenerateForceSwap(t *testing.T) {
	t.Run("exchange fails", func(t *testing.T) {
		dir := copySet(t)
		old := readCert(t, filepath.Join(dir, UKISigningCertFile))

		exchangeDirs = func(string, string) error { return errors.New("simulated EIO") }
		t.Cleanup(func() { exchangeDirs = exchange })

		_, err := Generate(dir, GenerateOptions{Force: true})
		require.ErrorContains(t, err, "swapping keys into place")

		s, err := Load(dir)
		require.NoError(t, err)
		assert.True(t, old.Equal(readCert(t, s.UKISigningCert)))

		entries, err := os.ReadDir(filepath.Dir(dir))
		require.NoError(t, err)
		require.Len(t, entries, 1)
	})

	t.Run("no atomic exchange", func(t *testing.T) {
		dir := copySet(t)
		old := readCert(t, filepath.Join(dir, UKISigningCertFile))

		exchangeDirs = func(string, string) error { return errNoExchange }
		t.Cleanup(func() { exchangeDirs = exchange })

		s, err := Generate(dir, GenerateOptions{Force: true})
		require.NoError(t, err)
		assert.False(t, old.Equal(readCert(t, s.UKISigningCert)))

		prev, err := Load(dir + PreviousSuffix)
		require.NoError(t, err)
		assert.True(t, old.Equal(readCert(t, prev.UKISigningCert)))
	})
}
