package tpmseal

import (
	"encoding/json"
	"fmt"
)

// TokenType is the LUKS2 token type Talos uses for TPM-sealed keys.
const TokenType = "talos-tpm2"

// TokenData is the token's user data, field for field Talos's TPM token,
// so a STATE volume's header reads the same as on a Talos node.
type TokenData struct {
	KeySlots          []int  `json:"keyslots"`
	SealedBlobPrivate []byte `json:"sealed_blob_private"`
	SealedBlobPublic  []byte `json:"sealed_blob_public"`
	PCRs              []int  `json:"pcrs,omitempty"`
	PubKeyPCRs        []int  `json:"pubkey_pcrs"`
	Alg               string `json:"alg"`
	EncryptionVersion string `json:"encryption_version,omitempty"`
	PolicyHash        []byte `json:"policy_hash"`
	KeyName           []byte `json:"key_name"`
}

// Token is the LUKS2 token JSON document.
type Token struct {
	UserData TokenData `json:"UserData"` // field name kept from Talos's encoding
	Type     string    `json:"type"`
	KeySlots []string  `json:"keyslots"` // LUKS2 keyslots the token unlocks
}

// NewToken wraps a sealed key for keyslot slot.
func NewToken(s *Sealed, slot int) *Token {
	return &Token{
		Type:     TokenType,
		KeySlots: []string{fmt.Sprint(slot)},
		UserData: TokenData{
			KeySlots:          []int{slot},
			SealedBlobPrivate: s.Private,
			SealedBlobPublic:  s.Public,
			PCRs:              s.PCRs,
			PubKeyPCRs:        s.PubKeyPCRs,
			Alg:               s.Alg,
			EncryptionVersion: s.EncryptionVersion,
			PolicyHash:        s.PolicyDigest,
			KeyName:           s.KeyName,
		},
	}
}

// ParseToken decodes a token exported from a LUKS2 header.
func ParseToken(data []byte) (*Token, error) {
	var t Token
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("parsing LUKS2 token: %w", err)
	}

	if t.Type != TokenType {
		return nil, fmt.Errorf("parsing LUKS2 token: type %q, want %q", t.Type, TokenType)
	}

	return &t, nil
}

// Sealed returns the sealed key the token carries.
func (t *Token) Sealed() *Sealed {
	d := t.UserData

	return &Sealed{
		Private:           d.SealedBlobPrivate,
		Public:            d.SealedBlobPublic,
		KeyName:           d.KeyName,
		PolicyDigest:      d.PolicyHash,
		PCRs:              d.PCRs,
		PubKeyPCRs:        d.PubKeyPCRs,
		EncryptionVersion: d.EncryptionVersion,
		Alg:               d.Alg,
	}
}
