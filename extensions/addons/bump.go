package addons

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"gopkg.in/yaml.v3"
)

// BumpOptions say what to change and where to resolve digests.
type BumpOptions struct {
	// Version is the new chart version; empty re-pins the current one.
	Version string
	// Tags sets image tags by image name (images[].name); images not listed
	// follow the new chart's default tag when the chart's values name the
	// same repository at the image's values key, else keep their tag.
	Tags map[string]string
	// Mirror is where charts and images are fetched from.
	Mirror Mirror
	// Source is recorded in pins.source: SourceUpstream or SourceStandin.
	Source string
	// Note is recorded in pins.note (the command that produced the pins).
	Note string
	// DryRun computes the result without rewriting addon.yaml.
	DryRun bool
}

// BumpResult is what bump changed.
type BumpResult struct {
	Addon   string        `json:"addon"`
	Chart   Change        `json:"chart"`
	Images  []ImageChange `json:"images"`
	Written bool          `json:"written"`
}

// Change is an old and new version and digest.
type Change struct {
	OldVersion string `json:"oldVersion"`
	NewVersion string `json:"newVersion"`
	OldDigest  string `json:"oldDigest"`
	NewDigest  string `json:"newDigest"`
}

// ImageChange is an image's old and new pin.
type ImageChange struct {
	Name      string `json:"name"`
	OldRef    string `json:"oldRef"`
	NewRef    string `json:"newRef"`
	OldDigest string `json:"oldDigest"`
	NewDigest string `json:"newDigest"`
}

// Bump sets an add-on's chart version (and image tags), re-pins the chart
// and image digests from the mirror or upstream, checks that the new chart
// renders with only pinned images, and rewrites addon.yaml in place,
// keeping its comments.
func Bump(ctx context.Context, dir string, opts BumpOptions) (*BumpResult, error) {
	a, err := load(dir, false)
	if err != nil {
		return nil, err
	}

	if a.Pins.Source == SourceBuilt {
		return nil, &FieldError{File: a.File, Field: "pins.source", Msg: fmt.Sprintf(
			"%q: nothing to bump: the chart is local (chart.local) and the images are built and pinned by every bake", SourceBuilt)}
	}

	if opts.Source != SourceUpstream && opts.Source != SourceStandin {
		return nil, fmt.Errorf("pins source %q: allowed values are %q and %q", opts.Source, SourceUpstream, SourceStandin)
	}

	for n := range opts.Tags {
		if !hasImage(a, n) {
			return nil, fmt.Errorf("%s: no image named %q (images[].name)", a.File, n)
		}
	}

	next := *a
	next.Images = append([]Image(nil), a.Images...)

	if opts.Version != "" {
		if err := checkSemver(opts.Version); err != nil {
			// A FieldError: the caller's input is wrong, not the chart
			// (imagectl exits 2 on it).
			return nil, &FieldError{Field: "version", Msg: fmt.Sprintf("%q %v", opts.Version, err)}
		}

		next.Chart.Version = opts.Version
	}

	fc, err := FetchChart(ctx, next.Chart, opts.Mirror)
	if err != nil {
		return nil, err
	}

	next.Chart.Digest = fc.Digest

	res := &BumpResult{
		Addon: a.Name,
		Chart: Change{OldVersion: a.Chart.Version, NewVersion: next.Chart.Version, OldDigest: a.Chart.Digest, NewDigest: fc.Digest},
	}

	for i, img := range next.Images {
		repoName, tag, err := splitTag(img.Ref)
		if err != nil {
			return nil, fmt.Errorf("%s: images[%d].ref: %w", a.File, i, err)
		}

		if t, ok := opts.Tags[img.Name]; ok {
			tag = t
		} else if r, t, ok := ChartDefaultImage(fc.Archive, img.Values); ok && r == repoName {
			tag = t
		}

		newRef := repoName + ":" + tag

		if err := checkTagRef(newRef); err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Name, err)
		}

		d, err := ResolveImage(ctx, newRef, opts.Mirror)
		if err != nil {
			return nil, err
		}

		res.Images = append(res.Images, ImageChange{Name: img.Name, OldRef: img.Ref, NewRef: newRef, OldDigest: img.Digest, NewDigest: d})
		next.Images[i].Ref = newRef
		next.Images[i].Digest = d
	}

	next.Pins = Pins{Source: opts.Source, Note: opts.Note}

	if err := next.Validate(); err != nil {
		return nil, err
	}

	// A new chart version may reference images the definition does not list:
	// refuse to pin something the cache would then lack.
	r, err := Render(ctx, &next, fc, RenderOptions{})
	if err != nil {
		return nil, err
	}

	if err := r.CheckPinned(); err != nil {
		return nil, fmt.Errorf("chart %s %s references images addon.yaml does not list: %w", next.Chart.Name, next.Chart.Version, err)
	}

	if opts.DryRun {
		return res, nil
	}

	if err := rewriteSpec(a.File, &next); err != nil {
		return nil, err
	}

	res.Written = true

	return res, nil
}

