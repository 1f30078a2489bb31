package siderolink

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	pb "github.com/siderolabs/siderolink/api/siderolink"
	"github.com/siderolabs/siderolink/pkg/wgtunnel/wgbind"
	"github.com/siderolabs/siderolink/pkg/wgtunnel/wggrpc"
	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Talos's figures (constants.SideroLinkDefaultPeerKeepalive, the
// SideroLink manager's 30 s check, wireguard.PeerDownInterval, the
// link MTU and the provisioning call's timeout).
const (
	DefaultKeepalive  = 25 * time.Second
	DefaultCheckEvery = 30 * time.Second
	DefaultPeerDown   = (180 + 5 + 90) * time.Second
	LinkMTU           = 1280
	provisionTimeout  = 30 * time.Second
)

// Stack is the IP stack on the link: the kernel's (a TUN device with the
// node address) or a userspace one (tests).
type Stack interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	Listen(ap netip.AddrPort) (net.Listener, error)
}

// NewDevice creates the link's TUN device carrying addr.
type NewDevice func(addr netip.Prefix, mtu int) (tun.Device, Stack, error)

// Netstack is a NewDevice with a userspace IP stack (gVisor), for hosts
// where the process may not create TUN devices.
func Netstack(addr netip.Prefix, mtu int) (tun.Device, Stack, error) {
	dev, tnet, err := netstack.CreateNetTUN([]netip.Addr{addr.Addr()}, nil, mtu)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the userspace IP stack: %w", err)
	}

	return dev, netstackStack{tnet}, nil
}

type netstackStack struct{ n *netstack.Net }

func (s netstackStack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return s.n.DialContext(ctx, network, address)
}

func (s netstackStack) Listen(ap netip.AddrPort) (net.Listener, error) {
	return s.n.ListenTCPAddrPort(ap)
}

// Options describe the node.
type Options struct {
	Settings     Settings
	UUID         string
	UniqueToken  string
	TalosVersion string
	// NewDevice creates the TUN device (default Netstack).
	NewDevice NewDevice
	// TLS for https:// API URLs (nil: system roots, as Talos).
	TLS *tls.Config
	Log *slog.Logger
	// Talos's figures unless set (tests shorten them).
	Keepalive, CheckEvery, PeerDown time.Duration
	// RelayRetry is the gRPC tunnel's wait before it dials again (5 s).
	RelayRetry time.Duration
	// MaxBackoff caps the wait between failed provisioning calls (30 s).
	MaxBackoff time.Duration
}

// Link is a node's SideroLink.
type Link struct {
	opts Options
	// key lives only in memory: Talos makes a new one every boot and the
	// hub takes the new key from the next provisioning call.
	key wgtypes.Key

	mu         sync.Mutex
	addr       netip.Prefix
	serverAddr netip.Addr
	dev        *device.Device
	stack      Stack
	up         chan struct{}
	upOnce     sync.Once
	lastErr    error
	provisions int

	relayCancel context.CancelFunc
	relayWG     sync.WaitGroup
}

// New prepares a link; Run brings it up.
func New(o Options) (*Link, error) {
	if o.UUID == "" {
		return nil, errors.New("siderolink: no machine UUID")
	}

	if o.NewDevice == nil {
		o.NewDevice = Netstack
	}

	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}

	if o.TalosVersion == "" {
		o.TalosVersion = "v1.14.1"
	}

	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Keepalive, DefaultKeepalive)
	def(&o.CheckEvery, DefaultCheckEvery)
	def(&o.PeerDown, DefaultPeerDown)
	def(&o.RelayRetry, 5*time.Second)
	def(&o.MaxBackoff, 30*time.Second)

	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return nil, fmt.Errorf("generating the WireGuard key: %w", err)
	}

	return &Link{opts: o, key: key, up: make(chan struct{})}, nil
}

// Up is closed once the link was configured the first time.
func (l *Link) Up() <-chan struct{} { return l.up }

// Addr is the node's tunnel address (zero before Up).
func (l *Link) Addr() netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.addr.Addr()
}

// ServerAddr is the hub's tunnel address.
func (l *Link) ServerAddr() netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.serverAddr
}

