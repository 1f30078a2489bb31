package sysinit

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"
)

// Static configuration of QEMU's user-mode network.
var (
	DefaultAddress = netip.MustParsePrefix("10.0.2.15/24")
	DefaultGateway = netip.MustParseAddr("10.0.2.2")
)

// ConfigureNetwork brings lo up, then the first non-loopback link (eth0 if
// present) with a static address and default route. It returns the link name.
func ConfigureNetwork(addr netip.Prefix, gw netip.Addr) (string, error) {
	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return "", fmt.Errorf("configuring network: %w", err)
	}
	defer c.Close() //nolint:errcheck

	links, err := c.Link.List()
	if err != nil {
		return "", fmt.Errorf("configuring network: listing links: %w", err)
	}

	sort.Slice(links, func(i, j int) bool { return links[i].Index < links[j].Index })

	var nic *rtnetlink.LinkMessage

	for i := range links {
		l := &links[i]
		if l.Flags&unix.IFF_LOOPBACK != 0 {
			if err := up(c, l); err != nil {
				return "", err
			}

			continue
		}

		if nic == nil || (l.Attributes != nil && l.Attributes.Name == "eth0") {
			nic = l
		}
	}

	if nic == nil {
		return "", errors.New("configuring network: no network interface")
	}

	name := ""
	if nic.Attributes != nil {
		name = nic.Attributes.Name
	}

	if err := up(c, nic); err != nil {
		return name, err
	}

	ip := net.IP(addr.Addr().AsSlice())
	mask := net.CIDRMask(addr.Bits(), 32)
	brd := make(net.IP, 4)

	for i := range brd {
		brd[i] = ip[i] | ^mask[i]
	}

	err = c.Address.New(&rtnetlink.AddressMessage{
		Family:       unix.AF_INET,
		PrefixLength: uint8(addr.Bits()),
		Scope:        unix.RT_SCOPE_UNIVERSE,
		Index:        nic.Index,
		Attributes:   &rtnetlink.AddressAttributes{Address: ip, Local: ip, Broadcast: brd},
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return name, fmt.Errorf("configuring network: address %s on %s: %w", addr, name, err)
	}

	err = c.Route.Add(&rtnetlink.RouteMessage{
		Family:     unix.AF_INET,
		Table:      unix.RT_TABLE_MAIN,
		Protocol:   unix.RTPROT_BOOT,
		Scope:      unix.RT_SCOPE_UNIVERSE,
		Type:       unix.RTN_UNICAST,
		Attributes: rtnetlink.RouteAttributes{Gateway: net.IP(gw.AsSlice()), OutIface: nic.Index},
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return name, fmt.Errorf("configuring network: default route via %s: %w", gw, err)
	}

	return name, nil
}

func up(c *rtnetlink.Conn, l *rtnetlink.LinkMessage) error {
	err := c.Link.Set(&rtnetlink.LinkMessage{
		Family: l.Family, Type: l.Type, Index: l.Index,
		Flags: unix.IFF_UP, Change: unix.IFF_UP,
	})
	if err != nil {
		return fmt.Errorf("configuring network: link %d up: %w", l.Index, err)
	}

	return nil
}