func hasImage(a *Addon, n string) bool {
	for _, img := range a.Images {
		if img.Name == n {
			return true
		}
	}

	return false
}

// ResolveImage returns the digest of the linux/amd64 image manifest that
// ref (with tag) names, fetched through the mirror. For a multi-platform
// index it pins the linux/amd64 child: that is what the cache stores.
func ResolveImage(ctx context.Context, ref string, m Mirror) (string, error) {
	t, err := m.ImageTagRef(ref)
	if err != nil {
		return "", err
	}

	desc, err := remote.Get(t, remote.WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("resolving %s (%s): %w", ref, t, err)
	}

	if !desc.MediaType.IsIndex() {
		return desc.Digest.String(), nil
	}

	idx, err := desc.ImageIndex()
	if err != nil {
		return "", fmt.Errorf("resolving %s: %w", ref, err)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		return "", fmt.Errorf("resolving %s: %w", ref, err)
	}

	want := v1.Platform{OS: "linux", Architecture: "amd64"}

	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.Satisfies(want) {
			return d.Digest.String(), nil
		}
	}

	return "", fmt.Errorf("resolving %s: index has no linux/amd64 image", ref)
}

// rewriteSpec writes the changed pins into the YAML document, node by node,
// so comments and ordering survive.
func rewriteSpec(file string, a *Addon) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("reading %s: %w", file, err)
	}

	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("parsing %s: %w", file, err)
	}

	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return fmt.Errorf("%s: expected one YAML document", file)
	}

	root := doc.Content[0]

	set := func(parent *yaml.Node, key, value string) error {
		n := mapValue(parent, key)
		if n == nil {
			return fmt.Errorf("%s: field %q not found", file, key)
		}

		n.Kind = yaml.ScalarNode
		n.Tag = "!!str"
		n.Value = value
		n.Style = 0

		return nil
	}

	chartNode := mapValue(root, "chart")
	imagesNode := mapValue(root, "images")
	pinsNode := mapValue(root, "pins")

	if chartNode == nil || imagesNode == nil || pinsNode == nil || len(imagesNode.Content) != len(a.Images) {
		return fmt.Errorf("%s: chart, images and pins must be present", file)
	}

	errs := []error{
		set(chartNode, "version", a.Chart.Version),
		set(chartNode, "digest", a.Chart.Digest),
		set(pinsNode, "source", a.Pins.Source),
		set(pinsNode, "note", a.Pins.Note),
	}

	for i, img := range a.Images {
		errs = append(errs,
			set(imagesNode.Content[i], "ref", img.Ref),
			set(imagesNode.Content[i], "digest", img.Digest),
		)
	}

	if err := errors.Join(errs...); err != nil {
		return err
	}

	var buf bytes.Buffer

	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)

	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("encoding %s: %w", file, err)
	}

	if err := enc.Close(); err != nil {
		return err
	}

	tmp, err := os.CreateTemp(filepath.Dir(file), ".addon-*.yaml")
	if err != nil {
		return err
	}

	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()           //nolint:errcheck
		os.Remove(tmp.Name()) //nolint:errcheck

		return err
	}

	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name()) //nolint:errcheck

		return err
	}

	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}

	return os.Rename(tmp.Name(), file)
}

// mapValue returns the value node for key in a mapping node, or nil.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}

	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}

	return nil
}
