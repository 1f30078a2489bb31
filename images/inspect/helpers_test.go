package inspect

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/pe"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/foxboron/go-uefi/authenticode"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/keys"
)

type testSection struct {
	name string
	data []byte
}

func writeFileErr(path string, data []byte) error { return os.WriteFile(path, data, 0o644) }

func alignUp(v, a uint32) uint32 { return (v + a - 1) &^ (a - 1) }

// buildPE writes a minimal but well-formed PE32+ EFI application holding
// the given sections: enough for debug/pe, Authenticode and sbsigntool.
func buildPE(t testing.TB, sections []testSection) []byte {
	t.Helper()

	const (
		fileAlign = 0x200
		sectAlign = 0x1000
		peOffset  = 0x40
	)

	headerLen := uint32(peOffset + 4 + 20 + 240 + 40*len(sections))
	sizeOfHeaders := alignUp(headerLen, fileAlign)

	var (
		hdrs    []pe.SectionHeader32
		body    bytes.Buffer
		rawOff  = sizeOfHeaders
		va      = uint32(sectAlign)
		imgSize = uint32(sectAlign)
	)

	for _, s := range sections {
		raw := alignUp(uint32(len(s.data)), fileAlign)

		var name [8]uint8
		copy(name[:], s.name)

		hdrs = append(hdrs, pe.SectionHeader32{
			Name:             name,
			VirtualSize:      uint32(len(s.data)),
			VirtualAddress:   va,
			SizeOfRawData:    raw,
			PointerToRawData: rawOff,
			Characteristics:  0x40000040, // initialized data, readable
		})

		body.Write(s.data)
		body.Write(make([]byte, raw-uint32(len(s.data))))

		rawOff += raw
		va += alignUp(uint32(len(s.data)), sectAlign)
		imgSize = va
	}

	var out bytes.Buffer

	dos := make([]byte, peOffset)
	copy(dos, "MZ")
	binary.LittleEndian.PutUint32(dos[0x3c:], peOffset)
	out.Write(dos)
	out.WriteString("PE\x00\x00")

	w := func(v any) { require.NoError(t, binary.Write(&out, binary.LittleEndian, v)) }

	w(pe.FileHeader{
		Machine:              pe.IMAGE_FILE_MACHINE_AMD64,
		NumberOfSections:     uint16(len(sections)),
		SizeOfOptionalHeader: 240,
		Characteristics:      pe.IMAGE_FILE_EXECUTABLE_IMAGE | pe.IMAGE_FILE_LARGE_ADDRESS_AWARE,
	})
	w(pe.OptionalHeader64{
		Magic:               0x20b,
		AddressOfEntryPoint: sectAlign,
		BaseOfCode:          sectAlign,
		ImageBase:           0x10000000,
		SectionAlignment:    sectAlign,
		FileAlignment:       fileAlign,
		SizeOfImage:         imgSize,
		SizeOfHeaders:       sizeOfHeaders,
		Subsystem:           pe.IMAGE_SUBSYSTEM_EFI_APPLICATION,
		NumberOfRvaAndSizes: 16,
	})

	for _, h := range hdrs {
		w(h)
	}

	out.Write(make([]byte, int(sizeOfHeaders)-out.Len()))
	out.Write(body.Bytes())

	return out.Bytes()
}

func signPE(t testing.TB, data []byte, key crypto.Signer, cert *x509.Certificate) []byte {
	t.Helper()

	bin, err := authenticode.Parse(bytes.NewReader(data))
	require.NoError(t, err)

	_, err = bin.Sign(key, cert)
	require.NoError(t, err)

	return bin.Bytes()
}

// Generating RSA-4096 keys costs about a second: share one set.
var (
	keysOnce sync.Once
	keysSet  *keys.Set
	keysErr  error
	keysBase string
)

func TestMain(m *testing.M) {
	code := m.Run()

	if keysBase != "" {
		os.RemoveAll(keysBase) //nolint:errcheck
	}

	os.Exit(code)
}

func testKeys(t testing.TB) *keys.Set {
	t.Helper()

	keysOnce.Do(func() {
		keysBase, keysErr = os.MkdirTemp("", "inspect-keys-")
		if keysErr == nil {
			keysSet, keysErr = keys.Generate(filepath.Join(keysBase, "keys"), keys.GenerateOptions{CommonName: "inspect-test"})
		}
	})

	require.NoError(t, keysErr)

	return keysSet
}

func loadRSA(t testing.TB, path string) *rsa.PrivateKey {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err)

	block, _ := pem.Decode(data)
	require.NotNil(t, block)

	k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	require.NoError(t, err)

	return k
}

func loadCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()

	c, err := readCertificate(path)
	require.NoError(t, err)

	return c
}

// rogueCert makes a self-signed signer that is not in any db.
func rogueCert(t testing.TB, dir string) (*rsa.PrivateKey, *x509.Certificate, string) {
	t.Helper()

	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "rogue"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	require.NoError(t, err)

	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)

	path := filepath.Join(dir, "rogue.pem")
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))

	return k, c, path
}

// ukiSections returns the sections of a fake UKI whose .pcrsig is signed
// by pcrKey the way Talos's imager signs it: for PCR 11 after the measured
// sections and the phases up to enter-machined.
func ukiSections(t testing.TB, pcrKey *rsa.PrivateKey) []testSection {
	t.Helper()

	return ukiSectionsSignedFor(t, pcrKey, nil)
}

// ukiSectionsSignedFor signs the policy for the sections as changed by
// signedFor (nil: the sections themselves), so a test can make a .pcrsig
// that belongs to other sections.
func ukiSectionsSignedFor(t testing.TB, pcrKey *rsa.PrivateKey, signedFor func([]testSection) []testSection) []testSection {
	t.Helper()

	spki, err := x509.MarshalPKIXPublicKey(&pcrKey.PublicKey)
	require.NoError(t, err)

	linux := make([]byte, 3000)
	_, err = rand.Read(linux)
	require.NoError(t, err)

	sections := []testSection{
		{".osrel", []byte("NAME=\"Talos\"\nID=talos\nVERSION_ID=v1.14.1\nPRETTY_NAME=\"Talos (v1.14.1)\"\n")},
		{".cmdline", []byte("console=ttyS0 talos.platform=metal\x00")},
		{".uname", []byte("6.12.48-talos")},
		{".sbat", []byte("sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n")},
		{".pcrpkey", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})},
		{".linux", linux},
	}

	measured := sections
	if signedFor != nil {
		measured = signedFor(slices.Clone(sections))
	}

	fp := sha256.Sum256(x509.MarshalPKCS1PublicKey(&pcrKey.PublicKey))
	pol := talosPolicy(measured)
	d := sha256.Sum256(pol)

	sig, err := rsa.SignPKCS1v15(rand.Reader, pcrKey, crypto.SHA256, d[:])
	require.NoError(t, err)

	pcrsig, err := json.Marshal(map[string][]map[string]any{
		"sha256": {{
			"pcrs": []int{11},
			"pkfp": hex.EncodeToString(fp[:]),
			"pol":  hex.EncodeToString(pol),
			"sig":  base64.StdEncoding.EncodeToString(sig),
		}},
	})
	require.NoError(t, err)

	return slices.Insert(sections, 5, testSection{".pcrsig", pcrsig})
}

// talosPolicy is the sha256-bank PolicyPCR digest for PCR 11 after the
// given sections (in systemd-stub's order) and Talos's phases up to
// enter-machined, written out from the TPM 2.0 spec (part 3, 23.7) as an
// oracle independent of the code under test.
func talosPolicy(sections []testSection) []byte {
	extend := func(pcr, data []byte) []byte {
		d := sha256.Sum256(data)
		n := sha256.Sum256(append(append([]byte{}, pcr...), d[:]...))

		return n[:]
	}

	byName := map[string][]byte{}
	for _, s := range sections {
		byName[s.name] = s.data
	}

	pcr := make([]byte, 32)

	for _, name := range []string{".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey", ".profile"} {
		if data, ok := byName[name]; ok {
			pcr = extend(pcr, append([]byte(name), 0))
			pcr = extend(pcr, data)
		}
	}

	for _, phase := range []string{"enter-initrd", "leave-initrd", "enter-machined"} {
		pcr = extend(pcr, []byte(phase))
	}

	pcrDigest := sha256.Sum256(pcr)

	var msg bytes.Buffer
	msg.Write(make([]byte, 32))               // policyDigest of a fresh session
	msg.Write([]byte{0x00, 0x00, 0x01, 0x7f}) // TPM_CC_PolicyPCR
	msg.Write([]byte{0x00, 0x00, 0x00, 0x01}) // TPML_PCR_SELECTION.count
	msg.Write([]byte{0x00, 0x0b, 0x03})       // TPM_ALG_SHA256, sizeofSelect
	msg.Write([]byte{0x00, 0x08, 0x00})       // PCR 11
	msg.Write(pcrDigest[:])

	pol := sha256.Sum256(msg.Bytes())

	return pol[:]
}
