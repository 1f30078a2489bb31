package qemutests

import (
	"bytes"
	"crypto/x509"
	"debug/pe"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/foxboron/go-uefi/authenticode"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/keys"
)

// BreakEnv names a deliberate defect to build into the v1 image, to show
// that the suite fails when the images are wrong:
//
//	QEMU_TESTS_BREAK=wrong-key  v1's UKI on the disk is re-signed with a key
//	                            that is not in db (as a mis-configured release would be)
const BreakEnv = "QEMU_TESTS_BREAK"

func (s *Suite) applyBreak() error {
	switch v := os.Getenv(BreakEnv); v {
	case "":
		return nil
	case "wrong-key":
		return s.resignV1(s.RogueKeys)
	default:
		return fmt.Errorf("%s=%q: allowed is wrong-key", BreakEnv, v)
	}
}

// resignV1 replaces the UKI on v1's disk with the same UKI signed by keyDir's signer.
func (s *Suite) resignV1(keyDir string) error {
	res := s.Images["v1"]
	entry := "/EFI/Linux/" + build.EntryFile(res.Record.Name, res.Record.Version)

	d, err := diskfs.Open(filepath.Join(res.Dir, "disk.raw"))
	if err != nil {
		return err
	}
	defer d.Close() //nolint:errcheck

	fs, err := d.GetFilesystem(1)
	if err != nil {
		return err
	}

	f, err := fs.OpenFile(entry, os.O_RDONLY)
	if err != nil {
		return err
	}

	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}

	unsigned, err := unsign(data)
	if err != nil {
		return err
	}

	signed, err := signWith(unsigned, keyDir)
	if err != nil {
		return err
	}

	if err := fs.Remove(entry); err != nil {
		return err
	}

	w, err := fs.OpenFile(entry, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}

	if _, err := w.Write(signed); err != nil {
		return err
	}

	return w.Close()
}

func unsign(data []byte) ([]byte, error) {
	f, err := pe.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}

	oh, ok := f.OptionalHeader.(*pe.OptionalHeader64)
	if !ok {
		return nil, errors.New("not a PE32+ image")
	}

	dd := oh.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]
	out := append([]byte(nil), data[:dd.VirtualAddress]...)
	peOff := binary.LittleEndian.Uint32(out[0x3c:])
	binary.LittleEndian.PutUint64(out[int(peOff)+24+144:], 0)

	return out, nil
}

func signWith(data []byte, keyDir string) ([]byte, error) {
	keyPEM, err := os.ReadFile(filepath.Join(keyDir, keys.UKISigningKeyFile))
	if err != nil {
		return nil, err
	}

	certPEM, err := os.ReadFile(filepath.Join(keyDir, keys.UKISigningCertFile))
	if err != nil {
		return nil, err
	}

	kb, _ := pem.Decode(keyPEM)
	cb, _ := pem.Decode(certPEM)

	if kb == nil || cb == nil {
		return nil, errors.New("keys are not PEM")
	}

	key, err := x509.ParsePKCS1PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}

	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}

	bin, err := authenticode.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}

	if _, err := bin.Sign(key, cert); err != nil {
		return nil, err
	}

	return bin.Bytes(), nil
}
