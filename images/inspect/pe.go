package inspect

import (
	"bufio"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"debug/pe"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/foxboron/go-uefi/authenticode"
)

// PE describes a PE/COFF (EFI) binary; the UKI fields are empty when the
// section is absent.
type PE struct {
	// Machine is the COFF machine type ("amd64", "arm64", or hex).
	Machine string `json:"machine"`
	// Sections in file order.
	Sections []Section `json:"sections"`
	// AuthenticodeSHA256 is the image digest Authenticode signs (what a db
	// hash entry would list).
	AuthenticodeSHA256 string `json:"authenticodeSha256"`
	// Signers are the certificates named by the embedded signatures.
	Signers []Signer `json:"signers"`
	// Verification is set when a certificate was given.
	Verification *Verification `json:"verification,omitempty"`

	// OSRelease is the .osrel section parsed as os-release KEY=value.
	OSRelease map[string]string `json:"osRelease,omitempty"`
	// Cmdline is the .cmdline section (kernel command line).
	Cmdline string `json:"cmdline,omitempty"`
	// Uname is the .uname section (kernel release).
	Uname string `json:"uname,omitempty"`
	// SBAT is the .sbat section (CSV).
	SBAT string `json:"sbat,omitempty"`
	// Profile is the .profile section (multi-profile UKIs).
	Profile string `json:"profile,omitempty"`
	// PCRPublicKey describes the .pcrpkey section.
	PCRPublicKey *PCRPublicKey `json:"pcrPublicKey,omitempty"`
	// PCRSignature is the decoded .pcrsig JSON, keyed by bank (sha256, ...).
	PCRSignature map[string][]PCRSignatureEntry `json:"pcrSignature,omitempty"`
}

// Section is one PE section.
type Section struct {
	Name           string `json:"name"`
	VirtualAddress uint32 `json:"virtualAddress"`
	VirtualSize    uint32 `json:"virtualSize"`
	// RawSize is the size on disk (file-aligned).
	RawSize uint32 `json:"rawSize"`
	Offset  uint32 `json:"offset"`
	// SHA256 covers the section's content: min(VirtualSize, RawSize) bytes,
	// the bytes systemd-stub measures into PCR 11.
	SHA256 string `json:"sha256"`
}

// Signer is a certificate from an embedded Authenticode signature.
type Signer struct {
	Subject  string `json:"subject"`
	Issuer   string `json:"issuer"`
	Serial   string `json:"serial"`
	NotAfter string `json:"notAfter"`
}

// Verification is the result of checking the Authenticode signature
// against a certificate.
type Verification struct {
	// Cert is the certificate file given.
	Cert string `json:"cert"`
	// Subject is that certificate's subject.
	Subject string `json:"subject"`
	// Verified is true when a signature by Cert covers this exact image.
	Verified bool `json:"verified"`
	// Error says why not.
	Error string `json:"error,omitempty"`
}

// PCRPublicKey is the .pcrpkey section.
type PCRPublicKey struct {
	// Type and Bits describe the key ("RSA", 2048).
	Type string `json:"type"`
	Bits int    `json:"bits,omitempty"`
	// Fingerprint is sha256 of the PKCS#1 public key DER: the "pkfp" the
	// .pcrsig entries must carry.
	Fingerprint string `json:"fingerprint,omitempty"`
}

// PCRSignatureEntry is one signed PCR policy of a bank.
type PCRSignatureEntry struct {
	PCRs []int  `json:"pcrs"`
	PKFP string `json:"pkfp"`
	// Pol is the hex PolicyPCR digest the signature covers.
	Pol string `json:"pol"`
	// Sig is the base64 signature.
	Sig string `json:"sig"`
	// Verified is whether Sig verifies over Pol with the .pcrpkey key and
	// PKFP names that key (nil when there is no .pcrpkey).
	Verified *bool `json:"verified,omitempty"`
	// MatchesSections is whether Pol is the PolicyPCR digest of a PCR 11
	// value predicted from this UKI's measured sections (systemd-stub's
	// order) and a boot phase path.
	MatchesSections *bool `json:"matchesSections,omitempty"`
	// Phase names the phase path Pol matched ("talos:enter-initrd:leave-initrd:enter-machined"),
	// or why it could not be checked.
	Phase string `json:"phase,omitempty"`
}

func machineName(m uint16) string {
	switch m {
	case pe.IMAGE_FILE_MACHINE_AMD64:
		return "amd64"
	case pe.IMAGE_FILE_MACHINE_ARM64:
		return "arm64"
	case pe.IMAGE_FILE_MACHINE_I386:
		return "386"
	default:
		return fmt.Sprintf("%#04x", m)
	}
}

