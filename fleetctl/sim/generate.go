package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// Spec sizes a generated simulated fleet.
type Spec struct {
	Clusters        int // number of clusters
	NodesPerCluster int // first node is the control plane, the rest workers
	ClustersPerSite int // default 10
	Regions         int // default 10
	// Windows, when set, gives every site these maintenance windows; by default sites are always open.
	Windows []window.Window
}

var zones = []string{"Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "Europe/London",
	"America/Los_Angeles", "Asia/Kolkata", "America/Sao_Paulo", "Africa/Johannesburg", "UTC"}

var countries = []string{"DE", "US", "JP", "AU", "GB", "US", "IN", "BR", "ZA", "NL"}

// Inventory builds a deterministic inventory: sites spread over regions, time
// zones and bandwidth classes; one control plane node per cluster.
func Inventory(s Spec) *inventory.File {
	if s.ClustersPerSite <= 0 {
		s.ClustersPerSite = 10
	}

	if s.Regions <= 0 {
		s.Regions = 10
	}

	if s.NodesPerCluster <= 0 {
		s.NodesPerCluster = 1
	}

	f := &inventory.File{}
	bws := []string{inventory.BandwidthHigh, inventory.BandwidthMedium, inventory.BandwidthLow}

	for c := range s.Clusters {
		si := c / s.ClustersPerSite
		if c%s.ClustersPerSite == 0 {
			z := si % len(zones)
			f.Sites = append(f.Sites, inventory.Site{
				Name: fmt.Sprintf("site-%04d", si), Region: fmt.Sprintf("region-%02d", si%s.Regions),
				Country: countries[z], TimeZone: zones[z], Bandwidth: bws[si%len(bws)], Windows: s.Windows,
			})
		}

		cl := inventory.Cluster{Name: fmt.Sprintf("c%05d", c), Site: fmt.Sprintf("site-%04d", si)}

		for n := range s.NodesPerCluster {
			role := inventory.RoleWorker
			if n == 0 {
				role = inventory.RoleControlPlane
			}

			cl.Nodes = append(cl.Nodes, inventory.Node{
				Name: fmt.Sprintf("n%d", n), Endpoint: fmt.Sprintf("sim-c%05d-n%d:50000", c, n), Role: role,
			})
		}

		f.Clusters = append(f.Clusters, cl)
	}

	return f
}

// Image is a simulated installer reference for version: tagged and pinned by
// a digest derived from the version.
func Image(version string) string {
	sum := sha256.Sum256([]byte("labfleet-sim-installer-" + version))

	return "registry.sim.invalid/labfleet/installer:" + version + "@sha256:" + hex.EncodeToString(sum[:])
}

// WriteDir writes inventory.yaml, sim.yaml and an example plan.yaml into dir.
func WriteDir(dir string, s Spec, b Behaviour, p *plan.Plan) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}

	files := map[string]any{
		"inventory.yaml": Inventory(s),
		"sim.yaml":       b,
		"plan.yaml":      p,
	}

	for name, v := range files {
		var (
			data []byte
			err  error
		)

		if inv, ok := v.(*inventory.File); ok {
			data, err = marshalInventory(inv)
		} else {
			data, err = yaml.Marshal(v)
		}

		if err != nil {
			return fmt.Errorf("encoding %s: %w", name, err)
		}

		header := "# " + Label + " fleet written by fleetctl sim init\n"
		if err := os.WriteFile(filepath.Join(dir, name), append([]byte(header), data...), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}

	return nil
}

// inventoryDocClusters is how many clusters one YAML document of a written
// inventory holds.
const inventoryDocClusters = 500

// marshalInventory writes f as a stream of YAML documents ("---"), each
// with up to inventoryDocClusters clusters and the sites they need first.
// fleetctl reads one document at a time, and the YAML decoder holds a
// document's whole node tree while it decodes it (about 45 bytes of memory
// per byte of YAML): one 30,000-node document alone peaks at 145 MB.
func marshalInventory(f *inventory.File) ([]byte, error) {
	var (
		out  bytes.Buffer
		seen = map[string]bool{}
	)

	sites := map[string]inventory.Site{}
	for _, s := range f.Sites {
		sites[s.Name] = s
	}

	for i := 0; i < len(f.Clusters) || i == 0; i += inventoryDocClusters {
		doc := inventory.File{Clusters: f.Clusters[i:min(i+inventoryDocClusters, len(f.Clusters))]}

		for _, c := range doc.Clusters {
			if !seen[c.Site] {
				seen[c.Site] = true
				doc.Sites = append(doc.Sites, sites[c.Site])
			}
		}

		if i == 0 {
			// Sites without clusters, if any, go into the first document.
			for _, s := range f.Sites {
				if !seen[s.Name] {
					seen[s.Name] = true
					doc.Sites = append(doc.Sites, s)
				}
			}
		}

		data, err := yaml.Marshal(&doc)
		if err != nil {
			return nil, err
		}

		if i > 0 {
			out.WriteString("---\n")
		}

		out.Write(data)
	}

	return out.Bytes(), nil
}
