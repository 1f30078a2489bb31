// Package exttest holds helpers the extensions tests share: reading a tree
// to compare two builds byte for byte, and writing a machine secrets bundle.
package exttest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// Tree returns every regular file under dir, keyed by its path relative to dir.
func Tree(t testing.TB, dir string) map[string]string {
	t.Helper()

	out := map[string]string{}

	require.NoError(t, filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}

		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}

		out[rel] = string(b)

		return nil
	}))

	return out
}

// WriteSecrets writes a machinery secrets bundle with a fixed clock, as
// `imagectl keys generate` (or talosctl gen secrets) does, and returns its path.
func WriteSecrets(t testing.TB) string {
	t.Helper()

	b, err := secrets.NewBundle(secrets.NewFixedClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), config.TalosVersionCurrent, secrets.WithECDSAServiceAccountKey())
	require.NoError(t, err)

	data, err := yaml.Marshal(b)
	require.NoError(t, err)

	p := filepath.Join(t.TempDir(), "secrets.yaml")
	require.NoError(t, os.WriteFile(p, data, 0o600))

	return p
}
