package plan_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/internal/cputime"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
)

// referenceAssign is Assign as it was before CPU round 5 (issue 13), kept to
// hold the new one to the same results. It selects the clusters and distributes them over the waves: named
// canaries first, counted canaries next (in inventory order), then each
// percentage wave tops the cumulative share up to its percent.
func referenceAssign(p *plan.Plan, inv *inventory.Inventory) (*plan.Assignment, error) {
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

	a := &plan.Assignment{Clusters: len(selected)}

	for _, c := range selected {
		a.Nodes += len(c.Nodes)
	}

	for i, w := range p.Waves {
		wa := plan.WaveAssignment{Index: i, Name: w.Name}

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

		wa.MaxFailures = plan.Allowed(w.MaxFailures, w.MaxFailurePercent, wa.Nodes)
		a.Waves = append(a.Waves, wa)
	}

	a.MaxFailures = plan.Allowed(p.Budget.MaxFailures, p.Budget.MaxFailurePercent, a.Nodes)

	return a, nil
}

// TestAssignMatchesReference: Assign gives the same waves (in JSON too,
// where an empty wave is null) and the same errors as before it kept
// positions instead of copies, over plans with named, counted and
// percentage waves, selectors, reserved canaries met by counted waves, and
// inventories with a cluster name given twice or an unknown site.
func TestAssignMatchesReference(t *testing.T) {
	invs := map[string]*inventory.Inventory{"fleet 40": fleet(40), "fleet 3": fleet(3)}

	f := sim.Inventory(sim.Spec{Clusters: 237, NodesPerCluster: 3})
	invs["sim"] = &inventory.Inventory{Sites: f.Sites, Clusters: f.Clusters}

	dup := fleet(12)
	dup.Clusters = append(dup.Clusters, dup.Clusters[4], dup.Clusters[0])
	dup.Clusters[len(dup.Clusters)-1].Nodes = dup.Clusters[len(dup.Clusters)-1].Nodes[:1]
	invs["duplicate names"] = dup

	bad := fleet(5)
	bad.Clusters[3].Site = "nowhere"
	invs["unknown site"] = bad

	waves := map[string]string{
		"named, counted, percent": `[{name: canary, clusters: [c3]}, {name: counted, count: 2}, {name: ten, percent: 10}, {name: all, percent: 100}]`,
		"counted first":           `[{name: counted, count: 3}, {name: named, clusters: [c0, c4]}, {name: half, percent: 50}, {name: empty, percent: 51}, {name: all, percent: 100}]`,
		"counted past the end":    `[{name: counted, count: 500}, {name: none, count: 2}, {name: all, percent: 100}]`,
		"only named":              `[{name: a, clusters: [c0]}, {name: b, clusters: [c1, c2]}, {name: all, percent: 100}]`,
		"named twice":             `[{name: a, clusters: [c0]}, {name: b, clusters: [c0]}, {name: all, percent: 100}]`,
		"unknown named":           `[{name: a, clusters: [zz]}, {name: all, percent: 100}]`,
		"percent steps":           `[{name: one, percent: 1}, {name: two, percent: 2}, {name: thirty, percent: 33}, {name: all, percent: 100}]`,
		"named duplicate":         `[{name: a, clusters: [c4]}, {name: c, count: 1}, {name: all, percent: 100}]`,
	}

	selectors := map[string]plan.Selector{
		"all":    {},
		"region": {Regions: []string{"us", "region-01"}},
		"labels": {Countries: []string{"DE"}, Labels: map[string]string{"ring": "0"}},
		"none":   {Clusters: []string{"nothing"}},
	}

	compared := 0

	for iname, inv := range invs {
		for wname, w := range waves {
			for sname, sel := range selectors {
				p, err := plan.Parse("plan.yaml", []byte(`
name: v2
image: registry.example/installer:v2.0.0@`+digest+`
version: v2.0.0
waves: `+w+`
budget: {maxFailurePercent: 5}
`))
				require.NoError(t, err)

				p.Selector = sel

				want, wantErr := referenceAssign(p, inv)
				got, err := p.Assign(inv)

				where := fmt.Sprintf("%s / %s / %s", iname, wname, sname)
				if wantErr != nil {
					require.EqualError(t, err, wantErr.Error(), where)

					continue
				}

				require.NoError(t, err, where)
				require.Equal(t, want, got, where)

				wj, _ := json.Marshal(want)
				gj, _ := json.Marshal(got)
				require.Equal(t, string(wj), string(gj), where)

				compared++
			}
		}
	}

	assert.Greater(t, compared, 25)
}

// BenchmarkAssignSim assigns the waves of the plan `fleetctl sim init`
// writes over its inventory of 10,000 and 100,000 clusters (3 nodes each),
// as a rollout does twice; cpu-s/op is the process CPU time per call.
func BenchmarkAssignSim(b *testing.B) {
	for _, clusters := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("clusters=%d", clusters), func(b *testing.B) {
			f := sim.Inventory(sim.Spec{Clusters: clusters, NodesPerCluster: 3})
			inv := &inventory.Inventory{Sites: f.Sites, Clusters: f.Clusters}

			p, err := plan.Parse("plan.yaml", []byte(`
name: v2
image: registry.example/installer:v2.0.0@`+digest+`
version: v2.0.0
waves: [{name: canary, count: 1}, {name: early, percent: 10}, {name: half, percent: 50}, {name: all, percent: 100}]
budget: {maxFailurePercent: 5}
`))
			require.NoError(b, err)

			b.ReportAllocs()
			b.ResetTimer()

			c0 := cputime.Process()

			for b.Loop() {
				if _, err := p.Assign(inv); err != nil {
					b.Fatal(err)
				}
			}

			b.ReportMetric((cputime.Process()-c0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}
