//go:build !cgo

package hsm

import (
	"crypto"
	"errors"

	"github.com/labfleet/labfleet/images/keys"
)

// Available reports whether this binary can open tokens (built with cgo).
const Available = false

// ErrNoCgo: PKCS#11 modules are C libraries.
var ErrNoCgo = errors.New("this imagectl was built without cgo and cannot use a PKCS#11 token (" + keys.PKCS11File + "): build it with `make build` (CGO_ENABLED=1)")

// Token is unavailable without cgo.
type Token struct{}

// Open fails: built without cgo.
func Open(*keys.PKCS11, string) (*Token, error) { return nil, ErrNoCgo }

// Signer fails: built without cgo.
func (*Token) Signer(string) (crypto.Signer, error) { return nil, ErrNoCgo }

// GenerateRSA fails: built without cgo.
func (*Token) GenerateRSA(string, int) (crypto.Signer, error) { return nil, ErrNoCgo }

// Extractable fails: built without cgo.
func (*Token) Extractable(string) (bool, error) { return false, ErrNoCgo }

// Close does nothing.
func (*Token) Close() error { return nil }
