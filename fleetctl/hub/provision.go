package hub

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"strconv"

	pb "github.com/siderolabs/siderolink/api/siderolink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

// virtualPeerPort is the port of a gRPC-tunnelled node's virtual endpoint;
// SideroLink's own server answers with the same one, and nodes echo it back
// in their tunnel stream header.
const virtualPeerPort = 50888

// provisioner answers SideroLink's provisioning API: it checks the join
// token, records the machine in the registry and configures its WireGuard
// peer. Refusals are logged once, naming the machine and the reason, and
// returned to the node as a gRPC status with the same reason.
type provisioner struct {
	pb.UnimplementedProvisionServiceServer

	h *Hub
}

func (p *provisioner) Provision(ctx context.Context, req *pb.ProvisionRequest) (*pb.ProvisionResponse, error) {
	h := p.h
	uuid := req.GetNodeUuid()
	from := ""

	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		from = pr.Addr.String()
	}

	refuse := func(code codes.Code, reason string, err error) (*pb.ProvisionResponse, error) {
		if err != nil {
			reason = reason + ": " + err.Error()
		}

		h.log.Warn("enrollment refused", "machine", uuid, "from", from, "reason", reason)

		return nil, status.Error(code, reason)
	}

	if uuid == "" {
		return refuse(codes.InvalidArgument, "the request has no node UUID", nil)
	}

	pub, err := wgtypes.ParseKey(req.GetNodePublicKey())
	if err != nil {
		return refuse(codes.InvalidArgument, "bad WireGuard public key", err)
	}

	tok, err := h.reg.CheckToken(ctx, req.GetJoinToken())
	if err != nil {
		if errors.Is(err, registry.ErrTokenUnknown) || errors.Is(err, registry.ErrTokenRevoked) {
			return refuse(codes.PermissionDenied, "join token refused", err)
		}

		return refuse(codes.Internal, "checking the join token", err)
	}

	transport := registry.TransportUDP
	virtual := ""

	if req.GetWireguardOverGrpc() {
		transport = registry.TransportGRPC
		virtual = randomAddr(h.virtualPrefix).String()
	}

	// One enrollment at a time per UUID: two requests for one UUID racing
	// would otherwise leave two peers for it.
	unlock := h.lockMachine(uuid)
	defer unlock()

	enr, err := h.reg.Enroll(ctx, registry.Enrollment{
		UUID:           uuid,
		Site:           tok.Site,
		TokenID:        tok.ID,
		UniqueToken:    req.GetNodeUniqueToken(),
		PublicKey:      pub.String(),
		TalosVersion:   req.GetTalosVersion(),
		Transport:      transport,
		VirtualAddress: virtual,
		// No endpoint yet: the node starts the handshake (as with SideroLink's
		// own server); the hub learns the endpoint from it. Starting one from
		// both sides at once only costs the first packets.
		Endpoint: "",
	}, func() (netip.Addr, error) { return randomAddr(h.prefix), nil })

	switch {
	case errors.Is(err, registry.ErrDuplicateUUID):
		return refuse(codes.AlreadyExists, "duplicate machine UUID", err)
	case errors.Is(err, registry.ErrKeyInUse):
		return refuse(codes.AlreadyExists, "WireGuard key in use", err)
	case errors.Is(err, registry.ErrRejected):
		return refuse(codes.PermissionDenied, "machine rejected", err)
	case err != nil:
		return refuse(codes.Internal, "recording the machine", err)
	}

	m := enr.Machine
	addr := netip.MustParseAddr(m.TunnelAddress)

	if err := h.addPeer(m, enr.PreviousPublicKey); err != nil {
		return refuse(codes.Internal, "configuring the WireGuard peer", err)
	}

	endpoints, err := h.endpointsFor(ctx, virtual)
	if err != nil {
		return refuse(codes.Internal, "choosing the WireGuard endpoint", err)
	}

	grpcPeer := ""
	if virtual != "" {
		grpcPeer = endpoints[0]
	}

	h.log.Info("machine enrolled", "machine", uuid, "site", tok.Site, "token", tok.ID, "tunnel_address", addr,
		"transport", transport, "talos_version", req.GetTalosVersion(), "new", enr.New, "state", m.State, "from", from)

	h.kick()

	return &pb.ProvisionResponse{
		ServerEndpoint:    pb.MakeEndpoints(endpoints...),
		ServerPublicKey:   h.key.PublicKey().String(),
		NodeAddressPrefix: netip.PrefixFrom(addr, h.prefix.Bits()).String(),
		ServerAddress:     h.serverAddr.String(),
		GrpcPeerAddrPort:  grpcPeer,
	}, nil
}

// endpointsFor returns where a node should send WireGuard packets: its
// virtual gRPC endpoint, the configured public endpoints, or the address it
// reached the API on with the WireGuard port.
func (h *Hub) endpointsFor(ctx context.Context, virtual string) ([]string, error) {
	if virtual != "" {
		return []string{net.JoinHostPort(virtual, strconv.Itoa(virtualPeerPort))}, nil
	}

	if len(h.cfg.PublicEndpoints) > 0 {
		return append([]string(nil), h.cfg.PublicEndpoints...), nil
	}

	pr, ok := peer.FromContext(ctx)
	if !ok || pr.LocalAddr == nil {
		return nil, errors.New("no publicEndpoints configured and the API connection has no local address")
	}

	host, _, err := net.SplitHostPort(pr.LocalAddr.String())
	if err != nil {
		return nil, err
	}

	return []string{net.JoinHostPort(host, strconv.Itoa(int(h.dev.Port())))}, nil
}

// randomAddr picks a random address in the last 64 bits of prefix (as
// SideroLink does); the registry retries on the rare clash.
func randomAddr(prefix netip.Prefix) netip.Addr {
	raw := prefix.Addr().As16()
	_, _ = rand.Read(raw[8:])

	// Never the hub's own (::1) or the subnet-router (::) address.
	if raw[15] < 2 && raw[8]|raw[9]|raw[10]|raw[11]|raw[12]|raw[13]|raw[14] == 0 {
		raw[15] = 2
	}

	return netip.AddrFrom16(raw)
}
