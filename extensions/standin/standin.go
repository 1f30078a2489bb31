// Package standin writes the project's stand-ins for the add-ons' upstream
// charts and container images: small, deterministic charts (templates
// written by labfleet, keeping the upstream value keys labfleet sets) and
// images (a few generated layers), published under the upstream names.
//
// They exist because lab and CI machines cannot reach quay.io, ghcr.io,
// docker.io or the chart repositories: serving stand-ins through a mirror
// mapping exercises exactly the code path that pulls the real artifacts in
// production. Nothing here is, or claims to be, the upstream content.
package standin

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"
)

//go:embed all:charts
var chartFS embed.FS

// Chart is one stand-in chart version.
type Chart struct {
	// Template is the directory under charts/ holding its templates.
	Template string
	// Repository is the upstream location: https:// Helm repository or
	// oci:// registry location, exactly as addon.yaml writes it.
	Repository string
	// Name, Version and AppVersion go into Chart.yaml.
	Name, Version, AppVersion string
	// Subst replaces @KEY@ placeholders in the template's values.yaml
	// (default image tags of this version).
	Subst map[string]string
}

// Image is one stand-in container image.
type Image struct {
	// Ref is the upstream reference with tag.
	Ref string
	// Family names a layer shared by related images (the same project's
	// binaries share a layer upstream too); empty for none.
	Family string
}

// Catalog is what a stand-in mirror publishes.
type Catalog struct {
	Charts []Chart
	Images []Image
}

// DefaultCatalog holds the chart versions and images the add-ons in
// extensions/ pin, plus Cilium 1.18.1 so `imagectl addons bump` can be tried
// offline. Versions and names are upstream's; the bytes are ours.
func DefaultCatalog() Catalog {
	c := Catalog{}

	for _, v := range []string{"1.18.0", "1.18.1"} {
		c.Charts = append(c.Charts, Chart{
			Template: "cilium", Repository: "https://helm.cilium.io", Name: "cilium",
			Version: v, AppVersion: v, Subst: map[string]string{"TAG": "v" + v},
		})
		c.Images = append(c.Images,
			Image{Ref: "quay.io/cilium/cilium:v" + v, Family: "cilium"},
			Image{Ref: "quay.io/cilium/operator-generic:v" + v, Family: "cilium"},
		)
	}

	c.Charts = append(c.Charts,
		Chart{
			Template: "metallb", Repository: "https://metallb.github.io/metallb", Name: "metallb",
			Version: "0.15.2", AppVersion: "v0.15.2", Subst: map[string]string{"TAG": "v0.15.2"},
		},
		Chart{
			Template: "opentelemetry-collector", Repository: "https://open-telemetry.github.io/opentelemetry-helm-charts",
			Name: "opentelemetry-collector", Version: "0.127.2", AppVersion: "0.127.0",
		},
		Chart{
			Template: "prometheus", Repository: "oci://ghcr.io/prometheus-community/charts", Name: "prometheus",
			Version: "27.45.0", AppVersion: "v3.5.0", Subst: map[string]string{"TAG": "v3.5.0", "RELOADER": "v0.83.0"},
		},
	)

	c.Images = append(c.Images,
		Image{Ref: "quay.io/metallb/controller:v0.15.2", Family: "metallb"},
		Image{Ref: "quay.io/metallb/speaker:v0.15.2", Family: "metallb"},
		Image{Ref: "docker.io/otel/opentelemetry-collector-k8s:0.127.0"},
		Image{Ref: "quay.io/prometheus/prometheus:v3.5.0", Family: "prometheus"},
		Image{Ref: "quay.io/prometheus-operator/prometheus-config-reloader:v0.83.0"},
		Image{Ref: "quay.io/thanos/thanos:v0.39.2"},
	)

	return c
}

// epoch is the modification time of every archive entry: fixed so the same
// chart gives the same bytes.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Archive returns the chart's .tgz bytes, deterministic for the same chart.
func (c Chart) Archive() ([]byte, error) {
	files := map[string][]byte{}

	root := path.Join("charts", c.Template)

	err := fs.WalkDir(chartFS, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		b, err := chartFS.ReadFile(p)
		if err != nil {
			return err
		}

		rel := strings.TrimPrefix(p, root+"/")
		if rel == "values.yaml" {
			for k, v := range c.Subst {
				b = bytes.ReplaceAll(b, []byte("@"+k+"@"), []byte(v))
			}
		}

		files[c.Name+"/"+rel] = b

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading stand-in chart %s: %w", c.Template, err)
	}

	if len(files) == 0 {
		return nil, fmt.Errorf("stand-in chart template %q not found", c.Template)
	}

	files[c.Name+"/Chart.yaml"] = fmt.Appendf(nil, `apiVersion: v2
name: %s
version: %s
appVersion: %q
description: labfleet stand-in for the upstream %s chart (offline tests only; not the upstream chart)
type: application
`, c.Name, c.Version, c.AppVersion, c.Name)

	return tarGz(files)
}

func tarGz(files map[string][]byte) ([]byte, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}

	sort.Strings(names)

	var buf bytes.Buffer

	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)

	for _, n := range names {
		hdr := &tar.Header{
			Name:     n,
			Mode:     0o644,
			Size:     int64(len(files[n])),
			ModTime:  epoch,
			Typeflag: tar.TypeReg,
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}

		if _, err := tw.Write(files[n]); err != nil {
			return nil, err
		}
	}

	if err := tw.Close(); err != nil {
		return nil, err
	}

	if err := gz.Close(); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}

// filler returns n deterministic pseudo-random bytes derived from seed
// (SHA-256 in counter mode): incompressible, so layer sizes are realistic
// for the de-duplication figures.
func filler(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)

	var ctr [8]byte

	for i := uint64(0); len(out) < n; i++ {
		binary.BigEndian.PutUint64(ctr[:], i)
		h := sha256.New()
		io.WriteString(h, seed) //nolint:errcheck
		h.Write(ctr[:])
		out = h.Sum(out)
	}

	return out[:n]
}
