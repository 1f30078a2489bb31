// Package bootentry manages systemd-boot type #2 entries (UKIs in
// EFI/Linux on the ESP) with boot counting, as systemd-bless-boot does:
// a new entry is written as NAME+3.efi, systemd-boot counts tries down by
// renaming it, and labos blesses a healthy boot by renaming it to NAME.efi
// or marks it bad (NAME+0-M.efi) so systemd-boot falls back.
package bootentry

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is where UKIs live, relative to the ESP root.
const Dir = "EFI/Linux"

// LoaderConf is systemd-boot's configuration, relative to the ESP root.
const LoaderConf = "loader/loader.conf"

// DefaultTries is the boot counter a new entry starts with.
const DefaultTries = 3

// LabelPattern is what an image name and an image version must match
// before either becomes part of a file name, loader.conf or a console
// line: no path separator, no NUL or newline, no glob character, and no
// '+' (it would be read as a boot counter).
const LabelPattern = `^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`

// ErrInvalidLabel is wrapped by every label and entry name refusal.
var ErrInvalidLabel = errors.New("invalid label")

var (
	labelRe = regexp.MustCompile(LabelPattern)
	// an entry's base is NAME-VERSION, two labels joined by '-'
	baseRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$`)
	// loader.conf default: an entry id or a NAME-* glob
	defaultRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._*-]{0,130}$`)
)

// quoteShort quotes a rejected value for an error message, cut so a huge
// label cannot flood the console, and escaped so it cannot add lines.
func quoteShort(v string) string {
	const shown = 80
	if len(v) > shown {
		return fmt.Sprintf("%q...", v[:shown])
	}

	return fmt.Sprintf("%q", v)
}

// ValidateLabel checks an image name or version; field names it in the
// error (e.g. "label org.labfleet.version").
func ValidateLabel(field, value string) error {
	if !labelRe.MatchString(value) || strings.Contains(value, "..") {
		return fmt.Errorf("%s %s: must match %s (letters, digits, '.', '_', '-'; at most 63 characters; no \"..\"): %w",
			field, quoteShort(value), LabelPattern, ErrInvalidLabel)
	}

	return nil
}

// Entry is one UKI file name parsed for its boot counter.
type Entry struct {
	File    string // file name, e.g. "lab-1.1.0+2-1.efi"
	Base    string // name without counter and extension, e.g. "lab-1.1.0"
	Counted bool   // carries a +LEFT[-DONE] counter (not yet blessed)
	Left    int    // tries left
	Done    int    // tries done
}

// ID is the entry id systemd-boot matches loader.conf's default against:
// the file name with the counter removed.
func (e Entry) ID() string { return e.Base + ".efi" }

// Blessed reports whether the entry has no counter.
func (e Entry) Blessed() bool { return !e.Counted }

// Bad reports whether systemd-boot has given up on the entry.
func (e Entry) Bad() bool { return e.Counted && e.Left == 0 }

// maxCounter bounds a boot counter's digits: systemd-boot writes small
// numbers, and a bound keeps Atoi from overflowing on a crafted name.
const maxCounter = 6

// Parse splits a file name BASE[+LEFT[-DONE]].efi into base and counter.
// The base must be two labels' worth of [A-Za-z0-9._-] with no "..", and
// a '+' is only accepted as the start of a well-formed counter: a name
// such as "lab+x.efi" is refused, since boot counting could not tell its
// base from a counter.
func Parse(file string) (Entry, error) {
	if !strings.HasSuffix(strings.ToLower(file), ".efi") {
		return Entry{}, fmt.Errorf("parsing boot entry %s: not a .efi file: %w", quoteShort(file), ErrInvalidLabel)
	}

	stem := file[:len(file)-len(".efi")]
	e := Entry{File: file, Base: stem}

	if i := strings.IndexByte(stem, '+'); i >= 0 {
		left, done, hasDone := strings.Cut(stem[i+1:], "-")

		l, ok := counter(left)
		d := 0

		if ok && hasDone {
			d, ok = counter(done)
		}

		if !ok {
			return Entry{}, fmt.Errorf("parsing boot entry %s: '+' must start a counter +LEFT[-DONE] of at most %d digits each: %w",
				quoteShort(file), maxCounter, ErrInvalidLabel)
		}

		e.Base, e.Counted, e.Left, e.Done = stem[:i], true, l, d
	}

	if !baseRe.MatchString(e.Base) || strings.Contains(e.Base, "..") {
		return Entry{}, fmt.Errorf("parsing boot entry %s: name must match %s with no \"..\": %w",
			quoteShort(file), baseRe, ErrInvalidLabel)
	}

	return e, nil
}

