package keys

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/foxboron/go-uefi/efivar"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
)

// ErrInvalid marks every error Load returns about the directory's content
// (missing, malformed or mismatched files), as opposed to I/O failures.
var ErrInvalid = errors.New("invalid keys directory")

type invalid struct {
	dir, file string
	msg       string
}

func (e *invalid) Error() string {
	what := e.msg
	if e.file != "" {
		what = e.file + " " + e.msg
	}

	return fmt.Sprintf("keys %s: %s (create a fresh set with `imagectl keys generate --dir %s`)", e.dir, what, e.dir)
}

func (e *invalid) Unwrap() error { return ErrInvalid }

// Load validates the keys directory dir and returns its paths.
//
// It checks that every file exists and parses, that each certificate
// matches its key, key types and sizes (UKI RSA >= 2048 bits, PCR RSA
// exactly 2048), and the Secure Boot chain as firmware will walk it: PK.auth
// is signed by the PK it enrolls, KEK.auth by that PK, db.auth by a KEK that
// KEK.auth enrolls, and db.auth enrolls the UKI certificate. The owner keys
// (pk-*.pem, kek-*.pem) may be absent together, as in a Talos-made folder
// whose .auth files are all signed by the UKI key; when present they must be
// the PK and KEK the .auth files enroll.
//
// PKCS#8 keys are accepted and listed in Set.PKCS8. Load writes nothing:
// a private key never leaves the keys directory; signers read PKCS#8 keys
// in memory (ReadPrivateKey).
func Load(dir string) (*Set, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}

	bad := func(file, format string, args ...any) error {
		return &invalid{dir: dir, file: file, msg: fmt.Sprintf(format, args...)}
	}

	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, bad("", "is not a directory")
	}

	if _, err := os.Stat(filepath.Join(dir, PKCS11File)); err == nil {
		return loadPKCS11(dir, bad)
	}

	var missing, missingOwners []string

	for _, name := range allFiles {
		if _, err := os.Stat(filepath.Join(dir, name)); errors.Is(err, fs.ErrNotExist) {
			if ownerFiles[name] {
				missingOwners = append(missingOwners, name)
			} else {
				missing = append(missing, name)
			}
		}
	}

	// Owner keys are all there (labfleet) or all absent (Talos); a partial
	// group means something was lost.
	if len(missingOwners) > 0 && len(missingOwners) < len(ownerFiles) {
		missing = append(missing, missingOwners...)
	}

	if len(missing) > 0 {
		return nil, bad(strings.Join(missing, ", "), "missing")
	}

	s := newSet(dir)
	haveOwners := len(missingOwners) == 0

	if !haveOwners {
		s.PKKey, s.PKCert, s.KEKKey, s.KEKCert = "", "", "", ""
	}

	// readKey parses a private key and points *path at a PKCS#1 file.
	readKey := func(name string, path *string) (*rsa.PrivateKey, error) {
		data, err := os.ReadFile(*path)
		if err != nil {
			return nil, err
		}

		k, format, err := parseRSAKey(data)
		if err != nil {
			return nil, bad(name, "%v", err)
		}

		if format == formatPKCS8 {
			s.PKCS8 = append(s.PKCS8, name)
		}

		return k, nil
	}

	readCert := func(name, path string) (*x509.Certificate, error) {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}

		c, err := parseCert(data)
		if err != nil {
			return nil, bad(name, "%v", err)
		}

		return c, nil
	}

	pair := func(keyName string, keyPath *string, certName, certPath string) (*rsa.PrivateKey, *x509.Certificate, error) {
		k, err := readKey(keyName, keyPath)
		if err != nil {
			return nil, nil, err
		}

		c, err := readCert(certName, certPath)
		if err != nil {
			return nil, nil, err
		}

		if !matches(c, k) {
			return nil, nil, bad(certName, "does not belong to %s (its public key differs)", keyName)
		}

		return k, c, nil
	}

	ukiKey, ukiCert, err := pair(UKISigningKeyFile, &s.UKISigningKey, UKISigningCertFile, s.UKISigningCert)
	if err != nil {
		return nil, err
	}

	dbSum := sha256.Sum256(ukiCert.Raw)
	s.DBCertSHA256 = hex.EncodeToString(dbSum[:])

	if bits := ukiKey.N.BitLen(); bits < MinUKISigningKeyBits {
		return nil, bad(UKISigningKeyFile, "is RSA-%d; at least RSA-%d is required (generated sets use RSA-%d)",
			bits, MinUKISigningKeyBits, UKISigningKeyBits)
	}

	pcrKey, err := readKey(PCRSigningKeyFile, &s.PCRSigningKey)
	if err != nil {
		return nil, err
	}

	if bits := pcrKey.N.BitLen(); bits != PCRSigningKeyBits {
		return nil, bad(PCRSigningKeyFile, "is RSA-%d; the PCR signing key must be RSA-%d (the TPM loads it for PolicyAuthorize)",
			bits, PCRSigningKeyBits)
	}

	if err := checkChain(dir, s, ukiCert, haveOwners, pair, bad); err != nil {
		return nil, err
	}

	if err := checkTalos(s, bad); err != nil {
		return nil, err
	}

	return s, nil
}

