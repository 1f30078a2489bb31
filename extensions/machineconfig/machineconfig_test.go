package machineconfig_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/types/block"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/internal/exttest"
	"github.com/labfleet/labfleet/extensions/machineconfig"
)

const ns = `apiVersion: v1
kind: Namespace
metadata:
  name: demo
`

func TestNodeConfig(t *testing.T) {
	opts := machineconfig.Options{
		ClusterName: "lab", Endpoint: "https://10.0.2.15:6443", SecretsPath: exttest.WriteSecrets(t),
		Manifests: []machineconfig.Manifest{{Name: "cilium", Contents: ns}, {Name: "metallb", Contents: ns}},
	}

	cfg, err := machineconfig.NodeConfig(opts, machineconfig.RoleControlPlane)
	require.NoError(t, err)

	_, err = machineconfig.Validate(cfg)
	require.NoError(t, err)

	off, err := machineconfig.ProxyDisabled(cfg)
	require.NoError(t, err)
	assert.True(t, off, "kube-proxy disabled: Cilium replaces it")

	none, err := machineconfig.FlannelAbsent(cfg)
	require.NoError(t, err)
	assert.True(t, none, "CNI none: no Flannel document")

	ms, err := machineconfig.InlineManifests(cfg)
	require.NoError(t, err)
	require.Len(t, ms, 2)
	assert.Equal(t, "cilium", ms[0].Name)
	assert.Equal(t, "metallb", ms[1].Name)

	again, err := machineconfig.NodeConfig(opts, machineconfig.RoleControlPlane)
	require.NoError(t, err)
	assert.Equal(t, string(cfg), string(again), "same inputs, same bytes")
}

func TestNodeConfigPatch(t *testing.T) {
	patch, err := machineconfig.InlineManifestPatch([]machineconfig.Manifest{{Name: "metallb", Contents: strings.Replace(ns, "demo", "site", 1)}})
	require.NoError(t, err)

	cfg, err := machineconfig.NodeConfig(machineconfig.Options{
		ClusterName: "lab", Endpoint: "https://10.0.2.15:6443", SecretsPath: exttest.WriteSecrets(t),
		Manifests: []machineconfig.Manifest{{Name: "cilium", Contents: ns}, {Name: "metallb", Contents: ns}},
		Patches:   [][]byte{patch},
	}, machineconfig.RoleControlPlane)
	require.NoError(t, err)

	ms, err := machineconfig.InlineManifests(cfg)
	require.NoError(t, err)
	require.Len(t, ms, 2, "the patch replaces by name")

	for _, m := range ms {
		if m.Name == "metallb" {
			assert.Contains(t, m.Contents, "name: site")
		} else {
			assert.Contains(t, m.Contents, "name: demo")
		}
	}
}

