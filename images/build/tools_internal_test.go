package build

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

// The imager pipes its extensions cpio into `zstd -T0 -18 -c --quiet`. On
// a stream of unknown size zstd sizes its level-18 tables for the largest
// input (~50 MB, zeroed and faulted in: 0.3 s of CPU for a 30 kB cpio);
// given a file it sizes them for the input. The shim hands zstd the stream
// as a file, so the frame records the content size.
func TestZstdShimCompressesTheImagerStreamAsAFile(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd missing (hack/install-deps.sh installs it)")
	}

	shims, err := writeShims(filepath.Join(t.TempDir(), "shims"), os.Getenv("PATH"))
	require.NoError(t, err)

	input := make([]byte, 30000)
	_, err = rand.Read(input)
	require.NoError(t, err)

	run := func(args ...string) []byte {
		cmd := exec.Command(filepath.Join(shims, "zstd"), args...)
		cmd.Stdin = bytes.NewReader(input)
		cmd.Dir = t.TempDir()

		var stderr bytes.Buffer
		cmd.Stderr = &stderr

		out, err := cmd.Output()
		require.NoError(t, err, stderr.String())

		return out
	}

	out := run("-T0", "-18", "-c", "--quiet")

	var h zstd.Header
	require.NoError(t, h.Decode(out))
	require.True(t, h.HasFCS, "the imager's stream was compressed as a stream of unknown size, not as a file")
	require.Equal(t, uint64(len(input)), h.FrameContentSize)

	d, err := zstd.NewReader(nil)
	require.NoError(t, err)
	defer d.Close()

	got, err := d.DecodeAll(out, nil)
	require.NoError(t, err)
	require.Equal(t, input, got)
	require.Equal(t, out, run("-T0", "-18", "-c", "--quiet"), "the shim's output is not reproducible")

	// Any other call reaches zstd unchanged: from stdin, no content size.
	other := run("-T0", "-3", "-c", "--quiet")
	require.NoError(t, h.Decode(other))
	require.False(t, h.HasFCS, "a call the shim does not rewrite was changed")
}

// The cpio shim clamps every listed file's mtime (symlinks' own too) and
// sets modes as umask 022 would, then archives exactly the list: names with
// spaces, and a last name without a newline, included.
func TestCpioShimClampsTheListedFiles(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio missing (hack/install-deps.sh installs it)")
	}

	shims, err := writeShims(filepath.Join(t.TempDir(), "shims"), os.Getenv("PATH"))
	require.NoError(t, err)

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a b.sqsh"), []byte("squash"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "extensions.yaml"), []byte("x: 1\n"), 0o600))
	require.NoError(t, os.Symlink("extensions.yaml", filepath.Join(dir, "link")))

	cmd := exec.Command(filepath.Join(shims, "cpio"), "-H", "newc", "--create", "--reproducible", "--quiet", "-R", "+0:+0")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	cmd.Stdin = bytes.NewReader([]byte("a b.sqsh\nlink\nextensions.yaml"))

	var stderr bytes.Buffer
	cmd.Stderr = &stderr

	out, err := cmd.Output()
	require.NoError(t, err, stderr.String())

	for _, name := range []string{"a b.sqsh", "extensions.yaml", "link"} {
		st, err := os.Lstat(filepath.Join(dir, name))
		require.NoError(t, err)
		require.Equal(t, int64(1700000000), st.ModTime().Unix(), "%s: mtime not clamped", name)

		if name != "link" {
			require.Equal(t, os.FileMode(0o644), st.Mode().Perm(), "%s: mode", name)
		}

		require.True(t, bytes.Contains(out, []byte(name+"\x00")), "%s missing from the archive", name)
	}
}
