package build

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Installer image layout (docs/contracts.md): one layer with these files.
const (
	InstallerUKIPath    = "labfleet/uki.efi"
	InstallerRecordPath = "labfleet/build.json"
	LabelName           = "org.labfleet.name"
	LabelVersion        = "org.labfleet.version"
	LabelSchematic      = "org.labfleet.schematic"
)

// InstallerImage builds the installer image from a signed UKI and a record
// (the record as of the UKI; it cannot contain the installer's own digest).
func InstallerImage(ukiPath string, recordJSON []byte, name, version, schematicID string, epoch int64, work string) (v1.Image, error) {
	layerPath := filepath.Join(work, "installer-layer.tar")
	mtime := time.Unix(epoch, 0).UTC()

	if err := writeLayerTar(layerPath, mtime, ukiPath, recordJSON); err != nil {
		return nil, err
	}

	layer, err := tarball.LayerFromFile(layerPath)
	if err != nil {
		return nil, fmt.Errorf("creating installer layer: %w", err)
	}

	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("assembling installer image: %w", err)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading installer config: %w", err)
	}

	cf = cf.DeepCopy()
	cf.Architecture = "amd64"
	cf.OS = "linux"
	cf.Created = v1.Time{Time: mtime}
	cf.Config.Labels = map[string]string{LabelName: name, LabelVersion: version, LabelSchematic: schematicID}

	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting installer config: %w", err)
	}

	return img, nil
}

func writeLayerTar(path string, mtime time.Time, ukiPath string, recordJSON []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating installer layer: %w", err)
	}
	defer f.Close() //nolint:errcheck

	tw := tar.NewWriter(f)

	if err := tw.WriteHeader(&tar.Header{Name: "labfleet/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("writing installer layer: %w", err)
	}

	uki, err := os.Open(ukiPath)
	if err != nil {
		return fmt.Errorf("opening UKI: %w", err)
	}
	defer uki.Close() //nolint:errcheck

	st, err := uki.Stat()
	if err != nil {
		return fmt.Errorf("opening UKI: %w", err)
	}

	if err := tw.WriteHeader(&tar.Header{Name: InstallerUKIPath, Typeflag: tar.TypeReg, Mode: 0o644, Size: st.Size(), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("writing installer layer: %w", err)
	}

	if _, err := uki.WriteTo(tw); err != nil {
		return fmt.Errorf("writing UKI into installer layer: %w", err)
	}

	if err := tw.WriteHeader(&tar.Header{Name: InstallerRecordPath, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(recordJSON)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("writing installer layer: %w", err)
	}

	if _, err := tw.Write(recordJSON); err != nil {
		return fmt.Errorf("writing record into installer layer: %w", err)
	}

	if err := tw.Close(); err != nil {
		return fmt.Errorf("closing installer layer: %w", err)
	}

	return f.Close()
}

func (b *builder) writeInstaller(ctx context.Context) error {
	// Step timings vary run to run; the copy inside the image leaves them out
	// so the installer image is reproducible.
	embedded := *b.rec
	embedded.Steps = nil

	recJSON, err := embedded.Marshal()
	if err != nil {
		return err
	}

	img, err := InstallerImage(b.uki, recJSON, b.def.Name, b.def.Version, b.rec.SchematicID, b.epoch, b.work)
	if err != nil {
		return err
	}

	dir := filepath.Join(b.stage, "installer")

	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("creating installer layout: %w", err)
	}

	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": b.def.Version})); err != nil {
		return fmt.Errorf("writing installer layout: %w", err)
	}

	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("installer digest: %w", err)
	}

	ref := ""

	if repo := b.def.Installer.Repository; repo != "" {
		// TLS unless the registry is listed insecure (--insecure-registry):
		// a pushed release must not travel in clear text by default.
		tag, err := name.NewTag(repo+":"+b.def.Version, b.opts.Registry.NameOptions(repo, false)...)
		if err != nil {
			return fmt.Errorf("installer.repository %q: %w", repo, err)
		}

		if err := remote.Write(tag, img, b.opts.Registry.RemoteOptions(ctx)...); err != nil {
			return fmt.Errorf("pushing installer to %s: %w", tag, err)
		}

		ref = tag.Context().Digest(digest.String()).String()
	}

	// The record's installer entry names the image by its manifest digest.
	b.rec.Outputs = append(b.rec.Outputs, installerOutput(digest.String(), ref))

	return nil
}
