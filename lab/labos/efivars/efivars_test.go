package efivars_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/foxboron/go-uefi/efi/signature"
	"github.com/foxboron/go-uefi/efi/util"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/efivars"
)

func writeVar(t *testing.T, dir, name, guid string, data []byte) {
	t.Helper()

	// efivarfs prefixes the 4-byte attributes
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+"-"+guid), append([]byte{7, 0, 0, 0}, data...), 0o644))
}

func utf16z(s string) []byte {
	var b []byte
	for _, c := range utf16.Encode([]rune(s)) {
		b = append(b, byte(c), byte(c>>8))
	}

	return append(b, 0, 0)
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s := efivars.Store{Dir: dir}

	writeVar(t, dir, "SecureBoot", efivars.GlobalGUID, []byte{1})
	writeVar(t, dir, "SetupMode", efivars.GlobalGUID, []byte{0})
	writeVar(t, dir, "LoaderEntrySelected", efivars.LoaderGUID, utf16z("lab-1.1.0.efi"))

	sb, err := s.SecureBoot()
	require.NoError(t, err)
	require.True(t, sb)

	sm, err := s.SetupMode()
	require.NoError(t, err)
	require.False(t, sm)

	sel, err := s.LoaderEntrySelected()
	require.NoError(t, err)
	require.Equal(t, "lab-1.1.0.efi", sel)

	p, err := s.LoaderBootCountPath()
	require.NoError(t, err)
	require.Empty(t, p, "unset means blessed")

	writeVar(t, dir, "LoaderBootCountPath", efivars.LoaderGUID, utf16z(`\EFI\Linux\lab-1.1.0+2-1.efi`))
	p, err = s.LoaderBootCountPath()
	require.NoError(t, err)
	require.Equal(t, "EFI/Linux/lab-1.1.0+2-1.efi", p)

	_, err = s.DBCertificates()
	require.ErrorIs(t, err, os.ErrNotExist)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lab db"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lab db"}}, &key.PublicKey, key)
	require.NoError(t, err)

	db := signature.NewSignatureDatabase()
	require.NoError(t, db.Append(signature.CERT_X509_GUID, *util.StringToGUID("11111111-2222-3333-4444-555555555555"), der))
	require.NoError(t, db.Append(signature.CERT_SHA256_GUID, *util.StringToGUID("11111111-2222-3333-4444-555555555555"), make([]byte, 32)))
	writeVar(t, dir, "db", efivars.ImageSecGUID, db.Bytes())

	certs, err := s.DBCertificates()
	require.NoError(t, err)
	require.Len(t, certs, 1)
	require.Equal(t, "lab db", certs[0].Subject.CommonName)
}

func TestDBX(t *testing.T) {
	dir := t.TempDir()
	s := efivars.Store{Dir: dir}

	f, err := s.DBX()
	require.NoError(t, err, "an unset dbx forbids nothing")
	require.Empty(t, f.Certs)
	require.Empty(t, f.Hashes)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "revoked"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)

	owner := *util.StringToGUID("11111111-2222-3333-4444-555555555555")
	hash := make([]byte, 32)
	hash[0] = 0xaa

	dbx := signature.NewSignatureDatabase()
	require.NoError(t, dbx.Append(signature.CERT_X509_GUID, owner, der))
	require.NoError(t, dbx.Append(signature.CERT_SHA256_GUID, owner, hash))
	writeVar(t, dir, "dbx", efivars.ImageSecGUID, dbx.Bytes())

	f, err = s.DBX()
	require.NoError(t, err)
	require.Len(t, f.Certs, 1)
	require.Equal(t, "revoked", f.Certs[0].Subject.CommonName)
	require.Equal(t, [][]byte{hash}, f.Hashes)

	// a dbx labos cannot read must not read as "nothing forbidden"
	writeVar(t, dir, "dbx", efivars.ImageSecGUID, []byte{1, 2, 3})
	_, err = s.DBX()
	require.ErrorContains(t, err, "parsing dbx")

	sha1 := signature.NewSignatureDatabase()
	require.NoError(t, sha1.Append(signature.CERT_SHA1_GUID, owner, make([]byte, 20)))
	writeVar(t, dir, "dbx", efivars.ImageSecGUID, sha1.Bytes())
	_, err = s.DBX()
	require.ErrorContains(t, err, "parsing dbx")
}
