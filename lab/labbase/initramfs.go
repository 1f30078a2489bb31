package labbase

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
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
	// Delta-friendly forms (lab/README.md "Delta-friendly initramfs"): a
	// change to one file changes the compressed bytes near it only, so a
	// site holding the previous release fetches little more than the
	// changed file's compressed size through the site cache's chunk delta.
	//
	// CompressionZstdFrames cuts the archive at cpio record boundaries
	// chosen by content (see frameCuts) and compresses each piece as an
	// independent zstd frame: an unchanged file gives the same frame. The
	// kernel unpacks concatenated compressed members, each ending at a
	// record boundary (TestZstdFramesMeetKernelRules); not yet boot-tested.
	CompressionZstdFrames = "zstd-frames"
	// CompressionGzipRsyncable is the host's `gzip -9 -n --rsyncable`: one
	// ordinary gzip stream whose compressor resets at content-defined
	// points, so any gzip reader (the kernel's too) takes it.
	CompressionGzipRsyncable = "gzip-rsyncable"
	// CompressionZstdRsyncable is the host's `zstd -19 --rsyncable
	// -B1048576`: zstd's own rsyncable mode (sync points about one 1 MiB
	// job apart), one frame per job.
	CompressionZstdRsyncable = "zstd-rsyncable"
)

// Compressions lists the values Options.Compression takes.
var Compressions = []string{
	CompressionZstd, CompressionGzip, CompressionXZ, CompressionLZ4, CompressionNone, CompressionZstdMax, CompressionXZMax,
	CompressionZstdFrames, CompressionGzipRsyncable, CompressionZstdRsyncable,
}

// hostCompressArgs are the command lines of the host-tool compressions,
// reading the archive from a file (so zstd records the content size).
var hostCompressArgs = map[string][]string{
	// window 8 MiB (level 19's): what the kernel's decompressor allocates
	CompressionZstdMax: {"zstd", "-19", "-q", "-c", "--no-progress"},
	// CRC32: the only check the kernel's xz decoder takes
	CompressionXZMax: {"xz", "-c", "-q", "--check=crc32", "--x86", "--lzma2=preset=9e", "--threads=1"},
	// -n: no file name or time in the header (reproducible)
	CompressionGzipRsyncable: {"gzip", "-9", "-n", "-c", "--rsyncable"},
	// --rsyncable needs zstd's job mode; its output does not depend on
	// the thread count, -T1 keeps it to one core
	CompressionZstdRsyncable: {"zstd", "-19", "-q", "-c", "--no-progress", "--rsyncable", "-B1048576", "-T1"},
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
	case CompressionZstdMax, CompressionXZMax, CompressionGzipRsyncable, CompressionZstdRsyncable:
		return compressWithHostTool(kind, archive)
	case CompressionZstdFrames:
		data, _, err := compressFrames(archive)

		return data, err
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

	enc, err := newInitramfsEncoder(&buf)
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

func newInitramfsEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true),
		// The kernel's single-pass decompressor wants the frame to
		// announce its size and a window it can allocate.
		zstd.WithWindowSize(8<<20),
	)
}

// Frame cutting (CompressionZstdFrames). A cut is only ever made between
// two newc records, and which boundaries are cuts depends on the records
// around it, never on offsets: a file that grows or shrinks does not move
// the cuts after it, so every frame not holding a changed record is the
// same bytes in the next release.
const (
	// frameBigFile: a file this large gets a frame of its own (it is
	// either unchanged, and its frame is reused whole, or changed).
	frameBigFile = 64 << 10
	// frameNameMod: among small records, a frame starts at a name whose
	// FNV-1a hash is 0 modulo this, about one record in 16: frames of a
	// few hundred KiB of modules, without tying a cut to a position.
	frameNameMod = 16
)

// newcRecord is one record's place in a newc archive.
type newcRecord struct {
	name     string
	off, end int // header start, end of padded data
	fileSize int
}

// newcRecords parses the record boundaries of a newc archive (the trailer
// is the last record). It refuses anything else: only a whole, 4-aligned
// newc archive may be cut.
func newcRecords(archive []byte) ([]newcRecord, error) {
	var recs []newcRecord

	pad4 := func(n int) int { return (n + 3) &^ 3 }

	for off := 0; off < len(archive); {
		if len(archive)-off < 110 || string(archive[off:off+6]) != "070701" {
			return nil, fmt.Errorf("newc archive: no record header at offset %d", off)
		}

		hex := func(field int) (int, error) {
			var v int

			_, err := fmt.Sscanf(string(archive[off+6+8*field:off+6+8*field+8]), "%08x", &v)

			return v, err
		}

		fileSize, err1 := hex(6)
		nameSize, err2 := hex(11)

		if err1 != nil || err2 != nil || nameSize < 1 {
			return nil, fmt.Errorf("newc archive: bad record header at offset %d", off)
		}

		nameEnd := off + 110 + nameSize
		dataStart := pad4(nameEnd)
		end := pad4(dataStart + fileSize)

		if end > len(archive) {
			return nil, fmt.Errorf("newc archive: record at offset %d runs past the end", off)
		}

		name := string(archive[off+110 : nameEnd-1])
		recs = append(recs, newcRecord{name: name, off: off, end: end, fileSize: fileSize})
		off = end

		if name == "TRAILER!!!" {
			if off != len(archive) {
				return nil, fmt.Errorf("newc archive: %d bytes after the trailer", len(archive)-off)
			}

			break
		}
	}

	if len(recs) == 0 || recs[len(recs)-1].name != "TRAILER!!!" {
		return nil, errors.New("newc archive: no trailer")
	}

	return recs, nil
}

// frameCuts returns the archive offsets where frames start (0 first).
func frameCuts(recs []newcRecord) []int {
	cuts := []int{0}

	for i := 1; i < len(recs); i++ {
		r, prev := recs[i], recs[i-1]

		h := fnv.New32a()
		h.Write([]byte(r.name))

		if r.fileSize >= frameBigFile || prev.fileSize >= frameBigFile || h.Sum32()%frameNameMod == 0 {
			cuts = append(cuts, r.off)
		}
	}

	return cuts
}

// compressFrames compresses each piece between cuts as its own zstd frame
// (same encoder settings as the default form) and concatenates them. It
// returns the frames' sizes too, for the tests.
func compressFrames(archive []byte) ([]byte, []int, error) {
	recs, err := newcRecords(archive)
	if err != nil {
		return nil, nil, err
	}

	enc, err := newInitramfsEncoder(nil)
	if err != nil {
		return nil, nil, err
	}
	defer enc.Close() //nolint:errcheck

	cuts := append(frameCuts(recs), len(archive))

	var (
		out   []byte
		sizes []int
	)

	for i := 0; i+1 < len(cuts); i++ {
		before := len(out)
		out = enc.EncodeAll(archive[cuts[i]:cuts[i+1]], out)
		sizes = append(sizes, len(out)-before)
	}

	return out, sizes, nil
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
