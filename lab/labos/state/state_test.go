package state_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/internal/swtpmtest"
	"github.com/labfleet/labfleet/lab/labos/pcrphase"
	"github.com/labfleet/labfleet/lab/labos/state"
	"github.com/labfleet/labfleet/lab/labos/tpmseal"
)

// boot emulates firmware + systemd-stub + labos up to enter-machined and
// returns the keys the UKI would carry (.pcrpkey, .pcrsig).
func boot(t *testing.T, tpm transport.TPM, key *rsa.PrivateKey, sections string) state.Keys {
	t.Helper()

	require.NoError(t, pcrphase.Extend(tpm, pcrphase.Phase(sections)))

	start, err := tpmseal.ReadPCR(tpm, tpmseal.UKIPCR)
	require.NoError(t, err)

	for _, p := range pcrphase.Signed {
		require.NoError(t, pcrphase.Extend(tpm, p))
	}

	entry, err := tpmseal.SignPolicy(key, pcrphase.Predict(crypto.SHA256, start, pcrphase.Signed...))
	require.NoError(t, err)

	sig, err := json.Marshal(tpmseal.Signature{SHA256: []tpmseal.BankData{entry}})
	require.NoError(t, err)

	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	require.NoError(t, err)

	return state.Keys{PCRPublicKey: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), Signature: sig}
}

func testPassphrase(img string, key []byte) error {
	cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file=-", img)
	cmd.Stdin = strings.NewReader(string(key))

	return cmd.Run()
}

// TestProvisionRecover runs the real cryptsetup on an image file and a real
// swtpm: the key sealed at first boot opens the LUKS2 keyslot, and is
// recovered on the next boot only while the measured state matches.
func TestProvisionRecover(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("cryptsetup is required")
		}

		t.Skip("cryptsetup not installed")
	}

	pcrKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	img := filepath.Join(t.TempDir(), "state.img")
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 32<<20))

	tpm := swtpmtest.Start(t)
	ctx := context.Background()
	vol := state.Volume{Device: img, MapName: "state"}

	keys := boot(t, tpm, pcrKey, "v1")

	key, err := vol.Provision(ctx, tpm, keys)
	require.NoError(t, err)
	// Talos's convention: the keyslot passphrase is the key in base64
	require.NoError(t, testPassphrase(img, []byte(base64.StdEncoding.EncodeToString(key))))
	require.Error(t, testPassphrase(img, key))

	dump, err := exec.Command("cryptsetup", "luksDump", img).CombinedOutput()
	require.NoError(t, err)
	require.Contains(t, string(dump), "talos-tpm2")

	// same boot: recoverable; after start-the-world: not
	got, err := vol.Recover(ctx, tpm, keys)
	require.NoError(t, err)
	require.Equal(t, key, got)

	require.NoError(t, pcrphase.Extend(tpm, pcrphase.StartTheWorld))
	_, err = vol.Recover(ctx, tpm, keys)
	require.Equal(t, state.ReasonPCR11, state.ReasonOf(err), "%v", err)

	// a UKI whose .pcrsig was made for other contents does not unlock
	_, err = vol.Recover(ctx, tpm, state.Keys{PCRPublicKey: keys.PCRPublicKey, Signature: []byte(`{"sha256":[]}`)})
	require.Equal(t, state.ReasonPCR11, state.ReasonOf(err))

	_, err = vol.Recover(ctx, tpm, state.Keys{PCRPublicKey: keys.PCRPublicKey})
	require.Equal(t, state.ReasonNoSignature, state.ReasonOf(err))

	_, err = vol.Recover(ctx, tpm, state.Keys{})
	require.Equal(t, state.ReasonNoPCRKey, state.ReasonOf(err))

	// a failed unlock reports no completed step (the console would
	// otherwise claim a key that was never unsealed)
	var steps []state.Step
	vol.Progress = func(s state.Step) { steps = append(steps, s) }

	_, err = vol.Unlock(ctx, nil, keys)
	require.Equal(t, state.ReasonNoTPM, state.ReasonOf(err))
	require.Empty(t, steps)
}
