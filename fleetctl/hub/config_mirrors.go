package hub

import (
	"bytes"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	coreconfig "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/container"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/types/cri"
	"github.com/siderolabs/talos/pkg/machinery/config/types/meta"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

// SiteSettings is what the hub adds to the configuration of a site's
// machines. The hub is where a site meets its machines (a join token names
// the site; the hub hands out the configuration), so a site's cache is
// described here, once, not copied into every cluster's configuration.
type SiteSettings struct {
	// RegistryMirrors name, per upstream registry, the site cache(s) the
	// site's nodes pull through (fleetctl site-cache serve). The hub adds a
	// Talos RegistryMirrorConfig document for each to the configuration
	// it hands to the site's machines.
	RegistryMirrors []RegistryMirror `yaml:"registryMirrors,omitempty"`
}

// RegistryMirror is one upstream registry and the site cache endpoints
// that stand in for it.
type RegistryMirror struct {
	// Registry is the registry name as images name it (host[:port], e.g.
	// registry.region.example:5000; "*" for every registry).
	Registry string `yaml:"registry"`
	// Endpoints are the site cache's URLs (http:// or https://, host and
	// optional port; no credentials, path, query or fragment), tried in order.
	Endpoints []string `yaml:"endpoints"`
	// SkipFallback keeps nodes from falling back to the registry itself
	// over the WAN when no endpoint answers (default true: the cache
	// exists so each image crosses the site's link once, and a node
	// pulling on its own would undo that; staging retries instead).
	SkipFallback *bool `yaml:"skipFallback,omitempty"`
}

// validateSites checks the site settings; add reports a bad field.
func (c Config) validateSites(add func(field, format string, args ...any)) {
	names := make([]string, 0, len(c.Sites))
	for name := range c.Sites {
		names = append(names, name)
	}

	slices.Sort(names)

	for _, name := range names {
		field := "sites." + name
		if name == "" || strings.ContainsAny(name, "/\\ \t") {
			add(fmt.Sprintf("sites[%q]", name), "not a site name (the name join tokens are created for: fleetctl hub token create SITE)")

			continue
		}

		seen := map[string]int{}

		for i, m := range c.Sites[name].RegistryMirrors {
			mf := fmt.Sprintf("%s.registryMirrors[%d]", field, i)

			if err := checkRegistryName(m.Registry); err != nil {
				add(mf+".registry", "%v", err)
			} else if j, dup := seen[m.Registry]; dup {
				add(mf+".registry", "%q is also registryMirrors[%d] (list each registry once, with all its endpoints)", m.Registry, j)
			} else {
				seen[m.Registry] = i
			}

			if len(m.Endpoints) == 0 {
				add(mf+".endpoints", "empty (give the site cache's URL, e.g. http://10.40.7.2:5000)")
			}

			for k, ep := range m.Endpoints {
				if err := checkMirrorEndpoint(ep); err != nil {
					add(fmt.Sprintf("%s.endpoints[%d]", mf, k), "%v", err)
				}
			}
		}
	}
}

// checkRegistryName accepts what Talos matches a mirror against: the
// first segment of an image reference (host[:port]) or "*".
func checkRegistryName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty (name the registry as images name it, e.g. registry.region.example:5000)")
	case s == "*":
		return nil
	case strings.Contains(s, "://"):
		return fmt.Errorf("%q has a scheme: give host[:port] only, as in an image reference", s)
	case strings.ContainsAny(s, "/@ \t?#"):
		return fmt.Errorf("%q is not host[:port] (no path, credentials or spaces)", s)
	}

	if i := strings.LastIndex(s, ":"); i >= 0 && !strings.HasSuffix(s, "]") {
		if n, err := strconv.Atoi(s[i+1:]); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: port %q is not 1-65535", s, s[i+1:])
		}
	}

	return nil
}

// checkMirrorEndpoint accepts a site cache URL: http or https, a host, an
// optional port, nothing else. Credentials in a URL would be handed to
// every machine in clear; a path would be appended to by containerd
// (/v2/...) and point nowhere.
func checkMirrorEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", s, err)
	}

	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: scheme must be http or https (e.g. http://10.40.7.2:5000)", s)
	case u.User != nil:
		return fmt.Errorf("%q has credentials: a site cache needs none, and the URL would reach every machine in clear (remove user:password@)", redact(u))
	case u.Hostname() == "":
		return fmt.Errorf("%q has no host", s)
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "", u.Opaque != "":
		return fmt.Errorf("%q has a path, query or fragment: give scheme://host[:port] only (containerd adds /v2/)", s)
	}

	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: port %q is not 1-65535", s, p)
		}
	}

	return nil
}

func redact(u *url.URL) string {
	c := *u
	c.User = url.User("xxxxx")

	return c.String()
}

// MachineConfig is the configuration the hub hands to machine m admitted
// as adm: CONFIGDIR/CLUSTER/ROLE.yaml as the operator wrote it, followed by
// a RegistryMirrorConfig document per registry mirror of m's site (encoded
// with Talos's machinery). A site without settings gets the file as it
// is, unparsed. A file that already configures a mirror for one of those
// registries (machine.registries.mirrors or a RegistryMirrorConfig
// document) is refused, naming both places: the hub does not pick one of
// two different answers for the operator.
func (c Config) MachineConfig(m registry.Machine, adm Admission) ([]byte, error) {
	data, err := ConfigFor(c.ConfigDir, adm)
	if err != nil {
		return nil, err
	}

	mirrors := c.Sites[m.Site].RegistryMirrors
	if len(mirrors) == 0 {
		return data, nil
	}

	src := c.Source
	if src == "" {
		src = "hub config"
	}

	file := filepath.Join(c.ConfigDir, adm.Cluster, adm.Role+".yaml")

	prov, err := configloader.NewFromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("%s: not a Talos machine configuration the hub can add site %s's registry mirrors to: %w", file, m.Site, err)
	}

	existing := prov.RegistryMirrorConfigs()

	docs := make([]coreconfig.Document, 0, len(mirrors))

	for i, rm := range mirrors {
		if _, ok := existing[rm.Registry]; ok {
			return nil, fmt.Errorf("%s already configures a registry mirror for %s, and %s: sites.%s.registryMirrors[%d] names the site cache for it too: remove one of them (the hub does not choose between two answers)",
				file, rm.Registry, src, m.Site, i)
		}

		doc := cri.NewRegistryMirrorConfigV1Alpha1(rm.Registry)

		for _, ep := range rm.Endpoints {
			u, err := url.Parse(ep)
			if err != nil {
				return nil, fmt.Errorf("%s: sites.%s.registryMirrors[%d]: %w", src, m.Site, i, err)
			}

			doc.RegistryEndpoints = append(doc.RegistryEndpoints, cri.RegistryEndpoint{EndpointURL: meta.URL{URL: u}})
		}

		skip := rm.SkipFallback == nil || *rm.SkipFallback
		doc.RegistrySkipFallback = &skip

		docs = append(docs, doc)
	}

	added, err := container.New(docs...)
	if err != nil {
		return nil, fmt.Errorf("site %s registry mirrors: %w", m.Site, err)
	}

	enc, err := added.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		return nil, fmt.Errorf("encoding site %s registry mirrors: %w", m.Site, err)
	}

	// The operator's bytes stay as written; the documents follow.
	out := bytes.TrimRight(data, "\n")
	out = append(append(out, "\n---\n"...), enc...)

	if _, err := configloader.NewFromBytes(out); err != nil {
		return nil, fmt.Errorf("%s with site %s's registry mirrors added: %w", file, m.Site, err)
	}

	return out, nil
}
