package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

// InventoryEntry names where a machine listed by UUID belongs.
type InventoryEntry struct {
	// UUID is the machine's SMBIOS UUID (talosctl get systeminformation).
	UUID string `yaml:"uuid" json:"uuid"`
	// Cluster is the cluster the machine joins.
	Cluster string `yaml:"cluster" json:"cluster"`
	// Role is controlplane or worker.
	Role string `yaml:"role" json:"role"`
}

// Inventory is the set of machines that get their configuration without an
// operator accepting them, by UUID.
type Inventory map[string]InventoryEntry

// LoadInventory reads a YAML list of InventoryEntry ({machines: [...]}).
func LoadInventory(path string) (Inventory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading machine inventory: %w", err)
	}

	var doc struct {
		// Machines are the machines listed by UUID.
		Machines []InventoryEntry `yaml:"machines"`
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}

	inv := Inventory{}

	var errs []error

	for i, e := range doc.Machines {
		where := fmt.Sprintf("%s: machines[%d]", path, i)

		switch {
		case e.UUID == "":
			errs = append(errs, fmt.Errorf("%s: uuid: empty", where))
		case e.Cluster == "":
			errs = append(errs, fmt.Errorf("%s (%s): cluster: empty", where, e.UUID))
		case e.Role != "controlplane" && e.Role != "worker":
			errs = append(errs, fmt.Errorf("%s (%s): role: %q is not controlplane or worker", where, e.UUID, e.Role))
		case inv[e.UUID].UUID != "":
			errs = append(errs, fmt.Errorf("%s: uuid: %s is listed twice", where, e.UUID))
		default:
			inv[e.UUID] = e
		}
	}

	return inv, errors.Join(errs...)
}

// Admission is why a machine may receive a configuration.
type Admission struct {
	Cluster string
	Role    string
	// By is "inventory" or "operator".
	By string
}

// ErrWithheld marks a machine that must not receive a configuration (yet).
var ErrWithheld = errors.New("configuration withheld")

// Admit decides whether a machine may be handed a configuration. A join
// token only lets a machine be seen: it must also be listed in the
// inventory by UUID or accepted by an operator. The error says why not.
func Admit(m registry.Machine, inv Inventory) (Admission, error) {
	entry, listed := inv[m.UUID]

	switch m.State {
	case registry.StateRejected:
		return Admission{}, fmt.Errorf("machine %s: %w: rejected by %s", m.UUID, ErrWithheld, m.DecidedBy)
	case registry.StateAccepted:
		if listed && (entry.Cluster != m.Cluster || entry.Role != m.Role) {
			return Admission{}, fmt.Errorf("machine %s: %w: the inventory lists it as %s/%s but %s accepted it as %s/%s (make them agree)",
				m.UUID, ErrWithheld, entry.Cluster, entry.Role, m.DecidedBy, m.Cluster, m.Role)
		}

		return Admission{Cluster: m.Cluster, Role: m.Role, By: "operator"}, nil
	}

	if listed {
		return Admission{Cluster: entry.Cluster, Role: entry.Role, By: "inventory"}, nil
	}

	return Admission{}, fmt.Errorf("machine %s (site %s): %w: its UUID is not in the inventory and no operator accepted it (run 'fleetctl machines accept %s --cluster C --role R')",
		m.UUID, m.Site, ErrWithheld, m.UUID)
}

// ConfigFor reads the machine configuration of a cluster role from dir:
// DIR/CLUSTER/ROLE.yaml.
func ConfigFor(dir string, a Admission) ([]byte, error) {
	if dir == "" {
		return nil, fmt.Errorf("%w: no configDir is set in the hub config (put CLUSTER/ROLE.yaml files there)", ErrWithheld)
	}

	if strings.ContainsAny(a.Cluster+a.Role, `/\`) || strings.HasPrefix(a.Cluster, ".") {
		return nil, fmt.Errorf("cluster %q / role %q: not a plain name", a.Cluster, a.Role)
	}

	path := filepath.Join(dir, a.Cluster, a.Role+".yaml")

	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the configuration of %s/%s: %w", a.Cluster, a.Role, err)
	}

	return data, nil
}

// Applier hands a machine configuration to a node through its tunnel.
type Applier interface {
	Apply(ctx context.Context, tunnelAddr string, config []byte) error
}

// NodeAPIPort is the port of a node's API on its tunnel address (Talos's
// apid port, as on any other address of the node).
const NodeAPIPort = 50000

// MaintenanceApplier applies a configuration with Talos machinery's client
// to a node in maintenance mode: its API on port 50000 of its tunnel
// address, TLS without client certificates (a node in maintenance mode has
// none yet; the WireGuard link authenticated it, the hub holds its key).
type MaintenanceApplier struct {
	// Port is the node API port (default 50000).
	Port int
}

// Apply implements Applier.
func (a MaintenanceApplier) Apply(ctx context.Context, tunnelAddr string, config []byte) error {
	port := a.Port
	if port == 0 {
		port = NodeAPIPort
	}

	ep := net.JoinHostPort(tunnelAddr, fmt.Sprint(port))

	c, err := client.New(ctx,
		client.WithEndpoints(ep),
		//nolint:gosec // maintenance mode serves a self-signed certificate; the tunnel is the authentication
		client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true}),
	)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", ep, err)
	}
	defer c.Close() //nolint:errcheck

	if _, err := c.ApplyConfiguration(ctx, &machineapi.ApplyConfigurationRequest{
		Data: config,
		Mode: machineapi.ApplyConfigurationRequest_AUTO,
	}); err != nil {
		return fmt.Errorf("applying configuration at %s: %w", ep, err)
	}

	return nil
}
