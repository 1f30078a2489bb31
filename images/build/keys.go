package build

import (
	"path/filepath"

	"github.com/labfleet/labfleet/images/keys"
)

// keyFiles lists the key files whose contents a build depends on (for the
// cache key). A token-backed set has no private key files; its pkcs11.json
// (module, token and key labels) and the certificates stand for them.
func keyFiles(k *keys.Set) []string {
	if k.PKCS11 != nil {
		return []string{filepath.Join(k.Dir, keys.PKCS11File), k.UKISigningCert, k.PKAuth, k.KEKAuth, k.DBAuth, k.Secrets}
	}

	return []string{k.UKISigningKey, k.UKISigningCert, k.PCRSigningKey, k.PKAuth, k.KEKAuth, k.DBAuth, k.Secrets}
}
