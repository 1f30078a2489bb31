package keys

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/foxboron/go-uefi/efi/signature"
	"github.com/foxboron/go-uefi/efi/util"
	"github.com/foxboron/go-uefi/efivar"
	"github.com/foxboron/go-uefi/pkcs7"
)

// AuthVar is a parsed EFI_VARIABLE_AUTHENTICATION_2 file (PK.auth, ...):
// the signed header and the signature database it carries.
type AuthVar struct {
	Auth *signature.EFIVariableAuthentication2
	// Certs are the X.509 entries of the signature database.
	Certs []*x509.Certificate
	// esl is the raw signature database, the payload that was signed.
	esl []byte
}

// Size of EFI_TIME + WIN_CERTIFICATE header + CertType GUID.
const authHeaderSize = util.SizeofEFITime + int(signature.SizeofWinCertificateUEFIGUID)

// ParseAuthVar parses a signed EFI variable update. It checks the framing
// itself first because go-uefi's reader exits the process on short input.
func ParseAuthVar(data []byte) (*AuthVar, error) {
	if len(data) < authHeaderSize {
		return nil, fmt.Errorf("%d bytes is too short for an authenticated variable", len(data))
	}

	hdr := data[util.SizeofEFITime:]
	length := binary.LittleEndian.Uint32(hdr[0:4])
	revision := binary.LittleEndian.Uint16(hdr[4:6])
	certType := binary.LittleEndian.Uint16(hdr[6:8])

	switch {
	case revision != signature.WIN_CERTIFICATE_REVISION:
		return nil, fmt.Errorf("WIN_CERTIFICATE revision %#x, want %#x", revision, signature.WIN_CERTIFICATE_REVISION)
	case signature.WINCertType(certType) != signature.WIN_CERT_TYPE_EFI_GUID:
		return nil, fmt.Errorf("WIN_CERTIFICATE type %#x, want WIN_CERT_TYPE_EFI_GUID", certType)
	case length < signature.SizeofWinCertificateUEFIGUID || int(length) > len(hdr):
		return nil, fmt.Errorf("WIN_CERTIFICATE length %d out of range", length)
	}

	auth, err := signature.ReadEFIVariableAuthencation2(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("reading authentication header: %w", err)
	}

	if !util.CmpEFIGUID(auth.AuthInfo.CertType, signature.EFI_CERT_TYPE_PKCS7_GUID) {
		return nil, errors.New("authentication is not PKCS#7")
	}

	esl := data[util.SizeofEFITime+int(length):]
	if err := checkESL(esl); err != nil {
		return nil, err
	}

	db, err := signature.ReadSignatureDatabase(bytes.NewReader(esl))
	if err != nil {
		return nil, fmt.Errorf("reading signature database: %w", err)
	}

	av := &AuthVar{Auth: auth, esl: esl}

	for _, l := range db {
		if !util.CmpEFIGUID(l.SignatureType, signature.CERT_X509_GUID) {
			continue
		}

		for _, s := range l.Signatures {
			c, err := x509.ParseCertificate(s.Data)
			if err != nil {
				return nil, fmt.Errorf("signature database entry: %w", err)
			}

			av.Certs = append(av.Certs, c)
		}
	}

	return av, nil
}

// checkESL walks the signature list headers so go-uefi's reader never sees
// sizes that would underflow.
func checkESL(b []byte) error {
	for off := 0; off < len(b); {
		if len(b)-off < int(signature.SizeofSignatureList) {
			return errors.New("truncated signature list header")
		}

		listSize := binary.LittleEndian.Uint32(b[off+16:])
		headerSize := binary.LittleEndian.Uint32(b[off+20:])
		sigSize := binary.LittleEndian.Uint32(b[off+24:])

		body := int64(listSize) - int64(signature.SizeofSignatureList) - int64(headerSize)

		switch {
		case int64(listSize) > int64(len(b)-off) || body < 0:
			return fmt.Errorf("signature list size %d out of range", listSize)
		case sigSize <= util.SizeofEFIGUID || body%int64(sigSize) != 0:
			return fmt.Errorf("signature size %d does not divide the list", sigSize)
		}

		off += int(listSize)
	}

	return nil
}

// Verify checks that signer signed this update of variable v: the PKCS#7
// signature over the authenticated attributes, and that the signed message
// digest covers the variable name, GUID, attributes, timestamp and payload,
// as firmware computes it.
func (a *AuthVar) Verify(v efivar.Efivar, signer *x509.Certificate) error {
	p, err := pkcs7.ParsePKCS7(a.Auth.AuthInfo.CertData)
	if err != nil {
		return fmt.Errorf("parsing PKCS#7 signature: %w", err)
	}

	ok, err := p.Verify(signer)
	if err != nil {
		return err
	}

	if !ok {
		return fmt.Errorf("not signed by %q", signer.Subject.CommonName)
	}

	var msg bytes.Buffer

	for _, r := range v.Name {
		_ = binary.Write(&msg, binary.LittleEndian, uint16(r))
	}

	_ = binary.Write(&msg, binary.LittleEndian, *v.GUID)
	_ = binary.Write(&msg, binary.LittleEndian, v.Attributes)
	_ = binary.Write(&msg, binary.LittleEndian, a.Auth.Time)
	msg.Write(a.esl)

	want := sha256.Sum256(msg.Bytes())

	for _, si := range p.SignerInfo {
		if si.AuthenticatedAttributes != nil && bytes.Equal(si.AuthenticatedAttributes.MessageDigest, want[:]) {
			return nil
		}
	}

	return fmt.Errorf("signature does not cover this %s payload (tampered or made for another variable)", v.Name)
}

// Contains reports whether the signature database lists cert.
func (a *AuthVar) Contains(cert *x509.Certificate) bool {
	for _, c := range a.Certs {
		if c.Equal(cert) {
			return true
		}
	}

	return false
}
