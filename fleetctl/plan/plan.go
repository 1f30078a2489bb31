// Package plan reads a rollout plan (what to install, on which clusters, in
// which waves, how carefully) and compiles it against an inventory into the
// concrete wave assignment the engine executes.
package plan

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/inventory"
)

// Plan is the YAML document describing one rollout.
type Plan struct {
	// Name labels the rollout in status and history output.
	Name string `yaml:"name" json:"name"`
	// Image is the installer image, pinned by digest (repo[:tag]@sha256:<64 hex>).
	Image string `yaml:"image" json:"image"`
	// Version is the version tag the nodes report once they run Image.
	Version string `yaml:"version" json:"version"`
	// Schematic is the image-factory schematic ID (64 hex) of Image, optional.
	// Where a node reports no image digest, the gate checks version and this.
	Schematic string `yaml:"schematic,omitempty" json:"schematic,omitempty"`
	// Selector picks the clusters of the inventory this rollout covers; empty selects all.
	Selector Selector `yaml:"selector,omitempty" json:"selector,omitempty"`
	// Waves are executed in order; a wave starts only after the previous one finished.
	Waves []Wave `yaml:"waves" json:"waves"`
	// Concurrency is the default number of clusters upgraded at once in a wave (default 1).
	Concurrency int `yaml:"concurrency,omitempty" json:"concurrency,omitempty"`
	// MaxUnavailable is how many worker nodes of one cluster may be upgrading at once
	// (default 1). Control plane nodes are always upgraded one at a time.
	MaxUnavailable int `yaml:"maxUnavailable,omitempty" json:"maxUnavailable,omitempty"`
	// RegionCaps limit node upgrades in flight per region (shared uplinks); 0 or absent means no cap.
	RegionCaps map[string]int `yaml:"regionCaps,omitempty" json:"regionCaps,omitempty"`
	// BandwidthCaps limit node upgrades in flight per site bandwidth class (low, medium, high).
	BandwidthCaps map[string]int `yaml:"bandwidthCaps,omitempty" json:"bandwidthCaps,omitempty"`
	// Health is the gate every upgraded node must pass.
	Health HealthGate `yaml:"health,omitempty" json:"health,omitempty"`
	// Staging pulls the image ahead of the maintenance windows (staging.go).
	Staging Staging `yaml:"staging,omitempty" json:"staging,omitempty"`
	// Budget is the overall failure budget; each wave has its own too.
	Budget Budget `yaml:"budget,omitempty" json:"budget,omitempty"`
	// AutoRollback rolls a node that failed its gate back through the node API (default true).
	AutoRollback *bool `yaml:"autoRollback,omitempty" json:"autoRollback,omitempty"`

	// Source is the file the plan was read from.
	Source string `yaml:"-" json:"-"`
}

