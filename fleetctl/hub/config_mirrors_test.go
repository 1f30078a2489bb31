package hub_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
)

const regionRegistry = "registry.region.example:5000"

// metalMode is the runtime mode a bare-metal Talos node validates its
// configuration in.
type metalMode struct{}

func (metalMode) String() string        { return "metal" }
func (metalMode) RequiresInstall() bool { return true }
func (metalMode) InContainer() bool     { return false }

// workerConfig is a machine configuration as `talosctl gen config` writes it.
func workerConfig(t testing.TB, extra string) []byte {
	t.Helper()

	bundle, err := secrets.NewBundle(secrets.NewClock(), config.TalosVersionCurrent, secrets.WithECDSAServiceAccountKey())
	require.NoError(t, err)

	in, err := generate.NewInput("c1", "https://10.40.7.10:6443", constants.DefaultKubernetesVersion, generate.WithSecretsBundle(bundle))
	require.NoError(t, err)

	prov, err := in.Config(machine.TypeWorker)
	require.NoError(t, err)

	data, err := prov.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	require.NoError(t, err)

	return append(data, extra...)
}

func mirrorConfig(t testing.TB, cluster []byte) hub.Config {
	t.Helper()

	cfg := hub.Defaults()
	cfg.Source = "hub.yaml"
	cfg.ConfigDir = t.TempDir()
	cfg.Sites = map[string]hub.SiteSettings{"berlin": {RegistryMirrors: []hub.RegistryMirror{
		{Registry: regionRegistry, Endpoints: []string{"http://10.40.7.2:5000", "https://cache-b.berlin.example"}},
	}}}
	require.NoError(t, cfg.Validate())

	require.NoError(t, os.MkdirAll(filepath.Join(cfg.ConfigDir, "c1"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(cfg.ConfigDir, "c1", "worker.yaml"), cluster, 0o600))

	return cfg
}

// The configuration handed to a machine of a site with a site cache is the
// operator's file, byte for byte, plus a RegistryMirrorConfig document that
// machinery loads and validates; other sites get the file unchanged.
func TestMachineConfigAddsSiteRegistryMirror(t *testing.T) {
	cluster := workerConfig(t, "")
	cfg := mirrorConfig(t, cluster)
	adm := hub.Admission{Cluster: "c1", Role: "worker", By: "inventory"}

	out, err := cfg.MachineConfig(registry.Machine{UUID: "u1", Site: "berlin"}, adm)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(out), strings.TrimRight(string(cluster), "\n")+"\n---\n"), "the operator's bytes come first, unchanged")
	assert.Contains(t, string(out), "kind: RegistryMirrorConfig")

	prov, err := configloader.NewFromBytes(out)
	require.NoError(t, err)

	warnings, err := prov.Validate(metalMode{})
	require.NoError(t, err, "warnings: %v", warnings)

	m, ok := prov.RegistryMirrorConfigs()[regionRegistry]
	require.True(t, ok, "%s", out)

	var eps []string
	for _, ep := range m.Endpoints() {
		eps = append(eps, ep.Endpoint())
	}

	assert.Equal(t, []string{"http://10.40.7.2:5000", "https://cache-b.berlin.example"}, eps)
	assert.True(t, m.SkipFallback(), "by default a node does not go around its site cache over the WAN")

	other, err := cfg.MachineConfig(registry.Machine{UUID: "u2", Site: "tokyo"}, adm)
	require.NoError(t, err)
	assert.Equal(t, cluster, other, "a site without settings gets the file as written")
}

// A cluster configuration that already names a mirror for the registry is
// refused, naming both places, in either form Talos takes.
func TestMachineConfigRefusesSecondMirrorForRegistry(t *testing.T) {
	adm := hub.Admission{Cluster: "c1", Role: "worker"}

	for name, extra := range map[string]string{
		"document": "---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: " + regionRegistry + "\nendpoints:\n  - url: http://10.9.9.9:5000\n",
	} {
		t.Run(name, func(t *testing.T) {
			cfg := mirrorConfig(t, workerConfig(t, extra))

			_, err := cfg.MachineConfig(registry.Machine{UUID: "u1", Site: "berlin"}, adm)
			require.Error(t, err)
			assert.Contains(t, err.Error(), filepath.Join(cfg.ConfigDir, "c1", "worker.yaml")+" already configures a registry mirror for "+regionRegistry)
			assert.Contains(t, err.Error(), "hub.yaml: sites.berlin.registryMirrors[0] names the site cache for it too: remove one of them")
		})
	}

	// machine.registries.mirrors in the v1alpha1 document
	data := workerConfig(t, "")
	data = []byte(strings.Replace(string(data), "machine:\n", "machine:\n    registries:\n        mirrors:\n            "+regionRegistry+":\n                endpoints: [\"http://10.9.9.9:5000\"]\n", 1))
	_, err := configloader.NewFromBytes(data)
	require.NoError(t, err, "the test's v1alpha1 mirror is well formed")

	cfg := mirrorConfig(t, data)
	_, err = cfg.MachineConfig(registry.Machine{UUID: "u1", Site: "berlin"}, adm)
	require.ErrorContains(t, err, "already configures a registry mirror for "+regionRegistry)
}

