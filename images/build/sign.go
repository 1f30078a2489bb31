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
	"github.com/foxboron/go-uefi/efi/signature"
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

// signPEInPlace Authenticode-signs the PE binary at path where it lies,
// replacing any signature it carries, with the same bytes signPEFile would
// write to a copy. The UKI step uses it on the imager's 29 MB UKI: reading
// it into memory (fresh pages, faulted in and zeroed) and writing a signed
// copy was ~0.25 s of the step on this 2-core machine; here the file is
// read from the page cache to hash it and only its security directory
// entry and its end are written.
func signPEInPlace(path string, s crypto.Signer, cert *x509.Certificate, signingTime time.Time) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("signing %s: %w", path, err)
	}
	defer f.Close() //nolint:errcheck // closed below on success

	if err := signOpenPE(f, s, cert, signingTime); err != nil {
		return fmt.Errorf("signing %s: %w", path, err)
	}

	return nil
}

func signOpenPE(f *os.File, s crypto.Signer, cert *x509.Certificate, signingTime time.Time) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}

	ddOff, dd, err := securityEntry(f)
	if err != nil {
		return err
	}

	// Stripped as stripSignature strips a copy: the entry zeroed, the table
	// (at the end of the file) cut off, the signer's padding before it kept.
	unsigned := st.Size()
	if dd.Size != 0 {
		if int64(dd.VirtualAddress)+int64(dd.Size) != st.Size() {
			return fmt.Errorf("the certificate table (%d+%d) is not at the end of the file (%d bytes)", dd.VirtualAddress, dd.Size, st.Size())
		}

		unsigned = int64(dd.VirtualAddress)
	}

	if _, err := f.WriteAt(make([]byte, 8), ddOff); err != nil {
		return err
	}

	if err := f.Truncate(unsigned); err != nil {
		return err
	}

	bin, err := authenticode.Parse(f)
	if err != nil {
		return fmt.Errorf("parsing PE: %w", err)
	}

	sig, err := authenticodeSignature(s, cert, bin.Hash(crypto.SHA256), signingTime)
	if err != nil {
		return err
	}

	if err := bin.AppendSignature(sig); err != nil {
		return fmt.Errorf("appending signature: %w", err)
	}

	// What go-uefi's Open() streams after the unsigned bytes: zero padding
	// to 8 bytes, then the certificate table (one WIN_CERTIFICATE padded
	// to 8 bytes). The new entry (bin.Datadir) must describe exactly that.
	var tail bytes.Buffer

	lead, _ := authenticode.PaddingBytes(int(unsigned), 8)
	tail.Write(lead)

	wc := signature.WINCertificate{
		Length:      uint32(signature.SizeofWINCertificate + len(sig)), //nolint:gosec // a signature is a few kB
		Revision:    0x0200,
		CertType:    signature.WIN_CERT_TYPE_PKCS_SIGNED_DATA,
		Certificate: sig,
	}
	signature.WriteWinCertificate(&tail, &wc)

	pad, _ := authenticode.PaddingBytes(int(wc.Length), 8)
	tail.Write(pad)

	if int64(bin.Datadir.VirtualAddress) != unsigned+int64(len(lead)) ||
		int64(bin.Datadir.VirtualAddress)+int64(bin.Datadir.Size) != unsigned+int64(tail.Len()) {
		return fmt.Errorf("certificate table at %d+%d does not match the %d bytes appended after %d", bin.Datadir.VirtualAddress, bin.Datadir.Size, tail.Len(), unsigned)
	}

	entry := make([]byte, 8)
	binary.LittleEndian.PutUint32(entry, bin.Datadir.VirtualAddress)
	binary.LittleEndian.PutUint32(entry[4:], bin.Datadir.Size)

	if _, err := f.WriteAt(tail.Bytes(), unsigned); err != nil {
		return err
	}

	if _, err := f.WriteAt(entry, ddOff); err != nil {
		return err
	}

	return f.Close()
}

// securityEntry returns the file offset and value of a PE file's security
// (certificate table) data directory entry.
func securityEntry(r io.ReaderAt) (int64, pe.DataDirectory, error) {
	f, err := pe.NewFile(r)
	if err != nil {
		return 0, pe.DataDirectory{}, fmt.Errorf("parsing PE: %w", err)
	}
	defer f.Close() //nolint:errcheck

	var lfanew [4]byte
	if _, err := r.ReadAt(lfanew[:], 0x3c); err != nil {
		return 0, pe.DataDirectory{}, fmt.Errorf("parsing PE: %w", err)
	}

	// e_lfanew + 4 (signature) + 20 (file header) + the optional header's
	// offset of data directory 4.
	off := int64(binary.LittleEndian.Uint32(lfanew[:])) + 4 + 20

	switch h := f.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		return off + 144, h.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY], nil
	case *pe.OptionalHeader32:
		return off + 128, h.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY], nil
	default:
		return 0, pe.DataDirectory{}, errors.New("PE has no optional header")
	}
}
