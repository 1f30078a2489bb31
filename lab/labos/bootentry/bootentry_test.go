package bootentry_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
	"github.com/labfleet/labfleet/lab/labos/bootentry/espfake"
)

func TestParse(t *testing.T) {
	cases := []struct {
		file    string
		base    string
		counted bool
		left    int
		done    int
		bad     bool
		wantErr bool
	}{
		{file: "lab-1.0.0.efi", base: "lab-1.0.0"},
		{file: "lab-1.1.0+3.efi", base: "lab-1.1.0", counted: true, left: 3},
		{file: "lab-1.1.0+2-1.efi", base: "lab-1.1.0", counted: true, left: 2, done: 1},
		{file: "lab-1.1.0+0-3.efi", base: "lab-1.1.0", counted: true, done: 3, bad: true},
		{file: "lab+x.efi", wantErr: true},
		{file: "lab+3-.efi", wantErr: true},
		{file: "lab++3.efi", wantErr: true},
		{file: "lab+-3.efi", wantErr: true},
		{file: "..+3.efi", wantErr: true},
		{file: "lab\nx.efi", wantErr: true},
		{file: "lab-1.0+99999999999999999999.efi", wantErr: true},
		{file: ".efi", wantErr: true},
		{file: "LAB-1.0.EFI", base: "LAB-1.0"},
		{file: "lab-1.0.0.conf", wantErr: true},
	}

	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			e, err := bootentry.Parse(tc.file)
			if tc.wantErr {
				require.Error(t, err)

				return
			}

			require.NoError(t, err)
			require.Equal(t, tc.base, e.Base)
			require.Equal(t, tc.counted, e.Counted)
			require.Equal(t, tc.left, e.Left)
			require.Equal(t, tc.done, e.Done)
			require.Equal(t, tc.bad, e.Bad())
			require.Equal(t, tc.base+".efi", e.ID())
		})
	}
}

func TestBlessAndBad(t *testing.T) {
	cases := []struct {
		name    string
		files   []string
		booted  string
		bless   bool
		want    []string
		wantErr string
	}{
		{name: "bless counted", files: []string{"lab-1.0.0.efi", "lab-1.1.0+2-1.efi"}, booted: "EFI/Linux/lab-1.1.0+2-1.efi", bless: true,
			want: []string{"lab-1.0.0.efi", "lab-1.1.0.efi"}},
		{name: "bless already blessed", files: []string{"lab-1.0.0.efi"}, booted: "lab-1.0.0.efi", bless: true,
			want: []string{"lab-1.0.0.efi"}},
		{name: "mark bad", files: []string{"lab-1.0.0.efi", "lab-1.1.0+2-1.efi"}, booted: "lab-1.1.0+2-1.efi",
			want: []string{"lab-1.0.0.efi", "lab-1.1.0+0-1.efi"}},
		{name: "mark bad blessed refused", files: []string{"lab-1.0.0.efi"}, booted: "lab-1.0.0.efi",
			want: []string{"lab-1.0.0.efi"}, wantErr: "entry is blessed"},
		{name: "missing file", files: []string{"lab-1.0.0.efi"}, booted: "lab-2+3.efi", bless: true,
			want: []string{"lab-1.0.0.efi"}, wantErr: "no such file"},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			esp := espfake.New(t, tc.files...)

			var err error
			if tc.bless {
				_, err = esp.Bless(tc.booted)
			} else {
				_, err = esp.MarkBad(tc.booted)
			}

			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
			}

			require.Equal(t, tc.want, espfake.Names(t, esp))
		})
	}
}

func TestFailedAndRollback(t *testing.T) {
	esp := espfake.New(t, "lab-1.0.0.efi", "lab-1.1.0.efi", "lab-1.10.0+0-3.efi", "lab-1.2.0+2-1.efi")

	failed, err := esp.Failed()
	require.NoError(t, err)
	require.Equal(t, []string{"lab-1.10.0.efi"}, failed)

	cases := []struct {
		booted string
		want   string
	}{
		{booted: "lab-1.1.0.efi", want: "lab-1.0.0.efi"},
		{booted: "lab-1.2.0.efi", want: "lab-1.1.0.efi"},
		{booted: "lab-1.0.0.efi", want: "lab-1.1.0.efi"},
	}

	for _, tc := range cases {
		got, err := esp.Rollback(tc.booted)
		require.NoError(t, err)
		require.Equal(t, tc.want, got.ID(), "booted %s", tc.booted)
	}

	_, err = espfake.New(t, "lab-1.0.0.efi").Rollback("lab-1.0.0.efi")
	require.Error(t, err)
}