func TestNodeConfigErrors(t *testing.T) {
	sec := exttest.WriteSecrets(t)

	tests := []struct {
		name string
		opts machineconfig.Options
		want string
	}{
		{"no cluster", machineconfig.Options{Endpoint: "https://a:6443", SecretsPath: sec}, "cluster name"},
		{"no endpoint", machineconfig.Options{ClusterName: "c", SecretsPath: sec}, "endpoint"},
		{"no secrets", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443"}, "secrets"},
		{"missing secrets file", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: "/nonexistent/secrets.yaml"}, "loading secrets bundle"},
		{"bad manifest name", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: sec, Manifests: []machineconfig.Manifest{{Name: "Not_Valid", Contents: ns}}}, "manifest name is invalid"},
		{"duplicate manifest", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: sec, Manifests: []machineconfig.Manifest{{Name: "a", Contents: ns}, {Name: "a", Contents: ns}}}, `"a" given twice`},
		{"bad patch", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: sec, Patches: [][]byte{[]byte("machine: [")}}, "patch"},
		{"bad endpoint", machineconfig.Options{ClusterName: "c", Endpoint: "not a url", SecretsPath: sec}, "machine config"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := machineconfig.NodeConfig(tt.opts, machineconfig.RoleControlPlane)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestValidateRejectsGarbage(t *testing.T) {
	_, err := machineconfig.Validate([]byte("version: v1alpha1\nmachine: {type: nonsense}\n"))
	require.Error(t, err)
}

func nodeOpts(t *testing.T) machineconfig.Options {
	return machineconfig.Options{
		ClusterName: "lab", Endpoint: "https://10.0.2.15:6443", SecretsPath: exttest.WriteSecrets(t),
		Manifests:       []machineconfig.Manifest{{Name: "cilium", Contents: ns}, {Name: "metallb", Contents: ns}},
		LocalImageCache: true,
	}
}

// assertTPMEncrypted decodes cfg with machinery and checks that STATE and
// EPHEMERAL are LUKS2 volumes whose only key is TPM-sealed with the Secure
// Boot check on enroll: finding 3 of issue 9.
func assertTPMEncrypted(t *testing.T, cfg []byte) {
	t.Helper()

	prov, err := configloader.NewFromBytes(cfg)
	require.NoError(t, err)

	seen := map[string]bool{}

	for _, d := range prov.Documents() {
		vc, ok := d.(*block.VolumeConfigV1Alpha1)
		if !ok || (vc.Name() != "STATE" && vc.Name() != "EPHEMERAL") {
			continue
		}

		require.False(t, seen[vc.Name()], "%s configured twice", vc.Name())
		seen[vc.Name()] = true

		enc := vc.Encryption()
		assert.Equal(t, "luks2", enc.Provider().String(), vc.Name())
		require.Len(t, enc.Keys(), 1, vc.Name())

		key := enc.Keys()[0]
		assert.Equal(t, 0, key.Slot(), vc.Name())
		require.NotNil(t, key.TPM(), "%s: key is not TPM-sealed", vc.Name())
		assert.True(t, key.TPM().CheckSecurebootOnEnroll(), "%s: Secure Boot not checked on enroll", vc.Name())
		assert.Nil(t, key.Static(), vc.Name())
	}

	assert.True(t, seen["STATE"], "no encrypted STATE volume")
	assert.True(t, seen["EPHEMERAL"], "no encrypted EPHEMERAL volume")

	// Talos reads the same through its provider interface.
	for _, name := range []string{"STATE", "EPHEMERAL"} {
		vc, ok := prov.Volumes().ByName(name)
		require.True(t, ok, name)
		assert.Equal(t, "luks2", vc.Encryption().Provider().String(), name)
	}
}

func TestNodeConfigEncryptsStateAndEphemeral(t *testing.T) {
	for _, role := range []string{machineconfig.RoleControlPlane, machineconfig.RoleWorker} {
		t.Run(role, func(t *testing.T) {
			cfg, err := machineconfig.NodeConfig(nodeOpts(t), role)
			require.NoError(t, err)

			_, err = machineconfig.Validate(cfg)
			require.NoError(t, err, "machinery validates it for a metal install")

			assertTPMEncrypted(t, cfg)
		})
	}
}

func TestNodeConfigRoles(t *testing.T) {
	opts := nodeOpts(t)

	worker, err := machineconfig.NodeConfig(opts, machineconfig.RoleWorker)
	require.NoError(t, err)

	prov, err := configloader.NewFromBytes(worker)
	require.NoError(t, err)
	assert.Equal(t, "worker", prov.Machine().Type().String())

	ic, err := machineconfig.LocalImageCacheEnabled(worker)
	require.NoError(t, err)
	assert.True(t, ic)

	ms, err := machineconfig.InlineManifests(worker)
	require.NoError(t, err)
	assert.Empty(t, ms, "Talos applies inline manifests from control planes only")

	_, err = machineconfig.NodeConfig(opts, "master")
	require.ErrorContains(t, err, `node role "master"`)
}

func TestBootstrap(t *testing.T) {
	opts := machineconfig.Options{
		Manifests:       []machineconfig.Manifest{{Name: "cilium", Contents: ns}, {Name: "metallb", Contents: ns}},
		LocalImageCache: true,
	}

	cfg, err := machineconfig.Bootstrap(opts)
	require.NoError(t, err, "needs no secrets bundle, cluster name or endpoint")

	_, err = machineconfig.Validate(cfg)
	require.NoError(t, err)
	require.NoError(t, machineconfig.CheckNoSecrets(cfg))

	prov, err := configloader.NewFromBytes(cfg)
	require.NoError(t, err)
	assert.Nil(t, prov.RawV1Alpha1(), "no v1alpha1 document")

	var kinds []string
	for _, d := range prov.Documents() {
		kinds = append(kinds, d.Kind())
	}

	assert.Equal(t, []string{"VolumeConfig", "VolumeConfig", "KubeInlineManifestConfig", "KubeInlineManifestConfig", "ImageCacheConfig"}, kinds)

	assertTPMEncrypted(t, cfg)

	ms, err := machineconfig.InlineManifests(cfg)
	require.NoError(t, err)
	assert.Equal(t, opts.Manifests, ms)

	again, err := machineconfig.Bootstrap(opts)
	require.NoError(t, err)
	assert.Equal(t, string(cfg), string(again), "same inputs, same bytes")

	// The site patch replaces an add-on's manifest by name, as on a node config.
	patch, err := machineconfig.InlineManifestPatch([]machineconfig.Manifest{{Name: "metallb", Contents: strings.Replace(ns, "demo", "site", 1)}})
	require.NoError(t, err)

	opts.Patches = [][]byte{patch}
	patched, err := machineconfig.Bootstrap(opts)
	require.NoError(t, err)

	ms, err = machineconfig.InlineManifests(patched)
	require.NoError(t, err)
	require.Len(t, ms, 2)
	assert.Contains(t, ms[1].Contents, "name: site")
}

func TestBootstrapRefusesASecretInAManifest(t *testing.T) {
	_, err := machineconfig.Bootstrap(machineconfig.Options{
		Manifests: []machineconfig.Manifest{{Name: "leaky", Contents: secretManifest(t)}},
	})
	require.ErrorIs(t, err, machineconfig.ErrSecretInConfig)
	assert.Contains(t, err.Error(), `KubeInlineManifestConfig "leaky": manifest`)
}

// secretManifest is a Kubernetes Secret carrying a private key, base64 in
// its data as Kubernetes stores it.
func secretManifest(t *testing.T) string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	der, err := x509.MarshalPKCS8PrivateKey(k)
	require.NoError(t, err)

	p := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})

	return "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\ndata:\n  tls.key: " + base64.StdEncoding.EncodeToString(p) + "\n"
}

