package addons

import (
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Mirror maps an upstream host (quay.io, helm.cilium.io) to the location
// that serves its content instead: "host[:port][/path-prefix]". With an empty
// Mirror everything is fetched from upstream. The lab maps every upstream
// host into the stand-in registry (quay.io -> 127.0.0.1:PORT/quay.io); an
// air-gapped site maps them to its own registry mirror.
type Mirror map[string]string

// ParseMirror parses "upstream=target" pairs (the --mirror flag).
func ParseMirror(pairs []string) (Mirror, error) {
	m := Mirror{}

	for _, p := range pairs {
		from, to, ok := strings.Cut(p, "=")
		if !ok || from == "" || to == "" || strings.Contains(from, "/") {
			return nil, fmt.Errorf("mirror %q: want upstream-host=target (quay.io=127.0.0.1:5000/quay.io)", p)
		}

		m[from] = strings.TrimSuffix(to, "/")
	}

	return m, nil
}

// Pairs returns the mapping as sorted "upstream=target" strings.
func (m Mirror) Pairs() []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}

	sort.Strings(out)

	return out
}

func (m Mirror) lookup(host string) (string, bool) {
	if t, ok := m[host]; ok {
		return t, true
	}

	// ggcr spells Docker Hub index.docker.io; people write docker.io.
	if host == name.DefaultRegistry {
		t, ok := m["docker.io"]

		return t, ok
	}

	return "", false
}

// isLoopback reports whether a host[:port] names this machine, where plain
// HTTP is acceptable (the stand-in mirror).
func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}

	if host == "localhost" {
		return true
	}

	ip := net.ParseIP(host)

	return ip != nil && ip.IsLoopback()
}

// Repository returns where to pull the repository of ref from, and the
// name options (plain HTTP for a loopback mirror).
func (m Mirror) Repository(ref name.Reference) (string, []name.Option) {
	reg := ref.Context().RegistryStr()
	repo := ref.Context().RepositoryStr()

	target, ok := m.lookup(reg)
	if !ok {
		return reg + "/" + repo, nil
	}

	host := strings.SplitN(target, "/", 2)[0]
	if isLoopback(host) {
		return target + "/" + repo, []name.Option{name.Insecure}
	}

	return target + "/" + repo, nil
}

// ImageDigestRef returns the mirrored "repo@digest" reference for pulling an
// upstream image by digest.
func (m Mirror) ImageDigestRef(upstream, digest string) (name.Digest, error) {
	ref, err := name.ParseReference(upstream)
	if err != nil {
		return name.Digest{}, fmt.Errorf("parsing %q: %w", upstream, err)
	}

	repo, opts := m.Repository(ref)

	d, err := name.NewDigest(repo+"@"+digest, opts...)
	if err != nil {
		return name.Digest{}, fmt.Errorf("mirroring %q: %w", upstream, err)
	}

	return d, nil
}

// ImageTagRef returns the mirrored tag reference of an upstream image.
func (m Mirror) ImageTagRef(upstream string) (name.Tag, error) {
	ref, err := name.NewTag(upstream)
	if err != nil {
		return name.Tag{}, fmt.Errorf("parsing %q: %w", upstream, err)
	}

	repo, opts := m.Repository(ref)

	t, err := name.NewTag(repo+":"+ref.TagStr(), opts...)
	if err != nil {
		return name.Tag{}, fmt.Errorf("mirroring %q: %w", upstream, err)
	}

	return t, nil
}

// URL rewrites an upstream http(s) URL to its mirror. The bool reports
// whether the result may use plain HTTP (a loopback mirror).
func (m Mirror) URL(upstream string) (string, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return "", fmt.Errorf("parsing %q: %w", upstream, err)
	}

	target, ok := m.lookup(u.Host)
	if !ok {
		return upstream, nil
	}

	host, prefix, _ := strings.Cut(target, "/")

	scheme := "https"
	if isLoopback(host) {
		scheme = "http"
	}

	out := url.URL{
		Scheme:   scheme,
		Host:     host,
		Path:     "/" + strings.Trim(prefix+"/"+strings.TrimPrefix(u.Path, "/"), "/"),
		RawQuery: u.RawQuery,
	}

	return out.String(), nil
}

// OCIChartRef returns the mirrored "host/path/name:version" reference Helm's
// registry client pulls, and whether plain HTTP is needed.
func (m Mirror) OCIChartRef(c Chart) (string, bool, error) {
	loc := strings.TrimPrefix(c.Repository, "oci://")
	host, path, _ := strings.Cut(strings.TrimSuffix(loc, "/"), "/")

	plain := false

	if target, ok := m.lookup(host); ok {
		host = target
		plain = isLoopback(strings.SplitN(target, "/", 2)[0])
	}

	ref := host
	if path != "" {
		ref += "/" + path
	}

	return fmt.Sprintf("%s/%s:%s", ref, c.Name, c.Version), plain, nil
}
