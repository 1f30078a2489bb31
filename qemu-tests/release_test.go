package qemutests

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestReleaseImagesBoot (issue 11): the firmware accepts the signatures of
// a reproducible release and of an HSM-signed one. v1-repro is v1 built
// again, not from the cache, minutes later: its UKI, disk, installer and
// build record must be byte-identical to v1's, and it must boot under
// enforced Secure Boot (keys enrolled from its ESP, TPM sealed, healthy).
// v1-hsm is signed by keys inside a SoftHSM2 token (UKI, systemd-boot, PCR
// policy, .auth files) and must boot the same way.
func TestReleaseImagesBoot(t *testing.T) {
	t.Parallel()

	v1, repro := suite.Images["v1"], suite.Images["v1-repro"]
	require.NotNil(t, repro)

	for _, o := range v1.Record.Outputs {
		r, ok := repro.Record.Output(o.Kind)
		require.True(t, ok, "v1-repro has no %s", o.Kind)
		require.Equal(t, o.SHA256, r.SHA256, "%s differs between two builds of v1", o.Kind)
	}

	a, err := os.ReadFile(filepath.Join(v1.Dir, "build.json"))
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(repro.Dir, "build.json"))
	require.NoError(t, err)
	require.Equal(t, string(a), string(b), "build records differ")

	for _, tc := range []struct{ name, variant string }{
		{"reproducible", "v1-repro"},
		{"hsm-signed", "v1-hsm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			if tc.variant == "v1-hsm" && suite.HSMError != nil {
				t.Fatalf("no HSM-signed image: %v", suite.HSMError)
			}

			ctx := scenario(t)
			m := suite.NewMachine(t, tc.name, tc.variant)
			m.Boot(ctx, BootOptions{})

			st := m.WaitStatus(ctx)
			require.Equal(t, "1.0.0", st.Version)
			require.True(t, st.SecureBoot, "Secure Boot must be on after enrollment")
			require.False(t, st.SetupMode)
			require.True(t, st.TPMUnlocked)
			require.True(t, st.Healthy, "checks: %+v", st.Checks)
		})
	}
}
