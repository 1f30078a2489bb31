package hub

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/siderolink/pkg/wgtunnel/wgbind"
	"github.com/siderolabs/siderolink/pkg/wireguard"
	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	wgtun "golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wgDevice is the hub's userspace WireGuard endpoint: wireguard-go on a TUN
// device, so the kernel routes the tunnel prefix to it (any process on the
// host, e.g. fleetctl's Talos driver, can dial a node's tunnel address) and
// no WireGuard kernel module is needed. Its bind is SideroLink's server
// bind: UDP for nodes that can send UDP, gRPC streams for the others.
//
// Peers are configured through wireguard-go's UAPI text protocol in
// process (no UAPI socket): the device has one job, the peers' crypto.
type wgDevice struct {
	name string
	dev  *device.Device
	tun  wgtun.Device
	port uint16

	mu sync.Mutex // serialises IpcSet/IpcGet
}

// newWGDevice creates the TUN device, gives it the hub's address and starts
// WireGuard on listenPort (0: any free port).
func newWGDevice(name string, serverPrefix, virtualPrefix netip.Prefix, key wgtypes.Key, listenPort uint16, pt *wgbind.PeerTraffic, log *slog.Logger) (*wgDevice, error) {
	tdev, err := wgtun.CreateTUN(name, wireguard.LinkMTU)
	if err != nil {
		return nil, fmt.Errorf("creating TUN device %s (the hub needs root or CAP_NET_ADMIN and /dev/net/tun): %w", name, err)
	}

	bind := wgbind.NewServerBind(conn.NewDefaultBind(), virtualPrefix, pt, zap.NewNop())

	wlog := &device.Logger{
		Verbosef: func(string, ...any) {},
		Errorf: func(format string, args ...any) {
			log.Debug("wireguard", "msg", fmt.Sprintf(format, args...))
		},
	}

	d := &wgDevice{name: name, dev: device.NewDevice(tdev, bind, wlog), tun: tdev}

	fail := func(err error) (*wgDevice, error) {
		d.dev.Close()

		return nil, err
	}

	if err := d.ipcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(key[:]), listenPort)); err != nil {
		return fail(fmt.Errorf("configuring WireGuard on %s: %w", name, err))
	}

	if err := d.dev.Up(); err != nil {
		return fail(fmt.Errorf("bringing WireGuard up on port %d: %w", listenPort, err))
	}

	if _, err := wireguard.SetupIPToInterface(serverPrefix, name); err != nil {
		return fail(fmt.Errorf("giving %s address %s: %w", name, serverPrefix, err))
	}

	iface, err := net.InterfaceByName(name)
	if err != nil {
		return fail(fmt.Errorf("finding interface %s: %w", name, err))
	}

	if err := wireguard.LinkUp(iface); err != nil {
		return fail(fmt.Errorf("bringing %s up: %w", name, err))
	}

	st, err := d.status()
	if err != nil {
		return fail(err)
	}

	d.port = st.port

	return d, nil
}

// Port is the UDP port WireGuard listens on.
func (d *wgDevice) Port() uint16 { return d.port }

func (d *wgDevice) ipcSet(cfg string) error {
	d.mu.Lock()
	defer d.mu.Unlock()

	return d.dev.IpcSet(cfg)
}

// SetPeer adds or updates a node: its key may send from (and is routed) its
// tunnel address only. With a known endpoint and the keepalive SideroLink
// servers use, the hub starts the handshake itself (after a restart, the
// node's own keepalives alone would not make it rekey).
func (d *wgDevice) SetPeer(pub wgtypes.Key, addr netip.Addr, endpoint string) error {
	cfg := fmt.Sprintf("public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s\npersistent_keepalive_interval=%d\n",
		hex.EncodeToString(pub[:]), netip.PrefixFrom(addr, addr.BitLen()), int(wireguard.RecommendedPersistentKeepAliveInterval.Seconds()))

	if endpoint != "" {
		cfg += "endpoint=" + endpoint + "\n"
	}

	if err := d.ipcSet(cfg); err != nil {
		return fmt.Errorf("adding WireGuard peer %s: %w", pub, err)
	}

	return nil
}

// RemovePeer drops a node's key.
func (d *wgDevice) RemovePeer(pub wgtypes.Key) error {
	if err := d.ipcSet(fmt.Sprintf("public_key=%s\nremove=true\n", hex.EncodeToString(pub[:]))); err != nil {
		return fmt.Errorf("removing WireGuard peer %s: %w", pub, err)
	}

	return nil
}

// PeerStatus is what WireGuard knows about one peer.
type PeerStatus struct {
	LastHandshake time.Time
	Endpoint      string
	RxBytes       int64
	TxBytes       int64
}

type devStatus struct {
	port  uint16
	peers map[wgtypes.Key]PeerStatus
}

func (d *wgDevice) status() (devStatus, error) {
	d.mu.Lock()
	text, err := d.dev.IpcGet()
	d.mu.Unlock()

	if err != nil {
		return devStatus{}, fmt.Errorf("reading WireGuard status: %w", err)
	}

	st := devStatus{peers: map[wgtypes.Key]PeerStatus{}}

	var (
		cur    wgtypes.Key
		inPeer bool
		ps     PeerStatus
		sec    int64
	)

	flush := func() {
		if inPeer {
			st.peers[cur] = ps
		}
	}

	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")

		switch k {
		case "listen_port":
			p, _ := strconv.ParseUint(v, 10, 16)
			st.port = uint16(p)
		case "public_key":
			flush()

			b, _ := hex.DecodeString(v)
			copy(cur[:], b)

			inPeer, ps, sec = true, PeerStatus{}, 0
		case "endpoint":
			ps.Endpoint = v
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ := strconv.ParseInt(v, 10, 64)
			if sec != 0 || nsec != 0 {
				ps.LastHandshake = time.Unix(sec, nsec)
			}
		case "rx_bytes":
			ps.RxBytes, _ = strconv.ParseInt(v, 10, 64)
		case "tx_bytes":
			ps.TxBytes, _ = strconv.ParseInt(v, 10, 64)
		}
	}

	flush()

	return st, nil
}

// Peers returns the state of every peer.
func (d *wgDevice) Peers() (map[wgtypes.Key]PeerStatus, error) {
	st, err := d.status()

	return st.peers, err
}

// Close stops WireGuard and removes the TUN device (with its address).
func (d *wgDevice) Close() {
	d.dev.Close()
}