// Bad site settings are refused with the file and the field.
func TestSiteSettingsValidated(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want string
	}{
		{"credentials", "  berlin:\n    registryMirrors:\n      - {registry: r.example:5000, endpoints: ['http://u:secret@10.0.0.2:5000']}\n",
			`hub.yaml: sites.berlin.registryMirrors[0].endpoints[0]: "http://xxxxx@10.0.0.2:5000" has credentials`},
		{"path", "  berlin:\n    registryMirrors:\n      - {registry: r.example:5000, endpoints: ['http://10.0.0.2:5000/v2/mirror']}\n",
			`hub.yaml: sites.berlin.registryMirrors[0].endpoints[0]: "http://10.0.0.2:5000/v2/mirror" has a path, query or fragment`},
		{"scheme", "  berlin:\n    registryMirrors:\n      - {registry: r.example:5000, endpoints: ['ftp://10.0.0.2']}\n",
			`hub.yaml: sites.berlin.registryMirrors[0].endpoints[0]: "ftp://10.0.0.2": scheme must be http or https`},
		{"no scheme", "  berlin:\n    registryMirrors:\n      - {registry: r.example:5000, endpoints: ['10.0.0.2:5000']}\n",
			`hub.yaml: sites.berlin.registryMirrors[0].endpoints[0]:`},
		{"bad port", "  berlin:\n    registryMirrors:\n      - {registry: r.example:5000, endpoints: ['http://10.0.0.2:99999']}\n",
			`hub.yaml: sites.berlin.registryMirrors[0].endpoints[0]:`},
		{"no endpoints", "  berlin:\n    registryMirrors:\n      - {registry: r.example:5000}\n",
			`hub.yaml: sites.berlin.registryMirrors[0].endpoints: empty`},
		{"registry with scheme", "  berlin:\n    registryMirrors:\n      - {registry: 'https://r.example', endpoints: ['http://10.0.0.2']}\n",
			`hub.yaml: sites.berlin.registryMirrors[0].registry: "https://r.example" has a scheme`},
		{"registry twice", "  berlin:\n    registryMirrors:\n      - {registry: r.example, endpoints: ['http://10.0.0.2']}\n      - {registry: r.example, endpoints: ['http://10.0.0.3']}\n",
			`hub.yaml: sites.berlin.registryMirrors[1].registry: "r.example" is also registryMirrors[0]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hub.yaml")
			require.NoError(t, os.WriteFile(path, []byte("version: v1alpha1\nsites:\n"+tc.yaml), 0o600))

			cfg, err := hub.LoadConfig(path)
			require.NoError(t, err)

			err = cfg.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), filepath.Dir(path)+"/"+tc.want)
		})
	}
}

// Through the hub: a machine of a site with a site cache receives (over
// its tunnel, in maintenance mode) its cluster's configuration with the
// site's RegistryMirrorConfig document added.
func TestHubDeliversSiteRegistryMirror(t *testing.T) {
	invPath := filepath.Join(t.TempDir(), "machines.yaml")
	require.NoError(t, os.WriteFile(invPath, []byte("machines:\n- {uuid: uuid-ber, cluster: c1, role: worker}\n"), 0o600))

	cluster := workerConfig(t, "")

	e := newEnv(t, func(c *hub.Config) {
		c.Inventory = invPath
		c.Sites = map[string]hub.SiteSettings{"berlin": {RegistryMirrors: []hub.RegistryMirror{
			{Registry: regionRegistry, Endpoints: []string{"http://10.40.7.2:5000"}},
		}}}
	})
	require.NoError(t, os.MkdirAll(filepath.Join(e.cfg.ConfigDir, "c1"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(e.cfg.ConfigDir, "c1", "worker.yaml"), cluster, 0o600))

	ctx := context.Background()
	p := e.peer(ctx, simpeer.Options{JoinToken: e.token("berlin"), UUID: "uuid-ber", UniqueToken: "uuid-ber", Tunnel: true})
	node := serveMaintenance(t, p)
	e.linkUp(ctx, p)

	eventually(t, 20*time.Second, "machine configured", func() bool { return len(node.got()) == 1 })

	prov, err := configloader.NewFromBytes(node.got()[0])
	require.NoError(t, err)

	m, ok := prov.RegistryMirrorConfigs()[regionRegistry]
	require.True(t, ok)
	require.Len(t, m.Endpoints(), 1)
	assert.Equal(t, "http://10.40.7.2:5000", m.Endpoints()[0].Endpoint())
}
