package labbase

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// Initramfs compressions the lab kernel unpacks (CONFIG_RD_*). The UKI's
// bytes are hashed several times before the kernel runs (firmware
// Authenticode, systemd-stub's PCR 11, the EFI stub's PCR 9) and the
// kernel decompresses them under an emulated CPU afterwards: which one
// boots faster is measured (lab/README.md), not assumed.
const (
	CompressionZstd = "zstd" // the default: what Talos's imager uses since v1.8
	CompressionGzip = "gzip"
	CompressionXZ   = "xz"
	CompressionLZ4  = "lz4"
	CompressionNone = "none"
	// The reference tools at their strongest settings (zstd -19, xz -9e
	// with the x86 BCJ filter), from the host (hack/install-deps.sh
	// installs both): the Go encoders stop at about zstd's level 11.
	CompressionZstdMax = "zstd-max"
	CompressionXZMax   = "xz-max"
)

// Compressions lists the values Options.Compression takes.
var Compressions = []string{CompressionZstd, CompressionGzip, CompressionXZ, CompressionLZ4, CompressionNone, CompressionZstdMax, CompressionXZMax}

// hostCompressArgs are the command lines of the host-tool compressions,
// reading the archive from a file (so zstd records the content size).
var hostCompressArgs = map[string][]string{
	// window 8 MiB (level 19's): what the kernel's decompressor allocates
	CompressionZstdMax: {"zstd", "-19", "-q", "-c", "--no-progress"},
	// CRC32: the only check the kernel's xz decoder takes
	CompressionXZMax: {"xz", "-c", "-q", "--check=crc32", "--x86", "--lzma2=preset=9e", "--threads=1"},
}

func compressWithHostTool(kind string, archive []byte) ([]byte, error) {
	f, err := os.CreateTemp("", "labbase-cpio-*")
	if err != nil {
		return nil, err
	}

	defer os.Remove(f.Name()) //nolint:errcheck

	if _, err := f.Write(archive); err != nil {
		f.Close() //nolint:errcheck

		return nil, err
	}

	if err := f.Close(); err != nil {
		return nil, err
	}

	args := append(append([]string(nil), hostCompressArgs[kind]...), f.Name())

	var out, stderr bytes.Buffer

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &stderr

	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("initramfs compression %s: %s: %w: %s", kind, args[0], err, bytes.TrimSpace(stderr.Bytes()))
	}

	return out.Bytes(), nil
}

// compress compresses a newc archive as the kernel's initramfs
// decompressors read it.
func compress(kind string, archive []byte) ([]byte, error) {
	var (
		buf bytes.Buffer
		w   io.WriteCloser
		err error
	)

	switch kind {
	case "", CompressionZstd:
		return compressInitramfs(archive)
	case CompressionNone:
		return archive, nil
	case CompressionZstdMax, CompressionXZMax:
		return compressWithHostTool(kind, archive)
	case CompressionGzip:
		w, err = gzip.NewWriterLevel(&buf, gzip.BestCompression)
	case CompressionXZ:
		// the kernel's xz decoder takes CRC32 (not xz's default CRC64)
		w, err = xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 8 << 20}.NewWriter(&buf)
	case CompressionLZ4:
		// the kernel reads lz4's legacy frame (lz4 -l)
		lw := lz4.NewWriter(&buf)
		err = lw.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level9))
		w = lw
	default:
		return nil, fmt.Errorf("initramfs compression %q: want one of %v", kind, Compressions)
	}

	if err != nil {
		return nil, err
	}

	if _, err := w.Write(archive); err != nil {
		return nil, err
	}

	if err := w.Close(); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}

// compressInitramfs compresses a newc archive with zstd, what Talos's imager
// uses for v1.8+ (quirks.UseZSTDCompression) under the historic name
// initramfs.xz. The imager appends its own compressed cpio of the
// extensions; the kernel unpacks concatenated archives with mixed
// compression, so the base only has to be a complete archive with a trailer.
// One encoder goroutine keeps the output byte-identical across runs.
func compressInitramfs(archive []byte) ([]byte, error) {
	var buf bytes.Buffer

	enc, err := zstd.NewWriter(&buf,
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true),
		// The kernel's single-pass decompressor wants the frame to
		// announce its size and a window it can allocate.
		zstd.WithWindowSize(8<<20),
	)
	if err != nil {
		return nil, err
	}

	if _, err := enc.Write(archive); err != nil {
		return nil, err
	}

	if err := enc.Close(); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}

func (b *builder) writeInitramfs(context.Context) error {
	archive, err := b.tree.cpioBytes()
	if err != nil {
		return fmt.Errorf("writing cpio: %w", err)
	}

	data, err := compress(b.opts.Compression, archive)
	if err != nil {
		return fmt.Errorf("compressing: %w", err)
	}

	if err := os.MkdirAll(b.opts.OutDir, 0o755); err != nil {
		return err
	}

	p := filepath.Join(b.opts.OutDir, "initramfs.xz")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return err
	}

	b.res.InitramfsPath = p
	b.res.InitramfsSize = int64(len(data))
	b.log.Info("initramfs written", "path", p, "cpio", len(archive), "compressed", len(data))

	return nil
}
