package bootentry_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
	"github.com/labfleet/labfleet/lab/labos/bootentry/espfake"
)

const mib = 1 << 20

// upgradeAndBoot does what an Upgrade call and the next healthy boot do to
// the ESP: install NAME-VER+3.efi with the glob default, then (as
// systemd-boot counts and node.Settle blesses) bless it and pin it.
func upgradeAndBoot(t *testing.T, esp bootentry.ESP, install func(version string, uki []byte) (bootentry.Entry, error), version string, size int) error {
	t.Helper()

	e, err := install(version, bytes.Repeat([]byte{byte(len(version))}, size))
	if err != nil {
		return err
	}

	require.NoError(t, esp.SetDefault(bootentry.Glob("lab")))

	blessed, err := esp.Bless(e.File)
	require.NoError(t, err)
	require.NoError(t, esp.SetDefault(blessed.ID()))

	return nil
}

// The lab ESP holds about four UKIs: without housekeeping, every upgrade
// leaves its predecessor behind and the 4th one fails with ENOSPC.
func TestSixUpgradesOnASmallESP(t *testing.T) {
	const uki = 2 * mib

	esp := espfake.Small(t, 9*mib+mib/2) // room for 4 entries, not 5
	espfake.Put(t, esp, "lab-1.0.0.efi", uki)

	booted := "lab-1.0.0.efi"

	for i := 1; i <= 6; i++ {
		version := fmt.Sprintf("1.%d.0", i)

		err := upgradeAndBoot(t, esp, func(version string, b []byte) (bootentry.Entry, error) {
			return esp.InstallWith("lab", version, bytes.NewReader(b), bootentry.InstallOptions{Booted: booted})
		}, version, uki)
		require.NoError(t, err, "upgrade %d to %s", i, version)

		booted = "lab-" + version + ".efi"
	}

	require.Equal(t, []string{"lab-1.4.0.efi", "lab-1.5.0.efi", "lab-1.6.0.efi"}, espfake.Names(t, esp), "booted %s", booted)
}

// The same six upgrades with the free space computed, for machines where
// the tmpfs cannot be mounted; the capacity refuses a 4th entry.
func TestSixUpgradesInjectedSpace(t *testing.T) {
	const uki = 2 * mib

	esp := espfake.WithCapacity(espfake.New(t), 7*mib+mib/2)
	espfake.Put(t, esp, "lab-1.0.0.efi", uki)

	booted := "lab-1.0.0.efi"

	for i := 1; i <= 6; i++ {
		version := fmt.Sprintf("1.%d.0", i)

		err := upgradeAndBoot(t, esp, func(version string, b []byte) (bootentry.Entry, error) {
			return esp.InstallWith("lab", version, bytes.NewReader(b), bootentry.InstallOptions{Booted: booted})
		}, version, uki)
		require.NoError(t, err, "upgrade %d to %s", i, version)

		booted = "lab-" + version + ".efi"

		free, err := esp.FreeSpace()
		require.NoError(t, err)
		require.GreaterOrEqual(t, free, int64(0), "after upgrade %d", i)
	}

	// 1.6.0 was installed while 1.5.0 ran and 1.4.0 was the fallback
	require.Equal(t, []string{"lab-1.4.0.efi", "lab-1.5.0.efi", "lab-1.6.0.efi"}, espfake.Names(t, esp))
}

