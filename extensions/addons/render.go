package addons

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
)

// DefaultKubeVersion is the Kubernetes version charts are rendered for
// (.Capabilities.KubeVersion): the default of the Talos release labfleet
// builds on (machinery v1.14.1).
const DefaultKubeVersion = "1.37.0"

// RenderOptions tune rendering.
type RenderOptions struct {
	// Site, when set, fills the add-on's site parameters and renders its
	// site chart; nil renders the values file's defaults and no site chart.
	Site *SiteValues
	// KubeVersion overrides DefaultKubeVersion.
	KubeVersion string
}

// Rendered is one add-on rendered into Kubernetes objects.
type Rendered struct {
	// Addon is the definition that was rendered.
	Addon *Addon
	// Manifest is the multi-document YAML that becomes the add-on's inline
	// manifest in the machine configuration.
	Manifest string
	// Objects are the decoded documents, in manifest order.
	Objects []Object
	// Images are every container image reference in the objects.
	Images []ImageUse
	// ChartDigest is the digest of the chart rendered: the verified pin of
	// an upstream chart, LocalChartDigest of a local one.
	ChartDigest string
}

// ImageUse is one container image reference found in a rendered manifest.
type ImageUse struct {
	// Addon is the add-on whose manifest references the image.
	Addon string `json:"addon"`
	// Manifest names the document: template path and object.
	Manifest string `json:"manifest"`
	// Container is the container name within the pod template.
	Container string `json:"container"`
	// Ref is the image reference as rendered.
	Ref string `json:"ref"`
}

// Render renders the add-on's chart (and site chart) with its values, the
// pinned images and the site parameters, then decodes every document into
// Kubernetes API types. The same inputs give the same bytes.
func Render(_ context.Context, a *Addon, fc *FetchedChart, opts RenderOptions) (*Rendered, error) {
	ch := fc.Loaded
	if ch == nil {
		var err error
		if ch, err = loader.LoadArchive(bytes.NewReader(fc.Archive)); err != nil {
			return nil, fmt.Errorf("%s: loading chart %s: %w", a.Name, a.Chart.Name, err)
		}
	}

	if ch.Metadata.Name != a.Chart.Name || ch.Metadata.Version != strings.TrimPrefix(a.Chart.Version, "v") {
		return nil, fmt.Errorf("%s: chart archive is %s %s, want %s %s", a.Name, ch.Metadata.Name, ch.Metadata.Version, a.Chart.Name, a.Chart.Version)
	}

	vals, err := a.LoadValues()
	if err != nil {
		return nil, err
	}

	for i, img := range a.Images {
		if img.Digest == "" {
			return nil, fmt.Errorf("%s: images[%d] (%s): no digest: a built image is pinned by the bake (extensions.Bake) before rendering", a.File, i, img.Name)
		}

		if err := setPath(vals, img.Values, imageValue(img)); err != nil {
			return nil, fmt.Errorf("%s: images[%d].values %q: %w", a.File, i, img.Values, err)
		}
	}

	siteVals := map[string]any{}

	if opts.Site != nil {
		for i, p := range a.Parameters {
			v, err := opts.Site.Field(p.Site)
			if err != nil {
				return nil, fmt.Errorf("%s: parameters[%d]: %w", a.File, i, err)
			}

			target := vals
			if p.Chart == "site" {
				target = siteVals
			}

			if err := setPath(target, p.Values, v); err != nil {
				return nil, fmt.Errorf("%s: parameters[%d].values %q: %w", a.File, i, p.Values, err)
			}
		}
	}

	kv := opts.KubeVersion
	if kv == "" {
		kv = DefaultKubeVersion
	}

	var out strings.Builder

	if a.Namespace != "kube-system" {
		out.WriteString(namespaceManifest(a))
	}

	main, err := helmTemplate(ch, a, vals, kv)
	if err != nil {
		return nil, fmt.Errorf("%s: rendering chart %s %s: %w", a.Name, a.Chart.Name, a.Chart.Version, err)
	}

	out.WriteString(main)

	if a.SiteChart != "" && opts.Site != nil {
		sc, err := loader.Load(filepath.Join(a.Dir, a.SiteChart))
		if err != nil {
			return nil, fmt.Errorf("%s: siteChart: loading %s: %w", a.File, a.SiteChart, err)
		}

		site, err := helmTemplate(sc, a, siteVals, kv)
		if err != nil {
			return nil, fmt.Errorf("%s: rendering site chart: %w", a.Name, err)
		}

		out.WriteString(site)
	}

	r := &Rendered{Addon: a, Manifest: out.String(), ChartDigest: fc.Digest}

	if err := r.decode(); err != nil {
		return nil, err
	}

	return r, nil
}

