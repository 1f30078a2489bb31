package labbase

import (
	"bytes"
	"compress/gzip"
	"io"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/stretchr/testify/require"
	"github.com/ulikunitz/xz"
)

// Every compression the lab kernel unpacks reads back to the archive, in
// the frame the kernel wants (xz with CRC32, lz4's legacy frame); an
// unknown one is refused naming the choices.
func TestCompressions(t *testing.T) {
	archive := sampleTree(0).mustCPIO(t)

	readers := map[string]func(io.Reader) (io.Reader, error){
		CompressionZstd: func(r io.Reader) (io.Reader, error) { return zstd.NewReader(r) },
		CompressionGzip: func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) },
		CompressionXZ: func(r io.Reader) (io.Reader, error) {
			return xz.NewReader(r)
		},
		CompressionLZ4:           func(r io.Reader) (io.Reader, error) { return lz4.NewReader(r), nil },
		CompressionNone:          func(r io.Reader) (io.Reader, error) { return r, nil },
		CompressionZstdMax:       func(r io.Reader) (io.Reader, error) { return zstd.NewReader(r) },
		CompressionZstdFrames:    func(r io.Reader) (io.Reader, error) { return zstd.NewReader(r) },
		CompressionGzipRsyncable: func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) },
		CompressionZstdRsyncable: func(r io.Reader) (io.Reader, error) { return zstd.NewReader(r) },
		CompressionXZMax: func(r io.Reader) (io.Reader, error) {
			// the BCJ filter is beyond the Go reader: xz itself reads it back
			cmd := exec.Command("xz", "-dc")
			cmd.Stdin = r
			out, err := cmd.Output()

			return bytes.NewReader(out), err
		},
	}

	for _, kind := range Compressions {
		data, err := compress(kind, archive)
		require.NoError(t, err, kind)

		if kind != CompressionNone {
			require.Less(t, len(data), len(archive)/4, kind)
		}

		r, err := readers[kind](bytes.NewReader(data))
		require.NoError(t, err, kind)

		got, err := io.ReadAll(r)
		require.NoError(t, err, kind)
		require.Equal(t, archive, got, kind)
	}

	xzData, err := compress(CompressionXZ, archive)
	require.NoError(t, err)
	require.Equal(t, byte(0x01), xzData[7], "xz stream flags: CRC32, the only check the kernel's decoder takes")

	lz4Data, err := compress(CompressionLZ4, archive)
	require.NoError(t, err)
	require.Equal(t, []byte{0x02, 0x21, 0x4c, 0x18}, lz4Data[:4], "lz4 legacy frame magic")

	_, err = compress("brotli", archive)
	require.ErrorContains(t, err, `initramfs compression "brotli": want one of [zstd gzip xz lz4 none zstd-max xz-max zstd-frames gzip-rsyncable zstd-rsyncable]`)
}
