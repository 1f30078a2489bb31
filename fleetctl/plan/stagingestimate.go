package plan

import (
	"fmt"
	"time"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// BandwidthRate is the uplink a site's bandwidth class stands for, in bits
// per second, for staging estimates: low is a satellite or shared DSL line,
// medium a small office line, high a hospital backbone. A site with no
// class is estimated as low.
var BandwidthRate = map[string]int64{
	inventory.BandwidthLow:    2_000_000,
	inventory.BandwidthMedium: 20_000_000,
	inventory.BandwidthHigh:   200_000_000,
}

// SiteStaging is the staging estimate of one site.
type SiteStaging struct {
	Site  string `json:"site"`
	Nodes int    `json:"nodes"`
	// Bytes is what crosses the site's link: the image once per node, or
	// once with a site cache (CachedBytes).
	Bytes       int64 `json:"bytes"`
	CachedBytes int64 `json:"cachedBytes"`
	// Duration is Bytes at the site's rate; CachedDuration CachedBytes.
	Duration       time.Duration `json:"duration"`
	CachedDuration time.Duration `json:"cachedDuration"`
	// Available is the download time (inside staging windows) between now
	// and the opening of the site's next maintenance window.
	Available time.Duration `json:"available"`
	// WindowOpens is when that maintenance window opens.
	WindowOpens time.Time `json:"windowOpens"`
	// Fits says whether Duration (each node pulling) fits in Available;
	// CachedFits the same with a site cache.
	Fits       bool `json:"fits"`
	CachedFits bool `json:"cachedFits"`
}

// EstimateStaging says per site how many bytes staging moves, how long
// that takes at the site's bandwidth class and whether it fits before the
// site's next maintenance window, for an image of imageBytes.
func (p *Plan) EstimateStaging(inv *inventory.Inventory, a *Assignment, imageBytes int64, now time.Time) ([]SiteStaging, error) {
	nodes := map[string]int{}

	for _, w := range a.Waves {
		for _, cname := range w.Clusters {
			for _, c := range inv.Clusters {
				if c.Name == cname {
					nodes[c.Site] += len(c.Nodes)
				}
			}
		}
	}

	var out []SiteStaging

	for _, s := range inv.Sites {
		n := nodes[s.Name]
		if n == 0 {
			continue
		}

		maint, err := window.NewSchedule(s.TimeZone, s.Windows)
		if err != nil {
			return nil, fmt.Errorf("site %s: %w", s.Name, err)
		}

		dl, err := window.NewSchedule(s.TimeZone, p.Staging.Windows)
		if err != nil {
			return nil, fmt.Errorf("staging windows for site %s: %w", s.Name, err)
		}

		rate := BandwidthRate[s.Bandwidth]
		if rate == 0 {
			rate = BandwidthRate[inventory.BandwidthLow]
		}

		e := SiteStaging{Site: s.Name, Nodes: n, Bytes: imageBytes * int64(n), CachedBytes: imageBytes}
		e.Duration = time.Duration(float64(e.Bytes*8) / float64(rate) * float64(time.Second))
		e.CachedDuration = time.Duration(float64(e.CachedBytes*8) / float64(rate) * float64(time.Second))

		// a site always open for maintenance: staging runs ahead of the
		// node's turn, whenever that is; count a day
		e.WindowOpens = now.Add(24 * time.Hour)
		if !maint.Always() {
			e.WindowOpens = maint.NextOpen(now)
			if open, until := maint.OpenUntil(now); open {
				e.WindowOpens = maint.NextOpen(until)
			}
		}

		e.Available = downloadTime(dl, now, e.WindowOpens)
		e.Fits, e.CachedFits = e.Duration <= e.Available, e.CachedDuration <= e.Available

		out = append(out, e)
	}

	return out, nil
}

// downloadTime is how much of [from, to) the schedule is open.
func downloadTime(sch *window.Schedule, from, to time.Time) time.Duration {
	if sch.Always() {
		return to.Sub(from)
	}

	var total time.Duration

	for t := from; t.Before(to); {
		open, until := sch.OpenUntil(t)
		if !open {
			t = sch.NextOpen(t)

			continue
		}

		end := until
		if to.Before(end) {
			end = to
		}

		total += end.Sub(t)
		t = until
	}

	return total
}
