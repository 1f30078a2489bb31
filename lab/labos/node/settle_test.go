package node_test

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
	"github.com/labfleet/labfleet/lab/labos/node"
)

func esp(t *testing.T, files ...string) bootentry.ESP {
	t.Helper()

	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "EFI/Linux"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "loader"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "loader/loader.conf"), []byte("timeout 0\ndefault lab-*\n"), 0o644))

	for _, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(root, "EFI/Linux", f), nil, 0o644))
	}

	return bootentry.ESP{Root: root}
}

func ls(t *testing.T, e bootentry.ESP) []string {
	t.Helper()

	des, err := os.ReadDir(filepath.Join(e.Root, "EFI/Linux"))
	require.NoError(t, err)

	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}

	sort.Strings(out)

	return out
}

func TestSettle(t *testing.T) {
	cases := []struct {
		name        string
		files       []string
		countPath   string
		selected    string
		healthy     bool
		want        node.Outcome
		wantFiles   []string
		wantDefault string
	}{
		{
			name: "healthy first try", files: []string{"lab-1.0.0.efi", "lab-1.1.0+2-1.efi"},
			countPath: "EFI/Linux/lab-1.1.0+2-1.efi", selected: "lab-1.1.0.efi", healthy: true,
			want:      node.Outcome{Entry: "lab-1.1.0.efi", Blessed: true, Pinned: "lab-1.1.0.efi"},
			wantFiles: []string{"lab-1.0.0.efi", "lab-1.1.0.efi"}, wantDefault: "lab-1.1.0.efi",
		},
		{
			name: "unhealthy counted", files: []string{"lab-1.0.0.efi", "lab-1.1.0+1-2.efi"},
			countPath: "EFI/Linux/lab-1.1.0+1-2.efi", selected: "lab-1.1.0.efi",
			want:      node.Outcome{Entry: "lab-1.1.0.efi", MarkedBad: "lab-1.1.0+0-2.efi", Reboot: true},
			wantFiles: []string{"lab-1.0.0.efi", "lab-1.1.0+0-2.efi"}, wantDefault: "lab-*",
		},
		{
			name: "unhealthy without fallback: no reboot loop", files: []string{"lab-1.0.0+2-1.efi"},
			countPath: "EFI/Linux/lab-1.0.0+2-1.efi", selected: "lab-1.0.0.efi",
			want:      node.Outcome{Entry: "lab-1.0.0.efi", MarkedBad: "lab-1.0.0+0-1.efi"},
			wantFiles: []string{"lab-1.0.0+0-1.efi"}, wantDefault: "lab-*",
		},
		{
			name: "last resort boot of a bad entry", files: []string{"lab-1.0.0+0-3.efi", "lab-0.9.0+0-3.efi"},
			countPath: "EFI/Linux/lab-1.0.0+0-3.efi", selected: "lab-1.0.0.efi",
			want:      node.Outcome{Entry: "lab-1.0.0.efi", MarkedBad: "lab-1.0.0+0-3.efi"},
			wantFiles: []string{"lab-0.9.0+0-3.efi", "lab-1.0.0+0-3.efi"}, wantDefault: "lab-*",
		},
		{
			name: "blessed and healthy", files: []string{"lab-1.0.0.efi"},
			selected: "lab-1.0.0.efi", healthy: true,
			want:      node.Outcome{Entry: "lab-1.0.0.efi", Blessed: true},
			wantFiles: []string{"lab-1.0.0.efi"}, wantDefault: "lab-*",
		},
		{
			name: "blessed but unhealthy: no reboot loop", files: []string{"lab-1.0.0.efi"},
			selected:  "lab-1.0.0.efi",
			want:      node.Outcome{Entry: "lab-1.0.0.efi", Blessed: true},
			wantFiles: []string{"lab-1.0.0.efi"}, wantDefault: "lab-*",
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := esp(t, tc.files...)

			got, err := node.Settle(e, tc.countPath, tc.selected, tc.healthy)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.wantFiles, ls(t, e))

			d, err := e.Default()
			require.NoError(t, err)
			require.Equal(t, tc.wantDefault, d)
		})
	}

	_, err := node.Settle(esp(t), "EFI/Linux/lab-2+3.efi", "lab-2.efi", true)
	require.Error(t, err, "a missing entry file is an error, not a silent bless")
}
