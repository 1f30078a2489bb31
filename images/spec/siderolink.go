package spec

import (
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// SideroLink puts a node's SideroLink settings into the image in real
// Talos's form: the kernel arguments siderolink.api=,
// talos.events.sink= and talos.logging.kernel= on the UKI's command line,
// as Omni's installation media carry them. The join token is baked on
// purpose: it only lets a machine be seen by the hub (which hands a
// configuration only to a machine the inventory lists by UUID or an
// operator accepted) and is revoked and rotated with `fleetctl hub token`;
// it is not key material in the sense of machineconfig.CheckNoSecrets.
type SideroLink struct {
	// API is the hub's provisioning API: grpc://HOST:PORT (plain gRPC) or
	// https://HOST[:PORT] (TLS, 443 by default), no query.
	API string `yaml:"api" json:"api"`
	// JoinToken is the site's join token (`fleetctl hub token create SITE`).
	JoinToken string `yaml:"joinToken" json:"joinToken"`
	// Tunnel runs WireGuard over the gRPC connection (grpc_tunnel=true),
	// for sites that block outgoing UDP.
	Tunnel bool `yaml:"tunnel,omitempty" json:"tunnel,omitempty"`
	// HubAddress is the hub's tunnel address (the first address of its
	// prefix), where the event sink and log receiver listen.
	HubAddress string `yaml:"hubAddress,omitempty" json:"hubAddress,omitempty"`
	// EventsPort and LogsPort are the hub's event sink and log receiver ports.
	EventsPort int `yaml:"eventsPort,omitempty" json:"eventsPort,omitempty"`
	LogsPort   int `yaml:"logsPort,omitempty" json:"logsPort,omitempty"`
}

// SideroLink defaults: fleetctl hub's (fleetctl/hub config.go).
const (
	DefaultHubAddress = "fdae:41e4:649b:9303::1"
	DefaultEventsPort = 8090
	DefaultLogsPort   = 8092
)

// sideroLinkParams are the kernel parameters the sideroLink field sets;
// the schematic must not set them too.
var sideroLinkParams = []string{"siderolink.api", "talos.events.sink", "talos.logging.kernel"}

func (s *SideroLink) defaults() {
	if s.HubAddress == "" {
		s.HubAddress = DefaultHubAddress
	}

	if s.EventsPort == 0 {
		s.EventsPort = DefaultEventsPort
	}

	if s.LogsPort == 0 {
		s.LogsPort = DefaultLogsPort
	}
}

// validate reports problems through bad(field, format, args...); the join
// token never appears in a message.
func (s *SideroLink) validate(bad func(field, format string, args ...any), extraArgs []string) {
	u, err := url.Parse(s.API)

	switch {
	case s.API == "":
		bad("sideroLink.api", "required: grpc://HOST:PORT or https://HOST[:PORT] of the hub's provisioning API")
	case err != nil:
		// url's error and the URL may hold a token: name neither
		bad("sideroLink.api", "does not parse: use grpc://HOST:PORT or https://HOST[:PORT]")
	case u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
		bad("sideroLink.api", "give only scheme, host and port: the join token goes in sideroLink.joinToken, the tunnel in sideroLink.tunnel")
	case u.Scheme != "grpc" && u.Scheme != "https":
		bad("sideroLink.api", "scheme %q is not allowed: use grpc:// (plain gRPC) or https:// (TLS)", u.Scheme)
	case u.Hostname() == "":
		bad("sideroLink.api", "%q has no host", s.API)
	case u.Scheme == "grpc" && u.Port() == "":
		bad("sideroLink.api", "%q has no port: grpc:// needs one (the hub's default is 8099)", s.API)
	}

	switch {
	case s.JoinToken == "":
		bad("sideroLink.joinToken", "required: the site's join token (`fleetctl hub token create SITE`)")
	case strings.ContainsAny(s.JoinToken, " \t\r\n\"&?#=%;"):
		bad("sideroLink.joinToken", "contains a space, quote or URL delimiter: use the token `fleetctl hub token create` printed")
	}

	if a, err := netip.ParseAddr(s.HubAddress); err != nil || !a.Is6() || a.Is4In6() {
		bad("sideroLink.hubAddress", "%q is not an IPv6 address: use the first address of the hub's prefix (default %s)", s.HubAddress, DefaultHubAddress)
	}

	for field, p := range map[string]int{"sideroLink.eventsPort": s.EventsPort, "sideroLink.logsPort": s.LogsPort} {
		if p < 1 || p > 65535 {
			bad(field, "%d is not a port (1-65535)", p)
		}
	}

	for _, a := range extraArgs {
		k, _, _ := strings.Cut(a, "=")
		for _, p := range sideroLinkParams {
			if k == p {
				bad("schematic.customization.extraKernelArgs", "%s is set by sideroLink: remove it from the schematic", p)
			}
		}
	}
}

// KernelArgs are the SideroLink kernel arguments in Talos's form.
func (s *SideroLink) KernelArgs() []string {
	api := s.API + "?jointoken=" + url.QueryEscape(s.JoinToken)
	if s.Tunnel {
		api += "&grpc_tunnel=true"
	}

	sink := net.JoinHostPort(s.HubAddress, strconv.Itoa(s.EventsPort))
	logs := "tcp://" + net.JoinHostPort(s.HubAddress, strconv.Itoa(s.LogsPort))

	return []string{"siderolink.api=" + api, "talos.events.sink=" + sink, "talos.logging.kernel=" + logs}
}
