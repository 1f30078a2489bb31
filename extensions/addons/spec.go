// Package addons loads, renders and caches the platform add-ons baked into
// labfleet images: each add-on is a directory holding addon.yaml (where its
// Helm chart and container images come from, pinned by digest) and
// values.yaml (the chart values labfleet uses).
package addons

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"gopkg.in/yaml.v3"
	"helm.sh/helm/v3/pkg/chartutil"
)

// SpecFile is the name of an add-on's definition inside its directory.
const SpecFile = "addon.yaml"

// Pin sources: where the digests in an addon.yaml were computed.
const (
	// SourceUpstream: digests computed by `imagectl addons bump` against the
	// real upstream registries and chart repositories.
	SourceUpstream = "upstream"
	// SourceStandin: digests computed by the same code against the project's
	// stand-in mirror (small charts and images published under the upstream
	// names), because the lab machines cannot reach the upstream registries.
	SourceStandin = "standin"
	// SourceBuilt: the add-on is this project's own: its chart is local
	// (chart.local) and its images are built at bake time from this
	// repository (images[].build), so the digests are computed by the bake,
	// not pinned in addon.yaml (a pin there would go stale with every
	// commit to the built program). The build is reproducible, so the same
	// source gives the same digest; build.json records it.
	SourceBuilt = "built"
)

// Image value formats: how an image reference is written into chart values.
const (
	// FormatMap writes a map {repository, tag, digest} at the values key, the
	// shape most upstream charts use.
	FormatMap = "map"
	// FormatString writes the whole reference "repo:tag@sha256:..." as one
	// string, for values that hold a container spec's image field directly.
	FormatString = "string"
)

// Addon is one add-on definition (addon.yaml).
type Addon struct {
	// Name of the add-on; must equal its directory name. It names the inline
	// manifest in the machine configuration.
	Name string `yaml:"name" json:"name"`
	// Description says what the add-on does on a node, one line.
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	// Namespace the chart is rendered into. Namespaces other than kube-system
	// are created by the baked manifest itself.
	Namespace string `yaml:"namespace" json:"namespace"`
	// PodSecurity is the Pod Security Admission level enforced on the
	// namespace labfleet creates (privileged, baseline, restricted); add-ons
	// with host networking or raw sockets need privileged.
	PodSecurity string `yaml:"podSecurity,omitempty" json:"podSecurity,omitempty"`
	// ReleaseName is the Helm release name used when rendering; it appears in
	// object names, so changing it renames every object.
	ReleaseName string `yaml:"releaseName" json:"releaseName"`
	// Chart is where the upstream chart comes from, pinned by digest.
	Chart Chart `yaml:"chart" json:"chart"`
	// Values is the values file (relative to the add-on directory) merged
	// over the chart's own defaults.
	Values string `yaml:"values" json:"values"`
	// SiteChart optionally names a local chart directory (relative to the
	// add-on directory) rendered with site parameters only, for objects the
	// upstream chart does not create (MetalLB's address pools).
	SiteChart string `yaml:"siteChart,omitempty" json:"siteChart,omitempty"`
	// Images are every container image the rendered manifests may reference,
	// pinned by digest. Rendering injects them into the chart values, so the
	// manifests reference exactly these digests.
	Images []Image `yaml:"images" json:"images"`
	// Parameters are the per-site values the add-on takes from a site entry.
	Parameters []Parameter `yaml:"parameters,omitempty" json:"parameters,omitempty"`
	// Pins records how the digests above were produced.
	Pins Pins `yaml:"pins" json:"pins"`

	// Dir is the add-on directory the definition was loaded from.
	Dir string `yaml:"-" json:"-"`
	// File is the path of the addon.yaml, for error messages.
	File string `yaml:"-" json:"-"`
}

// Chart names the upstream Helm chart, or a chart kept in the repository.
type Chart struct {
	// Local is a chart directory relative to the add-on directory, for a
	// chart written by this project: it is read from the repository, so it
	// has no repository or digest (the bake records the digest of its
	// files). Its Chart.yaml must carry Name and Version.
	Local string `yaml:"local,omitempty" json:"local,omitempty"`
	// Repository is either an HTTP(S) Helm repository URL
	// (https://helm.cilium.io, serving index.yaml) or an OCI registry
	// location without the chart name (oci://ghcr.io/prometheus-community/charts).
	Repository string `yaml:"repository" json:"repository"`
	// Name of the chart in the repository.
	Name string `yaml:"name" json:"name"`
	// Version is the chart's semantic version.
	Version string `yaml:"version" json:"version"`
	// Digest is "sha256:<hex>" of the chart archive (.tgz) bytes: the same
	// value an HTTP repository's index.yaml lists and the digest of an OCI
	// chart's content layer.
	Digest string `yaml:"digest" json:"digest"`
}