func counter(s string) (int, bool) {
	if s == "" || len(s) > maxCounter {
		return 0, false
	}

	for i := range len(s) {
		if !isDigit(s[i]) {
			return 0, false
		}
	}

	n, err := strconv.Atoi(s)

	return n, err == nil
}

// ESP is a mounted EFI system partition.
type ESP struct {
	Root string // mount point
	// FreeSpace, when set, replaces statfs for Install's space check
	// (tests of a small ESP without mounting one).
	FreeSpace func() (int64, error)
}

func (p ESP) path(rel string) string { return filepath.Join(p.Root, filepath.FromSlash(rel)) }

// List returns the entries in EFI/Linux, newest version first (the order
// systemd-boot uses, so bad entries still sort last by their state).
func (p ESP) List() ([]Entry, error) {
	des, err := os.ReadDir(p.path(Dir))
	if err != nil {
		return nil, fmt.Errorf("listing boot entries: %w", err)
	}

	var out []Entry

	for _, de := range des {
		if de.IsDir() || strings.HasPrefix(de.Name(), ".") {
			continue
		}

		e, err := Parse(de.Name())
		if err != nil {
			continue
		}

		out = append(out, e)
	}

	sort.SliceStable(out, func(i, j int) bool { return CompareVersion(out[i].Base, out[j].Base) > 0 })

	return out, nil
}

// Failed returns the ids of entries systemd-boot gave up on.
func (p ESP) Failed() ([]string, error) {
	es, err := p.List()
	if err != nil {
		return nil, err
	}

	var out []string

	for _, e := range es {
		if e.Bad() {
			out = append(out, e.ID())
		}
	}

	return out, nil
}

func (p ESP) rename(from, to string) error {
	espMu.Lock()
	defer espMu.Unlock()

	if err := os.Rename(p.path(Dir+"/"+from), p.path(Dir+"/"+to)); err != nil {
		return fmt.Errorf("renaming boot entry: %w", err)
	}

	return syncDir(p.path(Dir))
}

// Bless removes the counter from file (as booted, e.g. from
// LoaderBootCountPath) and returns the blessed entry.
func (p ESP) Bless(file string) (Entry, error) {
	e, err := Parse(filepath.Base(file))
	if err != nil {
		return Entry{}, err
	}

	if !e.Counted {
		return e, nil
	}

	blessed := Entry{File: e.ID(), Base: e.Base}

	if err := p.rename(e.File, blessed.File); err != nil {
		return Entry{}, fmt.Errorf("blessing %s: %w", e.File, err)
	}

	return blessed, nil
}

// MarkBad sets file's tries left to zero so systemd-boot skips it.
func (p ESP) MarkBad(file string) (Entry, error) {
	e, err := Parse(filepath.Base(file))
	if err != nil {
		return Entry{}, err
	}

	if !e.Counted {
		return Entry{}, fmt.Errorf("marking %s bad: entry is blessed", e.File)
	}

	bad := Entry{File: fmt.Sprintf("%s+0-%d.efi", e.Base, e.Done), Base: e.Base, Counted: true, Done: e.Done}

	if bad.File == e.File {
		return e, nil
	}

	if err := p.rename(e.File, bad.File); err != nil {
		return Entry{}, fmt.Errorf("marking %s bad: %w", e.File, err)
	}

	return bad, nil
}

// Rollback picks the entry to roll back to: the newest blessed entry other
// than the booted one (by id).
func (p ESP) Rollback(bootedID string) (Entry, error) {
	es, err := p.List()
	if err != nil {
		return Entry{}, err
	}

	for _, e := range es {
		if e.Blessed() && e.ID() != bootedID {
			return e, nil
		}
	}

	return Entry{}, errors.New("no other blessed boot entry to roll back to")
}

