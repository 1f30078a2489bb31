package build

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/labfleet/labfleet/images/record"
)

// StampsFile sits beside build.json in an output (or cache) folder. It holds
// what the builder saw of every file right after writing it: size, mtime,
// ctime, device, inode and sha256. The no-op check trusts a file without
// reading it only when all of these still match; on any doubt it hashes.
const StampsFile = ".imagectl-stamps.json"

// racyWindow: a file whose ctime is this close to the moment it was stamped
// may be changed again within the same file-system timestamp tick without
// its ctime moving (git's "racy clean" problem), so it is always hashed
// until a later check restamps it from a quiet moment. Two seconds covers
// the coarsest granularity of the file systems a build folder lives on.
const racyWindow = 2 * time.Second

type stamp struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Mtime  int64  `json:"mtime"` // ns
	Ctime  int64  `json:"ctime"` // ns
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
}

type stampFile struct {
	// CacheKey ties the stamps to the record they were taken for.
	CacheKey string `json:"cacheKey"`
	// Taken is when the stamps were written (ns); see racyWindow.
	Taken int64            `json:"taken"`
	Files map[string]stamp `json:"files"`
}

// statStamp reads the metadata part of a stamp.
func statStamp(path string) (stamp, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return stamp{}, err
	}

	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || !st.Mode().IsRegular() {
		return stamp{}, fmt.Errorf("%s is not a regular file", path)
	}

	return stamp{
		Size:  st.Size(),
		Mtime: st.ModTime().UnixNano(),
		Ctime: time.Unix(sys.Ctim.Sec, sys.Ctim.Nsec).UnixNano(),
		Dev:   uint64(sys.Dev), //nolint:unconvert // the field's type differs by architecture
		Ino:   sys.Ino,
	}, nil
}

func (s stamp) sameFile(o stamp) bool {
	return s.Size == o.Size && s.Mtime == o.Mtime && s.Ctime == o.Ctime && s.Dev == o.Dev && s.Ino == o.Ino
}

// hashStable hashes path and returns its stamp, failing when the file
// changed while it was read.
func hashStable(path string) (stamp, error) {
	before, err := statStamp(path)
	if err != nil {
		return stamp{}, err
	}

	sum, _, err := hashFile(path)
	if err != nil {
		return stamp{}, err
	}

	after, err := statStamp(path)
	if err != nil {
		return stamp{}, err
	}

	if !before.sameFile(after) {
		return stamp{}, fmt.Errorf("%s changed while it was hashed", path)
	}

	before.SHA256 = sum

	return before, nil
}

// writeStamps hashes every file under dir and records what it saw. The
// stamps are an optimisation: without them the next check hashes.
// known holds stamps taken while the files were written or checked, by
// slash path relative to dir: a file whose metadata still matches is not
// hashed again.
func writeStamps(dir, cacheKey string, known map[string]stamp) error {
	sf := stampFile{CacheKey: cacheKey, Files: map[string]stamp{}}

	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}

		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == StampsFile {
			return err
		}

		rel = filepath.ToSlash(rel)

		if k, ok := known[rel]; ok {
			if s, err := statStamp(p); err == nil && s.sameFile(k) {
				s.SHA256 = k.SHA256
				sf.Files[rel] = s

				return nil
			}
		}

		s, err := hashStable(p)
		if err != nil {
			return err
		}

		sf.Files[rel] = s

		return nil
	})
	if err != nil {
		return fmt.Errorf("stamping %s: %w", dir, err)
	}

	sf.Taken = time.Now().UnixNano()

	return writeStampFile(dir, &sf)
}

func writeStampFile(dir string, sf *stampFile) error {
	data, err := json.Marshal(sf)
	if err != nil {
		return fmt.Errorf("stamping %s: %w", dir, err)
	}

	tmp := filepath.Join(dir, StampsFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("stamping %s: %w", dir, err)
	}

	if err := os.Rename(tmp, filepath.Join(dir, StampsFile)); err != nil {
		return fmt.Errorf("stamping %s: %w", dir, err)
	}

	return nil
}