func TestCheckNoSecrets(t *testing.T) {
	opts := nodeOpts(t)

	cp, err := machineconfig.NodeConfig(opts, machineconfig.RoleControlPlane)
	require.NoError(t, err)

	worker, err := machineconfig.NodeConfig(opts, machineconfig.RoleWorker)
	require.NoError(t, err)

	bootstrap, err := machineconfig.Bootstrap(opts)
	require.NoError(t, err)

	tests := []struct {
		name string
		cfg  string
		want []string // every one must be named; nil: accepted
	}{
		{"bootstrap", string(bootstrap), nil},
		{"control plane", string(cp), []string{
			"v1alpha1: machine.ca.key", "v1alpha1: machine.token", "v1alpha1: cluster.token", "v1alpha1: cluster.etcd.ca.key",
			"KubeAPIServerCAConfig: issuingCA.key", "KubeAggregatorCAConfig: issuingCA.key",
			"KubeServiceAccountConfig: issuer.privateKey", "DiscoveryIdentityConfig: clusterSecret",
			"KubeEtcdEncryptionConfig: ",
		}},
		{"worker", string(worker), []string{"v1alpha1: machine.token", "v1alpha1: cluster.token", "DiscoveryIdentityConfig: clusterSecret"}},
		{"v1alpha1 without secrets", "version: v1alpha1\ndebug: false\n", []string{"v1alpha1: (the v1alpha1 document itself"}},
		{"static passphrase", "apiVersion: v1alpha1\nkind: VolumeConfig\nname: STATE\nencryption:\n  provider: luks2\n  keys:\n    - slot: 0\n      static:\n        passphrase: hunter2\n",
			[]string{`VolumeConfig "STATE": encryption.keys[0].static.passphrase`}},
		{"PEM key in a manifest", "apiVersion: v1alpha1\nkind: KubeInlineManifestConfig\nname: x\nmanifest: |\n  -----BEGIN RSA PRIVATE KEY-----\n  MIIE\n  -----END RSA PRIVATE KEY-----\n",
			[]string{`KubeInlineManifestConfig "x": manifest`}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := machineconfig.CheckNoSecrets([]byte(tt.cfg))
			if tt.want == nil {
				require.NoError(t, err)

				return
			}

			require.ErrorIs(t, err, machineconfig.ErrSecretInConfig)

			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestCheckNoSecretsRefusesGarbage(t *testing.T) {
	err := machineconfig.CheckNoSecrets([]byte("kind: [\n"))
	require.ErrorContains(t, err, "parsing machine config")
}
