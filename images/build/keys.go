package build

import (
	"github.com/labfleet/labfleet/images/keys"
)

// keyFiles lists the key files whose contents a build depends on (for the cache key).
func keyFiles(k *keys.Set) []string {
	return []string{k.UKISigningKey, k.UKISigningCert, k.PCRSigningKey, k.PKAuth, k.KEKAuth, k.DBAuth, k.Secrets}
}
