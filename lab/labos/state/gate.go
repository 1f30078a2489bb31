package state

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ReasonDBMissing means the firmware's db does not hold the certificate the
// image was built for, so PCR 7 would not describe our key set.
const ReasonDBMissing Reason = "db-not-enrolled"

// SecureBoot is the firmware's Secure Boot state as the node read it.
type SecureBoot struct {
	Enabled   bool
	SetupMode bool
	// DB holds the certificates enrolled in db; DBErr is why they could not be read.
	DB    []*x509.Certificate
	DBErr error
	// WantDB is the lowercase hex sha256 of the DER of the db certificate
	// the image was built for (the signed kernel command line carries it).
	WantDB string
}

// CheckSealAllowed decides whether a new STATE key may be sealed. The key is
// sealed to PCR 7, so sealing with Secure Boot off, in Setup Mode or under a
// foreign key set would bind patient data to a state an attacker can
// reproduce. Talos makes the same check before it enrolls a TPM key
// (checkSecurebootStatusOnEnroll); labos adds the db certificate check
// because it knows which certificate signed its own image.
func CheckSealAllowed(sb SecureBoot) error {
	switch {
	case !sb.Enabled:
		return fail(ReasonSecureBootOff, errors.New("Secure Boot is not enabled: refusing to create and seal STATE"))
	case sb.SetupMode:
		return fail(ReasonSecureBootMode, errors.New("firmware is in Setup Mode (no platform key enrolled): refusing to create and seal STATE"))
	case sb.DBErr != nil:
		return fail(ReasonDBMissing, fmt.Errorf("reading db: %w: refusing to create and seal STATE", sb.DBErr))
	case sb.WantDB == "":
		return fail(ReasonDBMissing, errors.New("the image names no db certificate (labos.db on the kernel command line): refusing to create and seal STATE"))
	}

	want := strings.ToLower(sb.WantDB)

	for _, c := range sb.DB {
		sum := sha256.Sum256(c.Raw)
		if hex.EncodeToString(sum[:]) == want {
			return nil
		}
	}

	return fail(ReasonDBMissing, fmt.Errorf("db holds %d certificate(s), none is sha256:%s that signed this image: refusing to create and seal STATE", len(sb.DB), want))
}
