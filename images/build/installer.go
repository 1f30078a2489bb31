package build

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Installer image layout (docs/contracts.md): one layer with these files.
const (
	InstallerUKIPath    = "labfleet/uki.efi"
	InstallerRecordPath = "labfleet/build.json"
	LabelName           = "org.labfleet.name"
	LabelVersion        = "org.labfleet.version"
	LabelSchematic      = "org.labfleet.schematic"
)

// SourceRepository is where labfleet's source lives (its Go module path),
// the installer's org.opencontainers.image.source.
const SourceRepository = "https://github.com/labfleet/labfleet"

// InstallerInfo is the installer image's metadata.
type InstallerInfo struct {
	Name, Version, SchematicID string
	// Epoch is SOURCE_DATE_EPOCH: every timestamp in the image and the
	// org.opencontainers.image.created annotation.
	Epoch int64
	// Revision is the source revision (git commit) the image was built
	// from; empty leaves org.opencontainers.image.revision out.
	Revision string
	// Source is the source repository URL; empty leaves
	// org.opencontainers.image.source out.
	Source string
}

// InstallerImage builds the installer image from a signed UKI and a record
// (the record as of the UKI; it cannot contain the installer's own digest).
// It is an OCI image (OCI manifest, config and gzip layer media types) with
// the standard org.opencontainers.image.* annotations on its manifest, so
// OCI tools (skopeo, umoci, image-spec validators) accept it.
func InstallerImage(ukiPath string, recordJSON []byte, info InstallerInfo, work string) (v1.Image, error) {
	layerPath := filepath.Join(work, "installer-layer.tar")
	mtime := time.Unix(info.Epoch, 0).UTC()

	if err := writeLayerTar(layerPath, mtime, ukiPath, recordJSON); err != nil {
		return nil, err
	}

	layer, err := tarball.LayerFromFile(layerPath, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("creating installer layer: %w", err)
	}

	// empty.Image is a Docker schema 2 image; OCI layouts and OCI tools
	// want OCI media types throughout.
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)

	img, err = mutate.AppendLayers(img, layer)
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
	cf.Config.Labels = map[string]string{LabelName: info.Name, LabelVersion: info.Version, LabelSchematic: info.SchematicID}

	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting installer config: %w", err)
	}

	ann := map[string]string{
		"org.opencontainers.image.title":   info.Name,
		"org.opencontainers.image.version": info.Version,
		"org.opencontainers.image.created": mtime.Format(time.RFC3339),
	}

	if info.Revision != "" {
		ann["org.opencontainers.image.revision"] = info.Revision
	}

	if info.Source != "" {
		ann["org.opencontainers.image.source"] = info.Source
	}

	annotated, ok := mutate.Annotations(img, ann).(v1.Image)
	if !ok {
		return nil, errors.New("annotating installer image: not an image")
	}

	return annotated, nil
}

// WriteInstallerLayout writes img as the only image of a new OCI layout in
// dir, tagged tag (org.opencontainers.image.ref.name in index.json, which is
// how skopeo's and umoci's dir:tag find it).
func WriteInstallerLayout(dir string, img v1.Image, tag string) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("creating installer layout: %w", err)
	}

	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		return fmt.Errorf("writing installer layout: %w", err)
	}

	return nil
}

// imageSize is what pulling img transfers: manifest, config and layers.
func imageSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, fmt.Errorf("reading installer manifest: %w", err)
	}

	raw, err := img.RawManifest()
	if err != nil {
		return 0, fmt.Errorf("reading installer manifest: %w", err)
	}

	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}

	return size, nil
}

// sourceRevision is the git commit checked out in root, or "" when root is
// not a git checkout (the annotation is then left out, not made up).
func sourceRevision(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--verify", "HEAD").Output()
	if err != nil {
		return ""
	}

	return strings.TrimSpace(string(out))
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

	img, err := InstallerImage(b.uki, recJSON, InstallerInfo{
		Name: b.def.Name, Version: b.def.Version, SchematicID: b.rec.SchematicID, Epoch: b.epoch,
		Revision: sourceRevision(ctx, b.opts.Root), Source: SourceRepository,
	}, b.work)
	if err != nil {
		return err
	}

	if err := WriteInstallerLayout(filepath.Join(b.stage, "installer"), img, b.def.Version); err != nil {
		return err
	}

	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("installer digest: %w", err)
	}

	size, err := imageSize(img)
	if err != nil {
		return err
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
	// Size is what a pull transfers (manifest, config, layers).
	out := installerOutput(digest.String(), ref)
	out.Size = size
	b.rec.Outputs = append(b.rec.Outputs, out)

	return nil
}