func TestInstallHousekeeping(t *testing.T) {
	const size = 1000

	cases := []struct {
		name    string
		files   []string
		tmp     []string // leftovers, relative to the ESP root
		def     string   // loader.conf default ("" keeps espfake's glob)
		booted  string
		version string
		want    []string
	}{
		{
			name:    "prunes old, bad and leftovers",
			files:   []string{"lab-1.0.0.efi", "lab-1.1.0.efi", "lab-1.2.0.efi", "lab-1.3.0+0-3.efi", "other-1.0.efi"},
			tmp:     []string{"EFI/Linux/.tmp-123", "loader/.tmp-456"},
			booted:  "lab-1.2.0.efi",
			version: "1.4.0",
			want:    []string{"lab-1.1.0.efi", "lab-1.2.0.efi", "lab-1.4.0+3.efi", "other-1.0.efi"},
		},
		{
			name:    "running entry still under trial",
			files:   []string{"lab-1.1.0.efi", "lab-1.2.0.efi", "lab-1.3.0+2-1.efi"},
			booted:  "lab-1.3.0.efi", // LoaderEntrySelected has no counter
			version: "1.4.0",
			want:    []string{"lab-1.2.0.efi", "lab-1.3.0+2-1.efi", "lab-1.4.0+3.efi"},
		},
		{
			name:    "booted unknown keeps two newest blessed",
			files:   []string{"lab-1.0.0.efi", "lab-1.1.0.efi", "lab-1.2.0.efi", "lab-1.3.0+1-2.efi"},
			version: "1.4.0",
			want:    []string{"lab-1.1.0.efi", "lab-1.2.0.efi", "lab-1.4.0+3.efi"},
		},
		{
			name:    "exact default kept",
			files:   []string{"lab-1.0.0.efi", "lab-1.1.0.efi", "lab-1.2.0.efi"},
			def:     "lab-1.0.0.efi",
			booted:  "lab-1.2.0.efi",
			version: "1.3.0",
			want:    []string{"lab-1.0.0.efi", "lab-1.1.0.efi", "lab-1.2.0.efi", "lab-1.3.0+3.efi"},
		},
		{
			name:    "same version as running replaced only after the write",
			files:   []string{"lab-1.0.0.efi", "lab-1.1.0.efi", "lab-1.2.0.efi"},
			booted:  "lab-1.2.0.efi",
			version: "1.2.0",
			want:    []string{"lab-1.1.0.efi", "lab-1.2.0+3.efi"},
		},
		{
			name:    "bad entry of the same version replaced",
			files:   []string{"lab-1.1.0.efi", "lab-1.2.0+0-3.efi"},
			booted:  "lab-1.1.0.efi",
			version: "1.2.0",
			want:    []string{"lab-1.1.0.efi", "lab-1.2.0+3.efi"},
		},
		{
			name:    "files that do not parse are left alone",
			files:   []string{"lab-1.1.0.efi", "lab+x.efi", "notes.txt"},
			booted:  "lab-1.1.0.efi",
			version: "1.2.0",
			want:    []string{"lab+x.efi", "lab-1.1.0.efi", "lab-1.2.0+3.efi", "notes.txt"},
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			esp := espfake.New(t)
			for _, f := range tc.files {
				espfake.Put(t, esp, f, size)
			}

			for _, f := range tc.tmp {
				require.NoError(t, os.WriteFile(filepath.Join(esp.Root, f), make([]byte, size), 0o644))
			}

			if tc.def != "" {
				require.NoError(t, esp.SetDefault(tc.def))
			}

			e, err := esp.InstallWith("lab", tc.version, bytes.NewReader(make([]byte, size)), bootentry.InstallOptions{Booted: tc.booted})
			require.NoError(t, err)
			require.Equal(t, "lab-"+tc.version+"+3.efi", e.File)
			require.Equal(t, tc.want, espfake.Names(t, esp))

			des, err := os.ReadDir(filepath.Join(esp.Root, "loader"))
			require.NoError(t, err)
			require.Len(t, des, 1, "only loader.conf stays in loader/")
		})
	}
}

// An entry that does not fit even after pruning is refused before anything
// is removed, naming what was kept and why.
func TestInstallRefusedWhenItCannotFit(t *testing.T) {
	const uki = 2 * mib

	esp := espfake.WithCapacity(espfake.New(t), 7*mib)
	for _, f := range []string{"lab-1.0.0.efi", "lab-1.1.0.efi", "lab-1.2.0.efi"} {
		espfake.Put(t, esp, f, uki)
	}

	require.NoError(t, os.WriteFile(filepath.Join(esp.Root, "EFI/Linux/.tmp-1"), []byte("x"), 0o644))

	before := espfake.Names(t, esp)

	// about 1 MiB free + 2 MiB of 1.0.0 reclaimable < 2 MiB + 1 MiB margin
	_, err := esp.InstallWith("lab", "1.3.0", bytes.NewReader(make([]byte, uki+1)), bootentry.InstallOptions{Booted: "lab-1.2.0.efi"})
	require.ErrorIs(t, err, bootentry.ErrNoSpace)
	require.ErrorContains(t, err, "installing lab-1.3.0+3.efi: needs")
	require.ErrorContains(t, err, "kept lab-1.1.0.efi (previous blessed), lab-1.2.0.efi (running), lab-1.3.0+3.efi (under trial)")
	require.Equal(t, before, espfake.Names(t, esp), "nothing removed")

	d, err := esp.Default()
	require.NoError(t, err)
	require.Equal(t, "lab-*", d)

	// just fitting is fine (loader.conf uses a few bytes)
	_, err = esp.InstallWith("lab", "1.3.0", bytes.NewReader(make([]byte, uki-1024)), bootentry.InstallOptions{Booted: "lab-1.2.0.efi"})
	require.NoError(t, err)
	require.Equal(t, []string{"lab-1.1.0.efi", "lab-1.2.0.efi", "lab-1.3.0+3.efi"}, espfake.Names(t, esp))
}
