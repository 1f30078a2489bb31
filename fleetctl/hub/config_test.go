package hub_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

func TestConfigDefaultsValid(t *testing.T) {
	require.NoError(t, hub.Defaults().Validate())
}

// Bad input: every bad field is reported at once, with the file, the field
// and what to do.
func TestConfigValidateNamesFileAndField(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"bad prefix", "version: v1alpha1\nprefix: 10.0.0.0/8\n", []string{"hub.yaml: prefix: 10.0.0.0/8 is not IPv6"}},
		{"prefix too small", "version: v1alpha1\nprefix: fd00::/96\n", []string{"hub.yaml: prefix: fd00::/96 is smaller than a /64"}},
		{"prefix host bits", "version: v1alpha1\nprefix: fd00::1/64\n", []string{"hub.yaml: prefix: fd00::1/64 has host bits set (did you mean fd00::/64?)"}},
		{"prefix not ULA", "version: v1alpha1\nprefix: 2001:db8::/64\n", []string{"hub.yaml: prefix: 2001:db8::/64 is not a unique local (fc00::/7) prefix"}},
		{"prefix garbage", "version: v1alpha1\nprefix: nope\n", []string{`hub.yaml: prefix: "nope" is not an IP prefix`}},
		{"bad ports", "version: v1alpha1\napiListen: ':70000'\nwireguardListen: 'x'\neventSinkPort: 0\n", []string{
			`hub.yaml: apiListen: ":70000": port "70000" is not 1-65535`,
			`hub.yaml: wireguardListen: "x" is not host:port`,
			"hub.yaml: eventSinkPort: 0 is not a port (1-65535)",
		}},
		{"same ports", "version: v1alpha1\neventSinkPort: 9000\nlogReceiverPort: 9000\n", []string{"hub.yaml: logReceiverPort: 9000 is also the eventSinkPort"}},
		{"bad version", "version: v2\n", []string{`hub.yaml: version: "v2" is not supported (want "v1alpha1")`}},
		{"long interface", "version: v1alpha1\ninterface: averyveryverylongname\n", []string{`hub.yaml: interface: "averyveryverylongname" is longer than 15 characters`}},
		{"overlapping virtual prefix", "version: v1alpha1\nprefix: fd00::/48\nvirtualPrefix: fd00::/64\n", []string{"hub.yaml: virtualPrefix: fd00::/64 overlaps prefix fd00::/48"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hub.yaml")
			require.NoError(t, os.WriteFile(path, []byte(tc.yaml), 0o600))

			cfg, err := hub.LoadConfig(path)
			require.NoError(t, err)

			err = cfg.Validate()
			require.Error(t, err)

			for _, w := range tc.want {
				assert.Contains(t, err.Error(), filepath.Dir(path)+"/"+w)
			}

			_, err = hub.New(cfg, registry.New(nil), nil, hub.Options{})
			require.Error(t, err, "a hub never starts with a bad config")
		})
	}
}

func TestConfigUnknownFieldRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.yaml")
	require.NoError(t, os.WriteFile(path, []byte("version: v1alpha1\napilisten: ':1'\n"), 0o600))

	_, err := hub.LoadConfig(path)
	require.ErrorContains(t, err, "hub.yaml: yaml: unmarshal errors:\n  line 2: field apilisten not found")
}