// Image is one pinned container image.
type Image struct {
	// Name is a short label for the image within the add-on (agent, operator).
	Name string `yaml:"name" json:"name"`
	// Ref is the upstream reference with a tag, without digest
	// (quay.io/cilium/cilium:v1.18.0).
	Ref string `yaml:"ref" json:"ref"`
	// Digest is "sha256:<hex>" of the image manifest (linux/amd64) the
	// cache holds and the manifests reference.
	Digest string `yaml:"digest" json:"digest"`
	// Values is the dotted key in the chart values that receives this image
	// (image, operator.image, server.sidecarContainers.thanos-sidecar.image).
	Values string `yaml:"values" json:"values"`
	// Format is how the image is written at Values: "map" (repository, tag,
	// digest keys; default) or "string" (one "repo:tag@digest" string).
	Format string `yaml:"format,omitempty" json:"format,omitempty"`
	// Build names the project build producing the image at bake time (one
	// of Builds); its Digest stays empty in addon.yaml and is filled in by
	// the bake from the reproducible build (see SourceBuilt).
	Build string `yaml:"build,omitempty" json:"build,omitempty"`
}

// Parameter maps one field of a site entry into chart values.
type Parameter struct {
	// Site is the site-entry field: one of SiteFields (name, region,
	// metallb.addressPools, otel.endpoint, thanos.objstoreSecret).
	Site string `yaml:"site" json:"site"`
	// Chart receives the value: "upstream" (default) or "site" (SiteChart).
	Chart string `yaml:"chart,omitempty" json:"chart,omitempty"`
	// Values is the dotted key (list elements as key[0]) set to the value.
	Values string `yaml:"values" json:"values"`
	// Description says what the parameter changes.
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
}

// Pins says where the digests were computed.
type Pins struct {
	// Source is "upstream" (real registries) or "standin" (the project's
	// stand-in mirror; see extensions/README.md).
	Source string `yaml:"source" json:"source"`
	// Note is free text: the command that produced the pins.
	Note string `yaml:"note,omitempty" json:"note,omitempty"`
}

// Repository kinds.
const (
	RepoOCI  = "oci"
	RepoHTTP = "http"
	// RepoLocal is a chart kept in the add-on directory (Chart.Local).
	RepoLocal = "local"
)

// RepoKind returns RepoOCI or RepoHTTP for the chart repository.
func (c Chart) RepoKind() string {
	if c.Local != "" {
		return RepoLocal
	}

	if strings.HasPrefix(c.Repository, "oci://") {
		return RepoOCI
	}

	return RepoHTTP
}

// ImageRef returns the full pinned reference "repo:tag@sha256:...".
func (i Image) ImageRef() string {
	return i.Ref + "@" + i.Digest
}

var (
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	// DNS-1123 label, as Kubernetes requires for namespaces.
	labelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// FieldError names the file and field a validation failure is about.
type FieldError struct {
	File  string
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}

	return fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg)
}

// Validate checks every field; the errors name the file and the field.
func (a *Addon) Validate() error {
	return a.validate(true)
}

