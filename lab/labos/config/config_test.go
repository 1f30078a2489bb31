package config_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	"github.com/stretchr/testify/require"

	labconfig "github.com/labfleet/labfleet/lab/labos/config"
)

const nsManifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cilium\n"

// machineConfig generates a real Talos controlplane config the way
// imagectl embeds one.
func machineConfig(t *testing.T) ([]byte, *secrets.Bundle) {
	t.Helper()

	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	require.NoError(t, err)

	in, err := generate.NewInput("lab", "https://10.0.2.15:6443", "1.34.0", generate.WithSecretsBundle(bundle))
	require.NoError(t, err)

	cfg, err := in.Config(machine.TypeControlPlane)
	require.NoError(t, err)

	cfg.RawV1Alpha1().ClusterConfig.ClusterInlineManifests = v1alpha1.ClusterInlineManifests{
		{InlineManifestName: "cilium", InlineManifestContents: nsManifest},
	}

	data, err := cfg.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	require.NoError(t, err)

	return data, bundle
}

func TestParseGenerated(t *testing.T) {
	data, bundle := machineConfig(t)

	m, err := labconfig.Parse(data)
	require.NoError(t, err)
	require.Equal(t, bundle.Certs.OS.Crt, m.CACert)
	require.Equal(t, bundle.Certs.OS.Key, m.CAKey)
	require.Equal(t, []labconfig.InlineManifest{{Name: "cilium", Contents: nsManifest}}, m.InlineManifests)

	// typed inline manifest documents are read too
	extra := "\n---\napiVersion: v1alpha1\nkind: KubeInlineManifestConfig\nname: metallb\nmanifest: |\n  kind: Namespace\n"
	m, err = labconfig.Parse(append(data, []byte(extra)...))
	require.NoError(t, err)
	require.Len(t, m.InlineManifests, 2)
	require.Equal(t, "metallb", m.InlineManifests[1].Name)
}

func TestParseErrors(t *testing.T) {
	cases := map[string]struct{ in, want string }{
		"bad ca":       {"version: v1alpha1\nmachine:\n  ca:\n    crt: '!!'\n    key: a2V5\n", "machine.ca.crt"},
		"not yaml":     {"version: [", "machine config:"},
		"empty":        {"", "no document"},
		"two v1alpha1": {"version: v1alpha1\nmachine:\n  ca: {crt: YQ==, key: YQ==}\n---\nversion: v1alpha1\nmachine:\n  ca: {crt: YQ==, key: YQ==}\n", "more than one v1alpha1"},
	}

	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := labconfig.Parse([]byte(tc.in))
			require.ErrorContains(t, err, tc.want)
		})
	}

	_, err := labconfig.Parse(make([]byte, labconfig.MaxSize+1))
	require.ErrorContains(t, err, "more than the")
}

// TestBootstrapIsIncomplete: the secret-free config an image embeds parses
// (its add-on manifests are used) but cannot run a node on its own.
func TestBootstrapIsIncomplete(t *testing.T) {
	m, err := labconfig.Parse([]byte("apiVersion: v1alpha1\nkind: KubeInlineManifestConfig\nname: cilium\nmanifest: x\n"))
	require.NoError(t, err)
	require.Equal(t, []labconfig.InlineManifest{{Name: "cilium", Contents: "x"}}, m.InlineManifests)
	require.ErrorContains(t, m.Complete(), "no v1alpha1 document")

	data, _ := machineConfig(t)
	full, err := labconfig.Parse(data)
	require.NoError(t, err)
	require.NoError(t, full.Complete())

	// the applied config's manifest wins; the embedded one fills gaps
	merged := full.WithManifests([]labconfig.InlineManifest{{Name: "cilium", Contents: "old"}, {Name: "thanos", Contents: "t"}})
	require.Equal(t, []labconfig.InlineManifest{{Name: "cilium", Contents: nsManifest}, {Name: "thanos", Contents: "t"}}, merged.InlineManifests)
	require.Len(t, full.InlineManifests, 1, "WithManifests must not change its receiver")
}