// Default returns loader.conf's default value ("" when unset).
func (p ESP) Default() (string, error) {
	b, err := os.ReadFile(p.path(LoaderConf))
	if err != nil {
		return "", fmt.Errorf("reading loader.conf: %w", err)
	}

	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if k == "default" {
			return strings.TrimSpace(v), nil
		}
	}

	return "", nil
}

// SetDefault rewrites loader.conf's default line, keeping every other line.
// Pin an exact id only for a blessed entry: an exact default naming an
// unblessed entry makes systemd-boot boot it even after it went bad.
func (p ESP) SetDefault(value string) error {
	if !defaultRe.MatchString(value) || strings.Contains(value, "..") {
		return fmt.Errorf("setting loader.conf default %s: must match %s: %w", quoteShort(value), defaultRe, ErrInvalidLabel)
	}

	b, err := os.ReadFile(p.path(LoaderConf))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading loader.conf: %w", err)
	}

	var out []string

	found := false

	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		k, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if k == "default" {
			if !found {
				out = append(out, "default "+value)
			}

			found = true

			continue
		}

		if line != "" || len(out) > 0 {
			out = append(out, line)
		}
	}

	if !found {
		out = append(out, "default "+value)
	}

	if err := WriteFileAtomic(p.path(LoaderConf), strings.NewReader(strings.Join(out, "\n")+"\n")); err != nil {
		return fmt.Errorf("writing loader.conf: %w", err)
	}

	return nil
}

// Glob is the default that follows the newest good entry of name.
func Glob(name string) string { return name + "-*" }

// EntryFile is a new entry's file name: NAME-VERSION+3.efi.
func EntryFile(name, version string) string {
	return fmt.Sprintf("%s-%s+%d.efi", name, version, DefaultTries)
}

// Install is InstallWith without knowing the running entry.
func (p ESP) Install(name, version string, r io.Reader) (Entry, error) {
	return p.InstallWith(name, version, r, InstallOptions{})
}

// InstallWith writes a new entry NAME-VERSION+3.efi from r (temp file,
// fsync, rename) and returns it. Before writing it makes room: it keeps
// the running entry, the previous blessed one, an entry loader.conf's
// default names exactly and the new one, and removes older entries of
// NAME and temp files a lost write left behind. If the entry would not
// fit even then (free + reclaimable < size + SpaceMargin), nothing is
// removed and the error wraps ErrNoSpace.
func (p ESP) InstallWith(name, version string, r io.Reader, opts InstallOptions) (Entry, error) {
	if err := ValidateLabel("image name", name); err != nil {
		return Entry{}, fmt.Errorf("installing boot entry: %w", err)
	}

	if err := ValidateLabel("image version", version); err != nil {
		return Entry{}, fmt.Errorf("installing boot entry: %w", err)
	}

	base := name + "-" + version
	e := Entry{File: EntryFile(name, version), Base: base, Counted: true, Left: DefaultTries}

	r, size, err := readerSize(r)
	if err != nil {
		return Entry{}, fmt.Errorf("installing %s: reading the UKI: %w", e.File, err)
	}

	espMu.Lock()
	defer espMu.Unlock()

	if err := os.MkdirAll(p.path(Dir), 0o755); err != nil {
		return Entry{}, fmt.Errorf("installing boot entry: %w", err)
	}

	pl, err := p.planInstall(name, e, opts.Booted)
	if err != nil {
		return Entry{}, fmt.Errorf("installing %s: %w", e.File, err)
	}

	free, err := p.free()
	if err != nil {
		return Entry{}, fmt.Errorf("installing %s: %w", e.File, err)
	}

	if need := size + SpaceMargin; free+pl.freed < need {
		return Entry{}, fmt.Errorf("installing %s: needs %d KiB (%d KiB entry + %d KiB margin) but the ESP has %d KiB free "+
			"and %d KiB reclaimable; kept %s: %w",
			e.File, need>>10, size>>10, SpaceMargin>>10, free>>10, pl.freed>>10, pl.kept(), ErrNoSpace)
	}

	if opts.BeforeWrite != nil {
		opts.BeforeWrite(e.File)
	}

	for _, rel := range pl.remove {
		if err := os.Remove(p.path(rel)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return Entry{}, fmt.Errorf("installing %s: pruning %s: %w", e.File, rel, err)
		}
	}

	if len(pl.remove) > 0 {
		if err := syncDir(p.path(Dir)); err != nil {
			return Entry{}, fmt.Errorf("installing %s: %w", e.File, err)
		}
	}

	if err := writeFileAtomicAt(p.path(Dir+"/"+e.File), r, size, opts.Checkpoint); err != nil {
		return Entry{}, fmt.Errorf("installing boot entry: %w", err)
	}

	es, err := p.List()
	if err != nil {
		return Entry{}, err
	}

	// another file of the same version (e.g. the running one when the
	// same version is installed again) goes only once the new one is in
	for _, old := range es {
		if old.Base == base && old.File != e.File {
			if err := os.Remove(p.path(Dir + "/" + old.File)); err != nil {
				return Entry{}, fmt.Errorf("replacing boot entry: %w", err)
			}
		}
	}

	return e, syncDir(p.path(Dir))
}

