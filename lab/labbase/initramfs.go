package labbase

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
)

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

	data, err := compressInitramfs(archive)
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
