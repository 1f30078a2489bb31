// Package build turns an image definition into signed artifacts. A build is
// a list of named steps (resolve -> bake -> uki -> outputs -> record); each
// output kind is one row of the outputs table in outputs.go.
package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

// Version changes whenever the builder's output for the same inputs changes;
// it is part of the cache key.
const Version = "labfleet-builder/2"

// BakeRequest asks for the embedded bootstrap configuration and the add-on
// image cache. It carries no secret on purpose: nothing a baker returns may
// hold one (the builder checks with machineconfig.CheckNoSecrets).
type BakeRequest struct {
	Def     *spec.Definition
	WorkDir string // scratch space; the cache layout may be written here
}

// Baked is what the baker produced.
type Baked struct {
	// MachineConfig is the bootstrap configuration the UKI embeds: Talos
	// documents without any secret (see docs/contracts.md).
	MachineConfig  []byte
	CacheLayoutDir string // OCI layout of add-on images; empty when there are none
	// ImageCacheDir is the same images in Talos's image cache format
	// (blob/, manifests/): the IMAGECACHE filesystem's root; empty when
	// there are none.
	ImageCacheDir string
	Addons        []record.Addon
}

// Baker renders add-ons and the machine configuration (extensions/).
type Baker interface {
	// Fingerprint hashes everything Bake reads for def, cheaply, for the cache key.
	Fingerprint(def *spec.Definition) (string, error)
	Bake(ctx context.Context, req BakeRequest) (*Baked, error)
}

// Progress receives step events; the CLI renders them.
type Progress interface {
	StepStart(name string)
	StepDone(name string, d time.Duration, err error)
}

// Options configure a build.
type Options struct {
	// Root is the repository root; relative paths in the definition resolve against it.
	Root string
	// OutDir is where _out/<name>/ goes (default Root/_out).
	OutDir string
	// CacheDir holds the content-addressed build cache (default Root/_cache/build).
	CacheDir string
	// KeysDir overrides the definition's keys directory.
	KeysDir string
	// SourceDateEpoch stamps every artifact; 0 reads SOURCE_DATE_EPOCH or uses 1700000000.
	SourceDateEpoch int64
	// Baker renders add-ons and machine config; required.
	Baker Baker
	// Force rebuilds even when the cache has the result.
	Force    bool
	Logger   *slog.Logger
	Progress Progress
	// ImagerLog receives the Talos imager's own output (it writes to stderr).
	ImagerLog io.Writer
	// Registry is how base pulls and installer pushes reach registries:
	// Docker config credentials, TLS unless the host is listed insecure.
	Registry base.Registry
	// ToolsPath is put in front of PATH while the imager runs: it shells out
	// to mksquashfs and needs 4.6+ (pseudo-file xattrs), which bookworm lacks;
	// hack/fetch-lab-assets.sh provides trixie's in _cache/lab-assets/tools/bin.
	ToolsPath string
	// PKCS11PIN is the user PIN of the PKCS#11 token a keys folder's
	// pkcs11.json names (imagectl reads it from LABFLEET_PKCS11_PIN).
	PKCS11PIN string
}

// workPrefix starts the name of every build's work folder in the temp folder.
const workPrefix = "imagectl-"

// Result is a finished build.
type Result struct {
	Dir    string
	Record *record.Record
}

// builder carries one build's state between steps.
type builder struct {
	def     *spec.Definition
	opts    Options
	keys    *keys.Set
	epoch   int64
	work    string // scratch dir, removed at the end
	stage   string // where outputs are written before they are moved into place
	base    *base.Resolved
	baked   *Baked
	cmdline string
	uki     string // path of the signed UKI in stage
	// sdboot is systemd-boot signed with SOURCE_DATE_EPOCH, in work: the
	// disk's ESP and the installer carry this one file.
	sdboot string
	// diskPrep is the disk image begun after the bake step (disk.go).
	diskPrep *diskPrep
	// installerBaseImg is the installer-base resolved (and digest-checked)
	// by the resolve step.
	installerBaseImg v1.Image
	rec              *record.Record
	written          map[string]stamp // outputs as hashed for the record, by path in stage
	signing          *signing         // started by the UKI step, stopped when the build ends
	// mu guards rec.Outputs, rec.Steps and written while the output steps
	// run in parallel.
	mu sync.Mutex
}

