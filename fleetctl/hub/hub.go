package hub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	slapi "github.com/siderolabs/siderolink/api/events"
	pb "github.com/siderolabs/siderolink/api/siderolink"
	slevents "github.com/siderolabs/siderolink/pkg/events"
	"github.com/siderolabs/siderolink/pkg/logreceiver"
	"github.com/siderolabs/siderolink/pkg/wgtunnel/wgbind"
	"github.com/siderolabs/siderolink/pkg/wgtunnel/wggrpc"
	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

// Options are the hub's collaborators; zero values take the defaults.
type Options struct {
	// Applier hands configurations to nodes (default MaintenanceApplier).
	Applier Applier
	// Inventory lists machines by UUID that need no operator acceptance
	// (default: loaded from Config.Inventory, if set).
	Inventory Inventory
	// ReconcileEvery is how often the hub looks for machines to configure
	// (operators accept machines from another process). Default 5s.
	ReconcileEvery time.Duration
}

// Hub is one running SideroLink management endpoint.
type Hub struct {
	cfg  Config
	reg  *registry.Registry
	log  *slog.Logger
	opts Options

	prefix        netip.Prefix
	virtualPrefix netip.Prefix
	serverAddr    netip.Addr
	key           wgtypes.Key

	dev     *wgDevice
	pt      *wgbind.PeerTraffic
	allowed *wggrpc.AllowedPeers
	rec     *recorder

	machineLocks [64]sync.Mutex
	kickCh       chan struct{}

	mu       sync.Mutex
	apiAddr  net.Addr
	withheld map[string]string // machine -> reason last logged
	ready    chan struct{}
}

// New checks the configuration and prepares a hub; Run starts it.
func New(cfg Config, reg *registry.Registry, log *slog.Logger, opts Options) (*Hub, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}

	if opts.Applier == nil {
		opts.Applier = MaintenanceApplier{}
	}

	if opts.ReconcileEvery == 0 {
		opts.ReconcileEvery = 5 * time.Second
	}

	if opts.Inventory == nil && cfg.Inventory != "" {
		inv, err := LoadInventory(cfg.Inventory)
		if err != nil {
			return nil, err
		}

		opts.Inventory = inv
	}

	prefix := netip.MustParsePrefix(cfg.Prefix)

	vp := cfg.VirtualPrefix
	if vp == "" {
		// Derived: the same ULA with the 8th byte set to 4, as SideroLink
		// derives its virtual prefix from its node prefix.
		raw := prefix.Addr().As16()
		raw[7] ^= 0x04

		vp = netip.PrefixFrom(netip.AddrFrom16(raw), 64).String()
	}

	h := &Hub{
		cfg:           cfg,
		reg:           reg,
		log:           log,
		opts:          opts,
		prefix:        prefix,
		virtualPrefix: netip.MustParsePrefix(vp),
		serverAddr:    prefix.Addr().Next(),
		kickCh:        make(chan struct{}, 1),
		withheld:      map[string]string{},
		ready:         make(chan struct{}),
	}

	h.rec = &recorder{h: h, warned: map[netip.Addr]bool{}}

	return h, nil
}

// Ready is closed once the hub serves.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// APIAddr is the address the provisioning API listens on (after Ready).
func (h *Hub) APIAddr() net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()

	return h.apiAddr
}

// WireGuardPort is the UDP port of the WireGuard endpoint (after Ready).
func (h *Hub) WireGuardPort() uint16 { return h.dev.Port() }

// ServerAddress is the hub's address inside the tunnels.
func (h *Hub) ServerAddress() netip.Addr { return h.serverAddr }

// PublicKey is the hub's WireGuard public key (after Ready).
func (h *Hub) PublicKey() wgtypes.Key { return h.key.PublicKey() }

