// Package driver is how the engine talks to nodes. The same small interface
// is implemented over the Talos machine API (package driver/talos, for real
// Talos and labos nodes) and by the simulator (package sim).
package driver

import (
	"context"
	"errors"
	"sort"
)

// ErrInProgress is returned by Upgrade when the node is already executing an
// upgrade (for instance one requested before a crash): the engine then
// treats the upgrade as accepted instead of asking again.
var ErrInProgress = errors.New("upgrade already in progress on node")

// Target identifies the node to open.
type Target struct {
	Cluster     string // cluster name from the inventory
	Node        string // node name within the cluster
	Endpoint    string // host[:port] of the machine API
	Role        string // controlplane or worker
	Talosconfig string // client configuration (mTLS credentials) for the cluster
	// ControlPlanes is the number of control plane nodes of the cluster.
	ControlPlanes int
}

// Preserve tells whether the upgrade must keep the node's data (Talos's
// preserve flag): a control plane node of a cluster with one or two control
// plane nodes, whose etcd would lose quorum (or its only member) otherwise.
// Talos refuses such an upgrade without preserve.
func (t Target) Preserve() bool {
	return t.Role == "controlplane" && t.ControlPlanes > 0 && t.ControlPlanes <= 2
}

// Service is one service and its health as the node reports it.
type Service struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Healthy bool   `json:"healthy"`
	Message string `json:"message,omitempty"`
	// NoHealthCheck: the service has no health check (Talos reports such
	// services healthy=false, unknown=true). The gate ignores them, as
	// talosctl's health check does.
	NoHealthCheck bool `json:"noHealthCheck,omitempty"`
}

// Health is a node's service list.
type Health struct {
	Services []Service `json:"services"`
}

// Healthy reports whether the node reported services and all of them are healthy.
func (h Health) Healthy() bool {
	return len(h.Services) > 0 && len(h.Unhealthy()) == 0
}

// Unhealthy names the services that are not healthy, sorted.
func (h Health) Unhealthy() []string {
	var bad []string

	for _, s := range h.Services {
		if !s.Healthy && !s.NoHealthCheck {
			bad = append(bad, s.ID)
		}
	}

	sort.Strings(bad)

	return bad
}

// Node is an open connection to one node.
type Node interface {
	// Version is the version tag the node runs now.
	Version(ctx context.Context) (string, error)
	// Upgrade asks the node to install image and reboot into it. It returns once
	// the node accepted the request (ErrInProgress if it is already upgrading).
	Upgrade(ctx context.Context, image string) error
	// Rollback asks the node to boot its previous image again.
	Rollback(ctx context.Context) error
	// Health lists the node's services with their health.
	Health(ctx context.Context) (Health, error)
	// Close releases the connection.
	Close() error
}

// Factory opens nodes.
type Factory interface {
	Open(ctx context.Context, t Target) (Node, error)
}

// FactoryFunc adapts a function to Factory.
type FactoryFunc func(ctx context.Context, t Target) (Node, error)

// Open calls f.
func (f FactoryFunc) Open(ctx context.Context, t Target) (Node, error) { return f(ctx, t) }

// FallbackReporter is implemented by nodes that can say whether they already
// tried a version and fell back from it by themselves. The simulator knows
// it from its journal, so resume uses it: a node that took a request just
// before a crash, failed and fell back is not asked to upgrade again. The
// talos driver can tell only for its own upgrade request (the node's boot
// ID changed since, and it runs another version), which lets the health
// gate fail at once instead of waiting out its timeout; an error means
// "cannot tell".
type FallbackReporter interface {
	FellBackFrom(ctx context.Context, version string) (bool, error)
}
