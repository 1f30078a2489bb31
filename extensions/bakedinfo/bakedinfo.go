// Package bakedinfo reports what an image carries baked in: the inline
// manifests of its machine configuration and the images of its image
// cache. It depends on the standard library and yaml.v3 only, so labos can
// report it from the booted image without linking Helm or machinery.
package bakedinfo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Manifest is one inline manifest of the machine configuration.
type Manifest struct {
	// Name is the add-on name.
	Name string `json:"name"`
	// SHA256 is the hex sha256 of the manifest text.
	SHA256 string `json:"sha256"`
	// Documents is how many YAML documents (objects) it holds.
	Documents int `json:"documents"`
}

// Image is one image in the cache.
type Image struct {
	// Ref is the image name with tag (quay.io/cilium/cilium:v1.18.0).
	Ref string `json:"ref"`
	// Digest is the manifest digest (sha256:...).
	Digest string `json:"digest"`
}

// Report is what an image carries.
type Report struct {
	Manifests []Manifest `json:"manifests"`
	Images    []Image    `json:"images"`
}

// Manifests returns the KubeInlineManifestConfig documents (and legacy
// cluster.inlineManifests) of a multi-document machine configuration.
func Manifests(machineConfig []byte) ([]Manifest, error) {
	dec := yaml.NewDecoder(bytes.NewReader(machineConfig))

	var out []Manifest

	for {
		var doc struct {
			Kind     string `yaml:"kind"`
			Name     string `yaml:"name"`
			Manifest string `yaml:"manifest"`
			Cluster  struct {
				InlineManifests []struct {
					Name     string `yaml:"name"`
					Contents string `yaml:"contents"`
				} `yaml:"inlineManifests"`
			} `yaml:"cluster"`
		}

		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("parsing machine config: %w", err)
		}

		if doc.Kind == "KubeInlineManifestConfig" {
			out = append(out, manifest(doc.Name, doc.Manifest))
		}

		for _, m := range doc.Cluster.InlineManifests {
			out = append(out, manifest(m.Name, m.Contents))
		}
	}

	return out, nil
}

func manifest(name, contents string) Manifest {
	sum := sha256.Sum256([]byte(contents))

	docs := 0

	for _, d := range strings.Split("\n"+contents, "\n---") {
		for _, l := range strings.Split(d, "\n") {
			t := strings.TrimSpace(l)
			if t != "" && !strings.HasPrefix(t, "#") {
				docs++

				break
			}
		}
	}

	return Manifest{Name: name, SHA256: hex.EncodeToString(sum[:]), Documents: docs}
}

// CacheImages lists the images of an image cache: an OCI image layout
// (index.json with io.containerd.image.name annotations, as extensions
// writes it) or Talos's registry form (manifests/<name>/reference/<tag>).
func CacheImages(fsys fs.FS) ([]Image, error) {
	if b, err := fs.ReadFile(fsys, "index.json"); err == nil {
		return ociImages(b)
	}

	return talosImages(fsys)
}

func ociImages(index []byte) ([]Image, error) {
	var idx struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}

	if err := json.Unmarshal(index, &idx); err != nil {
		return nil, fmt.Errorf("parsing image cache index.json: %w", err)
	}

	out := make([]Image, 0, len(idx.Manifests))

	for _, m := range idx.Manifests {
		ref := m.Annotations["io.containerd.image.name"]
		if ref == "" {
			ref = m.Annotations["org.opencontainers.image.ref.name"]
		}

		out = append(out, Image{Ref: ref, Digest: m.Digest})
	}

	sortImages(out)

	return out, nil
}

func talosImages(fsys fs.FS) ([]Image, error) {
	var out []Image

	err := fs.WalkDir(fsys, "manifests", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if d.IsDir() || path.Base(path.Dir(p)) != "reference" {
			return nil
		}

		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}

		sum := sha256.Sum256(b)
		repo := strings.TrimPrefix(path.Dir(path.Dir(p)), "manifests/")
		out = append(out, Image{Ref: repo + ":" + path.Base(p), Digest: "sha256:" + hex.EncodeToString(sum[:])})

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading image cache: %w", err)
	}

	sortImages(out)

	return out, nil
}

func sortImages(imgs []Image) {
	sort.Slice(imgs, func(i, j int) bool {
		if imgs[i].Ref != imgs[j].Ref {
			return imgs[i].Ref < imgs[j].Ref
		}

		return imgs[i].Digest < imgs[j].Digest
	})
}

// Inspect reports the manifests of machineConfig and, if cache is not nil,
// the images of the cache.
func Inspect(machineConfig []byte, cache fs.FS) (*Report, error) {
	ms, err := Manifests(machineConfig)
	if err != nil {
		return nil, err
	}

	r := &Report{Manifests: ms}

	if cache != nil {
		r.Images, err = CacheImages(cache)
		if err != nil {
			return nil, err
		}
	}

	return r, nil
}

// Expect is what a booted image must carry for one add-on: its manifest
// and its pinned images (from the build record).
type Expect struct {
	Addon  string
	Images []Image
}

// Check fails naming each add-on manifest or pinned image the report lacks.
func (r *Report) Check(want []Expect) error {
	manifests := map[string]bool{}
	for _, m := range r.Manifests {
		manifests[m.Name] = true
	}

	images := map[Image]bool{}
	for _, i := range r.Images {
		images[i] = true
	}

	var errs []error

	for _, w := range want {
		if !manifests[w.Addon] {
			errs = append(errs, fmt.Errorf("add-on %s: no inline manifest in the machine configuration", w.Addon))
		}

		for _, i := range w.Images {
			if !images[i] {
				errs = append(errs, fmt.Errorf("add-on %s: image %s@%s is not in the image cache", w.Addon, i.Ref, i.Digest))
			}
		}
	}

	return errors.Join(errs...)
}
