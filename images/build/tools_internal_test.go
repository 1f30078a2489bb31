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
