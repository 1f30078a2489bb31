//go:build cgo

// Package hsm opens the PKCS#11 token a keys folder names (keys.PKCS11)
// with ThalesGroup/crypto11. PKCS#11 modules are C libraries, so this
// package needs cgo: imagectl is built with CGO_ENABLED=1 (Makefile); the
// rest of the repository, labos included, stays CGO_ENABLED=0.
package hsm

import (
	"crypto"
	"errors"
	"fmt"

	"github.com/ThalesGroup/crypto11"

	"github.com/labfleet/labfleet/images/keys"
)

// Available reports whether this binary can open tokens (built with cgo).
const Available = true

// Token is an open session pool on a token.
type Token struct {
	ctx *crypto11.Context
	cfg *keys.PKCS11
}

// Open logs into the token cfg names with pin.
func Open(cfg *keys.PKCS11, pin string) (*Token, error) {
	if cfg.Module == "" || cfg.TokenLabel == "" {
		return nil, fmt.Errorf("%s: module and tokenLabel are required", keys.PKCS11File)
	}

	if pin == "" {
		return nil, errors.New("the PKCS#11 token needs its user PIN: set LABFLEET_PKCS11_PIN")
	}

	ctx, err := crypto11.Configure(&crypto11.Config{Path: cfg.Module, TokenLabel: cfg.TokenLabel, Pin: pin})
	if err != nil {
		return nil, fmt.Errorf("opening PKCS#11 token %q with module %s: %w", cfg.TokenLabel, cfg.Module, err)
	}

	return &Token{ctx: ctx, cfg: cfg}, nil
}

// Signer finds the key pair labelled label.
func (t *Token) Signer(label string) (crypto.Signer, error) {
	s, err := t.ctx.FindKeyPair(nil, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("PKCS#11 token %q: key %q: %w", t.cfg.TokenLabel, label, err)
	}

	if s == nil {
		return nil, fmt.Errorf("PKCS#11 token %q has no key pair labelled %q (%s): create it with `imagectl keys generate --pkcs11`", t.cfg.TokenLabel, label, keys.PKCS11File)
	}

	return s, nil
}

// GenerateRSA creates an RSA key pair inside the token. crypto11 marks the
// private key sensitive and not extractable: it never leaves the token.
func (t *Token) GenerateRSA(label string, bits int) (crypto.Signer, error) {
	if existing, err := t.ctx.FindKeyPair(nil, []byte(label)); err == nil && existing != nil {
		return nil, fmt.Errorf("PKCS#11 token %q already holds a key labelled %q: %w", t.cfg.TokenLabel, label, keys.ErrExists)
	}

	s, err := t.ctx.GenerateRSAKeyPairWithLabel([]byte(label), []byte(label), bits)
	if err != nil {
		return nil, fmt.Errorf("PKCS#11 token %q: generating RSA-%d key %q: %w", t.cfg.TokenLabel, bits, label, err)
	}

	return s, nil
}

// Extractable reports whether the private key labelled label can leave
// the token (CKA_EXTRACTABLE, or CKA_SENSITIVE unset).
func (t *Token) Extractable(label string) (bool, error) {
	s, err := t.Signer(label)
	if err != nil {
		return false, err
	}

	attrs, err := t.ctx.GetAttributes(s, []crypto11.AttributeType{crypto11.CkaExtractable, crypto11.CkaSensitive})
	if err != nil {
		return false, fmt.Errorf("PKCS#11 token %q: key %q attributes: %w", t.cfg.TokenLabel, label, err)
	}

	isTrue := func(a crypto11.AttributeType) bool {
		v := attrs[a]
		return v != nil && len(v.Value) == 1 && v.Value[0] != 0
	}

	return isTrue(crypto11.CkaExtractable) || !isTrue(crypto11.CkaSensitive), nil
}

// Close ends the sessions.
func (t *Token) Close() error { return t.ctx.Close() }
