package build

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/foxboron/go-uefi/authenticode"
	"github.com/foxboron/go-uefi/pkcs7"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// signPEFile Authenticode-signs the PE binary src into dst, replacing any
// signature src carries (the Talos imager signs the UKI itself, with
// signingTime = now), so the result depends only on the binary, the key and
// signingTime (SOURCE_DATE_EPOCH): RSA PKCS#1 v1.5 is deterministic.
func signPEFile(src, dst string, s crypto.Signer, cert *x509.Certificate, signingTime time.Time) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}

	// data is ours: stripped in place, and the signed binary is streamed to
	// dst rather than assembled in memory (go-uefi's Bytes), which for a
	// 29 MB UKI was two more full copies and most of the signing time.
	bin, err := signedPE(data, s, cert, signingTime)
	if err != nil {
		return fmt.Errorf("signing %s: %w", src, err)
	}

	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}

	if _, err := io.Copy(f, bin.Open()); err != nil {
		f.Close() //nolint:errcheck

		return fmt.Errorf("writing %s: %w", dst, err)
	}

	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}

	return nil
}

// signPE returns data, unsigned first, with one Authenticode signature.
// data is not modified.
func signPE(data []byte, s crypto.Signer, cert *x509.Certificate, signingTime time.Time) ([]byte, error) {
	bin, err := signedPE(bytes.Clone(data), s, cert, signingTime)
	if err != nil {
		return nil, err
	}

	return bin.Bytes(), nil
}

// signedPE strips data's signature (in place: data must not be used
// after) and returns it with one Authenticode signature.
func signedPE(data []byte, s crypto.Signer, cert *x509.Certificate, signingTime time.Time) (*authenticode.PECOFFBinary, error) {
	unsigned, err := stripSignature(data)
	if err != nil {
		return nil, err
	}

	bin, err := authenticode.Parse(bytes.NewReader(unsigned))
	if err != nil {
		return nil, fmt.Errorf("parsing PE: %w", err)
	}

	sig, err := authenticodeSignature(s, cert, bin.Hash(crypto.SHA256), signingTime)
	if err != nil {
		return nil, err
	}

	if err := bin.AppendSignature(sig); err != nil {
		return nil, fmt.Errorf("appending signature: %w", err)
	}

	return bin, nil
}

// stripSignature removes, in place, the attribute certificate table (always at the end
// of the file, where signers append it) and zeroes its data directory entry.
// The bytes before it, including the padding the signer added, stay: they
// are part of the Authenticode hash.
func stripSignature(data []byte) ([]byte, error) {
	f, err := pe.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parsing PE: %w", err)
	}
	defer f.Close() //nolint:errcheck

	var dd pe.DataDirectory

	switch h := f.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		dd = h.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]
	case *pe.OptionalHeader32:
		dd = h.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]
	default:
		return nil, errors.New("PE has no optional header")
	}

	if dd.Size == 0 {
		return data, nil
	}

	if int(dd.VirtualAddress)+int(dd.Size) != len(data) {
		return nil, fmt.Errorf("the certificate table (%d+%d) is not at the end of the file (%d bytes)", dd.VirtualAddress, dd.Size, len(data))
	}

	out := data[:dd.VirtualAddress] // in place: callers pass data they own

	// The security entry: e_lfanew + 4 (signature) + 20 (file header) +
	// the optional header's offset of data directory 4.
	lfanew := int(binary.LittleEndian.Uint32(out[0x3c:]))
	off := lfanew + 4 + 20 + 144 // PE32+

	if _, ok := f.OptionalHeader.(*pe.OptionalHeader32); ok {
		off = lfanew + 4 + 20 + 128
	}

	clear(out[off : off+8])

	return out, nil
}

// authenticodeSignature builds the PKCS#7 SignedData of an Authenticode
// signature (SpcIndirectDataContent over the PE hash) the way go-uefi does,
// but with signingTime given rather than time.Now(): go-uefi has no option
// for it, and a signature stamped with the wall clock makes every build
// differ. A zero signingTime, or one UTCTime cannot carry (outside
// 1950-2049), leaves the attribute out; the firmware never reads it.
func authenticodeSignature(s crypto.Signer, cert *x509.Certificate, peHash []byte, signingTime time.Time) ([]byte, error) {
	content, err := authenticode.CreateSpcIndirectDataContent(peHash, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("creating SpcIndirectDataContent: %w", err)
	}

	// The message digest covers the content's value, without its
	// SEQUENCE tag and length (Authenticode, RFC 2315 9.3).
	contentDigest := sha256.Sum256(content)

	if y := signingTime.UTC().Year(); y < 1950 || y > 2049 {
		signingTime = time.Time{}
	}

	attrs := (&pkcs7.Attributes{
		ContentType:   authenticode.OIDSpcIndirectDataContent,
		MessageDigest: contentDigest[:],
		SigningTime:   signingTime.UTC(),
	}).Marshal()

	// The signature is over the attributes' DER as a SET OF.
	attrsDigest := sha256.Sum256(attrs)

	sig, err := s.Sign(rand.Reader, attrsDigest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing Authenticode attributes: %w", err)
	}

	var attrsBody cryptobyte.String

	in := cryptobyte.String(attrs)
	if !in.ReadASN1(&attrsBody, asn1.SET) {
		return nil, errors.New("encoding Authenticode attributes")
	}

	sha256Alg := func(b *cryptobyte.Builder) {
		b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(pkcs7.OIDDigestAlgorithmSHA256)
			b.AddASN1NULL()
		})
	}

	var out cryptobyte.Builder

	// ContentInfo { signedData, [0] SignedData }
	out.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(pkcs7.OIDSignedData)
		b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1Int64(1)                                                 // version
				b.AddASN1(asn1.SET, func(b *cryptobyte.Builder) { sha256Alg(b) }) // digestAlgorithms
				b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {            // contentInfo
					b.AddASN1ObjectIdentifier(authenticode.OIDSpcIndirectDataContent)
					b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
						b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddBytes(content) })
					})
				})
				b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) { // certificates
					b.AddBytes(cert.Raw)
				})
				b.AddASN1(asn1.SET, func(b *cryptobyte.Builder) { // signerInfos
					b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1Int64(1)
						b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) { // issuerAndSerialNumber
							b.AddBytes(cert.RawIssuer)
							b.AddASN1BigInt(cert.SerialNumber)
						})
						sha256Alg(b)
						b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) { // authenticatedAttributes
							b.AddBytes(attrsBody)
						})
						b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(pkcs7.OIDEncryptionAlgorithmRSA)
							b.AddASN1NULL()
						})
						b.AddASN1OctetString(sig)
					})
				})
			})
		})
	})

	der, err := out.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding Authenticode signature: %w", err)
	}

	return der, nil
}
