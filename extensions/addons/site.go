package addons

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/sitecache"
)

// SiteFields are the site-entry fields an add-on parameter may name.
var SiteFields = []string{
	"name",
	"region",
	"metallb.addressPools",
	"otel.endpoint",
	"thanos.objstoreSecret",
	"siteCache.upstream",
	"siteCache.bandwidthLimit",
	"siteCache.insecure",
}

// SiteValues are the per-site parameters of the add-ons, as an inventory's
// site entry carries them.
type SiteValues struct {
	// Name of the site: a DNS label; becomes Thanos's "site" external label.
	Name string `yaml:"name" json:"name"`
	// Region the site belongs to: a DNS label; Thanos's "region" label.
	Region string `yaml:"region" json:"region"`
	// MetalLB holds the load-balancer address pools.
	MetalLB SiteMetalLB `yaml:"metallb" json:"metallb"`
	// OTel holds the telemetry export target.
	OTel SiteOTel `yaml:"otel" json:"otel"`
	// Thanos holds the metrics shipping settings.
	Thanos SiteThanos `yaml:"thanos" json:"thanos"`
	// SiteCache configures the site cache add-on; optional: without an
	// upstream the add-on is installed but runs no replica.
	SiteCache SiteCacheValues `yaml:"siteCache,omitempty" json:"siteCache,omitempty"`
}

// SiteCacheValues is the site cache part of a site entry: the flags of
// `fleetctl site-cache serve` that differ per site.
type SiteCacheValues struct {
	// Upstream is host[:port] of the regional registry the cache mirrors.
	Upstream string `yaml:"upstream,omitempty" json:"upstream,omitempty"`
	// BandwidthLimit caps the WAN side ("2Mbit", "250KB"; empty: none).
	BandwidthLimit string `yaml:"bandwidthLimit,omitempty" json:"bandwidthLimit,omitempty"`
	// Insecure reaches the upstream over plain HTTP (lab registries).
	Insecure bool `yaml:"insecure,omitempty" json:"insecure,omitempty"`
}

// SiteMetalLB is the MetalLB part of a site entry.
type SiteMetalLB struct {
	// AddressPools are the addresses MetalLB hands to LoadBalancer services:
	// each a CIDR (10.20.0.0/28) or a range (10.20.0.10-10.20.0.20).
	AddressPools []string `yaml:"addressPools" json:"addressPools"`
}

// SiteOTel is the OpenTelemetry collector part of a site entry.
type SiteOTel struct {
	// Endpoint is the OTLP/gRPC endpoint the collector exports to: host:port
	// or an http(s) URL with a port.
	Endpoint string `yaml:"endpoint" json:"endpoint"`
}

// SiteThanos is the Thanos sidecar part of a site entry.
type SiteThanos struct {
	// ObjstoreSecret names the Secret (in the add-on's namespace) holding the
	// Thanos object storage configuration under the key objstore.yml. The
	// secret itself is provisioned per site, never baked into an image.
	ObjstoreSecret string `yaml:"objstoreSecret" json:"objstoreSecret"`
}

// LoadSite reads a site entry from a YAML file.
func LoadSite(path string) (*SiteValues, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading site: %w", err)
	}

	return ParseSite(data, path)
}

// ParseSite decodes and validates a site entry; source names it in errors.
func ParseSite(data []byte, source string) (*SiteValues, error) {
	s := &SiteValues{}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}

	if err := s.Validate(source); err != nil {
		return nil, err
	}

	return s, nil
}

