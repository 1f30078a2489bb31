package bootentry

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// SpaceMargin is what an install leaves free beyond the new entry: room
// for loader.conf's rewrite (through a temp file), FAT's cluster rounding
// and directory growth.
const SpaceMargin = 1 << 20

// ErrNoSpace means the new entry would not fit even after pruning.
var ErrNoSpace = errors.New("not enough free space on the ESP")

// tmpPrefix starts the temporary files WriteFileAtomic leaves behind when
// power is lost mid-write.
const tmpPrefix = ".tmp-"

// espMu serializes changes to the ESP inside labos: pruning must not
// remove the temp file of a loader.conf rewrite the bless is doing.
var espMu sync.Mutex

// InstallOptions tell Install what must survive its housekeeping.
type InstallOptions struct {
	// Booted is the running entry (LoaderEntrySelected: id or file name).
	// Empty means unknown: the two newest blessed entries are kept then.
	Booted string
	// BeforeWrite, when set, is called with the entry file name once the
	// checks passed, just before the first change to the ESP (pruning).
	BeforeWrite func(file string)
	// Checkpoint, when set, is called at the points where a power cut is
	// tested (CheckpointMidWrite, CheckpointWritten); it may block.
	Checkpoint func(point string)
}

// Power-cut checkpoints of an install and of blessing.
const (
	CheckpointMidWrite = "mid-write" // half the UKI is in the temp file
	CheckpointWritten  = "written"   // temp file complete and synced, not yet renamed
	CheckpointRenamed  = "renamed"   // blessed by rename, loader.conf not yet changed
)

// keepReason says why housekeeping keeps an entry.
type keepReason string

const (
	keepRunning  keepReason = "running"
	keepPrevious keepReason = "previous blessed"
	keepDefault  keepReason = "loader.conf default"
	keepTrial    keepReason = "under trial"
	keepBlessed  keepReason = "newest blessed"
)

// plan is what an install of one entry will remove and keep.
type plan struct {
	remove []string              // paths relative to the ESP root
	freed  int64                 // bytes the removals give back
	keep   map[string]keepReason // entry file name -> why
}

// planInstall decides, before anything is written, which files of name's
// entries go: everything but the running entry, the newest other blessed
// entry (the fallback and rollback target), an entry loader.conf's default
// names exactly, and the new entry itself (replacing any other file of the
// same version that is not the running one). Leftover temp files go too.
// Entries of other names and files that do not parse are never touched.
func (p ESP) planInstall(name string, e Entry, booted string) (plan, error) {
	pl := plan{keep: map[string]keepReason{}}

	bootedID := ""
	if booted != "" {
		if b, err := Parse(path.Base(strings.ReplaceAll(booted, `\`, "/"))); err == nil {
			bootedID = b.ID()
		}
	}

	def, err := p.Default()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return plan{}, err
	}

	es, err := p.List() // newest first
	if err != nil {
		return plan{}, err
	}

	blessedKept := 0

	for _, o := range es {
		if ok, _ := path.Match(Glob(name), o.ID()); !ok {
			continue
		}

		switch {
		case bootedID != "" && o.ID() == bootedID:
			pl.keep[o.File] = keepRunning
		case o.ID() == def:
			pl.keep[o.File] = keepDefault
		case o.Base == e.Base:
			// replaced by the new entry below
		case o.Blessed() && bootedID != "" && blessedKept == 0:
			pl.keep[o.File] = keepPrevious
			blessedKept++
		case o.Blessed() && bootedID == "" && blessedKept < 2:
			pl.keep[o.File] = keepBlessed
			blessedKept++
		}

		if _, kept := pl.keep[o.File]; kept {
			continue
		}

		size, err := p.size(Dir + "/" + o.File)
		if err != nil {
			return plan{}, err
		}

		pl.remove = append(pl.remove, Dir+"/"+o.File)
		pl.freed += size
	}

	pl.keep[e.File] = keepTrial

	for _, dir := range []string{Dir, path.Dir(LoaderConf)} {
		des, err := os.ReadDir(p.path(dir))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return plan{}, fmt.Errorf("listing %s: %w", dir, err)
		}

		for _, de := range des {
			if de.IsDir() || !strings.HasPrefix(de.Name(), tmpPrefix) {
				continue
			}

			size, err := p.size(dir + "/" + de.Name())
			if err != nil {
				return plan{}, err
			}

			pl.remove = append(pl.remove, dir+"/"+de.Name())
			pl.freed += size
		}
	}

	return pl, nil
}

func (p ESP) size(rel string) (int64, error) {
	fi, err := os.Stat(p.path(rel))
	if err != nil {
		return 0, fmt.Errorf("sizing %s: %w", rel, err)
	}

	return fi.Size(), nil
}

func (pl plan) kept() string {
	var out []string
	for f, why := range pl.keep {
		out = append(out, fmt.Sprintf("%s (%s)", f, why))
	}

	sort.Strings(out)

	return strings.Join(out, ", ")
}

// free is the space a new file may use: FreeSpace when set (tests), else
// statfs's blocks available to unprivileged users.
func (p ESP) free() (int64, error) {
	if p.FreeSpace != nil {
		return p.FreeSpace()
	}

	var st unix.Statfs_t
	if err := unix.Statfs(p.Root, &st); err != nil {
		return 0, fmt.Errorf("reading free space of the ESP: %w", err)
	}

	return int64(st.Bavail) * st.Bsize, nil //nolint:gosec // block counts fit int64
}

// readerSize returns r's length without consuming it when r knows it
// (bytes.Reader, strings.Reader, *os.File), else buffers r.
func readerSize(r io.Reader) (io.Reader, int64, error) {
	switch v := r.(type) {
	case interface{ Len() int }:
		return r, int64(v.Len()), nil
	case *os.File:
		fi, err := v.Stat()
		if err == nil && fi.Mode().IsRegular() {
			return r, fi.Size(), nil
		}
	}

	b, err := io.ReadAll(r)
	if err != nil {
		return nil, 0, err
	}

	return bytes.NewReader(b), int64(len(b)), nil
}
