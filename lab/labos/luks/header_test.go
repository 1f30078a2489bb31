package luks_test

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/luks"
)

// The token and the LUKS check are read in-process (no cryptsetup run at
// every boot) and give what cryptsetup gives; a primary header that does
// not verify is left to cryptsetup, which reads the secondary one.
func TestHeaderReadInProcess(t *testing.T) {
	_, err := exec.LookPath("cryptsetup")
	need(t, "cryptsetup", err == nil)

	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "state.img")
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 32<<20))

	c := luks.Cryptsetup{}
	// a cryptsetup that cannot run: whatever answers is the in-process reader
	noExec := luks.Cryptsetup{Bin: filepath.Join(t.TempDir(), "no-cryptsetup")}

	_, err = noExec.IsLUKS(ctx, img)
	require.ErrorContains(t, err, "cryptsetup isLuks", "a blank volume is cryptsetup's to judge")

	key := make([]byte, 32)
	_, err = rand.Read(key)
	require.NoError(t, err)
	require.NoError(t, c.Format(ctx, img, key))

	tok := `{"type":"talos-tpm2","keyslots":[],"UserData":{"alg":"sha256"}}`
	require.NoError(t, c.ImportToken(ctx, img, 0, 0, []byte(tok)))

	is, err := noExec.IsLUKS(ctx, img)
	require.NoError(t, err)
	require.True(t, is)

	want, err := exec.Command("cryptsetup", luks.TokenExportArgs(img, 0)...).Output()
	require.NoError(t, err)

	got, err := noExec.ExportToken(ctx, img, 0)
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(got))

	_, err = noExec.ExportToken(ctx, img, 3)
	require.ErrorIs(t, err, luks.ErrNoToken)
	require.ErrorContains(t, err, img+": token 3")

	// flip one byte of the primary header's JSON: its checksum fails
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)

	b := make([]byte, 1)
	_, err = f.ReadAt(b, 4096+2)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{b[0] ^ 0x20}, 4096+2)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	_, err = noExec.ExportToken(ctx, img, 0)
	require.ErrorContains(t, err, "cryptsetup token", "a header that does not verify goes to cryptsetup")

	got, err = c.ExportToken(ctx, img, 0)
	require.NoError(t, err, "cryptsetup recovers the token from the secondary header")
	require.JSONEq(t, string(want), string(got))
}
