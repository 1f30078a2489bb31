// Package bake connects the builder to extensions/: it renders the
// definition's add-ons into the embedded bootstrap configuration (no
// secrets: machineconfig.Bootstrap) and the IMAGECACHE OCI layout, starting the stand-in mirror when the pins are the
// project's stand-ins (see extensions/README.md).
package bake

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/labfleet/labfleet/extensions"
	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/machineconfig"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

// Baker implements build.Baker over extensions.Bake.
type Baker struct {
	// Dir is the add-ons root (<repo>/extensions).
	Dir string
	// Site, when set, bakes a per-site machine config patch.
	Site *extensions.SiteValues

	mu     sync.Mutex
	mirror map[string]string
	stop   func()
}

// New returns a Baker reading add-ons from <root>/extensions.
func New(root string) *Baker {
	return &Baker{Dir: filepath.Join(root, "extensions")}
}

// Close stops the stand-in mirror if one was started.
func (b *Baker) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()

	if b.stop != nil {
		b.stop()
		b.stop = nil
	}
}

// Fingerprint hashes every file of the definition's add-ons and of the
// stand-in catalogue: what Bake reads besides the definition itself.
func (b *Baker) Fingerprint(def *spec.Definition) (string, error) {
	h := sha256.New()

	dirs := []string{filepath.Join(b.Dir, "standin")}
	for _, a := range def.Addons {
		dirs = append(dirs, filepath.Join(b.Dir, a))
	}

	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, de fs.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}

			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close() //nolint:errcheck

			fmt.Fprintf(h, "%s\n", p[len(b.Dir):])
			_, err = io.Copy(h, f)

			return err
		})
		if err != nil {
			return "", fmt.Errorf("reading add-on %s: %w", d, err)
		}
	}

	if b.Site != nil {
		fmt.Fprintf(h, "site %+v\n", *b.Site)
	}

	// An add-on built from this repository (the site cache's fleetctl)
	// changes with that program's sources, outside its add-on directory.
	builds, err := Builds(b.Dir, def)
	if err != nil {
		return "", err
	}

	for _, build := range builds {
		fp, err := addons.BuildFingerprint(context.Background(), filepath.Dir(b.Dir), build)
		if err != nil {
			return "", err
		}

		fmt.Fprintf(h, "build %s %s\n", build, fp)
	}

	return hex.EncodeToString(h.Sum(nil)), nil
}

// Bake renders add-ons (if any) and the bootstrap configuration. It reads
// no secret: a node's own config is made with machineconfig.NodeConfig and
// delivered after boot.
func (b *Baker) Bake(ctx context.Context, req build.BakeRequest) (*build.Baked, error) {
	def := req.Def

	if len(def.Addons) == 0 {
		cfg, err := machineconfig.Bootstrap(machineconfig.Options{})
		if err != nil {
			return nil, fmt.Errorf("generating bootstrap config: %w", err)
		}

		return &build.Baked{MachineConfig: cfg}, nil
	}

	if !def.Lab {
		names, err := Standins(b.Dir, def)
		if err != nil {
			return nil, err
		}

		if len(names) > 0 {
			return nil, &spec.FieldError{File: def.File(), Field: "addons", Msg: fmt.Sprintf(
				"%s are stand-ins (pins.source: standin): their images exist only in the project's stand-in mirror, not in a production image. "+
					"Pin them to upstream (imagectl addons bump NAME, without --standin), remove them, or mark a lab definition with lab: true",
				strings.Join(names, ", "))}
		}
	}

	mirror, err := b.mirrorFor(ctx, def)
	if err != nil {
		return nil, err
	}

	baked, err := extensions.Bake(ctx, extensions.BakeOptions{
		Dir: b.Dir, Addons: def.Addons, Mirror: mirror, Site: b.Site,
		CacheDir:      filepath.Join(req.WorkDir, "imagecache"),
		ImageCacheDir: filepath.Join(req.WorkDir, "imagecache-talos"),
	})
	if err != nil {
		return nil, err
	}

	out := &build.Baked{MachineConfig: baked.MachineConfig, CacheLayoutDir: baked.CacheLayoutDir, ImageCacheDir: baked.ImageCacheDir}

	for _, a := range baked.Addons {
		ra := record.Addon{Name: a.Name, Version: a.Version, ChartDigest: a.ChartDigest, Source: a.PinSource, Standin: a.PinSource == addons.SourceStandin}
		for _, img := range a.Images {
			ra.Images = append(ra.Images, record.AddonImage{Ref: img.Ref, Digest: img.Digest})
		}

		out.Addons = append(out.Addons, ra)
	}

	return out, nil
}

// Builds lists the project builds (addons.Builds) the definition's add-ons
// bake images from, sorted and without repeats.
func Builds(dir string, def *spec.Definition) ([]string, error) {
	if len(def.Addons) == 0 {
		return nil, nil
	}

	list, err := addons.LoadAll(dir, def.Addons)
	if err != nil {
		return nil, err
	}

	seen := map[string]bool{}

	var out []string

	for _, a := range list {
		for _, img := range a.Images {
			if img.Build != "" && !seen[img.Build] {
				seen[img.Build] = true
				out = append(out, img.Build)
			}
		}
	}

	sort.Strings(out)

	return out, nil
}

// Standins lists the definition's add-ons (under dir, the add-ons root)
// whose pins are the project's stand-ins, in definition order.
func Standins(dir string, def *spec.Definition) ([]string, error) {
	// LoadAll reads the default add-ons for an empty list; none are baked then.
	if len(def.Addons) == 0 {
		return nil, nil
	}

	list, err := addons.LoadAll(dir, def.Addons)
	if err != nil {
		return nil, err
	}

	var names []string

	for _, a := range list {
		if a.Pins.Source == addons.SourceStandin {
			names = append(names, a.Name)
		}
	}

	return names, nil
}

// mirrorFor starts the stand-in mirror when any add-on is pinned to the
// stand-ins: those digests exist only there.
func (b *Baker) mirrorFor(ctx context.Context, def *spec.Definition) (map[string]string, error) {
	list, err := addons.LoadAll(b.Dir, def.Addons)
	if err != nil {
		return nil, err
	}

	standin := false

	for _, a := range list {
		if a.Pins.Source == addons.SourceStandin {
			standin = true
		}
	}

	if !standin {
		return nil, nil
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	if b.mirror == nil {
		// The mirror outlives this build's context: Close stops it.
		m, stop, err := extensions.StartStandinMirror(context.WithoutCancel(ctx))
		if err != nil {
			return nil, err
		}

		b.mirror, b.stop = m, stop
	}

	return b.mirror, nil
}
