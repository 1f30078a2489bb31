package sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// journalChunk is how much the journal file grows by at least when its
// mapping is full (some 10,000 events of ~110 bytes).
const journalChunk = 1 << 20

// journal is the append-only event file of a simulated fleet: the simulated
// nodes' memory, which must survive a kill -9 of the process running them.
//
// The process that holds the file's lock (flock) maps it MAP_SHARED and
// appends by copying into the mapping: the bytes are in the page cache as
// soon as the copy ends, exactly as after a write(2), so a killed process
// loses nothing it acknowledged, without a system call per event (30,000
// per 30,000-node rollout, made while holding the fleet's mutex). The file
// is grown ahead in chunks (blocks reserved with fallocate, so a full disk
// is an error here and not a SIGBUS later) and cut to its events on Close;
// after a kill it ends in NUL bytes, which no event contains and every
// reader ignores (ReadJournal and replay only take lines ending in '\n').
//
// Opened while another process held the lock, the journal records only
// once that process is gone (acquire); where no mapping is available it is
// written with pwrite at its end.
type journal struct {
	fh    *os.File
	mem   []byte // the mapping; nil: written with pwrite
	off   int    // end of the last complete event
	owner bool   // holds the lock
}

// errJournalBusy: another process holds the journal.
var errJournalBusy = errors.New("the simulator journal is in use by another process driving the same simulated fleet")

// openJournal opens (creating) the journal at path and returns it with its
// complete events (whole lines). A torn last line, never acknowledged, is
// dropped here so the next event does not join it.
func openJournal(path string) (*journal, []byte, error) {
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("opening simulator journal: %w", err)
	}

	data, err := io.ReadAll(fh)
	if err != nil {
		fh.Close() //nolint:errcheck

		return nil, nil, fmt.Errorf("reading simulator journal: %w", err)
	}

	j := &journal{fh: fh, off: completeEvents(data)}

	ok, err := lockJournal(fh)
	if err == nil && ok {
		err = j.own(len(data))
	}

	if err != nil {
		fh.Close() //nolint:errcheck

		return nil, nil, fmt.Errorf("opening simulator journal: %w", err)
	}

	return j, data[:j.off], nil
}

// own makes j, locked, the writer of a file of size bytes: mapped, with
// the torn tail after its complete events cleared (the NUL tail of a
// mapping left by a killed process needs nothing).
func (j *journal) own(size int) error {
	j.owner = true

	if err := j.remap(max(size, j.off+journalChunk)); err == nil {
		clear(j.mem[j.off:size])

		return nil
	}

	if _, err := j.fh.WriteAt(make([]byte, size-j.off), int64(j.off)); err != nil {
		return fmt.Errorf("clearing the torn end of the simulator journal: %w", err)
	}

	return nil
}

// acquire takes the lock another process held when j was opened (a
// process that ran the fleet before this one and has just ended) and
// returns the events it recorded since: the fleet applies them before its
// own. errJournalBusy if it is still held.
func (j *journal) acquire() ([]byte, error) {
	ok, err := lockJournal(j.fh)
	if err != nil {
		return nil, err
	}

	if !ok {
		return nil, errJournalBusy
	}

	fi, err := j.fh.Stat()
	if err != nil {
		return nil, err
	}

	rest := make([]byte, max(int(fi.Size())-j.off, 0))
	if _, err := j.fh.ReadAt(rest, int64(j.off)); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}

	events := rest[:completeEvents(rest)]
	j.off += len(events)

	return events, j.own(j.off + len(rest) - len(events))
}

// completeEvents is the length of data's whole lines: up to the last '\n'
// before any NUL byte.
func completeEvents(data []byte) int {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}

	return bytes.LastIndexByte(data, '\n') + 1
}

// remap maps the journal at size bytes (at least), growing the file.
func (j *journal) remap(size int) error {
	mem, err := mapJournal(j.fh, j.mem, size)
	if err != nil {
		return err
	}

	j.mem = mem

	return nil
}

// append records one event line (ending in '\n'). When it returns, the
// event survives the process being killed.
func (j *journal) append(line []byte) error {
	if j.mem == nil {
		if _, err := j.fh.WriteAt(line, int64(j.off)); err != nil {
			return err
		}

		j.off += len(line)

		return nil
	}

	if j.off+len(line) > len(j.mem) {
		if err := j.remap(max(2*len(j.mem), j.off+len(line)+journalChunk)); err != nil {
			return err
		}
	}

	j.off += copy(j.mem[j.off:], line)

	return nil
}

// close cuts the file to its events and releases it.
func (j *journal) close() error {
	var err error

	if j.mem != nil {
		err = unmapJournal(j.mem)
		j.mem = nil
	}

	if j.owner {
		err = errors.Join(err, j.fh.Truncate(int64(j.off)))
	}

	return errors.Join(err, j.fh.Close())
}