func TestDefaultPinning(t *testing.T) {
	esp := espfake.New(t)

	d, err := esp.Default()
	require.NoError(t, err)
	require.Equal(t, "lab-*", d)

	require.NoError(t, esp.SetDefault("lab-1.1.0.efi"))

	b, err := os.ReadFile(filepath.Join(esp.Root, "loader/loader.conf"))
	require.NoError(t, err)
	require.Equal(t, "secure-boot-enroll if-safe\ndefault lab-1.1.0.efi\ntimeout 0\n", string(b))

	require.NoError(t, esp.SetDefault(bootentry.Glob("lab")))
	d, err = esp.Default()
	require.NoError(t, err)
	require.Equal(t, "lab-*", d)

	// a loader.conf without default gets one
	require.NoError(t, os.WriteFile(filepath.Join(esp.Root, "loader/loader.conf"), []byte("timeout 0\n"), 0o644))
	require.NoError(t, esp.SetDefault("lab-*"))
	b, err = os.ReadFile(filepath.Join(esp.Root, "loader/loader.conf"))
	require.NoError(t, err)
	require.Equal(t, "timeout 0\ndefault lab-*\n", string(b))
}

func TestInstall(t *testing.T) {
	esp := espfake.New(t, "lab-1.0.0.efi", "lab-1.1.0+0-3.efi")

	e, err := esp.Install("lab", "1.1.0", strings.NewReader("new uki"))
	require.NoError(t, err)
	require.Equal(t, "lab-1.1.0+3.efi", e.File)
	require.Equal(t, []string{"lab-1.0.0.efi", "lab-1.1.0+3.efi"}, espfake.Names(t, esp))

	b, err := os.ReadFile(filepath.Join(esp.Root, "EFI/Linux/lab-1.1.0+3.efi"))
	require.NoError(t, err)
	require.Equal(t, "new uki", string(b))
}

func TestCompareVersion(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"lab-1.10.0", "lab-1.9.0", 1},
		{"lab-1.0.0", "lab-1.0.0", 0},
		{"lab-1.0", "lab-1.0.1", -1},
		{"lab-v2", "lab-v10", -1},
	}

	for _, tc := range cases {
		require.Equal(t, tc.want, bootentry.CompareVersion(tc.a, tc.b), "%s vs %s", tc.a, tc.b)
	}
}

func TestValidateLabel(t *testing.T) {
	for _, ok := range []string{"lab", "1.1.0", "v1.2.3-rc.1", "lab_cp", "A", strings.Repeat("a", 63)} {
		require.NoError(t, bootentry.ValidateLabel("version", ok), ok)
	}

	for _, bad := range []string{"", "-x", ".hidden", "a/b", `a\b`, "a..b", "..", "a\nb", "a\rb", "a\x00", "a+3", "a*", "a b",
		strings.Repeat("a", 64), "é", "a\u2028b"} {
		err := bootentry.ValidateLabel("label org.labfleet.version", bad)
		require.ErrorIs(t, err, bootentry.ErrInvalidLabel, "%q", bad)
		require.ErrorContains(t, err, "label org.labfleet.version")
		require.ErrorContains(t, err, "must match "+bootentry.LabelPattern)
		require.NotContains(t, err.Error(), "\n", "the error is printed on the console")
	}
}

func TestInstallRefusesHostileLabels(t *testing.T) {
	esp := espfake.New(t, "lab-1.0.0.efi")

	_, err := esp.Install("lab", "x/../../../../outside/pwned", strings.NewReader("uki"))
	require.ErrorContains(t, err, `image version "x/../../../../outside/pwned": must match`)

	_, err = esp.Install("lab\nsecure-boot-enroll force", "1.1.0", strings.NewReader("uki"))
	require.ErrorContains(t, err, `image name "lab\nsecure-boot-enroll force": must match`)

	err = esp.SetDefault("lab-*\nsecure-boot-enroll force")
	require.ErrorContains(t, err, "loader.conf default")

	require.Equal(t, []string{"lab-1.0.0.efi"}, espfake.Names(t, esp))

	b, err := os.ReadFile(filepath.Join(esp.Root, "loader/loader.conf"))
	require.NoError(t, err)
	require.Equal(t, "secure-boot-enroll if-safe\ndefault lab-*\ntimeout 0\n", string(b))
}
