package state_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/internal/swtpmtest"
	"github.com/labfleet/labfleet/lab/labos/state"
)

func selfSigned(t *testing.T, cn string) *x509.Certificate {
	t.Helper()

	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	require.NoError(t, err)

	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)

	return c
}

func fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)

	return hex.EncodeToString(s[:])
}

func TestCheckSealAllowed(t *testing.T) {
	ours, theirs := selfSigned(t, "ours"), selfSigned(t, "theirs")

	for _, tc := range []struct {
		name   string
		sb     state.SecureBoot
		reason state.Reason
		msg    string
	}{
		{"enforced with our db", state.SecureBoot{Enabled: true, DB: []*x509.Certificate{theirs, ours}, WantDB: fingerprint(ours)}, "", ""},
		{"secure boot off", state.SecureBoot{Enabled: false, DB: []*x509.Certificate{ours}, WantDB: fingerprint(ours)}, state.ReasonSecureBootOff, "Secure Boot is not enabled"},
		{"setup mode", state.SecureBoot{Enabled: true, SetupMode: true, WantDB: fingerprint(ours)}, state.ReasonSecureBootMode, "Setup Mode"},
		{"foreign db", state.SecureBoot{Enabled: true, DB: []*x509.Certificate{theirs}, WantDB: fingerprint(ours)}, state.ReasonDBMissing, "none is sha256:" + fingerprint(ours)},
		{"db unreadable", state.SecureBoot{Enabled: true, DBErr: errors.New("no such variable"), WantDB: fingerprint(ours)}, state.ReasonDBMissing, "no such variable"},
		{"image names no db", state.SecureBoot{Enabled: true, DB: []*x509.Certificate{ours}}, state.ReasonDBMissing, "labos.db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := state.CheckSealAllowed(tc.sb)
			if tc.reason == "" {
				require.NoError(t, err)

				return
			}

			require.Error(t, err)
			require.Equal(t, tc.reason, state.ReasonOf(err))
			require.ErrorContains(t, err, tc.msg)
		})
	}
}

// TestUnlockRefusesToSealInSetupMode is finding 2 of the security issue: a
// blank STATE on a node in Setup Mode must stay blank (no LUKS header, no
// sealed token), and the refusal carries its reason.
func TestUnlockRefusesToSealInSetupMode(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("cryptsetup is required")
		}

		t.Skip("cryptsetup not installed")
	}

	img := filepath.Join(t.TempDir(), "state.img")
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 32<<20))

	tpm := swtpmtest.Start(t)
	keys := boot(t, tpm, mustRSA(t), "v1")
	gate := func() error { return state.CheckSealAllowed(state.SecureBoot{Enabled: true, SetupMode: true}) }
	vol := state.Volume{Device: img, MapName: "state", MountPoint: filepath.Join(t.TempDir(), "m"), SealGate: gate}

	_, err := vol.Unlock(context.Background(), tpm, keys)
	require.Equal(t, state.ReasonSecureBootMode, state.ReasonOf(err), "%v", err)
	require.Error(t, exec.Command("cryptsetup", "isLuks", img).Run(), "STATE must not be formatted in Setup Mode")

	data, err := os.ReadFile(img)
	require.NoError(t, err)
	require.Equal(t, make([]byte, len(data)), data, "STATE must stay untouched")

	// the same volume with the gate open is provisioned: the gate, not
	// something else, stopped it above
	vol.SealGate = func() error { return nil }
	key, err := vol.Provision(context.Background(), tpm, keys)
	require.NoError(t, err)
	require.Len(t, key, 32)
	require.NoError(t, exec.Command("cryptsetup", "isLuks", img).Run())
}

func mustRSA(t *testing.T) *rsa.PrivateKey {
	t.Helper()

	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	return k
}
