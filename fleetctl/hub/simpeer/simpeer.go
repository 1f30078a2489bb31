// Package simpeer is a simulated SideroLink node for tests and benchmarks.
// It speaks the real protocol, as a Talos node does: it calls the
// provisioning API with its UUID, unique token, join token and WireGuard
// public key, then brings up a wireguard-go link to the hub over UDP or
// tunnelled over gRPC (SideroLink's relay and client bind), with the
// keepalive Talos uses. A full peer has a userspace IP stack (gVisor
// netstack) on the link, so it can ping the hub, send events to the event
// sink, send log lines to the log receiver and serve a machine API on its
// tunnel address; a light peer (benchmarks) has only the link.
package simpeer

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	slapi "github.com/siderolabs/siderolink/api/events"
	pb "github.com/siderolabs/siderolink/api/siderolink"
	"github.com/siderolabs/siderolink/pkg/wgtunnel/wgbind"
	"github.com/siderolabs/siderolink/pkg/wgtunnel/wggrpc"
	"go.uber.org/zap"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Options describe one simulated node.
type Options struct {
	API          string // host:port of the hub's provisioning API
	JoinToken    string
	UUID         string
	UniqueToken  string // Talos's per-machine unique token (kept across reboots)
	TalosVersion string
	// Tunnel runs WireGuard over gRPC (the API connection) instead of UDP.
	Tunnel bool
	// Light peers have no IP stack: link only (benchmarks).
	Light bool
	// Keepalive is the persistent keepalive (Talos: 25s).
	Keepalive time.Duration
	// TLS, if set, dials the API over TLS (an https:// SideroLink URL);
	// nil: plain gRPC (grpc://).
	TLS *tls.Config
	// RelayRetry is how long the gRPC relay waits before it dials again
	// (Talos: 5s after a failed relay; 1s is the library's minimum).
	RelayRetry time.Duration
}

// Peer is a connected simulated node.
type Peer struct {
	opts Options
	key  wgtypes.Key

	Resp       *pb.ProvisionResponse
	Addr       netip.Addr // the node's tunnel address
	ServerAddr netip.Addr // the hub's tunnel address

	dev  *device.Device
	tnet *netstack.Net

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (o Options) creds() grpc.DialOption {
	if o.TLS != nil {
		return grpc.WithTransportCredentials(credentials.NewTLS(o.TLS))
	}

	return grpc.WithTransportCredentials(insecure.NewCredentials())
}

// Provision calls the provisioning API once, as a Talos node does at boot.
func Provision(ctx context.Context, o Options, pub wgtypes.Key) (*pb.ProvisionResponse, error) {
	cc, err := grpc.NewClient(o.API, o.creds())
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", o.API, err)
	}
	defer cc.Close() //nolint:errcheck

	req := &pb.ProvisionRequest{
		NodeUuid:      o.UUID,
		NodePublicKey: pub.String(),
	}

	if o.UniqueToken != "" {
		req.NodeUniqueToken = &o.UniqueToken
	}

	if o.TalosVersion != "" {
		req.TalosVersion = &o.TalosVersion
	}

	if o.JoinToken != "" {
		req.JoinToken = &o.JoinToken
	}

	if o.Tunnel {
		t := true
		req.WireguardOverGrpc = &t
	}

	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	return pb.NewProvisionServiceClient(cc).Provision(pctx, req)
}