func imageValue(img Image) any {
	if img.Format == FormatString {
		return img.ImageRef()
	}

	repo, tag, _ := splitTag(img.Ref)

	return map[string]any{"repository": repo, "tag": tag, "digest": img.Digest}
}

// splitTag splits "host/repo:tag" at the tag's colon (not a port's).
func splitTag(ref string) (repo, tag string, err error) {
	t, err := name.NewTag(ref)
	if err != nil {
		return "", "", err
	}

	return strings.TrimSuffix(ref, ":"+t.TagStr()), t.TagStr(), nil
}

func namespaceManifest(a *Addon) string {
	ps := a.PodSecurity
	if ps == "" {
		ps = "baseline"
	}

	return fmt.Sprintf(`---
# Source: labfleet/namespace.yaml
apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels:
    pod-security.kubernetes.io/enforce: %s
`, a.Namespace, ps)
}

func helmTemplate(ch *chart.Chart, a *Addon, vals map[string]any, kubeVersion string) (string, error) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return "", fmt.Errorf("kube version %q: %w", kubeVersion, err)
	}

	cfg := &action.Configuration{Log: func(string, ...any) {}}

	inst := action.NewInstall(cfg)
	inst.ClientOnly = true
	inst.DryRun = true
	inst.Replace = true
	inst.IncludeCRDs = true
	inst.DisableHooks = true
	inst.ReleaseName = a.ReleaseName
	inst.Namespace = a.Namespace
	inst.KubeVersion = kv

	rel, err := inst.Run(ch, vals)
	if err != nil {
		return "", err
	}

	m := rel.Manifest
	if m != "" && !strings.HasSuffix(m, "\n") {
		m += "\n"
	}

	return m, nil
}

var indexRE = regexp.MustCompile(`^(.*)\[(\d+)\]$`)

// setPath sets v at a dotted key, creating maps on the way; "key[N]"
// addresses element N of an existing list.
func setPath(m map[string]any, path string, v any) error {
	parts := strings.Split(path, ".")
	cur := m

	for i, p := range parts {
		last := i == len(parts)-1

		if sm := indexRE.FindStringSubmatch(p); sm != nil {
			n, _ := strconv.Atoi(sm[2])

			list, ok := cur[sm[1]].([]any)
			if !ok || n >= len(list) {
				return fmt.Errorf("%q: no list element %d in the values", strings.Join(parts[:i+1], "."), n)
			}

			if last {
				list[n] = v

				return nil
			}

			next, ok := list[n].(map[string]any)
			if !ok {
				return fmt.Errorf("%q: list element is not a map", strings.Join(parts[:i+1], "."))
			}

			cur = next

			continue
		}

		if last {
			// A map merges into an existing map, so keys the values file
			// sets beside the injected ones (useDigest, pullPolicy) survive.
			if vm, ok := v.(map[string]any); ok {
				if existing, ok := cur[p].(map[string]any); ok {
					for k, x := range vm {
						existing[k] = x
					}

					return nil
				}
			}

			cur[p] = v

			return nil
		}

		next, ok := cur[p].(map[string]any)
		if !ok {
			if _, exists := cur[p]; exists && cur[p] != nil {
				return fmt.Errorf("%q: not a map in the values", strings.Join(parts[:i+1], "."))
			}

			next = map[string]any{}
			cur[p] = next
		}

		cur = next
	}

	return nil
}

// getPath reads a dotted key; ok is false when absent.
func getPath(m map[string]any, path string) (any, bool) {
	var cur any = m

	for _, p := range strings.Split(path, ".") {
		if sm := indexRE.FindStringSubmatch(p); sm != nil {
			n, _ := strconv.Atoi(sm[2])

			mm, ok := cur.(map[string]any)
			if !ok {
				return nil, false
			}

			list, ok := mm[sm[1]].([]any)
			if !ok || n >= len(list) {
				return nil, false
			}

			cur = list[n]

			continue
		}

		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}

		cur, ok = mm[p]
		if !ok {
			return nil, false
		}
	}

	return cur, true
}

// ChartDefaultImage returns the repository and tag a chart's own default
// values give at key (a map with repository and tag, or a "repo:tag"
// string), so bump can follow an upstream chart's image tags.
func ChartDefaultImage(archive []byte, key string) (repo, tag string, ok bool) {
	ch, err := loader.LoadArchive(bytes.NewReader(archive))
	if err != nil {
		return "", "", false
	}

	v, found := getPath(ch.Values, key)
	if !found {
		return "", "", false
	}

	switch t := v.(type) {
	case map[string]any:
		r, _ := t["repository"].(string)
		g, _ := t["tag"].(string)

		return r, g, r != "" && g != ""
	case string:
		r, g, err := splitTag(strings.SplitN(t, "@", 2)[0])

		return r, g, err == nil
	}

	return "", "", false
}
