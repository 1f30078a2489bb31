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
	"strconv"
	"time"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

// Version changes whenever the builder's output for the same inputs changes;
// it is part of the cache key.
const Version = "labfleet-builder/1"

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
	// installerBase is the local OCI layout copy of the resolved installer-base.
	installerBase string
	rec           *record.Record
	written       map[string]stamp // outputs as hashed for the record, by path in stage
	signing       *signing         // started by the UKI step, stopped when the build ends
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

	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"resolve base", b.resolveBase},
		{"bake add-ons and machine config", b.bake},
		{"assemble and sign UKI", b.buildUKI},
	}

	for _, o := range outputTable {
		if o.kind != spec.OutputUKI && def.Wants(o.kind) {
			steps = append(steps, struct {
				name string
				run  func(context.Context) error
			}{o.step, func(ctx context.Context) error { return o.write(b, ctx) }})
		}
	}

	for _, s := range steps {
		if err := b.step(ctx, s.name, s.run); err != nil {
			return nil, err
		}
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

func (b *builder) step(ctx context.Context, name string, run func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	if b.opts.Progress != nil {
		b.opts.Progress.StepStart(name)
	}

	start := time.Now()
	err := run(ctx)
	d := time.Since(start)

	if b.opts.Progress != nil {
		b.opts.Progress.StepDone(name, d, err)
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

	b.rec.Steps = append(b.rec.Steps, record.Step{Name: name, Seconds: round3(d.Seconds())})

	return nil
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

	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("hashing %s: %w", path, err)
	}

	return hex.EncodeToString(h.Sum(nil)), n, nil
}
