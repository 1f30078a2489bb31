package node_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/bootentry/espfake"
	"github.com/labfleet/labfleet/lab/labos/node"
)

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
			e := espfake.New(t, tc.files...)

			got, err := node.Settle(e, tc.countPath, tc.selected, tc.healthy)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.wantFiles, espfake.Names(t, e))

			d, err := e.Default()
			require.NoError(t, err)
			require.Equal(t, tc.wantDefault, d)
		})
	}

	_, err := node.Settle(espfake.New(t), "EFI/Linux/lab-2+3.efi", "lab-2.efi", true)
	require.Error(t, err, "a missing entry file is an error, not a silent bless")
}
