package sim

import (
	"errors"
	"os"
	"syscall"
)

// lockJournal takes the journal's exclusive lock without waiting; false:
// another process holds it. The kernel drops it when the holder dies.
func lockJournal(fh *os.File) (bool, error) {
	err := syscall.Flock(int(fh.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}

	return err == nil, err
}

// mapJournal reserves the file's blocks up to size and maps it shared,
// replacing old (unmapped after the new mapping exists).
func mapJournal(fh *os.File, old []byte, size int) ([]byte, error) {
	if size%os.Getpagesize() != 0 {
		size += os.Getpagesize() - size%os.Getpagesize()
	}

	// fallocate, not ftruncate: a sparse file would turn a full disk into
	// a SIGBUS on the copy into the mapping instead of an error here.
	if err := syscall.Fallocate(int(fh.Fd()), 0, 0, int64(size)); err != nil {
		return nil, err
	}

	mem, err := syscall.Mmap(int(fh.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}

	if old != nil {
		if err := syscall.Munmap(old); err != nil {
			syscall.Munmap(mem) //nolint:errcheck

			return nil, err
		}
	}

	return mem, nil
}

func unmapJournal(mem []byte) error { return syscall.Munmap(mem) }