// Run serves until ctx ends, then shuts down gracefully: open streams get a
// few seconds, received events and log lines are written, the TUN device
// goes away. Nodes reconnect by themselves when a hub comes back.
func (h *Hub) Run(ctx context.Context) error {
	keyText, err := h.reg.HubKey(ctx, func() (string, error) {
		k, err := wgtypes.GeneratePrivateKey()

		return k.String(), err
	})
	if err != nil {
		return err
	}

	if h.key, err = wgtypes.ParseKey(keyText); err != nil {
		return fmt.Errorf("stored hub key: %w", err)
	}

	wgPort, err := listenPort(h.cfg.WireGuardListen)
	if err != nil {
		return err
	}

	h.pt = wgbind.NewPeerTraffic(4096)
	h.allowed = wggrpc.NewAllowedPeers()

	h.dev, err = newWGDevice(h.cfg.Interface, netip.PrefixFrom(h.serverAddr, h.prefix.Bits()), h.virtualPrefix, h.key, wgPort, h.pt, h.log)
	if err != nil {
		return err
	}
	defer h.dev.Close()

	restored, err := h.restorePeers(ctx)
	if err != nil {
		return err
	}

	apiLn, err := (&net.ListenConfig{}).Listen(ctx, "tcp", h.cfg.APIListen)
	if err != nil {
		return fmt.Errorf("listening for the provisioning API on %s: %w", h.cfg.APIListen, err)
	}

	h.mu.Lock()
	h.apiAddr = apiLn.Addr()
	h.mu.Unlock()

	tunnelSvc := wggrpc.NewService(h.pt, h.allowed, zap.NewNop())

	apiOpts := []grpc.ServerOption{grpc.StreamInterceptor(h.tunnelGuard)}

	if h.cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(h.cfg.TLSCert, h.cfg.TLSKey)
		if err != nil {
			apiLn.Close() //nolint:errcheck

			return fmt.Errorf("loading the API's TLS certificate (tlsCert %s, tlsKey %s): %w", h.cfg.TLSCert, h.cfg.TLSKey, err)
		}

		apiOpts = append(apiOpts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	}

	api := grpc.NewServer(apiOpts...)
	pb.RegisterProvisionServiceServer(api, &provisioner{h: h})
	pb.RegisterWireGuardOverGRPCServiceServer(api, tunnelSvc)

	sinkLn, err := h.listenTunnel(ctx, h.cfg.EventSinkPort)
	if err != nil {
		apiLn.Close() //nolint:errcheck

		return fmt.Errorf("event sink: %w", err)
	}

	sink := grpc.NewServer()
	slapi.RegisterEventSinkServiceServer(sink, slevents.NewSink(h.rec, eventTypes()))

	logLn, err := h.listenTunnel(ctx, h.cfg.LogReceiverPort)
	if err != nil {
		apiLn.Close()  //nolint:errcheck
		sinkLn.Close() //nolint:errcheck

		return fmt.Errorf("log receiver: %w", err)
	}

	logSrv := logreceiver.NewServer(zap.NewNop(), logLn, h.rec.handleLog)

	var wg sync.WaitGroup

	errs := make(chan error, 3)

	wg.Go(func() {
		if err := api.Serve(apiLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errs <- fmt.Errorf("provisioning API: %w", err)
		}
	})
	wg.Go(func() {
		if err := sink.Serve(sinkLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errs <- fmt.Errorf("event sink: %w", err)
		}
	})
	wg.Go(func() { logSrv.Serve() }) //nolint:errcheck // ends with its listener

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))

	var bgWG sync.WaitGroup

	bgWG.Go(func() { h.rec.run(bg) })
	bgWG.Go(func() { h.reconcileLoop(bg) })
	bgWG.Go(func() { h.seenLoop(bg) })

	h.log.Info("hub serving",
		"api", apiLn.Addr().String(), "api_tls", h.cfg.TLSCert != "", "wireguard_port", h.dev.Port(), "interface", h.cfg.Interface,
		"server_address", h.serverAddr, "prefix", h.prefix, "event_sink", sinkLn.Addr().String(),
		"log_receiver", logLn.Addr().String(), "public_key", h.key.PublicKey().String(), "restored_peers", restored)
	close(h.ready)

	var runErr error

	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}

	h.log.Info("hub stopping")

	// Streams (the gRPC tunnels) never end by themselves: give calls in
	// flight a moment, then cut.
	stopped := make(chan struct{})

	go func() {
		api.GracefulStop()
		sink.GracefulStop()
		close(stopped)
	}()

	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		api.Stop()
		sink.Stop()
		<-stopped
	}

	logSrv.Stop()
	tunnelSvc.Wait()
	stopBG()
	bgWG.Wait()
	wg.Wait()

	// Where each node was last heard is what lets the next hub start
	// handshakes with it at once.
	h.syncSeen(context.WithoutCancel(ctx))

	h.log.Info("hub stopped")

	return runErr
}

