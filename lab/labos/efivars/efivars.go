// Package efivars reads the UEFI variables labos needs from efivarfs:
// Secure Boot state, systemd-boot's loader interface variables, the db
// certificates an upgrade's UKI must be signed by and the dbx entries it
// must not match.
package efivars

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf16"

	"github.com/foxboron/go-uefi/efi/signature"
	"github.com/foxboron/go-uefi/efi/util"
)

// DefaultDir is where efivarfs is mounted.
const DefaultDir = "/sys/firmware/efi/efivars"

// Vendor GUIDs.
const (
	GlobalGUID   = "8be4df61-93ca-11d2-aa0d-00e098032b8c" // EFI_GLOBAL_VARIABLE
	ImageSecGUID = "d719b2cb-3d3a-4596-a3bc-dad00e67656f" // EFI_IMAGE_SECURITY_DATABASE (db, dbx)
	LoaderGUID   = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f" // systemd-boot loader interface
)

// Store reads variables from an efivarfs directory (a plain directory in tests).
type Store struct {
	Dir string // empty means DefaultDir
}

func (s Store) dir() string {
	if s.Dir == "" {
		return DefaultDir
	}

	return s.Dir
}

// Read returns a variable's data without the 4-byte attribute prefix;
// the error wraps os.ErrNotExist when it is not set.
func (s Store) Read(name, guid string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(s.dir(), name+"-"+guid))
	if err != nil {
		return nil, fmt.Errorf("reading EFI variable %s: %w", name, err)
	}

	if len(b) < 4 {
		return nil, fmt.Errorf("reading EFI variable %s: %d bytes, too short", name, len(b))
	}

	return b[4:], nil
}

// Bool reads a one-byte boolean variable; unset reads as false.
func (s Store) Bool(name, guid string) (bool, error) {
	b, err := s.Read(name, guid)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}

	if err != nil {
		return false, err
	}

	return len(b) > 0 && b[0] == 1, nil
}

// String reads a NUL-terminated UTF-16LE string variable (systemd-boot's format).
func (s Store) String(name, guid string) (string, error) {
	b, err := s.Read(name, guid)
	if err != nil {
		return "", err
	}

	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := uint16(b[i]) | uint16(b[i+1])<<8
		if c == 0 {
			break
		}

		u = append(u, c)
	}

	return string(utf16.Decode(u)), nil
}

// SecureBoot reports whether firmware enforces Secure Boot.
func (s Store) SecureBoot() (bool, error) { return s.Bool("SecureBoot", GlobalGUID) }

// SetupMode reports whether no platform key is enrolled.
func (s Store) SetupMode() (bool, error) { return s.Bool("SetupMode", GlobalGUID) }

// LoaderEntrySelected is the systemd-boot entry id that was booted.
func (s Store) LoaderEntrySelected() (string, error) {
	return s.String("LoaderEntrySelected", LoaderGUID)
}

// LoaderBootCountPath is the ESP path (slash-separated, relative to the
// ESP root) of the boot-counted entry systemd-boot booted; empty with no
// error when the entry carries no counter (already blessed).
func (s Store) LoaderBootCountPath() (string, error) {
	v, err := s.String("LoaderBootCountPath", LoaderGUID)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}

	if err != nil {
		return "", err
	}

	return strings.TrimPrefix(strings.ReplaceAll(v, `\`, "/"), "/"), nil
}

// DBCertificates returns the X.509 certificates enrolled in db.
func (s Store) DBCertificates() ([]*x509.Certificate, error) {
	b, err := s.Read("db", ImageSecGUID)
	if err != nil {
		return nil, err
	}

	return ParseCertificates(b)
}

// Forbidden is what the dbx variable forbids, in the forms go-uefi
// decodes: signer certificates and Authenticode image hashes (sha256).
// go-uefi refuses other list types (sha1, x509-sha256, RSA keys), and so
// does ParseForbidden: a dbx that cannot be read fully forbids everything
// rather than nothing.
type Forbidden struct {
	Certs  []*x509.Certificate
	Hashes [][]byte // sha256 Authenticode digests of forbidden images
}

// DBX returns the dbx entries; an unset dbx (OVMF ships none) forbids
// nothing and is not an error.
func (s Store) DBX() (Forbidden, error) {
	b, err := s.Read("dbx", ImageSecGUID)
	if errors.Is(err, os.ErrNotExist) {
		return Forbidden{}, nil
	}

	if err != nil {
		return Forbidden{}, err
	}

	return ParseForbidden(b)
}

// ParseForbidden decodes a dbx signature database.
func ParseForbidden(b []byte) (Forbidden, error) {
	db, err := signature.ReadSignatureDatabase(bytes.NewReader(b))
	if err != nil {
		return Forbidden{}, fmt.Errorf("parsing dbx: %w", err)
	}

	var out Forbidden

	for _, list := range db {
		for _, sd := range list.Signatures {
			switch {
			case util.CmpEFIGUID(list.SignatureType, signature.CERT_X509_GUID):
				c, err := x509.ParseCertificate(sd.Data)
				if err != nil {
					return Forbidden{}, fmt.Errorf("parsing dbx certificate: %w", err)
				}

				out.Certs = append(out.Certs, c)
			case util.CmpEFIGUID(list.SignatureType, signature.CERT_SHA256_GUID):
				if len(sd.Data) != sha256.Size {
					return Forbidden{}, fmt.Errorf("parsing dbx: sha256 entry of %d bytes", len(sd.Data))
				}

				out.Hashes = append(out.Hashes, sd.Data)
			default:
				return Forbidden{}, fmt.Errorf("parsing dbx: unsupported signature type %s", list.SignatureType.Format())
			}
		}
	}

	return out, nil
}

// ParseCertificates extracts X.509 entries from an EFI signature database.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	db, err := signature.ReadSignatureDatabase(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parsing signature database: %w", err)
	}

	var certs []*x509.Certificate

	for _, list := range db {
		if !util.CmpEFIGUID(list.SignatureType, signature.CERT_X509_GUID) {
			continue
		}

		for _, sd := range list.Signatures {
			c, err := x509.ParseCertificate(sd.Data)
			if err != nil {
				return nil, fmt.Errorf("parsing db certificate: %w", err)
			}

			certs = append(certs, c)
		}
	}

	return certs, nil
}
