// Package addons reports the platform add-ons baked into the image: the
// machine config's inline manifests (what Talos applies at bootstrap) and,
// from the IMAGECACHE partition in Talos's image cache format, the cached
// images by digest.
package addons

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

type object struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
}

// FromManifests describes each inline manifest as an add-on: the objects it
// holds, the version label its objects carry and the images they run.
func FromManifests(ms []config.InlineManifest) ([]nodeapi.Addon, error) {
	out := make([]nodeapi.Addon, 0, len(ms))

	for _, m := range ms {
		a := nodeapi.Addon{Name: m.Name}
		images := map[string]bool{}

		dec := yaml.NewDecoder(strings.NewReader(m.Contents))

		for {
			var o object

			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}

			if err != nil {
				return nil, fmt.Errorf("add-on %s: %w", m.Name, err)
			}

			if o.Kind == "" {
				continue
			}

			a.Manifests = append(a.Manifests, o.Kind+"/"+o.Metadata.Name)

			if v := o.Metadata.Labels["app.kubernetes.io/version"]; v != "" && a.Version == "" {
				a.Version = v
			}

			collectImages(&o.Spec, images)
		}

		for img := range images {
			a.Images = append(a.Images, img)
		}

		sort.Strings(a.Images)
		out = append(out, a)
	}

	return out, nil
}

// collectImages walks a spec for "image:" scalars (containers,
// initContainers, at any depth: Deployments, DaemonSets, Jobs...).
func collectImages(n *yaml.Node, into map[string]bool) {
	if n == nil {
		return
	}

	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "image" && v.Kind == yaml.ScalarNode && v.Value != "" {
				into[v.Value] = true

				continue
			}

			collectImages(v, into)
		}

		return
	}

	for _, c := range n.Content {
		collectImages(c, into)
	}
}

// PinImages rewrites add-on image references to name@digest where the
// cache holds them (references already by digest are kept).
func PinImages(as []nodeapi.Addon, cached map[string]string) {
	for i := range as {
		for j, img := range as[i].Images {
			if strings.Contains(img, "@sha256:") {
				continue
			}

			if d, ok := cached[img]; ok {
				name := img
				if k := strings.LastIndexByte(img, ':'); k > strings.LastIndexByte(img, '/') {
					name = img[:k]
				}

				as[i].Images[j] = name + "@" + d
			}
		}
	}
}