func listenPort(hostport string) (uint16, error) {
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return 0, fmt.Errorf("wireguardListen %q: %w", hostport, err)
	}

	var n uint16
	if _, err := fmt.Sscan(p, &n); err != nil {
		return 0, fmt.Errorf("wireguardListen %q: port: %w", hostport, err)
	}

	return n, nil
}

// restorePeers configures every enrolled machine's last key, so nodes keep
// their links across a hub restart without enrolling again.
func (h *Hub) restorePeers(ctx context.Context) (int, error) {
	ms, err := h.reg.Machines(ctx)
	if err != nil {
		return 0, err
	}

	n := 0

	for _, m := range ms {
		if m.State == registry.StateRejected {
			continue
		}

		if err := h.addPeer(m, ""); err != nil {
			// One bad record must not keep the others offline.
			h.log.Error("restoring peer", "machine", m.UUID, "err", err)

			continue
		}

		n++
	}

	return n, nil
}

func (h *Hub) addPeer(m registry.Machine, previousKey string) error {
	if previousKey != "" {
		if old, err := wgtypes.ParseKey(previousKey); err == nil {
			h.allowed.RemoveToken(old)

			if err := h.dev.RemovePeer(old); err != nil {
				return err
			}
		}
	}

	pub, err := wgtypes.ParseKey(m.PublicKey)
	if err != nil {
		return fmt.Errorf("machine %s: public key: %w", m.UUID, err)
	}

	addr, err := netip.ParseAddr(m.TunnelAddress)
	if err != nil {
		return fmt.Errorf("machine %s: tunnel address: %w", m.UUID, err)
	}

	if err := h.dev.SetPeer(pub, addr, m.Endpoint); err != nil {
		return err
	}

	if m.VirtualAddress != "" {
		h.allowed.AddToken(pub, m.VirtualAddress)
	}

	return nil
}

func (h *Hub) lockMachine(uuid string) func() {
	f := fnv.New32a()
	f.Write([]byte(uuid)) //nolint:errcheck

	mu := &h.machineLocks[f.Sum32()%uint32(len(h.machineLocks))]
	mu.Lock()

	return mu.Unlock
}

// kick asks the reconcile loop to run now.
func (h *Hub) kick() {
	select {
	case h.kickCh <- struct{}{}:
	default:
	}
}

// PeersUp returns the public keys whose last handshake is recent.
func (h *Hub) PeersUp() (map[string]PeerStatus, error) {
	peers, err := h.dev.Peers()
	if err != nil {
		return nil, err
	}

	up := map[string]PeerStatus{}

	for k, p := range peers {
		if !p.LastHandshake.IsZero() && time.Since(p.LastHandshake) < h.cfg.PeerDownAfter {
			up[k.String()] = p
		}
	}

	return up, nil
}

// seenLoop records handshakes as "last seen" every few seconds.
func (h *Hub) seenLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()

	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}

		h.syncSeen(ctx)
	}
}