// WriteFileAtomic writes r to path through a temporary file in the same
// directory, fsyncs it and renames it into place, so a crash leaves either
// the old or the new file (FAT has no journal to help).
func WriteFileAtomic(path string, r io.Reader) error {
	espMu.Lock()
	defer espMu.Unlock()

	return writeFileAtomic(path, r)
}

func writeFileAtomic(path string, r io.Reader) error {
	return writeFileAtomicAt(path, r, 0, nil)
}

// writeFileAtomicAt is writeFileAtomic that calls checkpoint half-way
// through size bytes and once the temp file is synced.
func writeFileAtomicAt(path string, r io.Reader, size int64, checkpoint func(string)) error {
	f, err := os.CreateTemp(filepath.Dir(path), tmpPrefix+"*")
	if err != nil {
		return err
	}

	tmp := f.Name()
	defer os.Remove(tmp) //nolint:errcheck

	if checkpoint != nil && size > 1 {
		// the first half goes to the disk before the pause, so a cut
		// there leaves a real partial file
		if _, err := io.CopyN(f, r, size/2); err != nil {
			f.Close() //nolint:errcheck

			return err
		}

		if err := f.Sync(); err != nil {
			f.Close() //nolint:errcheck

			return err
		}

		checkpoint(CheckpointMidWrite)
	}

	if _, err := io.Copy(f, r); err != nil {
		f.Close() //nolint:errcheck

		return err
	}

	if err := f.Sync(); err != nil {
		f.Close() //nolint:errcheck

		return err
	}

	if err := f.Close(); err != nil {
		return err
	}

	if checkpoint != nil {
		checkpoint(CheckpointWritten)
	}

	if err := os.Rename(tmp, path); err != nil {
		return err
	}

	return syncDir(filepath.Dir(path))
}

// syncDir makes a rename in dir durable. On vfat an fsync of the file or
// of the directory does not write the directory entries (they live in the
// block device's buffers), so a VM stopped right after a bless would find
// a 0-byte or missing entry; syncfs flushes the whole ESP.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close() //nolint:errcheck

	_ = d.Sync() // vfat may refuse fsync on directories

	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncing filesystem of %s: %w", dir, err)
	}

	return nil
}

// CompareVersion orders names as systemd's version comparison roughly
// does: runs of digits compare numerically, other characters bytewise.
func CompareVersion(a, b string) int {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])

		switch {
		case da && db:
			na, ra := digits(a)
			nb, rb := digits(b)
			na, nb = strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")

			if len(na) != len(nb) {
				return cmp(len(na), len(nb))
			}

			if na != nb {
				return strings.Compare(na, nb)
			}

			a, b = ra, rb
		default:
			if a[0] != b[0] {
				return cmp(int(a[0]), int(b[0]))
			}

			a, b = a[1:], b[1:]
		}
	}

	return cmp(len(a), len(b))
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func digits(s string) (string, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}

	return s[:i], s[i:]
}

func cmp(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}

	return 0
}
