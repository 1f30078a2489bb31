package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"gopkg.in/yaml.v3"
)

// Mirror is where images of one registry are pulled from instead: Talos's
// RegistryMirrorConfig document (v1.14) or machine.registries.mirrors
// (v1alpha1). A site cache or the hub's host serves them to nodes that may
// reach nothing else.
type Mirror struct {
	// Endpoints are tried in order; an http:// endpoint is plain HTTP, as
	// in Talos.
	Endpoints []*url.URL
	// SkipFallback: never pull from the registry itself.
	SkipFallback bool
}

// Mirrors reads the registry mirrors of a machine configuration, keyed by
// registry host ("*" for every registry). Endpoints are checked before use:
// http or https, a host, no credentials, no path (Talos's overridePath is
// not supported by labos and is refused, naming the document).
func Mirrors(data []byte) (map[string]Mirror, error) {
	type endpoint struct {
		URL          string `yaml:"url"`
		OverridePath *bool  `yaml:"overridePath"`
	}

	type doc struct {
		Version      string     `yaml:"version"`
		Kind         string     `yaml:"kind"`
		Name         string     `yaml:"name"`
		Endpoints    []endpoint `yaml:"endpoints"`
		SkipFallback bool       `yaml:"skipFallback"`
		Machine      struct {
			Registries struct {
				Mirrors map[string]struct {
					Endpoints    []string `yaml:"endpoints"`
					SkipFallback bool     `yaml:"skipFallback"`
				} `yaml:"mirrors"`
			} `yaml:"registries"`
		} `yaml:"machine"`
	}

	out := map[string]Mirror{}

	add := func(where, host string, urls []string, skip bool) error {
		if host == "" {
			return fmt.Errorf("%s: name: empty (a registry host such as ghcr.io, or *)", where)
		}

		if _, dup := out[host]; dup {
			return fmt.Errorf("%s: registry %s has two mirror configurations", where, host)
		}

		if len(urls) == 0 {
			return fmt.Errorf("%s (%s): endpoints: empty", where, host)
		}

		m := Mirror{SkipFallback: skip}

		for i, raw := range urls {
			u, err := checkEndpoint(raw)
			if err != nil {
				return fmt.Errorf("%s (%s): endpoints[%d]: %w", where, host, i, err)
			}

			m.Endpoints = append(m.Endpoints, u)
		}

		out[host] = m

		return nil
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))

	for i := 1; ; i++ {
		var d doc

		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return out, nil
		}

		if err != nil {
			return nil, fmt.Errorf("machine config document %d: %w", i, err)
		}

		switch {
		case d.Kind == "RegistryMirrorConfig":
			where := fmt.Sprintf("machine config document %d (RegistryMirrorConfig)", i)

			var urls []string

			for j, e := range d.Endpoints {
				if e.OverridePath != nil && *e.OverridePath {
					return nil, fmt.Errorf("%s (%s): endpoints[%d]: overridePath is not supported by labos (serve the registry's /v2/ at the endpoint's root)", where, d.Name, j)
				}

				urls = append(urls, e.URL)
			}

			if err := add(where, d.Name, urls, d.SkipFallback); err != nil {
				return nil, err
			}
		case d.Version == "v1alpha1":
			for host, m := range d.Machine.Registries.Mirrors {
				if err := add(fmt.Sprintf("machine config document %d (v1alpha1) machine.registries.mirrors", i), host, m.Endpoints, m.SkipFallback); err != nil {
					return nil, err
				}
			}
		}
	}
}

func checkEndpoint(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL: %w", raw, err)
	}

	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: want an http:// or https:// URL", raw)
	case u.Host == "":
		return nil, fmt.Errorf("%q has no host", raw)
	case u.User != nil:
		return nil, fmt.Errorf("%q carries credentials in the URL (use RegistryAuthConfig)", raw)
	case strings.Trim(u.Path, "/") != "" && strings.Trim(u.Path, "/") != "v2", u.RawQuery != "", u.Fragment != "":
		return nil, fmt.Errorf("%q has a path or query (a mirror serves the registry API at its root)", raw)
	}

	return u, nil
}

// For returns the mirror for a registry host: its own, else the "*" one.
func For(mirrors map[string]Mirror, host string) (Mirror, bool) {
	if m, ok := mirrors[host]; ok {
		return m, true
	}

	m, ok := mirrors["*"]

	return m, ok
}
