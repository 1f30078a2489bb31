package labbase

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
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
)

// Compressions lists the values Options.Compression takes.
var Compressions = []string{CompressionZstd, CompressionGzip, CompressionXZ, CompressionLZ4, CompressionNone}

// compress compresses a newc archive as the kernel's initramfs
// decompressors read it.
func compress(kind string, archive []byte) ([]byte, error) {
	var buf bytes.Buffer

	switch kind {
	case "", CompressionZstd:
		return compressInitramfs(archive)
	case CompressionNone:
		return archive, nil
	case CompressionGzip:
		w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if err != nil {
			return nil, err
		}

		if _, err := w.Write(archive); err != nil {
			return nil, err
		}

		if err := w.Close(); err != nil {
			return nil, err
		}
	case CompressionXZ:
		// the kernel's xz decoder takes CRC32 (not xz's default CRC64)
		w, err := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 8 << 20}.NewWriter(&buf)
		if err != nil {
			return nil, err
		}

		if _, err := w.Write(archive); err != nil {
			return nil, err
		}

		if err := w.Close(); err != nil {
			return nil, err
		}
	case CompressionLZ4:
		// the kernel reads lz4's legacy frame (lz4 -l)
		w := lz4.NewWriter(&buf)
		if err := w.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level9)); err != nil {
			return nil, err
		}

		if _, err := w.Write(archive); err != nil {
			return nil, err
		}

		if err := w.Close(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("initramfs compression %q: want one of %v", kind, Compressions)
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
