package state_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/state"
)

func TestRecordBoot(t *testing.T) {
	mnt := t.TempDir()

	_, err := state.RecordBoot(mnt, false)
	require.Error(t, err, "an unformatted STATE without a token is an error")

	first, err := state.RecordBoot(mnt, true)
	require.NoError(t, err)
	require.Equal(t, 1, first.Boots)
	require.Len(t, first.Token, 32)

	second, err := state.RecordBoot(mnt, false)
	require.NoError(t, err)
	require.Equal(t, state.Record{Token: first.Token, Boots: 2}, second)

	require.NoError(t, os.WriteFile(filepath.Join(mnt, state.BootsFile), []byte("x"), 0o600))
	_, err = state.RecordBoot(mnt, false)
	require.ErrorContains(t, err, state.BootsFile)
}
