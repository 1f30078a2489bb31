package inventory_test

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/window"
)

func referenceNormalizeEndpoint(ep string) string {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(ep, "["), "]"), inventory.DefaultPort
	}

	return strings.ToLower(net.JoinHostPort(host, port))
}

// referenceValidate is Validate as it was before CPU round 5 (issue 13), kept
// to hold the faster one to the same errors. It checks every entry and returns all problems found (as inventory.Errors).
func referenceValidate(inv *inventory.Inventory) error {
	var errs inventory.Errors

	add := func(file, entry, field, format string, args ...any) {
		errs = append(errs, &inventory.FieldError{File: file, Entry: entry, Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	sites := map[string]string{}

	for i, s := range inv.Sites {
		entry := fmt.Sprintf("sites[%d] %q", i, s.Name)
		if s.Name == "" {
			add(s.Source, entry, "name", "required")
		} else if prev, dup := sites[s.Name]; dup {
			add(s.Source, entry, "name", "duplicate site name (first defined in %s)", prev)
		} else {
			sites[s.Name] = s.Source
		}

		if s.Region == "" {
			add(s.Source, entry, "region", "required (the region groups sites for concurrency caps)")
		}

		if s.Country != "" && (len(s.Country) != 2 || strings.ToUpper(s.Country) != s.Country) {
			add(s.Source, entry, "country", "%q is not an ISO 3166-1 alpha-2 code (e.g. DE)", s.Country)
		}

		switch s.Bandwidth {
		case "", inventory.BandwidthLow, inventory.BandwidthMedium, inventory.BandwidthHigh:
		default:
			add(s.Source, entry, "bandwidth", "%q is not a bandwidth class (want low, medium or high)", s.Bandwidth)
		}

		if s.TimeZone == "" {
			add(s.Source, entry, "timezone", "required (an IANA zone such as Europe/Berlin or UTC)")
		} else if _, err := window.NewSchedule(s.TimeZone, s.Windows); err != nil {
			field, msg, _ := strings.Cut(err.Error(), ": ")
			add(s.Source, entry, field, "%s", msg)
		}
	}

	clusters := map[string]string{}

	type seenEndpoint struct{ cluster, node, as string }

	// Across the whole inventory: two entries for one machine would upgrade
	// it twice and break every per-cluster guarantee.
	endpoints := map[string]seenEndpoint{}

	for i, c := range inv.Clusters {
		entry := fmt.Sprintf("clusters[%d] %q", i, c.Name)
		if c.Name == "" {
			add(c.Source, entry, "name", "required")
		} else if prev, dup := clusters[c.Name]; dup {
			add(c.Source, entry, "name", "duplicate cluster name (first defined in %s)", prev)
		} else {
			clusters[c.Name] = c.Source
		}

		if c.Site == "" {
			add(c.Source, entry, "site", "required (name of a site in the inventory)")
		} else if _, ok := sites[c.Site]; !ok {
			add(c.Source, entry, "site", "unknown site %q (define it under sites:)", c.Site)
		}

		if len(c.Nodes) == 0 {
			add(c.Source, entry, "nodes", "a cluster needs at least one node")
		}

		if c.Talosconfig != "" {
			if _, err := os.Stat(c.Talosconfig); err != nil {
				add(c.Source, entry, "talosconfig", "%s: no such file (fleetctl site init writes one)", c.Talosconfig)
			}
		}

		names := map[string]bool{}

		for j, n := range c.Nodes {
			nentry := fmt.Sprintf("%s nodes[%d] %q", entry, j, n.Name)
			if n.Name == "" {
				add(c.Source, nentry, "name", "required")
			} else if names[n.Name] {
				add(c.Source, nentry, "name", "duplicate node name in cluster")
			}

			names[n.Name] = true

			switch {
			case n.Endpoint == "" && n.Machine == "":
				add(c.Source, nentry, "endpoint", "required (host or host:port of the machine API, or machine: UUID for a node enrolled at the hub)")
			case n.Endpoint != "" && n.Machine != "":
				add(c.Source, nentry, "machine", "give either endpoint or machine, not both (machine: the node is reached through the hub)")
			case n.Machine != "":
				if err := uuid.Validate(n.Machine); err != nil || len(n.Machine) != 36 {
					add(c.Source, nentry, "machine", "%q is not a machine UUID (8-4-4-4-12 hex digits, as fleetctl machines ls shows)", n.Machine)
				} else if prev, dup := endpoints[n.Address()]; dup {
					add(c.Source, nentry, "machine", "%q is also node %s of cluster %s", n.Machine, prev.node, prev.cluster)
				} else {
					endpoints[n.Address()] = seenEndpoint{cluster: c.Name, node: n.Name, as: n.Machine}
				}
			default:
				key := referenceNormalizeEndpoint(n.Endpoint)
				if prev, dup := endpoints[key]; dup {
					add(c.Source, nentry, "endpoint", "%q is also node %s of cluster %s (%q; the port defaults to %s)",
						n.Endpoint, prev.node, prev.cluster, prev.as, inventory.DefaultPort)
				} else {
					endpoints[key] = seenEndpoint{cluster: c.Name, node: n.Name, as: n.Endpoint}
				}
			}

			if n.Role != inventory.RoleControlPlane && n.Role != inventory.RoleWorker {
				add(c.Source, nentry, "role", "%q is not a role (want controlplane or worker)", n.Role)
			}
		}
	}

	if len(errs) > 0 {
		return errs
	}

	return nil
}

// TestValidateMatchesReference: Validate reports, byte for byte, what it
// reported before it was made cheaper, over inventories with every kind of
// problem (the schedule check is remembered per zone and windows, entry
// names are written only for problems, and the endpoint index keeps
// positions instead of strings).
func TestValidateMatchesReference(t *testing.T) {
	docs := []string{
		`
sites:
  - {name: x, region: "", country: Germany, timezone: Mars/Base, bandwidth: huge}
  - {name: x, region: r, timezone: Mars/Base}
  - {name: y, region: r, timezone: Local}
  - {name: "", region: r, country: de, timezone: UTC}
  - {name: w1, region: r, timezone: UTC, windows: [{start: "25:00", duration: 1h}]}
  - {name: w2, region: r, timezone: UTC, windows: [{start: "02:00", duration: 1h}]}
  - {name: w3, region: r, timezone: UTC, windows: [{start: "02:00", duration: 1h}, {days: [mon, xyz], start: "02:00", duration: 1h}]}
  - {name: w4, region: r, timezone: UTC, windows: [{start: "02:00", duration: 1h}, {days: [mon, xyz], start: "02:00", duration: 1h}]}
  - {name: w5, region: r, timezone: UTC, windows: [{days: [mon], start: "02:00", duration: 25h}]}
  - {name: w6, region: r, timezone: Europe/Berlin, windows: [{days: [mon], start: "02:00", duration: 25h}]}
  - {name: w7, region: r, timezone: Europe/Berlin}
  - {name: w8, region: r, timezone: ""}
`,
		`
sites:
  - {name: s, region: r, timezone: UTC}
clusters:
  - name: a
    site: nowhere
    talosconfig: /nonexistent/talosconfig
    nodes:
      - {name: n1, endpoint: "1.2.3.4", role: master}
      - {name: n1, endpoint: "1.2.3.4", role: worker}
      - {name: "", endpoint: "1.2.3.5"}
      - {name: "", endpoint: "1.2.3.6"}
      - {name: n2, endpoint: "HOST-A:50000", role: worker}
      - {name: n3, endpoint: "host-a", role: worker}
      - {name: n4, endpoint: "[FD00::1]", role: worker}
      - {name: n5, endpoint: "fd00::1", role: worker}
      - {name: n6, endpoint: "[fd00::1]:50000", role: worker}
      - {name: n7, endpoint: "a:b:c", role: worker}
      - {name: n8, endpoint: "[a:b:c]", role: worker}
  - name: a
    site: s
    nodes: []
  - name: ""
    site: ""
  - name: m
    site: s
    nodes:
      - {name: cp1, machine: 5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c01, role: controlplane}
      - {name: cp2, machine: 5B1D6C2E-4F0A-4C1B-9E3A-2F6D8A7B9C01, role: controlplane}
      - {name: cp3, endpoint: "machine:5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c01", role: controlplane}
      - {name: cp4, machine: "../../etc", role: controlplane}
      - {name: cp5, machine: 7c2e5b1d-4f0a-4c1b-9e3a-2f6d8a7b9c03, endpoint: 10.0.0.4, role: controlplane}
      - {name: cp6, role: controlplane}
      - {name: cp7, machine: "{7c2e5b1d-4f0a-4c1b-9e3a-2f6d8a7b9c03}", role: controlplane}
  - name: e
    site: s
    nodes:
      - {name: x, endpoint: "machine:7c2e5b1d-4f0a-4c1b-9e3a-2f6d8a7b9c09", role: worker}
      - {name: y, machine: 7c2e5b1d-4f0a-4c1b-9e3a-2f6d8a7b9c09, role: worker}
      - {name: z, endpoint: "sim-c1-n0:50000", role: worker}
      - {name: z, endpoint: "sim-c1-n0", role: worker}
`,
	}

	for i, doc := range docs {
		inv, err := inventory.Parse("inv.yaml", []byte(doc))
		require.NoError(t, err)

		want := referenceValidate(inv)
		require.Error(t, want)

		got := inv.Validate()
		require.Error(t, got)
		assert.Equal(t, want.Error(), got.Error(), "document %d", i)
		assert.Greater(t, strings.Count(got.Error(), "\n"), 10, "document %d", i)
	}
}

func TestNormalizeEndpointMatchesReference(t *testing.T) {
	for _, ep := range []string{
		"", "10.0.0.10", "10.0.0.10:50000", "HOST:50000", "host", "Host", "[fd00::1]", "[FD00::1]:50000",
		"fd00::1", "a:b:c", "[a:b:c]", "[a]:1", "a]:1", "[a:1", ":", ":50000", "host:", "[]", "[]:1",
		"machine:5B1D6C2E-4F0A-4C1B-9E3A-2F6D8A7B9C01", "x[y]:1", "a%b:1", "[fe80::1%eth0]:1",
	} {
		assert.Equal(t, referenceNormalizeEndpoint(ep), inventory.NormalizeEndpoint(ep), ep)
	}
}
