package node

import (
	"net"
	"net/netip"
	"testing"
)

// Once the SideroLink link is up, the API certificates name the tunnel
// address, where fleetctl's driver reaches and verifies the node.
func TestAPINamesCarryTunnelAddress(t *testing.T) {
	t.Cleanup(func() { sideroLinkAddr.Store(nil) })

	n := New(nil, nil)

	ips, _ := n.apiNames()
	for _, ip := range ips {
		if ip.To4() == nil && !ip.IsLoopback() {
			t.Fatalf("no link yet, but the names carry %s", ip)
		}
	}

	a := netip.MustParseAddr("fdae:41e4:649b:9303::2")
	sideroLinkAddr.Store(&a)

	ips, _ = n.apiNames()
	for _, ip := range ips {
		if ip.Equal(net.IP(a.AsSlice())) {
			return
		}
	}

	t.Fatalf("the API certificate names %v lack the tunnel address %s", ips, a)
}
