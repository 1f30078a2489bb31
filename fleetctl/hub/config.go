// Package hub runs the management side of SideroLink for labfleet: nodes
// behind firewalls that allow no inbound port dial out to it, enroll with
// a per-site join token, bring up a WireGuard link (over UDP, or tunnelled
// over gRPC/TCP where UDP is blocked), and send their events and kernel log
// through that link. The hub records them in the machine registry
// (fleetctl/hub/registry) and hands a machine configuration only to machines
// the inventory lists by UUID or an operator accepted.
//
// The WireGuard endpoint runs in userspace (wireguard-go on a TUN device):
// the hub never needs the kernel's WireGuard module.
package hub

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ConfigVersion is the version of the hub configuration this fleetctl reads.
const ConfigVersion = "v1alpha1"

// Default ports. The API port is the only one a site's firewall must allow
// outwards when UDP is blocked; the WireGuard port is the UDP alternative.
// Event sink and log receiver listen on the hub's tunnel address only
// (inside WireGuard), so no firewall ever sees them. 8090/8092 and 50180
// are the ports Sidero's Omni uses, so the same kernel arguments work.
const (
	DefaultAPIListen       = ":8099"
	DefaultWireGuardListen = ":50180"
	DefaultEventSinkPort   = 8090
	DefaultLogReceiverPort = 8092
	DefaultInterface       = "lfhub0"
	DefaultPrefix          = "fdae:41e4:649b:9303::/64"
)

// Config is the hub's YAML configuration (fleetctl hub --config FILE).
// Flags override it field by field.
type Config struct {
	// Version must be "v1alpha1".
	Version string `yaml:"version"`
	// APIListen is host:port of the provisioning API and the WireGuard-over-gRPC
	// tunnel (TCP). Nodes dial it outwards.
	APIListen string `yaml:"apiListen"`
	// WireGuardListen is host:port of the WireGuard endpoint (UDP). Nodes
	// whose site allows outbound UDP use it; the port must be 1-65535.
	WireGuardListen string `yaml:"wireguardListen"`
	// PublicEndpoints are the host:port the nodes must use to reach the
	// WireGuard endpoint (what a NAT in front of the hub exposes). Default:
	// the address of the connection a node provisioned over, with the
	// WireGuard port.
	PublicEndpoints []string `yaml:"publicEndpoints,omitempty"`
	// Prefix is the IPv6 /64 (or larger) ULA of the tunnels; the hub takes
	// its first address, nodes get random addresses in it.
	Prefix string `yaml:"prefix"`
	// VirtualPrefix is the IPv6 /64 of the gRPC tunnel's virtual peer
	// addresses (never routed; identifies a node's stream). Default: derived.
	VirtualPrefix string `yaml:"virtualPrefix,omitempty"`
	// Interface is the name of the TUN device the hub creates (at most 15
	// characters). Give each hub on one host its own.
	Interface string `yaml:"interface"`
	// EventSinkPort is the port of the event sink on the hub's tunnel address.
	EventSinkPort int `yaml:"eventSinkPort"`
	// LogReceiverPort is the port of the kernel log receiver on the hub's tunnel address.
	LogReceiverPort int `yaml:"logReceiverPort"`
	// Inventory lists machines by UUID that get their configuration without
	// an operator accepting them (a YAML file of {uuid, cluster, role}).
	Inventory string `yaml:"inventory,omitempty"`
	// ConfigDir holds the machine configurations the hub hands out:
	// CONFIGDIR/CLUSTER/ROLE.yaml (e.g. configs/berlin-1/worker.yaml).
	ConfigDir string `yaml:"configDir,omitempty"`
	// TLSCert and TLSKey are PEM files: with both, the API (and the gRPC
	// tunnel) is served over TLS and nodes use an https:// SideroLink URL;
	// without, it is plain gRPC (grpc://) and the join token crosses the
	// network in clear (the WireGuard link itself is always encrypted).
	TLSCert string `yaml:"tlsCert,omitempty"`
	TLSKey  string `yaml:"tlsKey,omitempty"`
	// PeerDownAfter is how long after its last handshake a peer counts as
	// down (WireGuard's handshake timeout + rekey timeouts: 275s).
	PeerDownAfter time.Duration `yaml:"peerDownAfter,omitempty"`
	// Sites adds per-site settings to the configuration the hub hands out,
	// by site name (the site a join token was created for): the registry
	// mirrors (site caches) of the site (config_mirrors.go).
	Sites map[string]SiteSettings `yaml:"sites,omitempty"`

	// Source is the file the configuration was read from (for errors).
	Source string `yaml:"-"`
}

// Defaults returns a configuration with every default filled in.
func Defaults() Config {
	return Config{
		Version:         ConfigVersion,
		APIListen:       DefaultAPIListen,
		WireGuardListen: DefaultWireGuardListen,
		Prefix:          DefaultPrefix,
		Interface:       DefaultInterface,
		EventSinkPort:   DefaultEventSinkPort,
		LogReceiverPort: DefaultLogReceiverPort,
		PeerDownAfter:   275 * time.Second,
	}
}

