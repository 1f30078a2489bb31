// Package tunnelroll runs a fleetctl rollout through a hub's tunnels, the
// way an operator runs one against nodes behind firewalls: simulated
// SideroLink nodes (simpeer, full peers with an IP stack) serve the
// simulated Talos machine API (sim) with mTLS on their tunnel address, port
// 50000; the inventory names each node by machine UUID only; fleetctl's
// engine with the Talos driver resolves each UUID through the hub's
// registry when it opens the node. Every call therefore goes host kernel
// -> the hub's TUN device -> the hub's userspace WireGuard -> the node's
// link (gRPC tunnel or UDP) -> the node. hubbench measures it; the hub's
// tests check it.
package tunnelroll

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/site"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Versions the simulated nodes run before and after the rollout.
const (
	FromVersion = "v1.0.0"
	ToVersion   = "v2.0.0"
)

// Node is one enrolled simulated node.
type Node struct {
	UUID string // as enrolled (lower case: the inventory's form)
	Peer *simpeer.Peer
}

// Served is what one node's machine API answered.
type Served struct {
	Calls    int // every call
	Upgrades int // Upgrade calls
	// Foreign counts calls that did not arrive on the node's tunnel address
	// from the hub's tunnel address (none should).
	Foreign     int
	LastForeign string
}

// Fleet is the simulated nodes serving their machine API on their tunnels.
type Fleet struct {
	Sim       *sim.Fleet
	Inventory *inventory.Inventory

	nodes   map[string]Node // by UUID
	keys    map[string]string
	servers []*grpc.Server

	mu     sync.Mutex
	served map[string]*Served // by UUID
}

// UUID is the machine UUID of simulated node i (lower case, as the
// inventory's validation wants: 8-4-4-4-12 hex digits).
func UUID(i int) string { return fmt.Sprintf("1abf1ee7-0000-4000-8000-%012x", i) }

// Serve writes one cluster's credentials into dir (talosconfig and secrets,
// shared by all nodes: one CA), starts every node's machine API on its
// tunnel address with a server certificate for that address, and builds
// an inventory of one single-node cluster per node named by machine UUID.
func Serve(dir string, nodes []Node) (*Fleet, error) {
	creds, err := site.Generate("tunnelroll", nil)
	if err != nil {
		return nil, err
	}

	if err := creds.Write(dir, false); err != nil {
		return nil, err
	}

	sf, err := sim.Open("", sim.Behaviour{InitialVersion: FromVersion})
	if err != nil {
		return nil, err
	}

	f := &Fleet{Sim: sf, nodes: map[string]Node{}, keys: map[string]string{}, served: map[string]*Served{}}

	file := sim.Inventory(sim.Spec{Clusters: len(nodes), NodesPerCluster: 1})
	talosconfig := filepath.Join(dir, site.TalosconfigFile)

	for i, n := range nodes {
		c := &file.Clusters[i]
		c.Talosconfig = talosconfig
		c.Nodes[0].Endpoint, c.Nodes[0].Machine = "", n.UUID

		key := sim.Key(c.Name, c.Nodes[0].Name)
		f.nodes[n.UUID], f.keys[n.UUID], f.served[n.UUID] = n, key, &Served{}

		// The driver dials the tunnel address, so that is the name the
		// server certificate must carry (as a Talos node's apid cert does).
		tlsCfg, err := site.ServerTLS(creds.Bundle, []net.IP{n.Peer.Addr.AsSlice()})
		if err != nil {
			f.Close()

			return nil, err
		}

		lis, err := n.Peer.Listen(hub.NodeAPIPort)
		if err != nil {
			f.Close()

			return nil, fmt.Errorf("machine %s: listening on its tunnel address: %w", n.UUID, err)
		}

		f.servers = append(f.servers, sim.ServeOn(sf, key, lis, tlsCfg, grpc.UnaryInterceptor(f.count(n))))
	}

	f.Inventory = &inventory.Inventory{Sites: file.Sites, Clusters: file.Clusters}
	if err := f.Inventory.Validate(); err != nil {
		f.Close()

		return nil, fmt.Errorf("inventory by machine UUID: %w", err)
	}

	return f, nil
}

