package plan

import (
	"time"

	"github.com/labfleet/labfleet/fleetctl/window"
)

// Staging pulls the image onto the nodes ahead of their maintenance
// window (Talos 1.13+ ImageService.Pull), so that inside the window only
// the switch and the reboot happen (LifecycleService.Upgrade with the
// pulled image). A node whose pull did not finish is not switched: it is
// skipped, with the reason, and a later rollout picks it up.
type Staging struct {
	// Enabled turns staging on.
	Enabled bool `yaml:"enabled" json:"enabled"`
	// Windows are when a site may download, in each site's own time zone
	// (same form as maintenance windows); none: any time.
	Windows []window.Window `yaml:"windows,omitempty" json:"windows,omitempty"`
	// PerSite is how many nodes of one site pull at once (default 1): the
	// site's link is shared, and a site cache makes later pulls local.
	PerSite int `yaml:"perSite,omitempty" json:"perSite,omitempty"`
	// Concurrency is how many pulls run at once in the rollout (default 20).
	Concurrency int `yaml:"concurrency,omitempty" json:"concurrency,omitempty"`
	// Timeout bounds one node's pull (default 1h, at most 24h).
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// Staging defaults.
const (
	DefaultStagingPerSite     = 1
	DefaultStagingConcurrency = 20
	DefaultStagingTimeout     = time.Hour
)

func (s *Staging) defaults() {
	if !s.Enabled {
		return
	}

	if s.PerSite == 0 {
		s.PerSite = DefaultStagingPerSite
	}

	if s.Concurrency == 0 {
		s.Concurrency = DefaultStagingConcurrency
	}

	if s.Timeout == 0 {
		s.Timeout = Duration(DefaultStagingTimeout)
	}
}

func (s *Staging) validate(add func(entry, field, format string, args ...any)) {
	if !s.Enabled {
		if len(s.Windows) > 0 || s.PerSite != 0 || s.Concurrency != 0 || s.Timeout != 0 {
			add("plan", "staging.enabled", "staging settings are given but staging is not enabled (set enabled: true)")
		}

		return
	}

	if _, err := window.NewSchedule("UTC", s.Windows); err != nil {
		add("plan", "staging.windows", "%v", err)
	}

	if s.PerSite < 0 {
		add("plan", "staging.perSite", "must not be negative")
	}

	if s.Concurrency < 0 {
		add("plan", "staging.concurrency", "must not be negative")
	}

	if t := s.Timeout.D(); t < 0 || t > 24*time.Hour {
		add("plan", "staging.timeout", "%s is out of range (above 0, at most 24h)", t)
	}
}
