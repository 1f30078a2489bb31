// Package siderolink is labos's node side of SideroLink, as a Talos v1.14
// node does it: it reads the SideroLink settings (kernel arguments or the
// SideroLinkConfig document), calls the hub's provisioning API with the
// machine's SMBIOS UUID, a unique token kept across reboots and a
// WireGuard public key, brings the WireGuard link up (over UDP or tunnelled
// over gRPC), checks it as Talos does and provisions again when it is
// down, and carries events to the event sink and the kernel log to the log
// receiver. Nothing here logs the join token or the WireGuard private key.
package siderolink

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Kernel parameters Talos reads (constants.KernelParamSideroLink and the
// events/logging ones); labos reads the same.
const (
	ParamAPI           = "siderolink.api"
	ParamEventsSink    = "talos.events.sink"
	ParamLoggingKernel = "talos.logging.kernel"
)

// Settings are a node's SideroLink settings.
type Settings struct {
	// Host is the provisioning API's host:port (gRPC).
	Host string
	// Insecure: plain gRPC (grpc:// URL); otherwise TLS (https://, port
	// 443 when none is given, as Talos).
	Insecure bool
	// JoinToken is the URL's jointoken parameter (a secret of the site:
	// never logged, see String).
	JoinToken string
	// Tunnel runs WireGuard over gRPC (grpc_tunnel=true or y).
	Tunnel bool
	// EventsSink is talos.events.sink's host:port (empty: no events).
	EventsSink string
	// KernelLog is talos.logging.kernel's host:port (tcp:// only; empty:
	// no kernel log).
	KernelLog string
}

// String describes the settings without the join token.
func (s Settings) String() string {
	tok := "none"
	if s.JoinToken != "" {
		tok = "set"
	}

	return fmt.Sprintf("api=%s insecure=%t tunnel=%t jointoken=%s events=%s kernellog=%s",
		s.Host, s.Insecure, s.Tunnel, tok, s.EventsSink, s.KernelLog)
}

var schemeRE = regexp.MustCompile(`^[a-zA-Z]+://`)

// ParseAPIURL parses a SideroLink API URL as Talos's endpoint.Parse does:
// no scheme means grpc://; grpc is insecure; https without a port is :443;
// jointoken and grpc_tunnel are query parameters.
func ParseAPIURL(raw string) (Settings, error) {
	if !schemeRE.MatchString(raw) {
		raw = "grpc://" + raw
	}

	u, err := url.Parse(raw)
	if err != nil {
		// url's error repeats the URL, join token included: keep only the kind.
		return Settings{}, errors.New("the SideroLink API URL does not parse (expected grpc://HOST:PORT?jointoken=... or https://HOST[:PORT]?...)")
	}

	switch u.Scheme {
	case "grpc", "https":
	default:
		return Settings{}, fmt.Errorf("the SideroLink API URL has scheme %q: use grpc:// or https://", u.Scheme)
	}

	if u.Hostname() == "" {
		return Settings{}, errors.New("the SideroLink API URL has no host")
	}

	s := Settings{Host: u.Host, Insecure: u.Scheme == "grpc", JoinToken: u.Query().Get("jointoken")}

	if u.Port() == "" {
		if u.Scheme != "https" {
			return Settings{}, errors.New("the SideroLink API URL (grpc://) has no port")
		}

		s.Host = net.JoinHostPort(u.Hostname(), "443")
	}

	t := u.Query().Get("grpc_tunnel")
	s.Tunnel = t == "true" || t == "y"

	return s, nil
}

// FromCmdline reads the settings from kernel parameters; ok is false when
// there is no siderolink.api= (no SideroLink).
func FromCmdline(c map[string]string) (s Settings, ok bool, err error) {
	raw, present := c[ParamAPI]
	if !present || raw == "" {
		return Settings{}, false, nil
	}

	if s, err = ParseAPIURL(raw); err != nil {
		return Settings{}, false, fmt.Errorf("kernel parameter %s: %w", ParamAPI, err)
	}

	if s.EventsSink = c[ParamEventsSink]; s.EventsSink != "" {
		if _, _, err := net.SplitHostPort(s.EventsSink); err != nil {
			return Settings{}, false, fmt.Errorf("kernel parameter %s=%q: want [ADDR]:PORT: %w", ParamEventsSink, s.EventsSink, err)
		}
	}

	if v := c[ParamLoggingKernel]; v != "" {
		u, err := url.Parse(v)
		if err != nil || u.Scheme != "tcp" || u.Port() == "" {
			return Settings{}, false, fmt.Errorf("kernel parameter %s=%q: want tcp://[ADDR]:PORT (labos sends the kernel log over TCP only)", ParamLoggingKernel, v)
		}

		s.KernelLog = u.Host
	}

	return s, true, nil
}

// FromConfig reads the apiUrl of a SideroLinkConfig document (Talos
// v1.14's multi-document machine config); ok is false when there is none.
// As in Talos, the document wins over the kernel argument (see Merge).
func FromConfig(config []byte) (s Settings, ok bool, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(config))

	for i := 0; ; i++ {
		var doc struct {
			APIVersion string `yaml:"apiVersion"`
			Kind       string `yaml:"kind"`
			APIURL     string `yaml:"apiUrl"`
		}

		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return Settings{}, false, nil
			}

			return Settings{}, false, fmt.Errorf("machine config document %d: %w", i+1, err)
		}

		if doc.Kind != "SideroLinkConfig" {
			continue
		}

		if doc.APIURL == "" {
			return Settings{}, false, fmt.Errorf("machine config document %d (SideroLinkConfig): apiUrl is empty", i+1)
		}

		if s, err = ParseAPIURL(doc.APIURL); err != nil {
			return Settings{}, false, fmt.Errorf("machine config document %d (SideroLinkConfig) apiUrl: %w", i+1, err)
		}

		return s, true, nil
	}
}

// Merge is the effective settings: the config document's API endpoint
// (if any) over the kernel argument's, events and kernel log from the
// kernel arguments.
func Merge(cmdline Settings, cmdOK bool, doc Settings, docOK bool) (Settings, bool) {
	if !docOK {
		return cmdline, cmdOK
	}

	doc.EventsSink, doc.KernelLog = cmdline.EventsSink, cmdline.KernelLog

	return doc, true
}

// redact removes a join token from an error text (gRPC errors can repeat
// the target).
func redact(s, token string) string {
	if token == "" {
		return s
	}

	return strings.ReplaceAll(s, token, "<jointoken>")
}