// syncSeen writes each up peer's last handshake and endpoint to the registry.
func (h *Hub) syncSeen(ctx context.Context) {
	up, err := h.PeersUp()
	if err != nil {
		return
	}

	ms, err := h.reg.Machines(ctx)
	if err != nil {
		return
	}

	for _, m := range ms {
		if p, ok := up[m.PublicKey]; ok && (p.LastHandshake.After(m.LastSeen) || p.Endpoint != m.Endpoint) {
			if err := h.reg.Seen(ctx, m.UUID, p.LastHandshake, p.Endpoint); err != nil {
				h.log.Error("recording last seen", "machine", m.UUID, "err", err)
			}
		}
	}
}

func (h *Hub) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(h.opts.ReconcileEvery)
	defer t.Stop()

	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.kickCh:
		}

		h.Reconcile(ctx)
	}
}

// Reconcile hands its configuration to every machine that may have one,
// has none yet and whose link is up. Each refusal is logged once per
// machine and reason.
func (h *Hub) Reconcile(ctx context.Context) {
	ms, err := h.reg.Machines(ctx)
	if err != nil {
		h.log.Error("reconcile: listing machines", "err", err)

		return
	}

	all, err := h.dev.Peers()
	if err != nil {
		h.log.Error("reconcile: reading WireGuard peers", "err", err)

		return
	}

	up, err := h.PeersUp()
	if err != nil {
		h.log.Error("reconcile: reading WireGuard peers", "err", err)

		return
	}

	for _, m := range ms {
		if m.State == registry.StateRejected {
			h.dropRejected(m, all)

			if _, err := Admit(m, h.opts.Inventory); err != nil {
				h.withhold(m.UUID, err.Error())
			}

			continue
		}

		if !m.ConfigApplied.IsZero() {
			continue
		}

		adm, err := Admit(m, h.opts.Inventory)
		if err == nil {
			_, err = h.cfg.MachineConfig(m, adm)
		}

		if err != nil {
			h.withhold(m.UUID, err.Error())

			continue
		}

		if _, ok := up[m.PublicKey]; !ok {
			h.withhold(m.UUID, fmt.Sprintf("machine %s: waiting for its WireGuard link (no handshake yet)", m.UUID))

			continue
		}

		h.apply(ctx, m, adm)
	}
}

// dropRejected takes down the link of a machine an operator rejected
// (possibly from another process) while it was connected.
func (h *Hub) dropRejected(m registry.Machine, peers map[wgtypes.Key]PeerStatus) {
	pub, err := wgtypes.ParseKey(m.PublicKey)
	if err != nil {
		return
	}

	if _, ok := peers[pub]; !ok {
		return
	}

	h.allowed.RemoveToken(pub)

	if err := h.dev.RemovePeer(pub); err != nil {
		h.log.Error("dropping the link of a rejected machine", "machine", m.UUID, "err", err)

		return
	}

	h.log.Warn("link dropped", "machine", m.UUID, "reason", "rejected by "+m.DecidedBy)
}

func (h *Hub) withhold(uuid, reason string) {
	h.mu.Lock()
	same := h.withheld[uuid] == reason
	h.withheld[uuid] = reason
	h.mu.Unlock()

	if !same {
		h.log.Info("configuration withheld", "machine", uuid, "reason", reason)
	}
}

func (h *Hub) apply(ctx context.Context, m registry.Machine, adm Admission) {
	cfg, err := h.cfg.MachineConfig(m, adm)
	if err == nil {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = h.opts.Applier.Apply(actx, m.TunnelAddress, cfg)

		cancel()
	}

	if rerr := h.reg.ConfigResult(ctx, m.UUID, err); rerr != nil {
		h.log.Error("recording configuration result", "machine", m.UUID, "err", rerr)
	}

	if err != nil {
		h.withhold(m.UUID, fmt.Sprintf("machine %s: applying the configuration of %s/%s failed: %v", m.UUID, adm.Cluster, adm.Role, err))

		return
	}

	h.log.Info("configuration applied", "machine", m.UUID, "cluster", adm.Cluster, "role", adm.Role, "admitted_by", adm.By, "tunnel_address", m.TunnelAddress)
}