// Connect provisions and brings the link up (it does not wait for the
// handshake: see WaitHandshake).
func Connect(ctx context.Context, o Options) (*Peer, error) {
	if o.Keepalive == 0 {
		o.Keepalive = 25 * time.Second
	}

	if o.RelayRetry == 0 {
		o.RelayRetry = time.Second
	}

	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}

	resp, err := Provision(ctx, o, key.PublicKey())
	if err != nil {
		return nil, err
	}

	p := &Peer{opts: o, key: key, Resp: resp}

	prefix, err := netip.ParsePrefix(resp.NodeAddressPrefix)
	if err != nil {
		return nil, fmt.Errorf("node address %q: %w", resp.NodeAddressPrefix, err)
	}

	p.Addr = prefix.Addr()

	if p.ServerAddr, err = netip.ParseAddr(resp.ServerAddress); err != nil {
		return nil, fmt.Errorf("server address %q: %w", resp.ServerAddress, err)
	}

	var tdev tun.Device

	if o.Light {
		tdev = newNullTUN()
	} else {
		tdev, p.tnet, err = netstack.CreateNetTUN([]netip.Addr{p.Addr}, nil, 1280)
		if err != nil {
			return nil, fmt.Errorf("creating netstack: %w", err)
		}
	}

	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel

	var bind conn.Bind

	endpoint := resp.GetEndpoints()[0]

	if resp.GrpcPeerAddrPort != "" {
		ourAddr, err := netip.ParseAddrPort(resp.GrpcPeerAddrPort)
		if err != nil {
			cancel()

			return nil, fmt.Errorf("gRPC peer address %q: %w", resp.GrpcPeerAddrPort, err)
		}

		qp := wgbind.NewQueuePair(100, 100)
		bind = wgbind.NewClientBind(qp, zap.NewNop())

		p.wg.Go(func() { p.relayLoop(rctx, qp, ourAddr) })
	} else {
		bind = conn.NewDefaultBind()
	}

	p.dev = device.NewDevice(tdev, bind, &device.Logger{Verbosef: func(string, ...any) {}, Errorf: func(string, ...any) {}})

	cfg := fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nallowed_ip=%s\n",
		hex.EncodeToString(key[:]), hexKey(resp.ServerPublicKey), endpoint, int(o.Keepalive.Seconds()),
		netip.PrefixFrom(p.ServerAddr, 128))

	if err := p.dev.IpcSet(cfg); err != nil {
		p.Close()

		return nil, fmt.Errorf("configuring WireGuard: %w", err)
	}

	if err := p.dev.Up(); err != nil {
		p.Close()

		return nil, fmt.Errorf("bringing WireGuard up: %w", err)
	}

	return p, nil
}

// relayLoop runs SideroLink's gRPC relay and starts it again when it ends,
// as Talos's userspace tunnel controller does.
func (p *Peer) relayLoop(ctx context.Context, qp *wgbind.QueuePair, ourAddr netip.AddrPort) {
	for ctx.Err() == nil {
		relay, err := wggrpc.NewRelayToHost(p.opts.API, p.opts.RelayRetry, qp, ourAddr, p.opts.creds())
		if err == nil {
			relay.Run(ctx, zap.NewNop()) //nolint:errcheck
			relay.Close()
		}

		select {
		case <-ctx.Done():
		case <-time.After(p.opts.RelayRetry):
		}
	}
}

func hexKey(s string) string {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		return ""
	}

	return hex.EncodeToString(k[:])
}

// LastHandshake is the time of the link's last handshake (zero: none).
func (p *Peer) LastHandshake() time.Time {
	text, err := p.dev.IpcGet()
	if err != nil {
		return time.Time{}
	}

	var sec, nsec int64

	for _, line := range splitLines(text) {
		fmt.Sscanf(line, "last_handshake_time_sec=%d", &sec)   //nolint:errcheck
		fmt.Sscanf(line, "last_handshake_time_nsec=%d", &nsec) //nolint:errcheck
	}

	if sec == 0 && nsec == 0 {
		return time.Time{}
	}

	return time.Unix(sec, nsec)
}

func splitLines(s string) []string {
	var out []string

	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}

		out = append(out, s[:i])

		if i < len(s) {
			i++
		}

		s = s[i:]
	}

	return out
}

// WaitHandshake waits for a handshake newer than after.
func (p *Peer) WaitHandshake(ctx context.Context, after time.Time) error {
	for {
		if hs := p.LastHandshake(); !hs.IsZero() && hs.After(after) {
			return nil
		}

		select {
		case <-ctx.Done():
			return fmt.Errorf("machine %s: no WireGuard handshake: %w", p.opts.UUID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Ping sends ICMPv6 echoes to the hub through the tunnel, one a second as
// ping does, until one is answered or ctx ends (default 10s).
func (p *Peer) Ping(ctx context.Context) error {
	if p.tnet == nil {
		return errors.New("light peers have no IP stack")
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc

		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}

	pc, err := p.tnet.DialPingAddr(p.Addr, p.ServerAddr)
	if err != nil {
		return err
	}
	defer pc.Close() //nolint:errcheck

	// netstack's PingConn only wakes a reader for packets that arrive
	// while it waits: a reply already queued is not noticed. So the reader
	// waits first, and only then is the echo sent.
	replies := make(chan error, 1)

	go func() {
		buf := make([]byte, 1500)

		for {
			pc.SetReadDeadline(time.Now().Add(time.Second)) //nolint:errcheck

			_, err := pc.Read(buf)
			if err == nil || ctx.Err() != nil {
				replies <- err

				return
			}
		}
	}()

	time.Sleep(20 * time.Millisecond)

	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: 7, Seq: seq, Data: []byte("labfleet")}}

		b, err := msg.Marshal(nil)
		if err != nil {
			return err
		}

		if _, err := pc.Write(b); err != nil {
			return fmt.Errorf("ping: %w", err)
		}

		select {
		case err := <-replies:
			if err != nil {
				return fmt.Errorf("machine %s: no ping reply from %s: %w", p.opts.UUID, p.ServerAddr, ctx.Err())
			}

			return nil
		case <-time.After(time.Second):
		case <-ctx.Done():
			<-replies

			return fmt.Errorf("machine %s: no ping reply from %s: %w", p.opts.UUID, p.ServerAddr, ctx.Err())
		}
	}
}

// DialHub opens a TCP connection to the hub's tunnel address through the link.
func (p *Peer) DialHub(ctx context.Context, port int) (net.Conn, error) {
	if p.tnet == nil {
		return nil, errors.New("light peers have no IP stack")
	}

	return p.tnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(p.ServerAddr, uint16(port)))
}

