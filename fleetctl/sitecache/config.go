// Package sitecache is the configuration of the site cache (fleetctl
// site-cache serve): an OCI pull-through mirror that runs at a site,
// between the site's nodes and the regional registry. The mirror itself is
// fleetctl/sitecache/mirror; chunking and chunk indexes are
// fleetctl/sitecache/chunks.
package sitecache

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ConfigVersion is the configuration schema this fleetctl reads.
const ConfigVersion = "v1alpha1"

// DefaultListen is the registry port nodes reach the cache on.
const DefaultListen = ":5000"

// Config is the site cache's YAML configuration (--config FILE).
//
//	version: v1alpha1
//	listen: ":5000"
//	upstream: registry.region.example:5000
//	storageDir: /var/lib/labfleet/site-cache
//	bandwidthLimit: 2Mbit
//	insecure: false
//	chunkDelta: true
//	maxBytes: 20GiB
//	keepManifests: 2
type Config struct {
	// Version must be "v1alpha1".
	Version string `yaml:"version"`
	// Listen is host:port the nodes reach the cache on (plain HTTP, as
	// containerd mirrors on a site's LAN usually are; default ":5000").
	Listen string `yaml:"listen"`
	// Upstream is host[:port] of the regional registry the cache mirrors
	// (no scheme, no path). Required.
	Upstream string `yaml:"upstream"`
	// StorageDir holds blobs, manifests, chunks and partial downloads.
	// Required; it survives restarts (that is what makes resume work).
	StorageDir string `yaml:"storageDir"`
	// BandwidthLimit caps what the cache downloads from the upstream, per
	// second: a number with a unit, bits ("2Mbit", "512kbit") or bytes
	// ("250KB", "1MiB"); "" or "0" means no cap. Nodes on the LAN side are
	// never limited.
	BandwidthLimit string `yaml:"bandwidthLimit,omitempty"`
	// Insecure talks plain HTTP to the upstream (lab registries only).
	Insecure bool `yaml:"insecure,omitempty"`
	// ChunkDelta fetches a blob chunk by chunk when the upstream publishes
	// its chunk index (fleetctl site-cache index); default true.
	ChunkDelta *bool `yaml:"chunkDelta,omitempty"`
	// MaxBytes caps the stored blobs: "20GiB", "500MB" or a number of
	// bytes; "" or "0" means no cap. Past it the least recently used blobs
	// are evicted, except those of the KeepManifests most recently used
	// manifests and those being served.
	MaxBytes string `yaml:"maxBytes,omitempty"`
	// KeepManifests is how many of the most recently used manifests keep
	// their blobs from eviction (default 2: the release rolled out and the
	// one to roll back to).
	KeepManifests int `yaml:"keepManifests,omitempty"`

	// Source is the file the configuration was read from (for errors).
	Source string `yaml:"-"`
}

// Defaults returns a configuration with every default filled in.
func Defaults() Config {
	t := true

	return Config{Version: ConfigVersion, Listen: DefaultListen, ChunkDelta: &t}
}

// LoadConfig reads a configuration file over the defaults, strictly (an
// unknown field is an error naming the file and line), and validates it.
func LoadConfig(path string) (Config, error) {
	cfg := Defaults()
	cfg.Source = path

	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("reading site cache config: %w", err)
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}

	if cfg.ChunkDelta == nil {
		t := true
		cfg.ChunkDelta = &t
	}

	return cfg, cfg.Validate()
}

var hostPortRE = regexp.MustCompile(`^[A-Za-z0-9.\-\[\]:]+$`)

// Validate returns every problem at once, each naming the file and field.
func (c Config) Validate() error {
	src := c.Source
	if src == "" {
		src = "site cache config"
	}

	var errs []error

	add := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %s", src, field, fmt.Sprintf(format, a...)))
	}

	if c.Version != ConfigVersion {
		add("version", "%q is not supported; want %q", c.Version, ConfigVersion)
	}

	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen", "%q is not host:port (e.g. \":5000\")", c.Listen)
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		add("listen", "port %q must be 0-65535 (0: any free port)", port)
	}

	switch {
	case c.Upstream == "":
		add("upstream", "required: host[:port] of the regional registry (e.g. registry.region.example:5000)")
	case strings.Contains(c.Upstream, "://") || strings.Contains(c.Upstream, "/") || !hostPortRE.MatchString(c.Upstream):
		add("upstream", "%q must be host[:port] only, without scheme or path (set insecure: true for plain HTTP)", c.Upstream)
	}

	if c.StorageDir == "" {
		add("storageDir", "required: a directory that survives restarts")
	}

	if _, err := ParseBandwidth(c.BandwidthLimit); err != nil {
		add("bandwidthLimit", "%v", err)
	}

	if n, err := ParseSize(c.MaxBytes); err != nil {
		add("maxBytes", "%v", err)
	} else if n > 0 && n < minMaxBytes {
		add("maxBytes", "%q is below 64 MiB: less than one release would fit (give e.g. 20GiB, or 0 for no cap)", c.MaxBytes)
	}

	if c.KeepManifests < 0 {
		add("keepManifests", "%d is negative (0: the default, 2)", c.KeepManifests)
	}

	return errors.Join(errs...)
}

// minMaxBytes is the smallest cap accepted: a cap below one image would
// evict what nodes are about to pull.
const minMaxBytes = 64 << 20

// MaxBytesValue is the storage cap in bytes (0: none). Call after Validate.
func (c Config) MaxBytesValue() int64 {
	n, _ := ParseSize(c.MaxBytes)

	return n
}

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)

// size units: decimal (KB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB).
var sizeUnits = map[string]float64{
	"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// ParseSize parses a size such as "20GiB", "500MB" or "100000000" into
// bytes; "" and "0" are 0 (no cap).
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}

	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size: want a number and a unit, e.g. 20GiB, 500MB", s)
	}

	unit, ok := sizeUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s, m[2])
	}

	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}

	return int64(v * unit), nil
}

// BytesPerSecond is the WAN cap (0: none). Call after Validate.
func (c Config) BytesPerSecond() int64 {
	n, _ := ParseBandwidth(c.BandwidthLimit)

	return n
}

var bwRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)(?:/s)?$`)

// bandwidth units in bytes per second: "bit" units are decimal bits (as
// links are sold), "B" units decimal bytes, "iB" units binary bytes.
var bwUnits = map[string]float64{
	"bit": 1.0 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
	"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
}

// ParseBandwidth parses a per-second rate such as "2Mbit", "250KB" or
// "1MiB/s" into bytes per second; "" and "0" are 0 (no cap).
func ParseBandwidth(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}

	m := bwRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a rate: want a number and a unit, e.g. 2Mbit, 512kbit, 250KB, 1MiB", s)
	}

	unit, ok := bwUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q (bit, kbit, Mbit, Gbit, B, KB, MB, GB, KiB, MiB, GiB)", s, m[2])
	}

	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}

	n := int64(v * unit)
	if n < 1024 {
		return 0, fmt.Errorf("%q is below 1 KB/s: a cap that low would stall every pull", s)
	}

	return n, nil
}
