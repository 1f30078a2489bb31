package labbase

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sampleTree is a small initramfs shaped like the lab's: an /init binary
// first (by name order), a few directories, and a few hundred compressible
// module-like files. patch > 0 changes /init (and its size), as a labos
// patch release does.
func sampleTree(patch int) *tree {
	t := newTree()

	init := bytes.Repeat([]byte("labos init: machine code and strings\n"), 8000)
	if patch > 0 {
		// a change in the middle that also grows the file
		init = append(init[:len(init)/2:len(init)/2], append(bytes.Repeat([]byte(fmt.Sprintf("patch %d\n", patch)), 500), init[len(init)/2:]...)...)
	}

	t.file("init", init, 0o755)
	t.charDev("dev/console", 0o600, 5, 1)

	for _, d := range []string{"proc", "sys", "run", "tmp"} {
		t.dir(d, 0o755)
	}

	for i := range 300 {
		t.file(fmt.Sprintf("lib/modules/6.12/kernel/drivers/m%03d.ko", i),
			bytes.Repeat([]byte(fmt.Sprintf("module %d: relocations and symbols %d\n", i, i*7)), 60+i%40), 0o644)
	}

	t.file("usr/sbin/cryptsetup", bytes.Repeat([]byte("cryptsetup text\n"), 20000), 0o755)

	return t
}

func (t *tree) mustCPIO(tb testing.TB) []byte {
	tb.Helper()

	b, err := t.cpioBytes()
	require.NoError(tb, err)

	return b
}

// The kernel's initramfs unpacker (init/initramfs.c, unpack_to_rootfs)
// takes a buffer of concatenated members: skips zero padding, recognises
// each compressed member by its magic, decompresses one member (the zstd
// decompressor stops at the end of its frame and reports how much input it
// used), and fails with "junk at the end of compressed archive" unless its
// cpio parser is then between two records (state Reset). Each member's
// offsets restart at 0, so each must start with a record header on a
// 4-byte boundary. This test checks exactly those rules on the frames:
// each frame is a complete zstd frame on its own, it decompresses to whole
// newc records starting at a header, its length is a multiple of 4, and
// the frames together are the archive. The lab kernel boots such an
// initramfs (labctl demo, README.md "The real lab initramfs, measured").
func TestZstdFramesMeetKernelRules(t *testing.T) {
	archive := sampleTree(0).mustCPIO(t)

	data, sizes, err := compressFrames(archive)
	require.NoError(t, err)
	require.Greater(t, len(sizes), 5, "several frames")

	dec, err := zstd.NewReader(nil)
	require.NoError(t, err)
	defer dec.Close()

	var (
		joined []byte
		off    int
	)

	recs, err := newcRecords(archive)
	require.NoError(t, err)

	starts := map[int]bool{}
	for _, r := range recs {
		starts[r.off] = true
	}

	for i, n := range sizes {
		frame := data[off : off+n]
		off += n

		require.Equal(t, []byte{0x28, 0xb5, 0x2f, 0xfd}, frame[:4], "frame %d: zstd magic, what decompress_method recognises", i)

		piece, err := dec.DecodeAll(frame, nil)
		require.NoError(t, err, "frame %d decodes alone", i)
		require.Equal(t, "070701", string(piece[:6]), "frame %d starts with a record header", i)
		require.Zero(t, len(piece)%4, "frame %d: 4-byte aligned", i)
		require.True(t, starts[len(joined)], "frame %d starts at a record boundary", i)

		joined = append(joined, piece...)
	}

	require.Equal(t, len(data), off)
	require.Equal(t, archive, joined)

	// The reference decoder reads the concatenation as one stream too.
	cmd := exec.Command("zstd", "-d", "-c", "-q")
	cmd.Stdin = bytes.NewReader(data)

	out, err := cmd.Output()
	require.NoError(t, err)
	require.Equal(t, archive, out)

	// Same archive, same bytes.
	again, _, err := compressFrames(archive)
	require.NoError(t, err)
	require.Equal(t, data, again)
}

// A patch to /init (which also grows it) leaves every frame that does not
// hold /init byte for byte as it was: the cuts after a change do not move.
func TestZstdFramesReuseUnchangedFrames(t *testing.T) {
	frames := func(patch int) (map[string]bool, []string) {
		data, sizes, err := compressFrames(sampleTree(patch).mustCPIO(t))
		require.NoError(t, err)

		set := map[string]bool{}

		var list []string

		off := 0
		for _, n := range sizes {
			set[string(data[off:off+n])] = true
			list = append(list, string(data[off:off+n]))
			off += n
		}

		return set, list
	}

	old, _ := frames(0)
	_, next := frames(1)

	var changed int

	for _, f := range next {
		if !old[f] {
			changed++
		}
	}

	// Only /init's own frame is new. (The file set is the same, so the
	// inode numbers, given by position, do not change either; adding or
	// removing a file renumbers every record after it and changes each
	// frame's headers: see lab/README.md.)
	assert.Equal(t, 1, changed, "frames not in the previous release")
}

func TestNewcRecordsRefusesWhatItCannotCut(t *testing.T) {
	_, err := newcRecords([]byte("not an archive"))
	require.ErrorContains(t, err, "newc archive: no record header at offset 0")

	archive := sampleTree(0).mustCPIO(t)

	_, err = newcRecords(archive[:len(archive)-200])
	require.Error(t, err)

	_, err = compress(CompressionZstdFrames, append(append([]byte(nil), archive...), 0, 0, 0, 0))
	require.ErrorContains(t, err, "newc archive: 4 bytes after the trailer")
}

// zstd's rsyncable mode still writes one ordinary frame, with the same
// window as zstd-max (which the lab kernel boots, lab/README.md): nothing
// new for the kernel's decompressor.
func TestZstdRsyncableIsOneFrame(t *testing.T) {
	data, err := compress(CompressionZstdRsyncable, sampleTree(0).mustCPIO(t))
	require.NoError(t, err)

	f := filepath.Join(t.TempDir(), "initramfs.zst")
	require.NoError(t, os.WriteFile(f, data, 0o644))

	out, err := exec.Command("zstd", "-lv", f).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Regexp(t, `(?m)Frames: 1$`, string(out))

	m := regexp.MustCompile(`Window Size: .*\((\d+) B\)`).FindStringSubmatch(string(out))
	require.NotNil(t, m, "%s", out)

	w, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	assert.LessOrEqual(t, w, 8<<20, "the window the kernel's decompressor is known to allocate")
}