// inspectPE reads a PE binary from r. cert may be nil.
func inspectPE(r io.ReaderAt, cert *x509.Certificate, certPath string) (*PE, error) {
	f, err := pe.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("parsing PE: %w", err)
	}
	defer f.Close() //nolint:errcheck

	out := &PE{Machine: machineName(f.Machine), Sections: []Section{}, Signers: []Signer{}}
	contents := map[string][]byte{}

	for _, s := range f.Sections {
		n := min(s.VirtualSize, s.Size)
		if s.VirtualSize == 0 {
			n = s.Size
		}

		h := sha256.New()
		sr := io.NewSectionReader(s, 0, int64(n))

		// Only the small UKI metadata sections are kept in memory; .linux
		// and .initrd are hashed as a stream.
		var keep strings.Builder

		w := io.Writer(h)
		if isMetadata(s.Name) && n <= 1<<20 {
			w = io.MultiWriter(h, &keep)
		}

		if _, err := io.Copy(w, sr); err != nil {
			return nil, fmt.Errorf("reading section %s: %w", s.Name, err)
		}

		if keep.Len() > 0 {
			contents[s.Name] = []byte(keep.String())
		}

		out.Sections = append(out.Sections, Section{
			Name:           s.Name,
			VirtualAddress: s.VirtualAddress,
			VirtualSize:    s.VirtualSize,
			RawSize:        s.Size,
			Offset:         s.Offset,
			SHA256:         hex.EncodeToString(h.Sum(nil)),
		})
	}

	if err := out.decodeUKI(contents); err != nil {
		return nil, err
	}

	if out.PCRSignature != nil {
		if err := out.matchSections(f); err != nil {
			return nil, err
		}
	}

	if err := out.authenticode(r, cert, certPath); err != nil {
		return nil, err
	}

	return out, nil
}

func isMetadata(name string) bool {
	switch name {
	case ".osrel", ".cmdline", ".uname", ".sbat", ".profile", ".pcrpkey", ".pcrsig":
		return true
	}

	return false
}

func text(b []byte) string { return strings.TrimRight(string(b), "\x00\n\r\t ") }

func (p *PE) decodeUKI(c map[string][]byte) error {
	if b, ok := c[".osrel"]; ok {
		p.OSRelease = parseOSRelease(text(b))
	}

	p.Cmdline = text(c[".cmdline"])
	p.Uname = text(c[".uname"])
	p.SBAT = text(c[".sbat"])
	p.Profile = text(c[".profile"])

	var pub *rsa.PublicKey

	if b, ok := c[".pcrpkey"]; ok {
		p.PCRPublicKey, pub = parsePCRKey(b)
	}

	if b, ok := c[".pcrsig"]; ok {
		var sig map[string][]PCRSignatureEntry
		if err := json.Unmarshal([]byte(text(b)), &sig); err != nil {
			return fmt.Errorf("decoding .pcrsig: %w", err)
		}

		for bank, entries := range sig {
			for i := range entries {
				if pub != nil {
					ok := verifyPCRSig(bank, &entries[i], pub, p.PCRPublicKey.Fingerprint)
					entries[i].Verified = &ok
				}
			}
		}

		p.PCRSignature = sig
	}

	return nil
}

// parseOSRelease parses os-release(5): KEY=value lines, values optionally
// quoted with shell-style escapes.
func parseOSRelease(s string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))

	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}

		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}

		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			if v[0] == '"' {
				if u, err := strconv.Unquote(v); err == nil {
					v = u
				} else {
					v = v[1 : len(v)-1]
				}
			} else {
				v = v[1 : len(v)-1]
			}
		}

		out[k] = v
	}

	return out
}

func parsePCRKey(b []byte) (*PCRPublicKey, *rsa.PublicKey) {
	block, _ := pem.Decode(b)
	if block == nil {
		return &PCRPublicKey{Type: "unparseable"}, nil
	}

	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		if rk, err1 := x509.ParsePKCS1PublicKey(block.Bytes); err1 == nil {
			k = rk
		} else {
			return &PCRPublicKey{Type: "unparseable"}, nil
		}
	}

	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return &PCRPublicKey{Type: fmt.Sprintf("%T", k)}, nil
	}

	// systemd's pkfp is over the PKCS#1 form, not the SPKI the PEM holds.
	fp := sha256.Sum256(x509.MarshalPKCS1PublicKey(rk))

	return &PCRPublicKey{Type: "RSA", Bits: rk.N.BitLen(), Fingerprint: hex.EncodeToString(fp[:])}, rk
}