// Validate checks every field; errors name source and the field.
func (s *SiteValues) Validate(source string) error {
	var errs []error

	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{File: source, Field: "site." + field, Msg: fmt.Sprintf(format, args...)})
	}

	if s.Name == "" {
		bad("name", "required: a DNS label naming the site")
	} else if !labelRE.MatchString(s.Name) {
		bad("name", "%q must be a DNS label (lowercase letters, digits, '-')", s.Name)
	}

	if s.Region == "" {
		bad("region", "required: a DNS label naming the region")
	} else if !labelRE.MatchString(s.Region) {
		bad("region", "%q must be a DNS label (lowercase letters, digits, '-')", s.Region)
	}

	if len(s.MetalLB.AddressPools) == 0 {
		bad("metallb.addressPools", "required: at least one CIDR (10.20.0.0/28) or range (10.20.0.10-10.20.0.20)")
	}

	for i, p := range s.MetalLB.AddressPools {
		if err := checkPool(p); err != nil {
			bad(fmt.Sprintf("metallb.addressPools[%d]", i), "%q: %v", p, err)
		}
	}

	if s.OTel.Endpoint == "" {
		bad("otel.endpoint", "required: host:port or an http(s) URL with a port")
	} else if err := checkEndpoint(s.OTel.Endpoint); err != nil {
		bad("otel.endpoint", "%q: %v", s.OTel.Endpoint, err)
	}

	if s.Thanos.ObjstoreSecret == "" {
		bad("thanos.objstoreSecret", "required: the name of the Secret holding objstore.yml")
	} else if !labelRE.MatchString(s.Thanos.ObjstoreSecret) {
		bad("thanos.objstoreSecret", "%q must be a Kubernetes object name (DNS label)", s.Thanos.ObjstoreSecret)
	}

	sc := s.SiteCache

	switch {
	case sc.Upstream == "" && (sc.BandwidthLimit != "" || sc.Insecure):
		bad("siteCache.upstream", "required when siteCache sets other fields: host[:port] of the regional registry")
	case sc.Upstream == "":
	case strings.Contains(sc.Upstream, "://") || strings.Contains(sc.Upstream, "/") || !hostPortRE.MatchString(sc.Upstream):
		bad("siteCache.upstream", "%q must be host[:port] only, without scheme or path (set siteCache.insecure for plain HTTP)", sc.Upstream)
	}

	if _, err := sitecache.ParseBandwidth(sc.BandwidthLimit); err != nil {
		bad("siteCache.bandwidthLimit", "%v", err)
	}

	return errors.Join(errs...)
}

var hostPortRE = regexp.MustCompile(`^[A-Za-z0-9.\-\[\]:]+$`)

func checkPool(p string) error {
	if strings.Contains(p, "/") {
		if _, err := netip.ParsePrefix(p); err != nil {
			return errors.New("not a valid CIDR")
		}

		return nil
	}

	from, to, ok := strings.Cut(p, "-")
	if !ok {
		return errors.New("must be a CIDR or a range first-last")
	}

	a, err1 := netip.ParseAddr(strings.TrimSpace(from))
	b, err2 := netip.ParseAddr(strings.TrimSpace(to))

	switch {
	case err1 != nil || err2 != nil:
		return errors.New("range ends must be IP addresses")
	case a.Is4() != b.Is4():
		return errors.New("range ends must be the same address family")
	case b.Less(a):
		return errors.New("range end is before its start")
	}

	return nil
}

func checkEndpoint(e string) error {
	hostport := e

	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil {
			return err
		}

		if u.Scheme != "http" && u.Scheme != "https" {
			return errors.New("URL scheme must be http or https")
		}

		hostport = u.Host
	}

	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return errors.New("must be host:port or an http(s) URL with a port")
	}

	if host == "" {
		return errors.New("missing host")
	}

	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return errors.New("port must be 1-65535")
	}

	return nil
}

// Field returns the value of a site field named in SiteFields, as chart
// values want it (a string or a list).
func (s *SiteValues) Field(field string) (any, error) {
	switch field {
	case "name":
		return s.Name, nil
	case "region":
		return s.Region, nil
	case "metallb.addressPools":
		out := make([]any, len(s.MetalLB.AddressPools))
		for i, p := range s.MetalLB.AddressPools {
			out[i] = p
		}

		return out, nil
	case "otel.endpoint":
		return s.OTel.Endpoint, nil
	case "thanos.objstoreSecret":
		return s.Thanos.ObjstoreSecret, nil
	case "siteCache.upstream":
		return s.SiteCache.Upstream, nil
	case "siteCache.bandwidthLimit":
		return s.SiteCache.BandwidthLimit, nil
	case "siteCache.insecure":
		return s.SiteCache.Insecure, nil
	}

	return nil, fmt.Errorf("unknown site field %q", field)
}
