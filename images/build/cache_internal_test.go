package build

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/images/record"
)

// outputDir writes a fake output folder with one file output and its record.
func outputDir(t *testing.T) (string, *record.Record) {
	t.Helper()

	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	require.NoError(t, os.WriteFile(p, []byte(strings.Repeat("disk image bytes ", 1000)), 0o644))

	sum, size, err := hashFile(p)
	require.NoError(t, err)

	rec := &record.Record{CacheKey: "k1", Outputs: []record.Output{{Kind: "disk", Path: "disk.raw", SHA256: sum, Size: size}}}
	data, err := rec.Marshal()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, record.FileName), data, 0o644))

	return dir, rec
}

// overwrite changes 8 bytes in place and puts the old mtime back, as a VM
// writing to a disk image and a careless `touch -r` would.
func overwrite(t *testing.T, p string) {
	t.Helper()

	st, err := os.Stat(p)
	require.NoError(t, err)

	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("CHANGED!"), 100)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Chtimes(p, st.ModTime(), st.ModTime()))

	after, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, st.Size(), after.Size())
	require.Equal(t, st.ModTime(), after.ModTime())
}

func TestVerifyOutputsNoticesSameSizeOverwrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stamp bool
		quiet bool // stamps taken long after the files were written (not racy)
	}{
		{name: "without stamps"},
		{name: "racy stamps", stamp: true},
		{name: "quiet stamps", stamp: true, quiet: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, rec := outputDir(t)

			if tc.stamp {
				require.NoError(t, writeStamps(dir, rec.CacheKey, nil))
			}

			if tc.quiet {
				ageStamps(t, dir)
			} else if tc.stamp {
				freshenStamps(t, dir)
			}

			_, err := verifyOutputs(dir, rec)
			require.NoError(t, err, "untouched outputs must verify")

			overwrite(t, filepath.Join(dir, "disk.raw"))

			_, err = verifyOutputs(dir, rec)
			require.ErrorIs(t, err, errChanged)
			require.Contains(t, err.Error(), "disk.raw")
		})
	}
}

// ageStamps moves the stamps' taken time forward so they are not racy.
func ageStamps(t *testing.T, dir string) {
	t.Helper()

	sf, ok := readStamps(dir, "k1")
	require.True(t, ok)

	sf.Taken += int64(time.Hour)
	require.NoError(t, writeStampFile(dir, sf))
}

// freshenStamps makes the stamps look taken the instant their files last
// changed: what a build that stamps right after writing gets on an idle
// machine. On a loaded one more than racyWindow can pass in between, so the
// test sets it rather than racing the clock.
func freshenStamps(t *testing.T, dir string) {
	t.Helper()

	sf, ok := readStamps(dir, "k1")
	require.True(t, ok)

	var last int64
	for _, s := range sf.Files {
		last = max(last, s.Ctime)
	}

	sf.Taken = last
	require.NoError(t, writeStampFile(dir, sf))
}

func TestVerifyOutputsTrustsQuietStampsWithoutHashing(t *testing.T) {
	dir, rec := outputDir(t)
	require.NoError(t, writeStamps(dir, rec.CacheKey, nil))
	freshenStamps(t, dir)

	restamp, err := verifyOutputs(dir, rec)
	require.NoError(t, err)
	require.NotNil(t, restamp, "fresh stamps are racy: the first check hashes and restamps")

	ageStamps(t, dir)

	// Metadata unchanged and not racy: trusted without hashing.
	restamp, err = verifyOutputs(dir, rec)
	require.NoError(t, err)
	require.Nil(t, restamp)
}

func TestVerifyOutputsNoticesReplacedInstaller(t *testing.T) {
	dir, rec := outputDir(t)
	inst := filepath.Join(dir, "installer", "blobs", "sha256")
	require.NoError(t, os.MkdirAll(inst, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(inst, "abc"), []byte(strings.Repeat("blob", 100)), 0o644))
	rec.Outputs = append(rec.Outputs, record.Output{Kind: "installer", Path: "installer", SHA256: "abc"})

	require.NoError(t, writeStamps(dir, rec.CacheKey, nil))
	ageStamps(t, dir)

	_, err := verifyOutputs(dir, rec)
	require.NoError(t, err)

	overwrite(t, filepath.Join(inst, "abc"))

	_, err = verifyOutputs(dir, rec)
	require.ErrorIs(t, err, errChanged)
	require.Contains(t, err.Error(), "installer/blobs/sha256/abc")
}