// Stack is the IP stack on the link (nil before Up).
func (l *Link) Stack() Stack {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.stack
}

// LastError is the last provisioning error (the hub's reason, e.g. a
// revoked token), nil once provisioned.
func (l *Link) LastError() error {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.lastErr
}

// Provisions counts successful provisioning calls.
func (l *Link) Provisions() int {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.provisions
}

func (l *Link) creds() grpc.DialOption {
	if l.opts.Settings.Insecure {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}

	return grpc.WithTransportCredentials(credentials.NewTLS(l.opts.TLS))
}

func (l *Link) provision(ctx context.Context) (*pb.ProvisionResponse, error) {
	s := l.opts.Settings

	cc, err := grpc.NewClient(s.Host, l.creds())
	if err != nil {
		return nil, fmt.Errorf("dialing the SideroLink API %s: %w", s.Host, err)
	}
	defer cc.Close() //nolint:errcheck

	req := &pb.ProvisionRequest{
		NodeUuid:        l.opts.UUID,
		NodePublicKey:   l.key.PublicKey().String(),
		NodeUniqueToken: &l.opts.UniqueToken,
		TalosVersion:    &l.opts.TalosVersion,
	}

	if s.JoinToken != "" {
		req.JoinToken = &s.JoinToken
	}

	if s.Tunnel {
		t := true
		req.WireguardOverGrpc = &t
	}

	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()

	resp, err := pb.NewProvisionServiceClient(cc).Provision(pctx, req)
	if err != nil {
		st := status.Convert(err)

		// keep the hub's code and reason (PermissionDenied: revoked token...)
		return nil, fmt.Errorf("provisioning at %s: %w", s.Host, status.Error(st.Code(), redact(st.Message(), s.JoinToken)))
	}

	return resp, nil
}

// Run provisions, brings the link up and keeps it up until ctx ends: a
// failed provisioning call is retried with a backoff (1 s doubling to
// MaxBackoff, as Talos's controller runtime restarts the SideroLink
// controller), and every CheckEvery a link whose last handshake is older
// than PeerDown is provisioned again (the hub may have lost it). A hub
// that restarts keeps its peers, so keepalives alone bring the link back.
func (l *Link) Run(ctx context.Context) error {
	defer l.close()

	backoff := time.Second
	tick := time.NewTicker(l.opts.CheckEvery)

	defer tick.Stop()

	need := true

	for {
		if need {
			err := l.connect(ctx)

			l.mu.Lock()
			l.lastErr = err
			l.mu.Unlock()

			if err == nil {
				need, backoff = false, time.Second
			} else {
				l.opts.Log.Warn("siderolink: not connected, will retry", "machine", l.opts.UUID, "err", err, "retry", backoff)

				select {
				case <-ctx.Done():
					return nil
				case <-time.After(backoff):
				}

				backoff = min(backoff*2, l.opts.MaxBackoff)

				continue
			}
		}

		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if hs := l.LastHandshake(); time.Since(hs) >= l.opts.PeerDown {
				l.opts.Log.Info("siderolink: peer down, provisioning again", "machine", l.opts.UUID, "lastHandshake", hs)

				need = true
			}
		}
	}
}

