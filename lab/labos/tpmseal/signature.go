package tpmseal

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Signature is systemd's .pcrsig JSON (tpm2-pcr-signature.json), keyed by bank.
type Signature struct {
	SHA1   []BankData `json:"sha1,omitempty"`
	SHA256 []BankData `json:"sha256,omitempty"`
	SHA384 []BankData `json:"sha384,omitempty"`
	SHA512 []BankData `json:"sha512,omitempty"`
}

// BankData is one signed policy.
type BankData struct {
	PCRs []int  `json:"pcrs"` // PCRs the policy covers
	PKFP string `json:"pkfp"` // sha256 of the signer's PKCS#1 public key, hex
	Pol  string `json:"pol"`  // PolicyPCR digest, hex
	Sig  string `json:"sig"`  // signature over sha256(pol), base64
}

// ParseSignature decodes a .pcrsig JSON document.
func ParseSignature(data []byte) (*Signature, error) {
	var s Signature
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parsing PCR signature: %w", err)
	}

	return &s, nil
}

// Find returns the sha256 entry whose policy equals pol.
func (s *Signature) Find(pol []byte) (BankData, error) {
	for _, b := range s.SHA256 {
		d, err := hex.DecodeString(b.Pol)
		if err != nil {
			return BankData{}, fmt.Errorf("parsing PCR signature: pol: %w", err)
		}

		if bytes.Equal(d, pol) {
			return b, nil
		}
	}

	return BankData{}, ErrNoMatchingSignature
}

// Signature decodes the base64 signature.
func (b BankData) Signature() ([]byte, error) {
	s, err := base64.StdEncoding.DecodeString(b.Sig)
	if err != nil {
		return nil, fmt.Errorf("parsing PCR signature: sig: %w", err)
	}

	return s, nil
}

func encodeSig(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
