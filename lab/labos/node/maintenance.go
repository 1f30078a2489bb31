package node

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"

	"github.com/labfleet/labfleet/lab/labos/api"
	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/labos/sysinit"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// TalosTag is the Talos release labos stands in for; maintenance mode
// reports it so clients choose the API they would use on that release.
const TalosTag = api.TalosTag

// loadConfig takes the machine config kept on STATE, or waits for one in
// maintenance mode (Talos's first boot without a config). It returns an
// error only when ctx ends while waiting.
func (n *Node) loadConfig(ctx context.Context) error {
	data, err := config.ReadStored(StateMount)

	switch {
	case err == nil:
		m, perr := parseComplete(data)
		if perr != nil {
			// a config that was valid when stored no longer is: say so and
			// run without one rather than ask again and overwrite it
			n.fatal("config", fmt.Errorf("stored machine config: %w", perr))

			return nil
		}

		n.useConfig(m)

		return nil
	case errors.Is(err, config.ErrNotStored):
		return n.maintenance(ctx)
	default:
		n.fatal("config", err)

		return nil
	}
}

func parseComplete(data []byte) (*config.Machine, error) {
	m, err := config.Parse(data)
	if err != nil {
		return nil, err
	}

	if err := m.Complete(); err != nil {
		return nil, err
	}

	// refused now, naming the document, rather than at the first pull
	if _, err := config.Mirrors(data); err != nil {
		return nil, fmt.Errorf("registry mirrors: %w", err)
	}

	return m, nil
}

func (n *Node) useConfig(m *config.Machine) {
	if n.embedded != nil {
		m = m.WithManifests(n.embedded.InlineManifests)
	}

	n.configMu.Lock()
	n.machine = m
	n.configMu.Unlock()

	n.update(func(s *nodeapi.Status) { s.Configured = true })
}

// maintenance serves Talos's maintenance API until a config is applied,
// then stops it so the authenticated API can take the port.
func (n *Node) maintenance(ctx context.Context) error {
	tlsCfg, err := api.MaintenanceTLS(n.apiNames())
	if err != nil {
		n.fatal("maintenance", err)

		return nil
	}

	addr := fmt.Sprintf(":%d", nodeapi.APIPort)

	lis, err := net.Listen("tcp", addr)
	if err != nil {
		n.fatal("maintenance", err)

		return nil
	}

	stop := make(chan struct{})
	done := make(chan error, 1)
	srv := &api.Maintenance{Node: n, Tag: TalosTag, Host: n.entryName()}

	go func() { done <- api.ServeMaintenance(ctx, lis, srv, tlsCfg, stop) }()

	n.marker(nodeapi.MarkerMaintenance, "addr="+addr)
	n.publish("machine-status", func(rt *api.Runtime) error {
		return rt.SetMachineStatus(runtime.MachineStageMaintenance, []runtime.UnmetCondition{{Name: "config", Reason: "waiting for a machine config"}})
	})

	select {
	case <-n.configured:
	case <-ctx.Done():
		close(stop)
		<-done

		return ctx.Err()
	}

	close(stop)

	if err := <-done; err != nil {
		n.fatal("maintenance", err)
	}

	return nil
}

// ApplyConfig implements api.Configurer: the config must be complete
// (labos needs the machine CA), is written to STATE before it is used,
// and is taken once.
func (n *Node) ApplyConfig(_ context.Context, data []byte, dryRun bool) error {
	m, err := parseComplete(data)
	if err != nil {
		return fmt.Errorf("%w: %w", api.ErrInvalidConfig, err)
	}

	if dryRun {
		return nil
	}

	n.configMu.Lock()
	defer n.configMu.Unlock()

	if n.machine != nil {
		return api.ErrConfigured
	}

	if !n.stateMounted {
		return errors.New("STATE is not mounted: there is nowhere to keep the config")
	}

	if err := config.Store(StateMount, data); err != nil {
		if errors.Is(err, config.ErrAlreadyStored) {
			return api.ErrConfigured
		}

		return err
	}

	if n.embedded != nil {
		m = m.WithManifests(n.embedded.InlineManifests)
	}

	n.machine = m
	n.update(func(s *nodeapi.Status) { s.Configured = true })
	n.marker(nodeapi.MarkerConfigApplied, "")
	close(n.configured)

	return nil
}

// apiNames are the addresses and names both API certificates carry.
func (n *Node) apiNames() ([]net.IP, []string) {
	ips := []net.IP{net.IP(sysinit.DefaultAddress.Addr().AsSlice()), net.ParseIP("127.0.0.1")}
	ips = append(ips, sideroLinkIPs()...) // node/siderolink.go
	dns := []string{"localhost", n.entryName()}

	return ips, dns
}

var _ api.Configurer = (*Node)(nil)
