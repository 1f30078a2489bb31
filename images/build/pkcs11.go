package build

import (
	"crypto/rsa"
	"fmt"
	"os"

	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/keys/hsm"
)

// PINEnv is the environment variable imagectl reads the token's user PIN
// from (Options.PKCS11PIN); errors name it.
const PINEnv = "LABFLEET_PKCS11_PIN"

// openPKCS11Keys opens the UKI and PCR keys in the token; the UKI key must
// be the one uki-signing-cert.pem certifies.
func openPKCS11Keys(ks *keys.Set, pin string) (_ *keySource, err error) {
	tok, err := hsm.Open(ks.PKCS11, pin)
	if err != nil {
		// A missing or refused PIN is bad input (exit 2), named so the
		// operator knows which variable and which token.
		if pin == "" {
			return nil, fmt.Errorf("PKCS#11 token %q (%s): no user PIN: set %s: %w", ks.PKCS11.TokenLabel, keys.PKCS11File, PINEnv, keys.ErrInvalid)
		}

		if why, ok := pinRefused(err); ok {
			return nil, fmt.Errorf("PKCS#11 token %q refused the user PIN in %s (%s): set it to the token's user PIN: %w: %w", ks.PKCS11.TokenLabel, PINEnv, why, keys.ErrInvalid, err)
		}

		return nil, err
	}

	defer func() {
		if err != nil {
			tok.Close() //nolint:errcheck
		}
	}()

	uki, err := tok.Signer(ks.PKCS11.UKIKeyLabel)
	if err != nil {
		return nil, err
	}

	pcr, err := tok.Signer(ks.PKCS11.PCRKeyLabel)
	if err != nil {
		return nil, err
	}

	data, err := os.ReadFile(ks.UKISigningCert)
	if err != nil {
		return nil, fmt.Errorf("reading UKI signing certificate: %w", err)
	}

	cert, err := keys.ParseCertificatePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ks.UKISigningCert, err)
	}

	if pub, ok := uki.Public().(*rsa.PublicKey); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s does not certify the token's key %q (its public key differs): %w", ks.UKISigningCert, ks.PKCS11.UKIKeyLabel, keys.ErrInvalid)
	}

	if pub, ok := pcr.Public().(*rsa.PublicKey); !ok || pub.N.BitLen() != keys.PCRSigningKeyBits {
		return nil, fmt.Errorf("the token's PCR key %q must be RSA-%d: %w", ks.PKCS11.PCRKeyLabel, keys.PCRSigningKeyBits, keys.ErrInvalid)
	}

	return &keySource{uki: uki, pcr: pcr, close: func() { tok.Close() }}, nil //nolint:errcheck
}
