package plan_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

const goodPlan = `
name: v2
image: registry.example/installer:v2.0.0@` + digest + `
version: v2.0.0
waves:
  - {name: canary, clusters: [c3]}
  - {name: counted, count: 2}
  - {name: ten, percent: 10}
  - {name: all, percent: 100, maxFailurePercent: 10, concurrency: 5}
health: {timeout: 5m, soak: 1m}
budget: {maxFailures: 3}
`

func TestParseAppliesDefaults(t *testing.T) {
	p, err := plan.Parse("plan.yaml", []byte(goodPlan))
	require.NoError(t, err)

	assert.Equal(t, 1, p.Concurrency)
	assert.Equal(t, 1, p.MaxUnavailable)
	assert.Equal(t, 5*time.Minute, p.Health.Timeout.D())
	assert.Equal(t, time.Minute, p.Health.Soak.D())
	assert.Equal(t, 5*time.Second, p.Health.Interval.D())
	assert.True(t, p.Rollback())
	assert.Equal(t, 5, p.WaveConcurrency(3))
	assert.Equal(t, 1, p.WaveConcurrency(0))
}

func TestValidateNamesFields(t *testing.T) {
	for _, tc := range []struct {
		name, replace, with, want string
	}{
		{"image without digest", "@" + digest, "", `plan.yaml: plan: image: "registry.example/installer:v2.0.0" is not pinned by digest`},
		{"short digest", digest, "sha256:abc", "malformed digest"},
		{"no version", "version: v2.0.0", "", "plan: version: required"},
		{"last wave below 100", "percent: 100", "percent: 90", "the last wave must have percent: 100"},
		{"two selectors in a wave", "{name: counted, count: 2}", "{name: counted, count: 2, percent: 5}", `waves[1] "counted": clusters/count/percent: exactly one`},
		{"percent not increasing", "{name: ten, percent: 10}", "{name: ten, percent: 100}", `waves[3] "all": percent: 100 must be larger than the previous wave's 100`},
		{"bad duration", "timeout: 5m", "timeout: soon", `"soon" is not a duration`},
		{"unknown field", "budget:", "budgett:", "budgett"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := strings.Replace(goodPlan, tc.replace, tc.with, 1)
			_, err := plan.Parse("plan.yaml", []byte(doc))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func fleet(n int) *inventory.Inventory {
	inv := &inventory.Inventory{Sites: []inventory.Site{
		{Name: "eu", Region: "eu", Country: "DE", TimeZone: "UTC"},
		{Name: "us", Region: "us", Country: "US", TimeZone: "UTC"},
	}}

	for i := range n {
		site := "eu"
		if i%2 == 1 {
			site = "us"
		}

		inv.Clusters = append(inv.Clusters, inventory.Cluster{
			Name: fmt.Sprintf("c%d", i), Site: site, Labels: map[string]string{"ring": fmt.Sprint(i % 3)},
			Nodes: []inventory.Node{{Name: "n", Endpoint: "e", Role: inventory.RoleControlPlane}, {Name: "w", Endpoint: "f", Role: inventory.RoleWorker}},
		})
	}

	return inv
}

func TestAssign(t *testing.T) {
	p, err := plan.Parse("plan.yaml", []byte(goodPlan))
	require.NoError(t, err)

	a, err := p.Assign(fleet(40))
	require.NoError(t, err)

	require.Len(t, a.Waves, 4)
	assert.Equal(t, []string{"c3"}, a.Waves[0].Clusters, "named canary")
	assert.Equal(t, []string{"c0", "c1"}, a.Waves[1].Clusters, "counted canary takes the next clusters in order")
	assert.Equal(t, []string{"c2"}, a.Waves[2].Clusters, "10% of 40 = 4 clusters cumulative, 3 taken by the canaries")
	assert.Len(t, a.Waves[3].Clusters, 36)
	assert.Equal(t, 72, a.Waves[3].Nodes)
	assert.Equal(t, 7, a.Waves[3].MaxFailures, "10% of 72 nodes, rounded down")
	assert.Equal(t, 80, a.Nodes)
	assert.Equal(t, 3, a.MaxFailures)

	seen := map[string]bool{}

	for _, w := range a.Waves {
		for _, c := range w.Clusters {
			assert.False(t, seen[c], "cluster %s in two waves", c)
			seen[c] = true
		}
	}

	assert.Len(t, seen, 40, "every selected cluster in exactly one wave")
}

func TestAssignSelector(t *testing.T) {
	for _, tc := range []struct {
		name string
		sel  plan.Selector
		want int
	}{
		{"all", plan.Selector{}, 10},
		{"region", plan.Selector{Regions: []string{"us"}}, 5},
		{"country and label", plan.Selector{Countries: []string{"DE"}, Labels: map[string]string{"ring": "0"}}, 2},
		{"cluster names", plan.Selector{Clusters: []string{"c1", "c2", "c9"}}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &plan.Plan{Name: "x", Image: "r@" + digest, Version: "v", Selector: tc.sel, Waves: []plan.Wave{{Name: "all", Percent: 100}}}
			p.Default()

			a, err := p.Assign(fleet(10))
			require.NoError(t, err)
			assert.Equal(t, tc.want, a.Clusters)
		})
	}
}

func TestAssignRejectsUnknownCanary(t *testing.T) {
	p, err := plan.Parse("plan.yaml", []byte(strings.Replace(goodPlan, "[c3]", "[zz]", 1)))
	require.NoError(t, err)

	_, err = p.Assign(fleet(5))
	require.ErrorContains(t, err, `plan.yaml: waves[0] "canary": clusters: "zz" is not a selected cluster`)
}

func BenchmarkAssign10kClusters(b *testing.B) {
	p, err := plan.Parse("plan.yaml", []byte(goodPlan))
	require.NoError(b, err)

	inv := fleet(10000)

	for b.Loop() {
		if _, err := p.Assign(inv); err != nil {
			b.Fatal(err)
		}
	}
}

// Finding 7 of issue 13: a plan whose version differs from the image's tag
// was accepted; its gate could never pass (or passed on the wrong image).
func TestVersionMustMatchImageTag(t *testing.T) {
	p := &plan.Plan{Name: "x", Image: "registry.example:5000/installer:v2.0.1@" + digest, Version: "v2.0.0",
		Waves: []plan.Wave{{Name: "all", Percent: 100}}}
	p.Default()

	err := p.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `version: "v2.0.0" differs from the image's tag "v2.0.1"`)

	p.Version = "v2.0.1"
	require.NoError(t, p.Validate())

	assert.Empty(t, plan.ImageTag("registry.example:5000/installer@"+digest), "a registry port is no tag")
}

// Finding 10 of issue 13: budgets were floored through floats, so 0.57 % of
// 10,000 nodes allowed 56 failures, not 57.
func TestAllowedIsExact(t *testing.T) {
	assert.Equal(t, 57, plan.Allowed(0, 0.57, 10000))
	assert.Equal(t, 29, plan.Allowed(0, 0.29, 10000))
	assert.Equal(t, 1, plan.Allowed(0, 10, 19), "floored: 1.9 allows 1")
	assert.Equal(t, 3, plan.Allowed(3, 0.57, 100), "the larger of count and percent")
}

func TestSchematicValidated(t *testing.T) {
	p := &plan.Plan{Name: "x", Image: "registry.example/installer:v2@" + digest, Version: "v2", Schematic: "ABC",
		Waves: []plan.Wave{{Name: "all", Percent: 100}}}
	p.Default()

	err := p.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `schematic: "ABC" is not a schematic ID`)

	p.Schematic = strings.Repeat("ab", 32)
	require.NoError(t, p.Validate())
	assert.Equal(t, digest, plan.ImageDigest(p.Image))
}