// LoadConfig reads a configuration file over the defaults, strictly: an
// unknown field is an error naming the file and line.
func LoadConfig(path string) (Config, error) {
	cfg := Defaults()
	cfg.Source = path

	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("reading hub config: %w", err)
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}

	return cfg, nil
}

// Validate checks every field and returns all problems at once, each as
// "FILE: FIELD: problem (what to do)".
func (c Config) Validate() error {
	src := c.Source
	if src == "" {
		src = "hub config"
	}

	var errs []error

	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %s", src, field, fmt.Sprintf(format, args...)))
	}

	if c.Version != ConfigVersion {
		add("version", "%q is not supported (want %q)", c.Version, ConfigVersion)
	}

	if err := checkListen(c.APIListen); err != nil {
		add("apiListen", "%v", err)
	}

	if err := checkListen(c.WireGuardListen); err != nil {
		add("wireguardListen", "%v", err)
	}

	for i, ep := range c.PublicEndpoints {
		if err := checkHostPort(ep); err != nil {
			add(fmt.Sprintf("publicEndpoints[%d]", i), "%v", err)
		}
	}

	if err := checkPrefix(c.Prefix); err != nil {
		add("prefix", "%v", err)
	}

	if c.VirtualPrefix != "" {
		if err := checkPrefix(c.VirtualPrefix); err != nil {
			add("virtualPrefix", "%v", err)
		} else if p, q := netip.MustParsePrefix(c.VirtualPrefix), mustPrefix(c.Prefix); q.IsValid() && p.Overlaps(q) {
			add("virtualPrefix", "%s overlaps prefix %s (give a distinct /64)", p, q)
		}
	}

	switch {
	case c.Interface == "":
		add("interface", "empty (name the TUN device, e.g. %s)", DefaultInterface)
	case len(c.Interface) > 15:
		add("interface", "%q is longer than 15 characters (Linux limit)", c.Interface)
	case strings.ContainsAny(c.Interface, "/ \t:"):
		add("interface", "%q may not contain '/', ':' or spaces", c.Interface)
	}

	if c.EventSinkPort < 1 || c.EventSinkPort > 65535 {
		add("eventSinkPort", "%d is not a port (1-65535)", c.EventSinkPort)
	}

	if c.LogReceiverPort < 1 || c.LogReceiverPort > 65535 {
		add("logReceiverPort", "%d is not a port (1-65535)", c.LogReceiverPort)
	}

	if c.EventSinkPort == c.LogReceiverPort {
		add("logReceiverPort", "%d is also the eventSinkPort (give each its own)", c.LogReceiverPort)
	}

	if (c.TLSCert == "") != (c.TLSKey == "") {
		add("tlsKey", "tlsCert and tlsKey go together (give both PEM files, or neither for plain gRPC)")
	}

	if c.PeerDownAfter < 0 {
		add("peerDownAfter", "%s is negative", c.PeerDownAfter)
	}

	c.validateSites(add)

	return errors.Join(errs...)
}

func mustPrefix(s string) netip.Prefix {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}
	}

	return p.Masked()
}

func checkPrefix(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP prefix (want an IPv6 ULA like %s)", s, DefaultPrefix)
	}

	if !p.Addr().Is6() || p.Addr().Is4In6() {
		return fmt.Errorf("%s is not IPv6 (SideroLink addresses are IPv6; want a ULA like %s)", p, DefaultPrefix)
	}

	if p.Bits() > 64 {
		return fmt.Errorf("%s is smaller than a /64 (nodes pick random addresses in the last 64 bits)", p)
	}

	if p.Masked() != p {
		return fmt.Errorf("%s has host bits set (did you mean %s?)", p, p.Masked())
	}

	if !netip.MustParsePrefix("fc00::/7").Contains(p.Addr()) {
		return fmt.Errorf("%s is not a unique local (fc00::/7) prefix; tunnel addresses must never clash with routed ones", p)
	}

	return nil
}

func checkListen(s string) error {
	host, port, ok := strings.Cut(s, ":")
	if strings.HasPrefix(s, "[") {
		i := strings.LastIndex(s, "]:")
		if i < 0 {
			return fmt.Errorf("%q is not host:port", s)
		}

		host, port, ok = s[1:i], s[i+2:], true
	} else if strings.Count(s, ":") > 1 {
		return fmt.Errorf("%q: write IPv6 hosts in brackets, e.g. [::]:8099", s)
	}

	if !ok {
		return fmt.Errorf("%q is not host:port (e.g. :8099)", s)
	}

	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: host %q is not an IP address (listen addresses take an IP or nothing)", s, host)
		}
	}

	// Port 0 picks a free port: tests use it; the hub logs the port it got.
	if port == "0" {
		return nil
	}

	return checkPort(s, port)
}

func checkHostPort(s string) error {
	i := strings.LastIndex(s, ":")
	if i <= 0 {
		return fmt.Errorf("%q is not host:port", s)
	}

	return checkPort(s, s[i+1:])
}

func checkPort(s, port string) error {
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not 1-65535", s, port)
	}

	return nil
}