// checkTalos checks the Talos secrets bundle and the talosconfig.
func checkTalos(s *Set, bad func(string, string, ...any) error) error {
	bundle, err := secrets.LoadBundle(s.Secrets)
	if err != nil {
		return bad(SecretsFile, "is not a Talos secrets bundle: %v", err)
	}

	if err := bundle.Validate(nil); err != nil {
		return bad(SecretsFile, "is incomplete: %v", err)
	}

	tc, err := clientconfig.Open(s.Talosconfig)
	if err != nil {
		return bad(TalosconfigFile, "is not a talosconfig: %v", err)
	}

	if ctx, ok := tc.Contexts[tc.Context]; !ok || ctx.Crt == "" || ctx.Key == "" {
		return bad(TalosconfigFile, "has no current context with a client certificate")
	}

	return nil
}

// ReadPrivateKey reads an RSA private key file (PKCS#1 or PKCS#8 PEM) into
// memory; pkcs1 reports whether the file is PKCS#1, the only form Talos's
// imager reads from a path. Nothing is written anywhere.
func ReadPrivateKey(path string) (key *rsa.PrivateKey, pkcs1 bool, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false, fmt.Errorf("reading private key: %w", err)
	}

	k, format, err := parseRSAKey(data)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}

	return k, format == formatPKCS1, nil
}

// checkChain follows the Secure Boot chain through the .auth files
// themselves: PK.auth is signed by the PK it enrolls, KEK.auth by that PK,
// db.auth by a KEK from KEK.auth and enrolls the UKI certificate. With owner
// keys present, they must be the PK and KEK the files enroll.
func checkChain(dir string, s *Set, ukiCert *x509.Certificate, haveOwners bool,
	pair func(string, *string, string, string) (*rsa.PrivateKey, *x509.Certificate, error),
	bad func(string, string, ...any) error,
) error {
	read := func(name, path string) (*AuthVar, error) {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}

		av, err := ParseAuthVar(data)
		if err != nil {
			return nil, bad(name, "is not a signed EFI variable: %v", err)
		}

		if len(av.Certs) == 0 {
			return nil, bad(name, "enrolls no X.509 certificate")
		}

		return av, nil
	}

	// signedByOneOf returns the first of certs that signed av as variable v.
	signedByOneOf := func(av *AuthVar, v efivar.Efivar, certs []*x509.Certificate) (*x509.Certificate, error) {
		var firstErr error

		for _, c := range certs {
			err := av.Verify(v, c)
			if err == nil {
				return c, nil
			}

			if firstErr == nil {
				firstErr = err
			}
		}

		return nil, firstErr
	}

	pkAV, err := read(PKAuthFile, s.PKAuth)
	if err != nil {
		return err
	}

	kekAV, err := read(KEKAuthFile, s.KEKAuth)
	if err != nil {
		return err
	}

	dbAV, err := read(DBAuthFile, s.DBAuth)
	if err != nil {
		return err
	}

	pk, err := signedByOneOf(pkAV, efivar.PK, pkAV.Certs)
	if err != nil {
		return bad(PKAuthFile, "is not signed by the PK it enrolls: %v", err)
	}

	if _, err := signedByOneOf(kekAV, efivar.KEK, []*x509.Certificate{pk}); err != nil {
		return bad(KEKAuthFile, "is not signed by the PK that PK.auth enrolls (%s): %v", pk.Subject, err)
	}

	if !dbAV.Contains(ukiCert) {
		return bad(DBAuthFile, "does not enroll %s, so firmware would refuse the images it signs", UKISigningCertFile)
	}

	if _, err := signedByOneOf(dbAV, efivar.Db, kekAV.Certs); err != nil {
		return bad(DBAuthFile, "is not signed by a KEK that KEK.auth enrolls: %v", err)
	}

	if !haveOwners {
		return nil
	}

	_, pkCert, err := pair(PKKeyFile, &s.PKKey, PKCertFile, s.PKCert)
	if err != nil {
		return err
	}

	if !pkCert.Equal(pk) {
		return bad(PKCertFile, "is not the PK that PK.auth enrolls")
	}

	_, kekCert, err := pair(KEKKeyFile, &s.KEKKey, KEKCertFile, s.KEKCert)
	if err != nil {
		return err
	}

	if !kekAV.Contains(kekCert) {
		return bad(KEKCertFile, "is not a KEK that KEK.auth enrolls")
	}

	return nil
}