// SendEvent publishes one event to the hub's event sink, as Talos does.
func (p *Peer) SendEvent(ctx context.Context, port int, id string, ev proto.Message) error {
	cc, err := grpc.NewClient(netip.AddrPortFrom(p.ServerAddr, uint16(port)).String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return p.DialHub(ctx, port) }))
	if err != nil {
		return err
	}
	defer cc.Close() //nolint:errcheck

	data, err := anypb.New(ev)
	if err != nil {
		return err
	}

	_, err = slapi.NewEventSinkServiceClient(cc).Publish(ctx, &slapi.EventRequest{Id: id, Data: data})

	return err
}

// SendLogs sends JSON log messages to the hub's log receiver.
func (p *Peer) SendLogs(ctx context.Context, port int, lines ...string) error {
	c, err := p.DialHub(ctx, port)
	if err != nil {
		return err
	}
	defer c.Close() //nolint:errcheck

	for _, l := range lines {
		if _, err := io.WriteString(c, l+"\n"); err != nil {
			return err
		}
	}

	return nil
}

// Listen listens on the node's tunnel address (e.g. its machine API, 50000).
func (p *Peer) Listen(port int) (net.Listener, error) {
	if p.tnet == nil {
		return nil, errors.New("light peers have no IP stack")
	}

	return p.tnet.ListenTCPAddrPort(netip.AddrPortFrom(p.Addr, uint16(port)))
}

// PublicKey is the peer's WireGuard public key.
func (p *Peer) PublicKey() wgtypes.Key { return p.key.PublicKey() }

// Close takes the link down (a node powered off).
func (p *Peer) Close() {
	if p.cancel != nil {
		p.cancel()
	}

	if p.dev != nil {
		p.dev.Close()
	}

	p.wg.Wait()
}

// nullTUN is a TUN device with nothing behind it: WireGuard handshakes and
// keepalives run, no packets enter or leave.
type nullTUN struct {
	events chan tun.Event
	closed chan struct{}
	once   sync.Once
}

func newNullTUN() *nullTUN {
	t := &nullTUN{events: make(chan tun.Event, 1), closed: make(chan struct{})}
	t.events <- tun.EventUp

	return t
}

func (t *nullTUN) File() *os.File { return nil }

func (t *nullTUN) Read([][]byte, []int, int) (int, error) {
	<-t.closed

	return 0, os.ErrClosed
}

func (t *nullTUN) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (t *nullTUN) MTU() (int, error)                       { return 1280, nil }
func (t *nullTUN) Name() (string, error)                   { return "null", nil }
func (t *nullTUN) Events() <-chan tun.Event                { return t.events }
func (t *nullTUN) BatchSize() int                          { return 1 }

func (t *nullTUN) Close() error {
	t.once.Do(func() {
		close(t.closed)
		close(t.events)
	})

	return nil
}

// SendRaw opens a WireGuard-over-gRPC stream claiming a virtual address
// and sends data on it as it is (tests of what a hub does with garbage).
// It returns the error that ends the stream.
func SendRaw(ctx context.Context, api, virtualAddrPort string, data []byte) error {
	cc, err := grpc.NewClient(api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close() //nolint:errcheck

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs(wggrpc.PeerAddrKey, virtualAddrPort))

	stream, err := pb.NewWireGuardOverGRPCServiceClient(cc).CreateStream(ctx)
	if err != nil {
		return err
	}

	if err := stream.Send(&pb.PeerPacket{Data: data}); err != nil {
		return err
	}

	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

// Stats is WireGuard's view of the link, as text (debugging).
func (p *Peer) Stats() string {
	text, err := p.dev.IpcGet()
	if err != nil {
		return err.Error()
	}

	var out []string

	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "rx_bytes") || strings.HasPrefix(l, "tx_bytes") || strings.HasPrefix(l, "last_handshake_time_sec") || strings.HasPrefix(l, "endpoint") {
			out = append(out, l)
		}
	}

	return strings.Join(out, " ")
}