func readStamps(dir, cacheKey string) (*stampFile, bool) {
	data, err := os.ReadFile(filepath.Join(dir, StampsFile))
	if err != nil {
		return nil, false
	}

	var sf stampFile
	if json.Unmarshal(data, &sf) != nil || sf.CacheKey != cacheKey || len(sf.Files) == 0 {
		return nil, false
	}

	return &sf, true
}

// errChanged means an output no longer holds what the record says.
var errChanged = errors.New("output changed since it was built")

// verifyOutputs checks that dir still holds exactly the outputs rec names.
// With valid stamps, a file whose size, mtime, ctime, device and inode all
// match (and that was not stamped racily) is trusted; every other file is
// hashed. Without stamps, file outputs are hashed against the record and the
// installer layout is validated blob by blob. hashed is non-nil when hashing
// settled a doubt: the stamps it holds let the next check skip the hash.
func verifyOutputs(dir string, rec *record.Record) (hashed map[string]stamp, err error) {
	sf, ok := readStamps(dir, rec.CacheKey)
	if !ok {
		return verifyByContent(dir, rec)
	}

	for _, o := range rec.Outputs {
		st, err := os.Stat(filepath.Join(dir, o.Path))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.Path, err)
		}

		if st.IsDir() {
			continue // every file under it is in the stamps
		}

		s, ok := sf.Files[filepath.ToSlash(o.Path)]
		if !ok || s.SHA256 != o.SHA256 || s.Size != o.Size {
			// Stamps that disagree with the record are not evidence of anything.
			return verifyByContent(dir, rec)
		}
	}

	for rel, want := range sf.Files {
		p := filepath.Join(dir, filepath.FromSlash(rel))

		got, err := statStamp(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}

		if got.sameFile(want) && !racy(want, sf.Taken) {
			continue
		}

		got, err = hashStable(p)
		if err != nil {
			return nil, err
		}

		if got.SHA256 != want.SHA256 {
			return nil, fmt.Errorf("%s: %w (sha256 %s, built %s)", rel, errChanged, got.SHA256, want.SHA256)
		}

		if hashed == nil {
			hashed = map[string]stamp{}
		}

		hashed[rel] = got
	}

	return hashed, nil
}

// racy is true when s was stamped so soon after its last change that a
// further change could have left its ctime as it was. File systems with
// sub-second timestamps move ctime within a tick (at most 10 ms on Linux);
// whole-second ones (FAT, ext3-era inodes) need two seconds.
func racy(s stamp, taken int64) bool {
	window := int64(100 * time.Millisecond)
	if s.Ctime%int64(time.Second) == 0 {
		window = int64(racyWindow)
	}

	return s.Ctime >= taken-window
}

// verifyByContent is the check without stamps: every file output hashed,
// the installer's OCI layout validated (each blob against its digest). It
// returns the stamps of the files it hashed.
func verifyByContent(dir string, rec *record.Record) (map[string]stamp, error) {
	seen := map[string]stamp{}

	for _, o := range rec.Outputs {
		p := filepath.Join(dir, o.Path)

		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.Path, err)
		}

		if st.IsDir() {
			if err := verifyLayout(p, o.SHA256); err != nil {
				return nil, fmt.Errorf("%s: %w: %w", o.Path, errChanged, err)
			}

			continue
		}

		s, err := hashStable(p)
		if err != nil {
			return nil, err
		}

		if s.SHA256 != o.SHA256 || s.Size != o.Size {
			return nil, fmt.Errorf("%s: %w (sha256 %s, built %s)", o.Path, errChanged, s.SHA256, o.SHA256)
		}

		seen[filepath.ToSlash(o.Path)] = s
	}

	return seen, nil
}

func verifyLayout(dir, digest string) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		return err
	}

	idx, err := p.ImageIndex()
	if err != nil {
		return err
	}

	m, err := idx.IndexManifest()
	if err != nil {
		return err
	}

	for _, d := range m.Manifests {
		if strings.TrimPrefix(d.Digest.String(), "sha256:") != digest {
			continue
		}

		img, err := idx.Image(d.Digest)
		if err != nil {
			return err
		}

		return validate.Image(img)
	}

	return fmt.Errorf("no image sha256:%s in the layout", digest)
}
