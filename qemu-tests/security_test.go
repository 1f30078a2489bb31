package qemutests

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// A disk whose auto-enroll keys are missing, booted on empty firmware
// variables, runs with Secure Boot off in Setup Mode. Sealing STATE there
// would bind the disk key to a PCR 7 anyone can reproduce: the node must
// refuse to create STATE, say why, stay unhealthy and not bless the entry.
func TestSetupModeRefusesToSeal(t *testing.T) {
	t.Parallel()

	ctx := scenario(t)
	m := suite.NewMachine(t, "setupmode", "v1")

	for _, k := range []string{"PK", "KEK", "db"} {
		m.ESPRemove("/loader/keys/auto/" + k + ".auth")
	}

	vm := m.Boot(ctx, BootOptions{})

	st := m.WaitStatus(ctx)
	require.False(t, st.SecureBoot)
	require.True(t, st.SetupMode)
	require.False(t, st.TPMUnlocked)
	require.False(t, st.StateFormatted, "STATE must not be created in Setup Mode")
	require.False(t, st.Healthy)
	require.False(t, st.Blessed, "an entry that could not seal must not be blessed")
	require.False(t, st.Configured)
	require.Contains(t, st.UnlockError, "refusing to create and seal STATE")

	var refused, maintenance bool

	for _, l := range vm.Lines() {
		mk, details, ok := nodeapi.ParseMarker(l)
		if !ok {
			continue
		}

		refused = refused || mk == nodeapi.MarkerSealRefused && details == "reason=secureboot-off"
		maintenance = maintenance || mk == nodeapi.MarkerMaintenance
	}

	require.True(t, refused, "the console must say the seal was refused and why (console: %s)", vm.ConsolePath())
	require.False(t, maintenance, "with no STATE there is nowhere to keep a config: no maintenance mode")

	m.PowerOff()

	hdr := m.StateHeader()
	require.False(t, bytes.HasPrefix(hdr, []byte("LUKS\xba\xbe")), "STATE must carry no LUKS header")
	require.Equal(t, make([]byte, len(hdr)), hdr, "STATE must be untouched")
}