// Selector filters clusters; every non-empty list must match (lists are ORed inside).
type Selector struct {
	// Regions of the cluster's site.
	Regions []string `yaml:"regions,omitempty" json:"regions,omitempty"`
	// Countries of the cluster's site (ISO codes).
	Countries []string `yaml:"countries,omitempty" json:"countries,omitempty"`
	// Sites by name.
	Sites []string `yaml:"sites,omitempty" json:"sites,omitempty"`
	// Clusters by name.
	Clusters []string `yaml:"clusters,omitempty" json:"clusters,omitempty"`
	// Labels the cluster must carry (all of them, equal values).
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// Wave is one step of the rollout. Exactly one of Clusters, Count, Percent is set.
type Wave struct {
	// Name labels the wave (e.g. canary).
	Name string `yaml:"name" json:"name"`
	// Clusters names the clusters of a named canary wave.
	Clusters []string `yaml:"clusters,omitempty" json:"clusters,omitempty"`
	// Count takes this many further clusters (a counted canary).
	Count int `yaml:"count,omitempty" json:"count,omitempty"`
	// Percent is the cumulative share (1-100) of selected clusters reached at the end
	// of this wave; the last wave must say 100.
	Percent int `yaml:"percent,omitempty" json:"percent,omitempty"`
	// Concurrency overrides the plan's concurrency for this wave.
	Concurrency int `yaml:"concurrency,omitempty" json:"concurrency,omitempty"`
	// MaxFailures is how many failed nodes the wave tolerates; one more halts the rollout (default 0).
	MaxFailures int `yaml:"maxFailures,omitempty" json:"maxFailures,omitempty"`
	// MaxFailurePercent tolerates this share of the wave's nodes failing, if larger than MaxFailures.
	MaxFailurePercent float64 `yaml:"maxFailurePercent,omitempty" json:"maxFailurePercent,omitempty"`
}

// HealthGate says when an upgraded node counts as good.
type HealthGate struct {
	// Timeout is how long a node has to report the target version with all services
	// healthy after the upgrade was accepted (default 15m).
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// Soak is how long the node must then stay healthy (default 0).
	Soak Duration `yaml:"soak,omitempty" json:"soak,omitempty"`
	// Interval is the polling period of the gate (default 5s).
	Interval Duration `yaml:"interval,omitempty" json:"interval,omitempty"`
	// CallTimeout bounds each node API call except Upgrade; the calls of one
	// health probe (version or image, services, cluster) share one (default 30s, at most 10m).
	CallTimeout Duration `yaml:"callTimeout,omitempty" json:"callTimeout,omitempty"`
	// UpgradeTimeout bounds the Upgrade call, which on Talos pulls the image
	// before it answers (default 10m, at most 2h). A call that times out is
	// not a refusal: the node is asked what it did.
	UpgradeTimeout Duration `yaml:"upgradeTimeout,omitempty" json:"upgradeTimeout,omitempty"`
	// Kubernetes adds the cluster to the gate: the Kubernetes node Ready, on
	// control plane nodes the static pods running and etcd with its expected
	// members. The talos driver reads them with the kubeconfig beside the
	// cluster's talosconfig and etcd's member list through the node API.
	// Off by default: labos lab nodes run no Kubernetes.
	Kubernetes bool `yaml:"kubernetes,omitempty" json:"kubernetes,omitempty"`
}

// Budget is the overall failure budget.
type Budget struct {
	// MaxFailures is how many failed nodes the whole rollout tolerates (default 0).
	MaxFailures int `yaml:"maxFailures,omitempty" json:"maxFailures,omitempty"`
	// MaxFailurePercent tolerates this share of all selected nodes, if larger.
	MaxFailurePercent float64 `yaml:"maxFailurePercent,omitempty" json:"maxFailurePercent,omitempty"`
}

// Duration is a time.Duration written as "90s", "5m".
type Duration time.Duration

// UnmarshalYAML accepts Go duration strings.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (e.g. 30s, 5m, 1h)", n.Line, n.Value)
	}

	*d = Duration(v)

	return nil
}

// MarshalYAML writes the Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D is the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Load reads and validates a plan file.
func Load(path string) (*Plan, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading plan: %w", err)
	}

	return Parse(path, data)
}

// Parse decodes a plan document, applies defaults and validates it.
func Parse(name string, data []byte) (*Plan, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	p := &Plan{}
	if err := dec.Decode(p); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}

	p.Source = name
	p.Default()

	if err := p.Validate(); err != nil {
		return nil, err
	}

	return p, nil
}

// Defaults of the node call timeouts (also used for plans frozen by
// releases that had no such fields).
const (
	DefaultCallTimeout    = 30 * time.Second
	DefaultUpgradeTimeout = 10 * time.Minute
)