func (l *Link) connect(ctx context.Context) error {
	resp, err := l.provision(ctx)
	if err != nil {
		return err
	}

	prefix, err := netip.ParsePrefix(resp.NodeAddressPrefix)
	if err != nil {
		return fmt.Errorf("hub's node address %q: %w", resp.NodeAddressPrefix, err)
	}

	server, err := netip.ParseAddr(resp.ServerAddress)
	if err != nil {
		return fmt.Errorf("hub's server address %q: %w", resp.ServerAddress, err)
	}

	serverKey, err := wgtypes.ParseKey(resp.ServerPublicKey)
	if err != nil {
		return fmt.Errorf("hub's public key: %w", err)
	}

	if len(resp.GetEndpoints()) == 0 {
		return errors.New("hub's answer has no endpoint")
	}

	var tunnelAddr netip.AddrPort

	if resp.GrpcPeerAddrPort != "" {
		if tunnelAddr, err = netip.ParseAddrPort(resp.GrpcPeerAddrPort); err != nil {
			return fmt.Errorf("hub's gRPC peer address %q: %w", resp.GrpcPeerAddrPort, err)
		}
	}

	l.mu.Lock()
	same := l.dev != nil && l.addr == prefix
	l.mu.Unlock()

	if !same {
		// a new address (or the first): a new device, as Talos replaces
		// the link's address.
		l.close()

		if err := l.newDevice(ctx, prefix, tunnelAddr); err != nil {
			return err
		}
	}

	cfg := fmt.Sprintf("private_key=%s\nreplace_peers=true\npublic_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nreplace_allowed_ips=true\nallowed_ip=%s\n",
		hex.EncodeToString(l.key[:]), hex.EncodeToString(serverKey[:]), resp.GetEndpoints()[0],
		int(l.opts.Keepalive.Seconds()), netip.PrefixFrom(server, 128))

	l.mu.Lock()
	dev := l.dev
	l.mu.Unlock()

	if err := dev.IpcSet(cfg); err != nil {
		return fmt.Errorf("configuring WireGuard: %w", err)
	}

	if err := dev.Up(); err != nil {
		return fmt.Errorf("bringing WireGuard up: %w", err)
	}

	l.mu.Lock()
	l.serverAddr = server
	l.provisions++
	l.mu.Unlock()

	l.upOnce.Do(func() { close(l.up) })

	l.opts.Log.Info("siderolink: link configured", "machine", l.opts.UUID, "address", prefix.Addr(), "hub", server, "grpcTunnel", resp.GrpcPeerAddrPort != "")

	return nil
}

func (l *Link) newDevice(ctx context.Context, prefix netip.Prefix, tunnelAddr netip.AddrPort) error {
	tdev, stack, err := l.opts.NewDevice(prefix, LinkMTU)
	if err != nil {
		return fmt.Errorf("creating the SideroLink device: %w", err)
	}

	var bind conn.Bind = conn.NewDefaultBind()

	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))

	if tunnelAddr.IsValid() {
		qp := wgbind.NewQueuePair(100, 100)
		bind = wgbind.NewClientBind(qp, zap.NewNop())

		l.relayWG.Go(func() { l.relayLoop(rctx, qp, tunnelAddr) })
	}

	quiet := &device.Logger{Verbosef: func(string, ...any) {}, Errorf: func(string, ...any) {}}

	l.mu.Lock()
	l.dev = device.NewDevice(tdev, bind, quiet)
	l.stack = stack
	l.addr = prefix
	l.relayCancel = cancel
	l.mu.Unlock()

	return nil
}

// relayLoop runs the gRPC tunnel and dials again when it ends.
func (l *Link) relayLoop(ctx context.Context, qp *wgbind.QueuePair, ourAddr netip.AddrPort) {
	for ctx.Err() == nil {
		relay, err := wggrpc.NewRelayToHost(l.opts.Settings.Host, l.opts.RelayRetry, qp, ourAddr, l.creds())
		if err == nil {
			relay.Run(ctx, zap.NewNop()) //nolint:errcheck
			relay.Close()
		}

		select {
		case <-ctx.Done():
		case <-time.After(l.opts.RelayRetry):
		}
	}
}

func (l *Link) close() {
	l.mu.Lock()
	cancel, dev := l.relayCancel, l.dev
	l.relayCancel, l.dev = nil, nil
	l.mu.Unlock()

	if cancel != nil {
		cancel()
	}

	if dev != nil {
		dev.Close()
	}

	l.relayWG.Wait()
}

// LastHandshake is the link's last WireGuard handshake (zero: none).
func (l *Link) LastHandshake() time.Time {
	l.mu.Lock()
	dev := l.dev
	l.mu.Unlock()

	if dev == nil {
		return time.Time{}
	}

	text, err := dev.IpcGet()
	if err != nil {
		return time.Time{}
	}

	var sec, nsec int64

	for _, line := range strings.Split(text, "\n") {
		fmt.Sscanf(line, "last_handshake_time_sec=%d", &sec)   //nolint:errcheck
		fmt.Sscanf(line, "last_handshake_time_nsec=%d", &nsec) //nolint:errcheck
	}

	if sec == 0 && nsec == 0 {
		return time.Time{}
	}

	return time.Unix(sec, nsec)
}