func TestCopyTreeSharesNoInode(t *testing.T) {
	src, _ := outputDir(t)
	dst := filepath.Join(t.TempDir(), "copy")
	require.NoError(t, os.Mkdir(dst, 0o755))
	require.NoError(t, copyTree(src, dst))

	a, err := os.Stat(filepath.Join(src, "disk.raw"))
	require.NoError(t, err)
	b, err := os.Stat(filepath.Join(dst, "disk.raw"))
	require.NoError(t, err)
	require.False(t, os.SameFile(a, b), "output and cache share an inode")

	overwrite(t, filepath.Join(dst, "disk.raw"))

	before, _, err := hashFile(filepath.Join(src, "disk.raw"))
	require.NoError(t, err)
	after, _, err := hashFile(filepath.Join(dst, "disk.raw"))
	require.NoError(t, err)
	require.NotEqual(t, before, after, "writing to the copy changed the original")
}

func TestReapScratchRemovesOnlyDeadBuilds(t *testing.T) {
	parent := t.TempDir()

	live, err := newScratch(parent, ".edge.building-")
	require.NoError(t, err)
	defer live.Close()

	// A killed build: its lock file exists but nobody holds it.
	dead, err := newScratch(parent, ".edge.building-")
	require.NoError(t, err)
	require.NoError(t, unix.Flock(int(dead.lock.Fd()), unix.LOCK_UN))
	require.NoError(t, dead.lock.Close())

	// An old imagectl's leftover: no lock file, an hour old.
	legacy := filepath.Join(parent, ".edge.building-123")
	require.NoError(t, os.Mkdir(legacy, 0o755))
	old := time.Now().Add(-2 * lockless)
	require.NoError(t, os.Chtimes(legacy, old, old))

	// Not scratch: never touched.
	other := filepath.Join(parent, ".git")
	require.NoError(t, os.Mkdir(other, 0o755))
	require.NoError(t, os.Chtimes(other, old, old))

	reapScratch(parent, isStaging)

	require.DirExists(t, live.Dir, "a running build's staging folder was reaped")
	require.NoDirExists(t, dead.Dir)
	require.NoFileExists(t, dead.Dir+".lock")
	require.NoDirExists(t, legacy)
	require.DirExists(t, other)
}

func TestCacheKeyCoversBuilderAndTools(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.5", Main: debug.Module{Path: "github.com/labfleet/labfleet", Version: "(devel)"}}
	bi.Deps = []*debug.Module{{Path: "github.com/siderolabs/talos", Version: "v1.14.1", Sum: "h1:a"}}
	before := modulesOf(bi)
	require.Contains(t, before, "dep github.com/siderolabs/talos v1.14.1 h1:a")

	bi.Deps[0] = &debug.Module{Path: "github.com/siderolabs/talos", Version: "v1.14.1", Replace: &debug.Module{Path: "../talos", Version: ""}}
	require.NotEqual(t, before, modulesOf(bi), "a replaced Talos must change the cache key")

	tools := t.TempDir()
	for _, name := range HostTools {
		require.NoError(t, os.WriteFile(filepath.Join(tools, name), []byte("#!/bin/sh\necho 1\n"), 0o755))
	}

	b := &builder{opts: Options{ToolsPath: tools}}
	toolsBefore, err := b.hostTools()
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(filepath.Join(tools, "mksquashfs"), []byte("#!/bin/sh\necho 2\n"), 0o755))

	after, err := b.hostTools()
	require.NoError(t, err)
	require.NotEqual(t, toolsBefore, after, "a new mksquashfs must change the cache key")
}

func TestCopyTreeKeepsHoles(t *testing.T) {
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "disk.raw"))
	require.NoError(t, err)
	require.NoError(t, f.Truncate(64<<20))
	_, err = f.WriteAt([]byte("data"), 32<<20)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	dst := t.TempDir()
	require.NoError(t, copyTree(src, dst))

	a, _, err := hashFile(filepath.Join(src, "disk.raw"))
	require.NoError(t, err)
	b, _, err := hashFile(filepath.Join(dst, "disk.raw"))
	require.NoError(t, err)
	require.Equal(t, a, b)

	st, err := os.Stat(filepath.Join(dst, "disk.raw"))
	require.NoError(t, err)
	require.Less(t, st.Sys().(*syscall.Stat_t).Blocks*512, int64(1<<20), "the copy of a sparse disk image is dense")
}