// Default fills the documented defaults.
func (p *Plan) Default() {
	if p.Concurrency == 0 {
		p.Concurrency = 1
	}

	if p.MaxUnavailable == 0 {
		p.MaxUnavailable = 1
	}

	if p.Health.Timeout == 0 {
		p.Health.Timeout = Duration(15 * time.Minute)
	}

	if p.Health.Interval == 0 {
		p.Health.Interval = Duration(5 * time.Second)
	}

	if p.Health.CallTimeout == 0 {
		p.Health.CallTimeout = Duration(DefaultCallTimeout)
	}

	if p.Health.UpgradeTimeout == 0 {
		p.Health.UpgradeTimeout = Duration(DefaultUpgradeTimeout)
	}

	if p.AutoRollback == nil {
		t := true
		p.AutoRollback = &t
	}

	p.Staging.defaults()
}

// NodeWindowNeed is how much of a maintenance window one node operation may
// take: the Upgrade call, the health gate and the soak. A node starts only
// if this much of its window is left.
func (p *Plan) NodeWindowNeed() time.Duration {
	u := p.Health.UpgradeTimeout.D()
	if u <= 0 {
		u = DefaultUpgradeTimeout
	}

	if p.Staging.Enabled {
		// the image is on the node already: the switch is one call
		if u = p.Health.CallTimeout.D(); u <= 0 {
			u = DefaultCallTimeout
		}
	}

	return u + p.Health.Timeout.D() + p.Health.Soak.D()
}

// Rollback reports whether failed nodes are rolled back automatically.
func (p *Plan) Rollback() bool { return p.AutoRollback == nil || *p.AutoRollback }

// WaveConcurrency is the effective concurrency of wave i.
func (p *Plan) WaveConcurrency(i int) int {
	if c := p.Waves[i].Concurrency; c > 0 {
		return c
	}

	return max(p.Concurrency, 1)
}

