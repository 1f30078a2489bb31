package qemutests

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/spec"
)

// secureBoot.enrollKeys force (the bare-metal definition's mode) once in the
// lab: the lab image's ESP with the loader.conf imagectl writes for force,
// booted on empty firmware variables (Setup Mode). systemd-boot must enroll
// the auto-enroll keys by itself, and the node must come up with Secure Boot
// enforced, STATE sealed and healthy. (Inside a VM if-safe enrolls too; on
// bare metal only force does, which the lab cannot show.)
func TestEnrollKeysForce(t *testing.T) {
	t.Parallel()

	ctx := scenario(t)
	m := suite.NewMachine(t, "force", "v1")

	conf := build.LoaderConf(suite.Images["v1"].Record.Name, spec.EnrollForce)
	require.Contains(t, conf, "secure-boot-enroll force\n")
	m.ESPWrite("/loader/loader.conf", []byte(conf))
	require.Equal(t, conf, string(m.ESPRead("/loader/loader.conf")))

	vm := m.Boot(ctx, BootOptions{})

	st := m.WaitStatus(ctx)
	require.True(t, st.SecureBoot, "systemd-boot must enroll the keys in force mode (console: %s)", vm.ConsolePath())
	require.False(t, st.SetupMode, "Setup Mode must be off after enrollment")
	require.True(t, st.StateFormatted, "first boot creates STATE")
	require.True(t, st.TPMUnlocked)
	require.True(t, st.Healthy, "checks: %+v", st.Checks)

	// systemd-boot's own words: it enrolled the keys itself.
	enrolled := slices.ContainsFunc(vm.Lines(), func(l string) bool {
		return strings.Contains(l, "Custom Secure Boot keys successfully enrolled")
	})
	require.True(t, enrolled, "systemd-boot must report the enrollment (console: %s)", vm.ConsolePath())
}
