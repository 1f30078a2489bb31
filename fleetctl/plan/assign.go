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
func (p *Plan) Assign(inv *inventory.Inventory) (*Assignment, error) {
	var selected []inventory.Cluster

	nodes := map[string]int{}

	for _, c := range inv.Clusters {
		s, ok := inv.Site(c.Site)
		if !ok {
			return nil, fmt.Errorf("%s: cluster %q: site: unknown site %q", c.Source, c.Name, c.Site)
		}

		if p.Selector.Selects(c, s) {
			selected = append(selected, c)
			nodes[c.Name] = len(c.Nodes)
		}
	}

	if len(selected) == 0 {
		return nil, fmt.Errorf("%s: plan: selector: selects no cluster of the inventory", p.Source)
	}

	// Named canaries are reserved up front so a counted or percentage wave
	// listed before them cannot take them.
	reserved := map[string]bool{}

	for _, w := range p.Waves {
		for _, name := range w.Clusters {
			reserved[name] = true
		}
	}

	taken := map[string]bool{}
	next := 0 // index into selected of the first cluster not yet taken in order

	takeNext := func() (string, bool) {
		for next < len(selected) {
			c := selected[next]
			next++

			if !taken[c.Name] && !reserved[c.Name] {
				taken[c.Name] = true

				return c.Name, true
			}
		}

		return "", false
	}

	a := &Assignment{Clusters: len(selected)}

	for _, c := range selected {
		a.Nodes += len(c.Nodes)
	}

	for i, w := range p.Waves {
		wa := WaveAssignment{Index: i, Name: w.Name}

		switch {
		case len(w.Clusters) > 0:
			for _, name := range w.Clusters {
				if _, ok := nodes[name]; !ok {
					return nil, fmt.Errorf("%s: waves[%d] %q: clusters: %q is not a selected cluster of the inventory", p.Source, i, w.Name, name)
				}

				if taken[name] {
					return nil, fmt.Errorf("%s: waves[%d] %q: clusters: %q is already in an earlier wave", p.Source, i, w.Name, name)
				}

				taken[name] = true
				wa.Clusters = append(wa.Clusters, name)
			}
		case w.Count > 0:
			for range w.Count {
				name, ok := takeNext()
				if !ok {
					break
				}

				wa.Clusters = append(wa.Clusters, name)
			}
		default:
			want := (w.Percent*len(selected) + 99) / 100
			for len(taken) < want {
				name, ok := takeNext()
				if !ok {
					break
				}

				wa.Clusters = append(wa.Clusters, name)
			}
		}

		for _, c := range wa.Clusters {
			wa.Nodes += nodes[c]
		}

		wa.MaxFailures = Allowed(w.MaxFailures, w.MaxFailurePercent, wa.Nodes)
		a.Waves = append(a.Waves, wa)
	}

	a.MaxFailures = Allowed(p.Budget.MaxFailures, p.Budget.MaxFailurePercent, a.Nodes)

	return a, nil
}