// Build runs the definition's build.
func Build(ctx context.Context, def *spec.Definition, opts Options) (*Result, error) {
	if opts.Baker == nil {
		return nil, errors.New("build: no baker configured")
	}

	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	if opts.OutDir == "" {
		opts.OutDir = filepath.Join(opts.Root, "_out")
	}

	if opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(opts.Root, "_cache", "build")
	}

	if opts.ImagerLog == nil {
		opts.ImagerLog = io.Discard
	}

	epoch, err := sourceDateEpoch(opts.SourceDateEpoch)
	if err != nil {
		return nil, err
	}

	keysDir := opts.KeysDir
	if keysDir == "" {
		keysDir = spec.ResolvePath(opts.Root, def.Keys)
	}

	keySet, err := keys.Load(keysDir)
	if err != nil {
		return nil, err
	}

	b := &builder{def: def, opts: opts, keys: keySet, epoch: epoch}

	key, err := b.cacheKey(ctx)
	if err != nil {
		return nil, err
	}

	final := filepath.Join(opts.OutDir, def.Name)

	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating output dir: %w", err)
	}

	if !opts.Force {
		if rec, ok := b.fromCache(key, final); ok {
			return &Result{Dir: final, Record: rec}, nil
		}

		if rec, ok := b.restoreFromCache(key, final); ok {
			return &Result{Dir: final, Record: rec}, nil
		}
	}

	// Everything is written under a temporary folder beside the final one and
	// moved into place at the end, so a failed build never touches the last good outputs.
	// Leftovers of killed builds (of any definition) go first.
	reapScratch(opts.OutDir, isStaging)
	reapScratch(os.TempDir(), isWork)
	reapScratch(opts.CacheDir, isIncoming)

	stage, err := newScratch(opts.OutDir, "."+def.Name+".building-")
	if err != nil {
		return nil, fmt.Errorf("creating staging dir: %w", err)
	}
	defer stage.Close()

	b.stage = stage.Dir

	work, err := newScratch(os.TempDir(), workPrefix+def.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("creating work dir: %w", err)
	}
	defer work.Close()

	b.work = work.Dir

	defer func() { b.signing.stop() }()

	// The signers start before any step: a PKCS#11 login with a wrong PIN,
	// or a token without the keys, fails at once rather than after the base
	// is resolved and the add-ons baked. (A build answered from the cache,
	// above, needs no key and no PIN.)
	if err := b.startSigning(ctx); err != nil {
		return nil, fmt.Errorf("starting the signers: %w", err)
	}

	schematicID, err := def.SchematicID()
	if err != nil {
		return nil, err
	}

	defID, err := def.ID()
	if err != nil {
		return nil, err
	}

	b.rec = &record.Record{
		Name: def.Name, Version: def.Version, TalosVersion: def.TalosVersion,
		SchematicID: schematicID, DefinitionID: defID, CacheKey: key, SourceDateEpoch: epoch,
	}

	// Resolving the base and baking the add-ons read nothing of each
	// other: they run at the same time, as the output steps do. The
	// resolved installer-base reads its blobs later, with the context it
	// was resolved with: the build's, not parallel's (cancelled when it
	// returns).
	if err := b.parallel(ctx, []buildStep{
		{"resolve base", func(context.Context) error { return b.resolveBase(ctx) }},
		{"bake add-ons and machine config", b.bake},
	}); err != nil {
		return nil, err
	}

	// The disk image's IMAGECACHE and partitions need only the bake: they
	// are written while the imager runs (diskPrep). Stopped (and waited
	// for) before the work folder it reads is removed.
	if def.Wants(spec.OutputDisk) {
		prepCtx, cancelPrep := context.WithCancel(ctx)
		b.startDisk(prepCtx)

		defer func() {
			cancelPrep()
			b.stopDisk()
		}()
	}

	if err := b.step(ctx, b.opts.Progress, "assemble and sign UKI", b.buildUKI); err != nil {
		return nil, err
	}

	var outputs []buildStep

	for _, o := range outputTable {
		if o.kind != spec.OutputUKI && def.Wants(o.kind) {
			outputs = append(outputs, buildStep{o.step, func(ctx context.Context) error { return o.write(b, ctx) }})
		}
	}

	if err := b.parallel(ctx, outputs); err != nil {
		return nil, err
	}

	// Past this point the new outputs replace the old ones: Ctrl-C before
	// it keeps the old ones.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("before moving outputs into place: %w", err)
	}

	if err := b.commit(ctx, final); err != nil {
		return nil, err
	}

	return &Result{Dir: final, Record: b.rec}, nil
}

type buildStep struct {
	name string
	run  func(context.Context) error
}

func (b *builder) step(ctx context.Context, progress Progress, name string, run func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	if progress != nil {
		progress.StepStart(name)
	}

	start := time.Now()
	err := run(ctx)
	d := time.Since(start)

	if progress != nil {
		progress.StepDone(name, d, err)
	}

	b.opts.Logger.Debug("build step", "step", name, "seconds", d.Seconds(), "error", err)

	if err != nil {
		// A step killed by Ctrl-C fails with whatever its tools saw ("signal:
		// killed"); the cause the caller can act on is the cancellation.
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			return fmt.Errorf("%s: %w (%v)", name, cerr, err)
		}

		return fmt.Errorf("%s: %w", name, err)
	}

	b.mu.Lock()
	b.rec.Steps = append(b.rec.Steps, record.Step{Name: name, Seconds: round3(d.Seconds())})
	b.mu.Unlock()

	return nil
}