// Validate checks every field and returns all problems found.
func (p *Plan) Validate() error {
	var errs inventory.Errors

	add := func(entry, field, format string, args ...any) {
		errs = append(errs, &inventory.FieldError{File: p.Source, Entry: entry, Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	if p.Name == "" {
		add("plan", "name", "required")
	}

	if err := ValidateImage(p.Image); err != nil {
		add("plan", "image", "%v", err)
	}

	if p.Version == "" {
		add("plan", "version", "required (the version tag nodes report after the upgrade, e.g. v1.2.0)")
	} else if tag := ImageTag(p.Image); tag != "" && tag != p.Version {
		// The gate waits for nodes to report version: a mismatch could never pass.
		add("plan", "version", "%q differs from the image's tag %q (nodes report the tag they run)", p.Version, tag)
	}

	if p.Schematic != "" && (len(p.Schematic) != 64 || strings.Trim(p.Schematic, "0123456789abcdef") != "") {
		add("plan", "schematic", "%q is not a schematic ID (64 lowercase hex digits, as image-factory prints it)", p.Schematic)
	}

	if len(p.Waves) == 0 {
		add("plan", "waves", "at least one wave is required and the last must have percent: 100")
	}

	lastPercent := 0

	for i, w := range p.Waves {
		entry := fmt.Sprintf("waves[%d] %q", i, w.Name)
		if w.Name == "" {
			add(entry, "name", "required")
		}

		set := 0
		if len(w.Clusters) > 0 {
			set++
		}

		if w.Count > 0 {
			set++
		}

		if w.Percent != 0 {
			set++
		}

		if set != 1 {
			add(entry, "clusters/count/percent", "exactly one of clusters (named canary), count (counted canary) or percent (cumulative share) must be set")
		}

		if w.Count < 0 {
			add(entry, "count", "must be positive")
		}

		if w.Percent != 0 {
			if w.Percent < 1 || w.Percent > 100 {
				add(entry, "percent", "%d is out of range (1-100)", w.Percent)
			} else if w.Percent <= lastPercent {
				add(entry, "percent", "%d must be larger than the previous wave's %d (percent is cumulative)", w.Percent, lastPercent)
			}

			lastPercent = w.Percent
		}

		if w.Concurrency < 0 {
			add(entry, "concurrency", "must not be negative")
		}

		if w.MaxFailures < 0 {
			add(entry, "maxFailures", "must not be negative")
		}

		if w.MaxFailurePercent < 0 || w.MaxFailurePercent > 100 {
			add(entry, "maxFailurePercent", "%v is out of range (0-100)", w.MaxFailurePercent)
		}
	}

	if len(p.Waves) > 0 && p.Waves[len(p.Waves)-1].Percent != 100 {
		add(fmt.Sprintf("waves[%d]", len(p.Waves)-1), "percent", "the last wave must have percent: 100 so every selected cluster is covered")
	}

	if p.Concurrency < 1 {
		add("plan", "concurrency", "must be at least 1")
	}

	if p.MaxUnavailable < 1 {
		add("plan", "maxUnavailable", "must be at least 1")
	}

	for r, c := range p.RegionCaps {
		if c < 0 {
			add("plan", "regionCaps."+r, "must not be negative")
		}
	}

	for b, c := range p.BandwidthCaps {
		switch b {
		case inventory.BandwidthLow, inventory.BandwidthMedium, inventory.BandwidthHigh:
		default:
			add("plan", "bandwidthCaps."+b, "unknown bandwidth class (want low, medium or high)")
		}

		if c < 0 {
			add("plan", "bandwidthCaps."+b, "must not be negative")
		}
	}

	if p.Health.Timeout <= 0 {
		add("plan", "health.timeout", "must be positive")
	}

	if p.Health.Interval <= 0 {
		add("plan", "health.interval", "must be positive")
	}

	if p.Health.Soak < 0 {
		add("plan", "health.soak", "must not be negative")
	}

	if c := p.Health.CallTimeout.D(); c <= 0 || c > 10*time.Minute {
		add("plan", "health.callTimeout", "%s is out of range (above 0, at most 10m)", c)
	}

	if u := p.Health.UpgradeTimeout.D(); u <= 0 || u > 2*time.Hour {
		add("plan", "health.upgradeTimeout", "%s is out of range (above 0, at most 2h; Talos pulls the image inside the call)", u)
	}

	p.Staging.validate(add)

	if p.Budget.MaxFailures < 0 {
		add("plan", "budget.maxFailures", "must not be negative")
	}

	if p.Budget.MaxFailurePercent < 0 || p.Budget.MaxFailurePercent > 100 {
		add("plan", "budget.maxFailurePercent", "%v is out of range (0-100)", p.Budget.MaxFailurePercent)
	}

	if len(errs) > 0 {
		return errs
	}

	return nil
}

// ImageTag is the tag of an image reference (repo:tag@sha256:...), "" if it has none.
func ImageTag(ref string) string {
	repo, _, _ := strings.Cut(ref, "@")

	i := strings.LastIndex(repo, ":")
	if i < 0 || strings.Contains(repo[i:], "/") {
		return "" // no tag, or the colon belongs to a registry port
	}

	return repo[i+1:]
}

// ImageDigest is the digest of an image reference (repo[:tag]@sha256:...), "" if it has none.
func ImageDigest(ref string) string {
	_, digest, _ := strings.Cut(ref, "@")

	return digest
}

// ValidateImage checks that ref is pinned by a sha256 digest.
func ValidateImage(ref string) error {
	if ref == "" {
		return fmt.Errorf("required (installer image pinned by digest: repo[:tag]@sha256:<64 hex>)")
	}

	repo, digest, ok := strings.Cut(ref, "@")
	if !ok || repo == "" {
		return fmt.Errorf("%q is not pinned by digest (want repo[:tag]@sha256:<64 hex>)", ref)
	}

	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
		return fmt.Errorf("%q has a malformed digest (want sha256: followed by 64 lowercase hex digits)", ref)
	}

	return nil
}

// Allowed returns how many failures a budget of (count, percent of total) tolerates.
// The percentage counts in hundredths of a percent and the share is floored
// in integer arithmetic: through floats 0.57 % of 10,000 gave 56, not 57.
func Allowed(count int, percent float64, total int) int {
	hundredths := int64(math.Round(percent * 100))
	byPercent := int(hundredths * int64(total) / 10000)

	return max(count, byPercent)
}