// validate with requirePins false accepts empty digests: bump fills them.
func (a *Addon) validate(requirePins bool) error {
	var errs []error

	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{File: a.File, Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	if !labelRE.MatchString(a.Name) {
		bad("name", "%q must be a DNS label (lowercase letters, digits, '-')", a.Name)
	} else if a.Dir != "" && filepath.Base(a.Dir) != a.Name {
		bad("name", "%q must equal the directory name %q", a.Name, filepath.Base(a.Dir))
	}

	if !labelRE.MatchString(a.Namespace) {
		bad("namespace", "%q must be a DNS label", a.Namespace)
	}

	switch a.PodSecurity {
	case "", "privileged", "baseline", "restricted":
	default:
		bad("podSecurity", "%q: allowed values are privileged, baseline, restricted", a.PodSecurity)
	}

	if !labelRE.MatchString(a.ReleaseName) {
		bad("releaseName", "%q must be a DNS label", a.ReleaseName)
	}

	a.validateChart(bad, requirePins)

	if a.Values == "" {
		bad("values", "required: a values file relative to the add-on directory")
	} else if filepath.IsAbs(a.Values) || strings.HasPrefix(filepath.Clean(a.Values), "..") {
		bad("values", "%q must be relative and inside the add-on directory", a.Values)
	}

	if a.SiteChart != "" && (filepath.IsAbs(a.SiteChart) || strings.HasPrefix(filepath.Clean(a.SiteChart), "..")) {
		bad("siteChart", "%q must be relative and inside the add-on directory", a.SiteChart)
	}

	if len(a.Images) == 0 {
		bad("images", "at least one image is required")
	}

	seen := map[string]bool{}

	for i, img := range a.Images {
		f := fmt.Sprintf("images[%d]", i)
		if img.Name == "" {
			bad(f+".name", "required")
		} else if seen[img.Name] {
			bad(f+".name", "%q is listed twice", img.Name)
		}

		seen[img.Name] = true

		if err := checkTagRef(img.Ref); err != nil {
			bad(f+".ref", "%v", err)
		}

		switch {
		case img.Build != "":
			if !slices.Contains(Builds, img.Build) {
				bad(f+".build", "%q: allowed values are %s", img.Build, strings.Join(Builds, ", "))
			}

			if img.Digest != "" {
				bad(f+".digest", "must be empty for a built image: the bake computes it from the build (pins.source: built)")
			}

			if a.Pins.Source != SourceBuilt {
				bad(f+".build", "needs pins.source: %s (the digest comes from the build, not from a registry)", SourceBuilt)
			}
		case a.Pins.Source == SourceBuilt:
			bad(f+".build", "required with pins.source: %s: every image of a built add-on is built by this project (allowed values: %s)", SourceBuilt, strings.Join(Builds, ", "))
		case (requirePins || img.Digest != "") && !digestRE.MatchString(img.Digest):
			bad(f+".digest", "%q must be sha256:<64 hex digits> (run `imagectl addons bump`)", img.Digest)
		}

		if img.Values == "" {
			bad(f+".values", "required: the chart values key receiving the image")
		}

		switch img.Format {
		case "", FormatMap, FormatString:
		default:
			bad(f+".format", "%q: allowed values are %q and %q", img.Format, FormatMap, FormatString)
		}
	}

	for i, p := range a.Parameters {
		f := fmt.Sprintf("parameters[%d]", i)
		if !slices.Contains(SiteFields, p.Site) {
			bad(f+".site", "%q: allowed values are %s", p.Site, strings.Join(SiteFields, ", "))
		}

		switch p.Chart {
		case "", "upstream":
		case "site":
			if a.SiteChart == "" {
				bad(f+".chart", `"site" needs siteChart to be set`)
			}
		default:
			bad(f+".chart", "%q: allowed values are upstream and site", p.Chart)
		}

		if p.Values == "" {
			bad(f+".values", "required: the chart values key receiving the site value")
		}
	}

	switch a.Pins.Source {
	case SourceUpstream, SourceStandin:
	case SourceBuilt:
		if a.Chart.Local == "" {
			bad("chart.local", "required with pins.source: %s: a built add-on's chart is kept in the repository", SourceBuilt)
		}
	default:
		bad("pins.source", "%q: allowed values are %q, %q and %q", a.Pins.Source, SourceUpstream, SourceStandin, SourceBuilt)
	}

	return errors.Join(errs...)
}

func (a *Addon) validateChart(bad func(field, format string, args ...any), requirePins bool) {
	c := a.Chart

	if c.Local != "" {
		a.validateLocalChart(bad)

		return
	}

	u, err := url.Parse(c.Repository)

	switch {
	case c.Repository == "":
		bad("chart.repository", "required: an https:// Helm repository or an oci:// registry location")
	case err != nil:
		bad("chart.repository", "%q: %v", c.Repository, err)
	case u.Scheme != "oci" && u.Scheme != "https" && u.Scheme != "http":
		bad("chart.repository", "%q: scheme must be oci, https or http", c.Repository)
	case u.Host == "":
		bad("chart.repository", "%q: missing host", c.Repository)
	}

	if !labelRE.MatchString(c.Name) {
		bad("chart.name", "%q must be a chart name (lowercase letters, digits, '-')", c.Name)
	}

	if err := checkSemver(c.Version); err != nil {
		bad("chart.version", "%q: %v", c.Version, err)
	}

	if (requirePins || c.Digest != "") && !digestRE.MatchString(c.Digest) {
		bad("chart.digest", "%q must be sha256:<64 hex digits> (run `imagectl addons bump`)", c.Digest)
	}
}

// validateLocalChart checks a chart kept in the add-on directory: it is
// read from there, so a repository or digest would be a second, unused
// source of truth; its Chart.yaml must match name and version.
func (a *Addon) validateLocalChart(bad func(field, format string, args ...any)) {
	c := a.Chart

	if c.Repository != "" {
		bad("chart.repository", "must be empty with chart.local (%q): a local chart is read from the add-on directory", c.Local)
	}

	if c.Digest != "" {
		bad("chart.digest", "must be empty with chart.local (%q): the bake records the digest of the chart's files", c.Local)
	}

	if !labelRE.MatchString(c.Name) {
		bad("chart.name", "%q must be a chart name (lowercase letters, digits, '-')", c.Name)
	}

	if err := checkSemver(c.Version); err != nil {
		bad("chart.version", "%q: %v", c.Version, err)
	}

	if filepath.IsAbs(c.Local) || strings.HasPrefix(filepath.Clean(c.Local), "..") {
		bad("chart.local", "%q must be relative and inside the add-on directory", c.Local)

		return
	}

	if a.Dir == "" {
		return
	}

	meta, err := chartutil.LoadChartfile(filepath.Join(a.Dir, c.Local, chartutil.ChartfileName))
	if err != nil {
		bad("chart.local", "%q: not a chart directory (reading %s: %v)", c.Local, chartutil.ChartfileName, err)

		return
	}

	if meta.Name != c.Name {
		bad("chart.name", "%q differs from the name %q in %s", c.Name, meta.Name, filepath.Join(c.Local, chartutil.ChartfileName))
	}

	if strings.TrimPrefix(c.Version, "v") != meta.Version {
		bad("chart.version", "%q differs from the version %q in %s", c.Version, meta.Version, filepath.Join(c.Local, chartutil.ChartfileName))
	}
}

func checkTagRef(ref string) error {
	if strings.Contains(ref, "@") {
		return fmt.Errorf("%q must carry a tag and no digest (the digest goes in the digest field)", ref)
	}

	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("%q: %w", ref, err)
	}

	if !strings.HasSuffix(ref, ":"+t.TagStr()) {
		return fmt.Errorf("%q must name an explicit tag", ref)
	}

	if !strings.Contains(strings.SplitN(ref, "/", 2)[0], ".") {
		return fmt.Errorf("%q must name its registry explicitly (docker.io/..., quay.io/...)", ref)
	}

	return nil
}