var bankHashes = map[string]crypto.Hash{
	"sha1":   crypto.SHA1,
	"sha256": crypto.SHA256,
	"sha384": crypto.SHA384,
	"sha512": crypto.SHA512,
}

// verifyPCRSig checks an entry the way the TPM's PolicyAuthorize will: an
// RSASSA-PKCS1-v1_5 signature, with the bank's hash, over the digest of the
// policy digest, by the key whose fingerprint the entry names.
func verifyPCRSig(bank string, e *PCRSignatureEntry, pub *rsa.PublicKey, fp string) bool {
	h, ok := bankHashes[bank]
	if !ok || !h.Available() || e.PKFP != fp {
		return false
	}

	pol, err := hex.DecodeString(e.Pol)
	if err != nil {
		return false
	}

	sig, err := base64.StdEncoding.DecodeString(e.Sig)
	if err != nil {
		return false
	}

	d := h.New()
	d.Write(pol)

	return rsa.VerifyPKCS1v15(pub, h, d.Sum(nil), sig) == nil
}

func (p *PE) authenticode(r io.ReaderAt, cert *x509.Certificate, certPath string) error {
	bin, err := authenticode.Parse(r)
	if err != nil {
		return fmt.Errorf("reading Authenticode data: %w", err)
	}

	p.AuthenticodeSHA256 = hex.EncodeToString(bin.Hash(crypto.SHA256))

	if err := checkCertTable(r, bin.Datadir); err != nil {
		return fmt.Errorf("certificate table: %w", err)
	}

	sigs, err := bin.Signatures()
	if err != nil {
		return fmt.Errorf("reading signatures: %w", err)
	}

	for _, s := range sigs {
		a, err := authenticode.ParseAuthenticode(s.Certificate)
		if err != nil {
			p.Signers = append(p.Signers, Signer{Subject: "(unparseable signature: " + err.Error() + ")"})

			continue
		}

		for _, c := range a.Pkcs.Certs {
			p.Signers = append(p.Signers, Signer{
				Subject:  c.Subject.String(),
				Issuer:   c.Issuer.String(),
				Serial:   c.SerialNumber.Text(16),
				NotAfter: c.NotAfter.UTC().Format("2006-01-02T15:04:05Z"),
			})
		}
	}

	if cert == nil {
		return nil
	}

	v := &Verification{Cert: certPath, Subject: cert.Subject.String()}
	p.Verification = v

	ok, err := bin.Verify(cert)

	switch {
	case errors.Is(err, authenticode.ErrNoSignatures):
		v.Error = "the binary is not signed"
	case errors.Is(err, authenticode.ErrNoValidSignatures):
		v.Error = fmt.Sprintf("no signature by this certificate (%s, serial %s); signed by: %s",
			cert.Subject, cert.SerialNumber.Text(16), signerNames(p.Signers))
	case err != nil && strings.Contains(err.Error(), "incorrect digest"):
		v.Error = "the image digest does not match its signature (modified after signing)"
	case err != nil:
		v.Error = err.Error()
	case !ok:
		v.Error = "signature does not verify"
	default:
		v.Verified = true
	}

	return nil
}

func signerNames(s []Signer) string {
	names := make([]string, 0, len(s))
	for _, x := range s {
		names = append(names, x.Subject+", serial "+x.Serial)
	}

	if len(names) == 0 {
		return "nobody"
	}

	return strings.Join(names, "; ")
}

// checkCertTable validates the WIN_CERTIFICATE framing before go-uefi reads
// it: a length below the header size would underflow its allocation.
func checkCertTable(r io.ReaderAt, dd pe.DataDirectory) error {
	if dd.Size == 0 {
		return nil
	}

	if dd.Size > 64<<20 {
		return fmt.Errorf("size %d is implausible", dd.Size)
	}

	table := make([]byte, dd.Size)
	if _, err := r.ReadAt(table, int64(dd.VirtualAddress)); err != nil {
		return fmt.Errorf("reading %d bytes at %d: %w", dd.Size, dd.VirtualAddress, err)
	}

	for off := 0; len(table)-off > 8; {
		length := int(binary.LittleEndian.Uint32(table[off:]))
		if length <= 8 || length > len(table)-off {
			return fmt.Errorf("entry at %d has length %d", off, length)
		}

		off += (length + 7) &^ 7
	}

	return nil
}
