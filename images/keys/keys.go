// Package keys writes and reads a labfleet signing-keys directory: the UKI
// (Authenticode) signer, the PCR policy signer, the Secure Boot PK/KEK/db
// chain with signed .auth files for systemd-boot auto-enrollment, and the
// Talos machine secrets with an admin talosconfig.
//
// File names are Talos's own (see docs/contracts.md), so a keys folder made
// by `talosctl gen secureboot` plus `talosctl gen secrets` works unchanged.
package keys

import (
	"errors"
	"path/filepath"
)

// File names inside a keys directory.
const (
	UKISigningKeyFile  = "uki-signing-key.pem"
	UKISigningCertFile = "uki-signing-cert.pem"
	PCRSigningKeyFile  = "pcr-signing-key.pem"
	PKAuthFile         = "PK.auth"
	KEKAuthFile        = "KEK.auth"
	DBAuthFile         = "db.auth"
	PKKeyFile          = "pk-key.pem"
	PKCertFile         = "pk-cert.pem"
	KEKKeyFile         = "kek-key.pem"
	KEKCertFile        = "kek-cert.pem"
	SecretsFile        = "secrets.yaml"
	TalosconfigFile    = "talosconfig"
)

// Key sizes written by Generate and required by Load.
const (
	// UKISigningKeyBits is the UKI signer size Generate writes; Load accepts
	// any RSA key of at least MinUKISigningKeyBits (firmware verifies 2048+).
	UKISigningKeyBits    = 4096
	MinUKISigningKeyBits = 2048
	// PCRSigningKeyBits is exact: the TPM loads this key for PolicyAuthorize,
	// and TPMs (swtpm included) are only required to support RSA-2048.
	PCRSigningKeyBits = 2048
	// OwnerKeyBits is the PK/KEK size: RSA-2048 is what the UEFI spec
	// requires every firmware to accept for authenticated variables.
	OwnerKeyBits = 2048
)

// privateFiles are written with mode 0600; the rest are public (0644).
var privateFiles = map[string]bool{
	UKISigningKeyFile: true,
	PCRSigningKeyFile: true,
	PKKeyFile:         true,
	KEKKeyFile:        true,
	SecretsFile:       true,
	TalosconfigFile:   true,
}

// allFiles lists every file of a complete set, in the order Load checks them.
var allFiles = []string{
	UKISigningKeyFile, UKISigningCertFile, PCRSigningKeyFile,
	PKKeyFile, PKCertFile, KEKKeyFile, KEKCertFile,
	PKAuthFile, KEKAuthFile, DBAuthFile,
	SecretsFile, TalosconfigFile,
}

// ownerFiles may be absent as a group: Talos's `talosctl gen secureboot`
// signs PK/KEK/db with the UKI key and keeps no separate owner keys.
var ownerFiles = map[string]bool{PKKeyFile: true, PKCertFile: true, KEKKeyFile: true, KEKCertFile: true}

// ErrExists is returned by Generate when the directory already holds keys
// and GenerateOptions.Force is not set.
var ErrExists = errors.New("keys already exist")

// Set is a validated keys directory. Every path is absolute and inside Dir:
// no key is ever copied out of it (PKCS#8 keys are converted in memory by
// whoever signs with them, see ReadPrivateKey).
type Set struct {
	Dir string `json:"dir"`

	UKISigningKey  string `json:"ukiSigningKey"`
	UKISigningCert string `json:"ukiSigningCert"`
	PCRSigningKey  string `json:"pcrSigningKey"`

	// DBCertSHA256 is the lowercase hex sha256 of the DER of the UKI
	// signing certificate, the one db.auth enrolls in db: images carry it
	// on their cmdline (labos.db=) so a node can check that our
	// certificate is the one enrolled before it seals anything.
	DBCertSHA256 string `json:"dbCertSHA256"`

	// PKKey, PKCert, KEKKey and KEKCert are empty for a Talos-made set,
	// which has no separate owner keys.
	PKKey   string `json:"pkKey,omitempty"`
	PKCert  string `json:"pkCert,omitempty"`
	KEKKey  string `json:"kekKey,omitempty"`
	KEKCert string `json:"kekCert,omitempty"`

	// PKAuth, KEKAuth and DBAuth are the signed EFI variable updates that
	// go to loader/keys/auto/ on the ESP.
	PKAuth  string `json:"pkAuth"`
	KEKAuth string `json:"kekAuth"`
	DBAuth  string `json:"dbAuth"`

	Secrets     string `json:"secrets"`
	Talosconfig string `json:"talosconfig"`

	// PKCS8 names the key files of Dir stored as PKCS#8 (Talos's imager
	// reads only PKCS#1 from a path; the builder serves these keys from
	// memory instead).
	PKCS8 []string `json:"pkcs8,omitempty"`

	// PKCS11 is set when the private keys live in a PKCS#11 token
	// (PKCS11File in the folder); the key files are then absent.
	PKCS11 *PKCS11 `json:"pkcs11,omitempty"`
}

func newSet(dir string) *Set {
	p := func(name string) string { return filepath.Join(dir, name) }

	return &Set{
		Dir:            dir,
		UKISigningKey:  p(UKISigningKeyFile),
		UKISigningCert: p(UKISigningCertFile),
		PCRSigningKey:  p(PCRSigningKeyFile),
		PKKey:          p(PKKeyFile),
		PKCert:         p(PKCertFile),
		KEKKey:         p(KEKKeyFile),
		KEKCert:        p(KEKCertFile),
		PKAuth:         p(PKAuthFile),
		KEKAuth:        p(KEKAuthFile),
		DBAuth:         p(DBAuthFile),
		Secrets:        p(SecretsFile),
		Talosconfig:    p(TalosconfigFile),
	}
}