// TestStore: the applied config is kept once, privately, and a second one
// is refused without touching the first.
func TestStore(t *testing.T) {
	root := t.TempDir()

	_, err := labconfig.ReadStored(root)
	require.ErrorIs(t, err, labconfig.ErrNotStored)

	require.NoError(t, labconfig.Store(root, []byte("first")))
	require.ErrorIs(t, labconfig.Store(root, []byte("second")), labconfig.ErrAlreadyStored)

	got, err := labconfig.ReadStored(root)
	require.NoError(t, err)
	require.Equal(t, "first", string(got))

	st, err := os.Stat(filepath.Join(root, labconfig.StoredName))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the config holds the machine CA key")

	left, err := filepath.Glob(filepath.Join(root, ".config-*"))
	require.NoError(t, err)
	require.Empty(t, left, "no temp file may stay behind")
}

// TestReadEmbedded builds the extension layout Talos's imager appends
// (extensions.yaml + zstd squashfs) with the real mksquashfs.
func TestReadEmbedded(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mksquashfs is required (apt-get install squashfs-tools)")
		}

		t.Skip("mksquashfs not installed")
	}

	data, _ := machineConfig(t)

	src := t.TempDir()
	cfgPath := filepath.Join(src, labconfig.EmbeddedPath)
	require.NoError(t, os.MkdirAll(filepath.Dir(cfgPath), 0o755))
	require.NoError(t, os.WriteFile(cfgPath, data, 0o644))

	root := t.TempDir()

	_, err := labconfig.ReadEmbedded(root)
	require.ErrorIs(t, err, labconfig.ErrNotEmbedded)

	for _, comp := range []string{"zstd", "xz"} {
		t.Run(comp, func(t *testing.T) {
			img := filepath.Join(root, "embedded-config.sqsh")
			out, err := exec.Command("mksquashfs", src, img, "-all-root", "-noappend", "-no-progress", "-comp", comp).CombinedOutput()
			require.NoError(t, err, string(out))

			require.NoError(t, os.WriteFile(filepath.Join(root, "extensions.yaml"), []byte(
				"layers:\n  - image: other.sqsh\n    metadata: {name: other, version: 1}\n  - image: embedded-config.sqsh\n    metadata:\n      name: embedded-config\n      version: 1.0.0\n"), 0o644))

			got, err := labconfig.ReadEmbedded(root)
			require.NoError(t, err)
			require.Equal(t, data, got)
		})
	}
}

func TestMirrors(t *testing.T) {
	m, err := labconfig.Mirrors([]byte(`version: v1alpha1
machine:
  registries:
    mirrors:
      docker.io: {endpoints: ["https://mirror.example:5000/v2"]}
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: ghcr.io
endpoints:
  - url: http://[fdae:1::1]:5000
skipFallback: true
`))
	require.NoError(t, err)
	require.Len(t, m, 2)
	require.Equal(t, "[fdae:1::1]:5000", m["ghcr.io"].Endpoints[0].Host)
	require.True(t, m["ghcr.io"].SkipFallback)

	got, ok := labconfig.For(m, "docker.io")
	require.True(t, ok)
	require.Equal(t, "mirror.example:5000", got.Endpoints[0].Host)

	_, ok = labconfig.For(m, "quay.io")
	require.False(t, ok)

	for _, tc := range []struct{ doc, want string }{
		{"kind: RegistryMirrorConfig\nname: ghcr.io\nendpoints: [{url: 'ftp://x'}]\n", `machine config document 1 (RegistryMirrorConfig) (ghcr.io): endpoints[0]: "ftp://x": want an http:// or https:// URL`},
		{"kind: RegistryMirrorConfig\nname: ghcr.io\nendpoints: [{url: 'https://u:p@x'}]\n", `carries credentials in the URL`},
		{"kind: RegistryMirrorConfig\nname: ghcr.io\nendpoints: [{url: 'https://x/other/path'}]\n", `has a path or query`},
		{"kind: RegistryMirrorConfig\nname: ghcr.io\nendpoints: [{url: 'https://x', overridePath: true}]\n", `endpoints[0]: overridePath is not supported by labos`},
		{"kind: RegistryMirrorConfig\nname: ghcr.io\n", `(ghcr.io): endpoints: empty`},
		{"kind: RegistryMirrorConfig\nendpoints: [{url: 'https://x'}]\n", `name: empty`},
		{"kind: RegistryMirrorConfig\nname: a\nendpoints: [{url: 'https://x'}]\n---\nkind: RegistryMirrorConfig\nname: a\nendpoints: [{url: 'https://y'}]\n", `machine config document 2 (RegistryMirrorConfig): registry a has two mirror configurations`},
	} {
		_, err := labconfig.Mirrors([]byte(tc.doc))
		require.ErrorContains(t, err, tc.want, tc.doc)
	}
}
