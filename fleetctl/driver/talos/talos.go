// Package talos drives nodes through the Talos machine API with machinery's
// client and mTLS credentials from a talosconfig. It works against real Talos
// nodes, labos nodes and the simulator's API server alike.
package talos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Factory opens machine API clients; talosconfig files are read once and cached.
type Factory struct {
	mu      sync.Mutex
	configs map[string]*clientconfig.Config
}

// NewFactory returns a Factory.
func NewFactory() *Factory {
	return &Factory{configs: map[string]*clientconfig.Config{}}
}

func (f *Factory) config(path string) (*clientconfig.Config, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	if c, ok := f.configs[path]; ok {
		return c, nil
	}

	c, err := clientconfig.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading talosconfig %s: %w", path, err)
	}

	if c.Context == "" || c.Contexts[c.Context] == nil {
		return nil, fmt.Errorf("talosconfig %s has no current context", path)
	}

	f.configs[path] = c

	return c, nil
}

// Open connects to the node's endpoint with the cluster's credentials.
// The connection is lazy: errors reaching the node surface on the first call.
func (f *Factory) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	if t.Talosconfig == "" {
		return nil, fmt.Errorf("cluster %q has no talosconfig in the inventory", t.Cluster)
	}

	cfg, err := f.config(t.Talosconfig)
	if err != nil {
		return nil, err
	}

	c, err := client.New(ctx, client.WithConfig(cfg), client.WithEndpoints(t.Endpoint),
		// A node that reboots into its new image drops the connection; with
		// gRPC's default backoff (up to 120s) the health gate would notice
		// the node back far later than it is.
		client.WithGRPCDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", t.Endpoint, err)
	}

	return &node{c: c, preserve: t.Preserve()}, nil
}

type node struct {
	c        *client.Client
	preserve bool
}

func (n *node) Version(ctx context.Context) (string, error) {
	resp, err := n.c.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("querying version: %w", err)
	}

	for _, m := range resp.GetMessages() {
		if tag := m.GetVersion().GetTag(); tag != "" {
			return tag, nil
		}
	}

	return "", errors.New("querying version: node reported no version tag")
}

func (n *node) Upgrade(ctx context.Context, image string) error {
	resp, err := n.c.MachineClient.Upgrade(ctx, &machineapi.UpgradeRequest{Image: image, Preserve: n.preserve})
	if err == nil {
		_, err = client.FilterMessages(resp, err)
	}

	if err != nil {
		if inProgress(err) {
			return driver.ErrInProgress
		}

		return fmt.Errorf("requesting upgrade: %w", err)
	}

	return nil
}

// inProgress recognises "already upgrading" by its message: the simulator
// and labos answer "upgrade in progress", Talos reports its sequence lock as
// "locked". The status code alone says too little: labos answers
// FailedPrecondition for every refused upgrade (a bad image too).
func inProgress(err error) bool {
	msg := strings.ToLower(err.Error())
	if s, ok := status.FromError(err); ok {
		msg = strings.ToLower(s.Message())
	}

	return strings.Contains(msg, "in progress") || lockedWord.MatchString(msg)
}

// lockedWord matches "locked" but not "unlocked".
var lockedWord = regexp.MustCompile(`\blocked\b`)

func (n *node) Rollback(ctx context.Context) error {
	if err := n.c.Rollback(ctx); err != nil {
		return fmt.Errorf("requesting rollback: %w", err)
	}

	return nil
}

func (n *node) Health(ctx context.Context) (driver.Health, error) {
	resp, err := n.c.ServiceList(ctx)
	if err != nil {
		return driver.Health{}, fmt.Errorf("listing services: %w", err)
	}

	var h driver.Health

	for _, m := range resp.GetMessages() {
		for _, s := range m.GetServices() {
			h.Services = append(h.Services, driver.Service{
				ID:      s.GetId(),
				State:   s.GetState(),
				Healthy: s.GetHealth().GetHealthy(),
				Message: s.GetHealth().GetLastMessage(),
				// Talos marks a service without a health check "unknown".
				NoHealthCheck: s.GetHealth().GetUnknown(),
			})
		}
	}

	return h, nil
}

// FellBackFrom reads labos's status document through the machine API's Read.
// Real Talos nodes do not serve it; the error tells the engine it cannot know.
func (n *node) FellBackFrom(ctx context.Context, version string) (bool, error) {
	r, err := n.c.Read(ctx, nodeapi.StatusPath)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", nodeapi.StatusPath, err)
	}
	defer r.Close() //nolint:errcheck

	data, err := io.ReadAll(r)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", nodeapi.StatusPath, err)
	}

	st, err := nodeapi.ParseStatus(string(data))
	if err != nil {
		return false, err
	}

	return EntryFailed(st.FailedUpgrades, version), nil
}

// EntryFailed reports whether one of the boot entries systemd-boot gave up on
// (named <name>-<version>[+counter].efi) holds version.
func EntryFailed(entries []string, version string) bool {
	for _, e := range entries {
		base := strings.TrimSuffix(e, ".efi")
		if i := strings.LastIndex(base, "+"); i >= 0 {
			base = base[:i]
		}

		if strings.HasSuffix(base, "-"+version) {
			return true
		}
	}

	return false
}

func (n *node) Close() error { return n.c.Close() }
