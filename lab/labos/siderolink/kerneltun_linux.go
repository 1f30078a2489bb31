package siderolink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// TunnelLinkName is the link's name, Talos's constants.SideroLinkTunnelName
// (the userspace WireGuard link Talos runs for the gRPC tunnel).
const TunnelLinkName = "siderolinktun"

// KernelTUN is the NewDevice of a booted node: a kernel TUN device
// carrying the node address (nodad: the hub owns the prefix, no one else
// is on the link), up. WireGuard itself runs in userspace (wireguard-go),
// as Talos runs it for the gRPC tunnel; over UDP Talos uses the kernel
// module, which changes nothing the hub or the firewall sees. Because the
// address is the kernel's, every listener on the wildcard address (the
// machine API on :50000, maintenance mode included) is served on the
// tunnel address too.
func KernelTUN(name string) NewDevice {
	return func(addr netip.Prefix, mtu int) (tun.Device, Stack, error) {
		dev, err := tun.CreateTUN(name, mtu)
		if err != nil {
			return nil, nil, fmt.Errorf("creating TUN device %s (is tun.ko loaded?): %w", name, err)
		}

		if err := addressUp(name, addr); err != nil {
			dev.Close() //nolint:errcheck

			return nil, nil, err
		}

		return dev, kernelStack{}, nil
	}
}

func addressUp(name string, addr netip.Prefix) error {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}

	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return fmt.Errorf("configuring %s: %w", name, err)
	}
	defer c.Close() //nolint:errcheck

	family := uint8(unix.AF_INET6)
	if addr.Addr().Is4() {
		family = unix.AF_INET
	}

	ip := net.IP(addr.Addr().AsSlice())

	err = c.Address.New(&rtnetlink.AddressMessage{
		Family:       family,
		PrefixLength: uint8(addr.Bits()),
		Flags:        unix.IFA_F_NODAD,
		Scope:        unix.RT_SCOPE_UNIVERSE,
		Index:        uint32(ifi.Index),
		Attributes:   &rtnetlink.AddressAttributes{Address: ip, Local: ip},
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("address %s on %s: %w", addr, name, err)
	}

	msg, err := c.Link.Get(uint32(ifi.Index))
	if err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}

	if err := c.Link.Set(&rtnetlink.LinkMessage{Family: msg.Family, Type: msg.Type, Index: msg.Index,
		Flags: unix.IFF_UP, Change: unix.IFF_UP}); err != nil {
		return fmt.Errorf("bringing %s up: %w", name, err)
	}

	return nil
}

// kernelStack is the kernel's own IP stack.
type kernelStack struct{}

func (kernelStack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer

	return d.DialContext(ctx, network, address)
}

func (kernelStack) Listen(ap netip.AddrPort) (net.Listener, error) {
	return net.Listen("tcp", ap.String())
}