var semverRE = regexp.MustCompile(`^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

func checkSemver(v string) error {
	if !semverRE.MatchString(v) {
		return errors.New("must be a semantic version (1.2.3)")
	}

	return nil
}

// Load reads and validates one add-on directory.
func Load(dir string) (*Addon, error) {
	return load(dir, true)
}

func load(dir string, requirePins bool) (*Addon, error) {
	file := filepath.Join(dir, SpecFile)

	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading add-on: %w", err)
	}

	a := &Addon{}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	if err := dec.Decode(a); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}

	a.Dir = dir
	a.File = file

	if err := a.validate(requirePins); err != nil {
		return nil, err
	}

	return a, nil
}

// DefaultAddons are the add-ons Bake bakes when none are named, in install
// order (the CNI first: nothing else schedules before the network is up).
// The site cache comes last: it serves node pulls, which the others do not
// need (their images are in the IMAGECACHE partition, as is its own).
var DefaultAddons = []string{"cilium", "metallb", "otel-collector", "thanos", "site-cache"}

// LoadAll loads the named add-ons from root (DefaultAddons when names is
// empty), in the order given.
func LoadAll(root string, names []string) ([]*Addon, error) {
	if len(names) == 0 {
		names = DefaultAddons
	}

	var (
		out  []*Addon
		errs []error
	)

	seen := map[string]bool{}

	for _, n := range names {
		if seen[n] {
			errs = append(errs, fmt.Errorf("add-on %q listed twice", n))

			continue
		}

		seen[n] = true

		if !labelRE.MatchString(n) {
			errs = append(errs, fmt.Errorf("add-on %q: not a valid add-on name", n))

			continue
		}

		a, err := Load(filepath.Join(root, n))
		if err != nil {
			errs = append(errs, err)

			continue
		}

		out = append(out, a)
	}

	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	return out, nil
}

// LoadValues reads the add-on's values file.
func (a *Addon) LoadValues() (map[string]any, error) {
	file := filepath.Join(a.Dir, a.Values)

	v, err := chartutil.ReadValuesFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: values: %w", a.File, err)
	}

	return v.AsMap(), nil
}