// parallel runs steps at the same time: resolve and bake, then the output
// steps. Each reads only what the earlier steps made (the signed UKI and
// systemd-boot, the resolved bases) and writes its own files and record
// fields, so on two cores the disk step's FAT writes and hashing overlap
// the installer's compression. The first step to
// fail cancels the others, and its error is the one returned. Progress still
// sees one step at a time, in table order (sequencedProgress). The record
// lists outputs and steps in table order whatever order they finished in, so
// build.json stays byte-identical.
func (b *builder) parallel(parent context.Context, steps []buildStep) error {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)

	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.name
	}

	progress := newSequencedProgress(b.opts.Progress, names)
	errs := make([]error, len(steps))

	var wg sync.WaitGroup

	for i, s := range steps {
		wg.Go(func() {
			if errs[i] = b.step(ctx, progress, s.name, s.run); errs[i] != nil {
				cancel(errs[i])
			}
		})
	}

	wg.Wait()
	progress.finish()
	b.sortRecord()

	// A step cancelled because another failed reports the cancellation;
	// the failure is what the user must see (unless Ctrl-C came first).
	if parent.Err() == nil {
		if cause := context.Cause(ctx); cause != nil {
			return cause
		}
	}

	for _, err := range errs {
		if err != nil {
			return err
		}
	}

	return nil
}

// outputOrder is the order of the record's outputs: the UKI step's, then
// the outputs table's.
var outputOrder = []string{spec.OutputUKI, BootstrapConfigKind, spec.OutputDisk, spec.OutputInstaller}

// sortRecord puts outputs and steps that parallel steps appended in
// completion order back in table order.
func (b *builder) sortRecord() {
	rank := func(list []string, s string) int {
		if i := slices.Index(list, s); i >= 0 {
			return i
		}

		return len(list)
	}

	slices.SortStableFunc(b.rec.Outputs, func(x, y record.Output) int {
		return rank(outputOrder, x.Kind) - rank(outputOrder, y.Kind)
	})

	stepOrder := []string{"resolve base", "bake add-ons and machine config"}
	for _, o := range outputTable {
		stepOrder = append(stepOrder, o.step)
	}

	slices.SortStableFunc(b.rec.Steps, func(x, y record.Step) int {
		return rank(stepOrder, x.Name) - rank(stepOrder, y.Name)
	})
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

func sourceDateEpoch(v int64) (int64, error) {
	if v != 0 {
		return v, nil
	}

	if s, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); ok && s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a positive Unix time", s)
		}

		return n, nil
	}

	// A fixed default keeps builds reproducible without any setup.
	return 1700000000, nil
}

// addOutput hashes an output file and adds it to the record.
func (b *builder) addOutput(kind, path, ref string) error {
	s, err := hashStable(path)
	if err != nil {
		return fmt.Errorf("hashing output: %w", err)
	}

	rel, err := filepath.Rel(b.stage, path)
	if err != nil {
		return fmt.Errorf("output path: %w", err)
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	// Kept so stamping the finished folder need not hash it again.
	if b.written == nil {
		b.written = map[string]stamp{}
	}

	b.written[filepath.ToSlash(rel)] = s

	b.rec.Outputs = append(b.rec.Outputs, record.Output{Kind: kind, Path: rel, SHA256: s.SHA256, Size: s.Size, Ref: ref})

	return nil
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("hashing %s: %w", path, err)
	}
	defer f.Close() //nolint:errcheck

	h := sha256.New()

	n, err := hashSparse(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("hashing %s: %w", path, err)
	}

	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// zeroes is what a hole reads as.
var zeroes = make([]byte, 1<<20)

// hashSparse writes f's contents into h reading only its data regions
// (SEEK_DATA/SEEK_HOLE); holes are written from memory as zeroes. disk.raw
// is ~250 MB of which ~30 MB are data: reading its holes through the kernel
// was most of the time hashing it took. The bytes hashed are the same. On a
// file system without SEEK_DATA it reads everything.
func hashSparse(h io.Writer, f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}

	size := st.Size()
	buf := make([]byte, 1<<20)
	fd := int(f.Fd())

	writeZeroes := func(n int64) error {
		for n > 0 {
			k := min(n, int64(len(zeroes)))
			if _, err := h.Write(zeroes[:k]); err != nil {
				return err
			}

			n -= k
		}

		return nil
	}

	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // only a hole is left
		} else if err != nil {
			n, err := io.CopyBuffer(h, io.NewSectionReader(f, off, size-off), buf)

			return off + n, err
		}

		if err := writeZeroes(data - off); err != nil {
			return 0, err
		}

		if data >= size {
			break
		}

		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return 0, err
		}

		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, data, hole-data), buf); err != nil {
			return 0, err
		}

		off = hole
	}

	return size, nil
}
