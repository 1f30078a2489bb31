package keys

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/foxboron/go-uefi/efivar"
)

// PKCS11File, in a keys folder, names the PKCS#11 token holding the
// folder's private keys; the folder then holds only certificates, .auth
// files and the Talos secrets (imagectl keys generate --pkcs11).
const PKCS11File = "pkcs11.json"

// PKCS11 locates the private keys in a PKCS#11 token. The PIN is never
// stored: imagectl reads it from LABFLEET_PKCS11_PIN.
type PKCS11 struct {
	// Module is the path of the token's PKCS#11 module (a .so).
	Module string `json:"module"`
	// TokenLabel selects the token (slot) by its label.
	TokenLabel string `json:"tokenLabel"`
	// Labels of the key pairs (CKA_LABEL) in the token.
	UKIKeyLabel string `json:"ukiKeyLabel"`
	PCRKeyLabel string `json:"pcrKeyLabel"`
	PKKeyLabel  string `json:"pkKeyLabel,omitempty"`
	KEKKeyLabel string `json:"kekKeyLabel,omitempty"`
}

// pkcs11Private are the files a token-backed folder must not hold: their
// keys are in the token.
var pkcs11Private = []string{UKISigningKeyFile, PCRSigningKeyFile, PKKeyFile, KEKKeyFile}

// loadPKCS11 checks a token-backed keys folder: pkcs11.json names the token
// and labels, no private key file is present, and the certificates and
// .auth files form the Secure Boot chain (as Load checks for files). The
// token itself is opened only by the build (it needs the PIN); the build
// checks that the token's UKI key is the certified one.
func loadPKCS11(dir string, bad func(string, string, ...any) error) (*Set, error) {
	data, err := os.ReadFile(filepath.Join(dir, PKCS11File))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", PKCS11File, err)
	}

	var cfg PKCS11

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()

	if err := dec.Decode(&cfg); err != nil {
		return nil, bad(PKCS11File, "is not valid: %v", err)
	}

	for field, v := range map[string]string{"module": cfg.Module, "tokenLabel": cfg.TokenLabel, "ukiKeyLabel": cfg.UKIKeyLabel, "pcrKeyLabel": cfg.PCRKeyLabel} {
		if v == "" {
			return nil, bad(PKCS11File, "field %s is required", field)
		}
	}

	var present, missing []string

	for _, name := range pkcs11Private {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			present = append(present, name)
		}
	}

	if len(present) > 0 {
		return nil, bad(strings.Join(present, ", "), "present beside %s: a token-backed folder holds no private key file; remove them or %s", PKCS11File, PKCS11File)
	}

	for _, name := range []string{UKISigningCertFile, PKCertFile, KEKCertFile, PKAuthFile, KEKAuthFile, DBAuthFile, SecretsFile, TalosconfigFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, name)
		}
	}

	if len(missing) > 0 {
		return nil, bad(strings.Join(missing, ", "), "missing")
	}

	s := newSet(dir)
	s.UKISigningKey, s.PCRSigningKey, s.PKKey, s.KEKKey = "", "", "", ""
	s.PKCS11 = &cfg

	cert := func(name, path string) (*x509.Certificate, error) {
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

	ukiCert, err := cert(UKISigningCertFile, s.UKISigningCert)
	if err != nil {
		return nil, err
	}

	dbSum := sha256.Sum256(ukiCert.Raw)
	s.DBCertSHA256 = hex.EncodeToString(dbSum[:])

	if err := checkChain(dir, s, ukiCert, false, nil, bad); err != nil {
		return nil, err
	}

	pkCert, err := cert(PKCertFile, s.PKCert)
	if err != nil {
		return nil, err
	}

	if err := mustAuth(s.PKAuth, efivar.PK, pkCert); err != nil {
		return nil, bad(PKCertFile, "is not the PK that signed PK.auth: %v", err)
	}

	kekCert, err := cert(KEKCertFile, s.KEKCert)
	if err != nil {
		return nil, err
	}

	if err := mustAuth(s.DBAuth, efivar.Db, kekCert); err != nil {
		return nil, bad(KEKCertFile, "is not the KEK that signed db.auth: %v", err)
	}

	if err := checkTalos(s, bad); err != nil {
		return nil, err
	}

	return s, nil
}

func mustAuth(path string, v efivar.Efivar, signer *x509.Certificate) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}

	av, err := ParseAuthVar(data)
	if err != nil {
		return err
	}

	return av.Verify(v, signer)
}
