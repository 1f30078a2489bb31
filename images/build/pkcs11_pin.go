//go:build cgo

package build

import (
	"errors"

	"github.com/miekg/pkcs11"
)

// pinRefused reports whether err is the token refusing the user PIN (wrong,
// malformed, expired or locked): the operator's input, not a failure.
func pinRefused(err error) (string, bool) {
	var p11 pkcs11.Error
	if !errors.As(err, &p11) {
		return "", false
	}

	switch p11 {
	case pkcs11.CKR_PIN_INCORRECT:
		return "incorrect", true
	case pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		return "not a valid PIN for this token", true
	case pkcs11.CKR_PIN_EXPIRED:
		return "expired", true
	case pkcs11.CKR_PIN_LOCKED:
		return "locked (too many wrong PINs: the token's security officer must unlock it)", true
	default:
		return "", false
	}
}
