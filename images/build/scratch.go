package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Scratch folders (staging in the output folder, work in the temp folder,
// incoming cache entries) are each guarded by a lock file beside them,
// "<dir>.lock", created and flock(2)ed before the folder exists and removed
// after it is gone. The kernel drops the lock when the process dies, so the
// next build can tell a killed build's leftovers (lock free, or no lock file
// at all) from a build still running (lock held), and reaps only the former.
type scratch struct {
	Dir  string
	lock *os.File
}

// newScratch creates parent/<prefix>XXXX with its lock held.
func newScratch(parent, prefix string) (*scratch, error) {
	lock, err := os.CreateTemp(parent, prefix+"*.lock")
	if err != nil {
		return nil, err
	}

	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()           //nolint:errcheck
		os.Remove(lock.Name()) //nolint:errcheck

		return nil, fmt.Errorf("locking %s: %w", lock.Name(), err)
	}

	// A reaper may have taken the fresh lock file for an orphan between its
	// creation and the flock above, and removed it: then ours is unlinked.
	if !sameInode(lock) {
		lock.Close() //nolint:errcheck

		return newScratch(parent, prefix)
	}

	dir := strings.TrimSuffix(lock.Name(), ".lock")
	if err := os.Mkdir(dir, 0o755); err != nil {
		lock.Close()           //nolint:errcheck
		os.Remove(lock.Name()) //nolint:errcheck

		return nil, err
	}

	return &scratch{Dir: dir, lock: lock}, nil
}

// Close removes the folder (if it was not moved away) and then the lock.
func (s *scratch) Close() {
	os.RemoveAll(s.Dir)      //nolint:errcheck
	os.Remove(s.lock.Name()) //nolint:errcheck
	s.lock.Close()           //nolint:errcheck
}

// reapScratch removes parent's scratch folders whose names match and whose
// builds are gone, and lock files left without a folder. It never fails a
// build: a folder it cannot remove is left for the next one.
func reapScratch(parent string, match func(name string) bool) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}

	for _, e := range entries {
		name := e.Name()
		if !match(strings.TrimSuffix(name, ".lock")) {
			continue
		}

		dir := filepath.Join(parent, strings.TrimSuffix(name, ".lock"))
		if strings.HasSuffix(name, ".lock") {
			// A lock without its folder: reaped below through the folder,
			// unless the folder is gone already.
			if _, err := os.Lstat(dir); err == nil {
				continue
			}
		} else if !e.IsDir() {
			continue
		}

		reapOne(dir)
	}
}

// lockless is how old a scratch folder without a lock file must be to be reaped.
const lockless = time.Hour

// Names of scratch folders, by where they live.
func isStaging(name string) bool {
	return strings.HasPrefix(name, ".") && (strings.Contains(name, ".building-") || strings.Contains(name, ".restoring-"))
}

func isWork(name string) bool     { return strings.HasPrefix(name, workPrefix) }
func isIncoming(name string) bool { return strings.HasPrefix(name, ".incoming-") }

func reapOne(dir string) {
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR, 0)

	switch {
	case errors.Is(err, fs.ErrNotExist):
		// The lock is created before the folder and removed after it: a
		// folder without a lock is from a killed build, or from an imagectl
		// that predates the locks and may still be running, hence the age.
		if st, err := os.Lstat(dir); err == nil && time.Since(st.ModTime()) > lockless {
			os.RemoveAll(dir) //nolint:errcheck
		}

		return
	case err != nil:
		return
	}
	defer lock.Close() //nolint:errcheck

	if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return // a build is running
	}

	os.RemoveAll(dir)      //nolint:errcheck
	os.Remove(lock.Name()) //nolint:errcheck
}

func sameInode(f *os.File) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}

	b, err := os.Lstat(f.Name())

	return err == nil && os.SameFile(a, b)
}
