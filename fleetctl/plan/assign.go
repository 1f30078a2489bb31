package plan

import (
	"fmt"
	"slices"

	"github.com/labfleet/labfleet/fleetctl/inventory"
)

// WaveAssignment is the concrete list of clusters of one wave.
type WaveAssignment struct {
	Index    int      `json:"index"`
	Name     string   `json:"name"`
	Clusters []string `json:"clusters"`
	Nodes    int      `json:"nodes"`
	// MaxFailures is the wave's budget resolved against its node count.
	MaxFailures int `json:"maxFailures"`
}

// Assignment is a plan applied to an inventory.
type Assignment struct {
	Waves []WaveAssignment `json:"waves"`
	// Clusters and Nodes selected in total.
	Clusters int `json:"clusters"`
	Nodes    int `json:"nodes"`
	// MaxFailures is the overall budget resolved against the selected node count.
	MaxFailures int `json:"maxFailures"`
}

// Selects reports whether the selector picks cluster c in site s.
func (sel Selector) Selects(c inventory.Cluster, s inventory.Site) bool {
	if len(sel.Regions) > 0 && !slices.Contains(sel.Regions, s.Region) {
		return false
	}

	if len(sel.Countries) > 0 && !slices.Contains(sel.Countries, s.Country) {
		return false
	}

	if len(sel.Sites) > 0 && !slices.Contains(sel.Sites, s.Name) {
		return false
	}

	if len(sel.Clusters) > 0 && !slices.Contains(sel.Clusters, c.Name) {
		return false
	}

	for k, v := range sel.Labels {
		if c.Labels[k] != v {
			return false
		}
	}

	return true
}

// Assign selects the clusters and distributes them over the waves: named
// canaries first, counted canaries next (in inventory order), then each
// percentage wave tops the cumulative share up to its percent.
//
// It runs twice per rollout over every cluster of the inventory, so it
// keeps positions in slices instead of copies of the clusters and maps of
// names.
func (p *Plan) Assign(inv *inventory.Inventory) (*Assignment, error) {
	// selected holds positions in inv.Clusters; index finds a selected
	// cluster's position in selected by name (the last one of a name
	// given twice, which Validate refuses).
	selected := make([]int, 0, len(inv.Clusters))
	index := make(map[string]int, len(inv.Clusters))

	for i := range inv.Clusters {
		c := &inv.Clusters[i]

		s, ok := inv.Site(c.Site)
		if !ok {
			return nil, fmt.Errorf("%s: cluster %q: site: unknown site %q", c.Source, c.Name, c.Site)
		}

		if p.Selector.Selects(*c, s) {
			index[c.Name] = len(selected)
			selected = append(selected, i)
		}
	}

	if len(selected) == 0 {
		return nil, fmt.Errorf("%s: plan: selector: selects no cluster of the inventory", p.Source)
	}

	cluster := func(k int) *inventory.Cluster { return &inv.Clusters[selected[k]] }

	// Named canaries are reserved up front so a counted or percentage wave
	// listed before them cannot take them.
	reserved := map[string]bool{}

	for _, w := range p.Waves {
		for _, name := range w.Clusters {
			reserved[name] = true
		}
	}

	// taken is by position in selected, and a name given twice counts
	// once, as its last position.
	taken := make([]bool, len(selected))
	ntaken := 0
	unique := len(index) == len(selected)
	next := 0 // index into selected of the first cluster not yet taken in order

	takeNext := func() (int, bool) {
		for next < len(selected) {
			k := next
			next++

			if !unique {
				k = index[cluster(k).Name]
			}

			if !taken[k] && !reserved[cluster(k).Name] {
				taken[k] = true
				ntaken++

				return k, true
			}
		}

		return 0, false
	}

	a := &Assignment{Clusters: len(selected)}

	for k := range selected {
		a.Nodes += len(cluster(k).Nodes)
	}

	for i, w := range p.Waves {
		wa := WaveAssignment{Index: i, Name: w.Name}

		switch {
		case len(w.Clusters) > 0:
			for _, name := range w.Clusters {
				k, ok := index[name]
				if !ok {
					return nil, fmt.Errorf("%s: waves[%d] %q: clusters: %q is not a selected cluster of the inventory", p.Source, i, w.Name, name)
				}

				if taken[k] {
					return nil, fmt.Errorf("%s: waves[%d] %q: clusters: %q is already in an earlier wave", p.Source, i, w.Name, name)
				}

				taken[k] = true
				ntaken++
				wa.Clusters = append(wa.Clusters, name)
				wa.Nodes += len(cluster(k).Nodes)
			}
		case w.Count > 0:
			if n := min(w.Count, len(selected)-ntaken); n > 0 {
				wa.Clusters = make([]string, 0, n)
			}

			for range w.Count {
				k, ok := takeNext()
				if !ok {
					break
				}

				wa.Clusters = append(wa.Clusters, cluster(k).Name)
				wa.Nodes += len(cluster(k).Nodes)
			}
		default:
			want := (w.Percent*len(selected) + 99) / 100
			if want > ntaken {
				wa.Clusters = make([]string, 0, want-ntaken)
			}

			for ntaken < want {
				k, ok := takeNext()
				if !ok {
					break
				}

				wa.Clusters = append(wa.Clusters, cluster(k).Name)
				wa.Nodes += len(cluster(k).Nodes)
			}
		}

		if len(wa.Clusters) == 0 {
			wa.Clusters = nil // "clusters": null in JSON, as ever
		}

		wa.MaxFailures = Allowed(w.MaxFailures, w.MaxFailurePercent, wa.Nodes)
		a.Waves = append(a.Waves, wa)
	}

	a.MaxFailures = Allowed(p.Budget.MaxFailures, p.Budget.MaxFailurePercent, a.Nodes)

	return a, nil
}
