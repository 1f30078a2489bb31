package inspect

import (
	"crypto"
	"crypto/sha256"
	"debug/pe"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// ukiPCR is the PCR systemd-stub measures the UKI's sections into.
const ukiPCR = 11

// measuredSections are the UKI sections systemd-stub measures into PCR 11,
// in the order it measures them (systemd's src/fundamental/uki.h, v257,
// the stub in the Talos v1.14 base and the lab base). .pcrsig is not
// measured: it is what signs the result.
var measuredSections = []string{
	".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb",
	".uname", ".sbat", ".pcrpkey", ".profile", ".dtbauto", ".hwids",
}

// phasePaths are the boot phases extended into PCR 11 after the sections,
// for each signer the base may have used. A signed policy is for the PCR
// value after some prefix of one of these paths.
var phasePaths = map[string][]string{
	// Talos (machined extends these; its imager signs for enter-machined).
	"talos": {"enter-initrd", "leave-initrd", "enter-machined"},
	// systemd-measure's default phases (systemd-pcrphase).
	"systemd": {"enter-initrd", "leave-initrd", "sysinit", "ready"},
}

var tpmBanks = map[string]tpm2.TPMAlgID{
	"sha1":   tpm2.TPMAlgSHA1,
	"sha256": tpm2.TPMAlgSHA256,
	"sha384": tpm2.TPMAlgSHA384,
	"sha512": tpm2.TPMAlgSHA512,
}

// pcrExtend is the TPM's extend: new = H(old || H(data)).
func pcrExtend(h crypto.Hash, pcr, data []byte) []byte {
	d := h.New()
	d.Write(data)
	sum := d.Sum(nil)

	d.Reset()
	d.Write(pcr)
	d.Write(sum)

	return d.Sum(nil)
}

// policyPCR is the TPM2_PolicyPCR digest a trial session computes for PCR
// 11 of bank alg holding value: the policy session hash is always SHA-256,
// so the PCR digest is SHA-256 of the value whatever the bank.
func policyPCR(alg tpm2.TPMAlgID, value []byte) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}

	mask := make([]byte, 3)
	mask[ukiPCR/8] |= 1 << (ukiPCR % 8)
	digest := sha256.Sum256(value)

	cmd := tpm2.PolicyPCR{
		PcrDigest: tpm2.TPM2BDigest{Buffer: digest[:]},
		Pcrs:      tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: alg, PCRSelect: mask}}},
	}

	if err := cmd.Update(calc); err != nil {
		return nil, err
	}

	return calc.Hash().Digest, nil
}

// sectionDigests hashes, in one pass per section, every measured section
// of f (its first min(VirtualSize, SizeOfRawData) bytes, what the stub
// measures) with the hash of every bank named in p's .pcrsig.
func (p *PE) sectionDigests(f *pe.File) (map[string]map[string][]byte, error) {
	out := map[string]map[string][]byte{}

	for _, s := range f.Sections {
		if !slices.Contains(measuredSections, s.Name) {
			continue
		}

		if _, dup := out[s.Name]; dup {
			continue // the stub measures the first section of a name
		}

		hashes := map[string]hash.Hash{}
		writers := []io.Writer{}

		for bank := range p.PCRSignature {
			if alg, ok := tpmBanks[bank]; ok {
				if h, err := alg.Hash(); err == nil && h.Available() {
					hashes[bank] = h.New()
					writers = append(writers, hashes[bank])
				}
			}
		}

		n := min(s.VirtualSize, s.Size)
		if s.VirtualSize == 0 {
			n = s.Size
		}

		if _, err := io.Copy(io.MultiWriter(writers...), io.NewSectionReader(s, 0, int64(n))); err != nil {
			return nil, fmt.Errorf("reading section %s: %w", s.Name, err)
		}

		out[s.Name] = map[string][]byte{}
		for bank, h := range hashes {
			out[s.Name][bank] = h.Sum(nil)
		}
	}

	return out, nil
}

// expectedPolicies returns, for one bank, the PolicyPCR digest (hex) of
// every phase the PCR 11 value can be signed for, each named by its path
// ("talos:enter-initrd:leave-initrd:enter-machined"). digests holds each
// present measured section's digest by bank.
func expectedPolicies(bank string, digests map[string]map[string][]byte) (map[string]string, error) {
	alg, ok := tpmBanks[bank]
	if !ok {
		return nil, fmt.Errorf("unknown PCR bank %q", bank)
	}

	h, err := alg.Hash()
	if err != nil || !h.Available() {
		return nil, fmt.Errorf("PCR bank %q: hash unavailable", bank)
	}

	pcr := make([]byte, h.Size())

	for _, name := range measuredSections {
		d, ok := digests[name]
		if !ok {
			continue
		}

		pcr = pcrExtend(h, pcr, append([]byte(name), 0))
		pcr = extendDigest(h, pcr, d[bank])
	}

	out := map[string]string{}

	for signer, phases := range phasePaths {
		value := pcr

		for i, phase := range phases {
			value = pcrExtend(h, value, []byte(phase))

			pol, err := policyPCR(alg, value)
			if err != nil {
				return nil, fmt.Errorf("computing PCR policy: %w", err)
			}

			out[hex.EncodeToString(pol)] = signer + ":" + strings.Join(phases[:i+1], ":")
		}
	}

	return out, nil
}

// extendDigest extends pcr by an already computed digest of the data.
func extendDigest(h crypto.Hash, pcr, digest []byte) []byte {
	d := h.New()
	d.Write(pcr)
	d.Write(digest)

	return d.Sum(nil)
}

// matchSections checks every signed policy against the policies the UKI's
// own sections predict: a .pcrsig signed for other sections (a changed
// .cmdline, re-signed Authenticode) would be refused by the TPM at unlock.
func (p *PE) matchSections(f *pe.File) error {
	digests, err := p.sectionDigests(f)
	if err != nil {
		return err
	}

	for bank, entries := range p.PCRSignature {
		expected, err := expectedPolicies(bank, digests)

		for i := range entries {
			e := &entries[i]
			match := false

			switch {
			case err != nil:
				e.Phase = err.Error()
			case !slices.Equal(e.PCRs, []int{ukiPCR}):
				e.Phase = fmt.Sprintf("policy for PCRs %v, not only PCR %d: not checked against the sections", e.PCRs, ukiPCR)
			default:
				e.Phase, match = expected[strings.ToLower(e.Pol)]
			}

			e.MatchesSections = &match
		}
	}

	return nil
}

// PCRPolicyFailures lists the .pcrsig entries whose signature or policy
// fails: either would make the TPM refuse to unseal.
func (p *PE) PCRPolicyFailures() []string {
	var out []string

	banks := make([]string, 0, len(p.PCRSignature))
	for bank := range p.PCRSignature {
		banks = append(banks, bank)
	}

	slices.Sort(banks)

	for _, bank := range banks {
		for i, e := range p.PCRSignature[bank] {
			if e.Verified != nil && !*e.Verified {
				out = append(out, fmt.Sprintf(".pcrsig %s[%d]: signature does not verify with .pcrpkey", bank, i))
			}

			if e.MatchesSections != nil && !*e.MatchesSections {
				why := "the signed policy does not match the PCR 11 value predicted from the UKI's sections (a section changed after the policy was signed)"
				if e.Phase != "" {
					why = e.Phase
				}

				out = append(out, fmt.Sprintf("pcrsig mismatch: %s[%d]: %s", bank, i, why))
			}
		}
	}

	return out
}
