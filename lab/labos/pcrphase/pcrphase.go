// Package pcrphase extends PCR 11 with boot phase strings at the points
// where Talos's machined does, so a disk key sealed to the signed
// "enter-machined" value can only be unsealed between that point and
// "start-the-world".
package pcrphase

import (
	"crypto"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// PCR is the register systemd-stub measures the UKI into and the phases extend.
const PCR = 11

// Phase is a string extended into PCR 11.
type Phase string

// The phases, in the order they are extended (Talos's secureboot phases;
// systemd-pcrphase uses the same strings).
const (
	EnterInitrd   Phase = "enter-initrd"
	LeaveInitrd   Phase = "leave-initrd"
	EnterMachined Phase = "enter-machined"
	StartTheWorld Phase = "start-the-world"
)

// Signed lists the phases a UKI's .pcrsig predicts; the policy is signed only
// for the value after the last of them.
var Signed = []Phase{EnterInitrd, LeaveInitrd, EnterMachined}

// Extend extends PCR 11 with phase in every allocated PCR bank the TPM
// reports, each with the digest of the phase string in that bank's
// algorithm, as systemd-pcrphase does; extending only sha256 would leave
// the other banks unable to reproduce the prediction.
func Extend(t transport.TPM, phase Phase) error {
	banks, err := AllocatedBanks(t)
	if err != nil {
		return fmt.Errorf("extending phase %s: %w", phase, err)
	}

	digests := make([]tpm2.TPMTHA, 0, len(banks))

	for _, alg := range banks {
		h, err := alg.Hash()
		if err != nil {
			continue // a bank Go cannot hash (e.g. SM3): leave it alone
		}

		hh := h.New()
		hh.Write([]byte(phase))
		digests = append(digests, tpm2.TPMTHA{HashAlg: alg, Digest: hh.Sum(nil)})
	}

	if len(digests) == 0 {
		return fmt.Errorf("extending phase %s: no usable PCR bank", phase)
	}

	_, err = tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(PCR), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: digests},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("extending phase %s: %w", phase, err)
	}

	return nil
}

// AllocatedBanks returns the hash algorithms of the PCR banks that have PCR 11 allocated.
func AllocatedBanks(t transport.TPM) ([]tpm2.TPMAlgID, error) {
	resp, err := tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("reading PCR banks: %w", err)
	}

	sel, err := resp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, fmt.Errorf("reading PCR banks: %w", err)
	}

	var algs []tpm2.TPMAlgID

	for _, s := range sel.PCRSelections {
		if len(s.PCRSelect) > PCR/8 && s.PCRSelect[PCR/8]&(1<<(PCR%8)) != 0 {
			algs = append(algs, s.Hash)
		}
	}

	return algs, nil
}

// Predict returns the value a PCR holding start has after extending phases
// with hash h (start nil means all zeroes).
func Predict(h crypto.Hash, start []byte, phases ...Phase) []byte {
	v := start
	if v == nil {
		v = make([]byte, h.Size())
	}

	for _, p := range phases {
		ph := h.New()
		ph.Write([]byte(p))

		e := h.New()
		e.Write(v)
		e.Write(ph.Sum(nil))
		v = e.Sum(nil)
	}

	return v
}