// count records each call, and whether it came the way it must: to the
// node's tunnel address, from the hub's tunnel address (the source address
// the hub's host kernel picks on the TUN device).
func (f *Fleet) count(n Node) grpc.UnaryServerInterceptor {
	want := netip.AddrPortFrom(n.Peer.Addr, hub.NodeAPIPort)

	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		var local, remote netip.AddrPort

		if p, ok := peer.FromContext(ctx); ok {
			local, remote = addrPort(p.LocalAddr), addrPort(p.Addr)
		}

		f.mu.Lock()
		s := f.served[n.UUID]
		s.Calls++

		if path.Base(info.FullMethod) == "Upgrade" {
			s.Upgrades++
		}

		if local != want || remote.Addr() != n.Peer.ServerAddr {
			s.Foreign++
			s.LastForeign = fmt.Sprintf("%s from %s", local, remote)
		}
		f.mu.Unlock()

		return h(ctx, req)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if a == nil {
		return netip.AddrPort{}
	}

	ap, _ := netip.ParseAddrPort(a.String())

	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Served is what each node (by UUID) answered so far.
func (f *Fleet) Served() map[string]Served {
	f.mu.Lock()
	defer f.mu.Unlock()

	out := make(map[string]Served, len(f.served))
	for u, s := range f.served {
		out[u] = *s
	}

	return out
}

// Close stops every node's machine API.
func (f *Fleet) Close() {
	for _, g := range f.servers {
		g.Stop()
	}

	f.Sim.Close() //nolint:errcheck // in memory
}

// Result is a rollout through the tunnels.
type Result struct {
	engine.Result

	Wall time.Duration
	// Resolved counts the driver's look-ups in the hub's registry; Wrong
	// lists resolved endpoints that are not the machine's own tunnel
	// address (in the hub's prefix) at port 50000.
	Resolved int
	Wrong    []string
}

// Plan is the rollout: a canary of one node, then the rest at once, at
// most concurrency clusters at a time, and a short health gate (the
// simulated nodes come back at once).
func Plan(concurrency int) (*plan.Plan, error) {
	p := &plan.Plan{
		Name: "through-the-hub", Image: sim.Image(ToVersion), Version: ToVersion,
		Waves:       []plan.Wave{{Name: "canary", Count: 1}, {Name: "rest", Percent: 100}},
		Concurrency: concurrency,
		Health:      plan.HealthGate{Timeout: plan.Duration(time.Minute), Interval: plan.Duration(200 * time.Millisecond)},
	}
	p.Default()

	if err := p.Validate(); err != nil {
		return nil, err
	}

	return p, nil
}

// Run upgrades every node with fleetctl's engine and Talos driver. st is
// the hub's store (its --db, shared as fleetctl's commands share it): the
// rollout is recorded there and the driver resolves machine UUIDs through
// the registry in it. prefix is the hub's tunnel prefix.
func Run(ctx context.Context, st *store.Store, f *Fleet, prefix netip.Prefix, concurrency int) (Result, error) {
	p, err := Plan(concurrency)
	if err != nil {
		return Result{}, err
	}

	reg := registry.New(st.DB())

	var (
		mu  sync.Mutex
		res Result
	)

	resolve := func(ctx context.Context, uuid string) (string, error) {
		ep, err := reg.NodeEndpoint(ctx, uuid, hub.NodeAPIPort)
		if err != nil {
			return "", err
		}

		mu.Lock()
		defer mu.Unlock()

		res.Resolved++

		ap, perr := netip.ParseAddrPort(ep)
		n, known := f.nodes[uuid]

		if perr != nil || !known || ap.Addr() != n.Peer.Addr || !prefix.Contains(ap.Addr()) || ap.Port() != hub.NodeAPIPort {
			res.Wrong = append(res.Wrong, uuid+" -> "+ep)
		}

		return ep, nil
	}

	start := time.Now()
	er, err := engine.Run(ctx, engine.Options{Inventory: f.Inventory, Plan: p, Store: st,
		Driver: talos.NewFactory(talos.WithMachineResolver(resolve)), DriverName: "talos"})
	res.Result, res.Wall = er, time.Since(start)

	if err != nil {
		return res, fmt.Errorf("rollout through the hub: %w", err)
	}

	return res, nil
}

// Check says whether the rollout went through the tunnels as it must:
// every node done and upgraded exactly once, by exactly one Upgrade call
// that arrived on its tunnel address from the hub's, no call by another
// way, every registry look-up giving the machine's own tunnel address.
// It names up to five nodes per problem.
func (r Result) Check(f *Fleet) error {
	var errs []error

	if r.Done != len(f.nodes) || r.Failed != 0 {
		errs = append(errs, fmt.Errorf("%d of %d nodes done, %d failed (state %s %s)", r.Done, len(f.nodes), r.Failed, r.State, r.Reason))
	}

	if r.Resolved < len(f.nodes) {
		errs = append(errs, fmt.Errorf("%d registry look-ups for %d nodes", r.Resolved, len(f.nodes)))
	}

	if len(r.Wrong) > 0 {
		errs = append(errs, fmt.Errorf("%d look-ups not to the machine's tunnel address in the hub's prefix: %s", len(r.Wrong), first(r.Wrong)))
	}

	counts := f.Sim.Counts()

	var notOnce, foreign []string

	for uuid, s := range f.Served() {
		if c := counts[f.keys[uuid]]; s.Upgrades != 1 || c.Upgrades != 1 {
			notOnce = append(notOnce, fmt.Sprintf("%s (%d Upgrade calls served, %d upgrades)", uuid, s.Upgrades, c.Upgrades))
		}

		if s.Foreign > 0 {
			foreign = append(foreign, fmt.Sprintf("%s (%d calls, last %s)", uuid, s.Foreign, s.LastForeign))
		}
	}

	if len(notOnce) > 0 {
		errs = append(errs, fmt.Errorf("%d nodes not upgraded exactly once through their tunnel: %s", len(notOnce), first(notOnce)))
	}

	if len(foreign) > 0 {
		errs = append(errs, fmt.Errorf("%d nodes served calls that did not come through the hub: %s", len(foreign), first(foreign)))
	}

	return errors.Join(errs...)
}

// Calls is the number of machine API calls all nodes served.
func (f *Fleet) Calls() int {
	n := 0
	for _, s := range f.Served() {
		n += s.Calls
	}

	return n
}

func first(s []string) string {
	sort.Strings(s)

	if len(s) > 5 {
		return fmt.Sprintf("%v ...", s[:5])
	}

	return fmt.Sprint(s)
}
