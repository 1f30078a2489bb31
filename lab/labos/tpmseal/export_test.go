package tpmseal

import "github.com/google/go-tpm/tpm2"

// SetWeaken alters the sealed object's template in Seal until the returned
// function restores it (tests of the weak-seal check).
func SetWeaken(f func(*tpm2.TPMTPublic)) (restore func()) {
	weaken = f

	return func() { weaken = nil }
}
