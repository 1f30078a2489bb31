package pcrphase_test

import (
	"crypto"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/internal/swtpmtest"
	"github.com/labfleet/labfleet/lab/labos/pcrphase"
)

func TestExtendMatchesPrediction(t *testing.T) {
	tpm := swtpmtest.Start(t)

	banks, err := pcrphase.AllocatedBanks(tpm)
	require.NoError(t, err)
	require.Contains(t, banks, tpm2.TPMAlgSHA256)

	phases := []pcrphase.Phase{pcrphase.EnterInitrd, pcrphase.LeaveInitrd, pcrphase.EnterMachined}
	for _, p := range phases {
		require.NoError(t, pcrphase.Extend(tpm, p))
	}

	for _, alg := range banks {
		h, err := alg.Hash()
		require.NoError(t, err)

		resp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
			{Hash: alg, PCRSelect: []byte{0, 1 << 3, 0}},
		}}}.Execute(tpm)
		require.NoError(t, err)
		require.Len(t, resp.PCRValues.Digests, 1)

		require.Equal(t, pcrphase.Predict(h, nil, phases...), resp.PCRValues.Digests[0].Buffer, "bank %v", alg)
		require.NotEqual(t, pcrphase.Predict(h, nil, phases[:2]...), resp.PCRValues.Digests[0].Buffer)
	}

	require.Equal(t, crypto.SHA256.Size(), len(pcrphase.Predict(crypto.SHA256, nil, pcrphase.EnterInitrd)))
}
