package siderolink_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/siderolink"
)

// The booted node's device: a kernel TUN link, up, carrying the node
// address, so the machine API's wildcard listener is on the tunnel address.
func TestKernelTUN(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: creating a TUN device needs root; CI runs as root")
	}

	name := fmt.Sprintf("lfslt%d", os.Getpid()%100000)
	addr := netip.MustParsePrefix(fmt.Sprintf("fd7e:%04x:1::5/64", os.Getpid()&0xffff))

	dev, stack, err := siderolink.KernelTUN(name)(addr, siderolink.LinkMTU)
	require.NoError(t, err)
	t.Cleanup(func() { dev.Close() })

	ifi, err := net.InterfaceByName(name)
	require.NoError(t, err)
	assert.NotZero(t, ifi.Flags&net.FlagUp, "the link is up")
	assert.Equal(t, siderolink.LinkMTU, ifi.MTU)

	addrs, err := ifi.Addrs()
	require.NoError(t, err)
	assert.Contains(t, fmt.Sprint(addrs), addr.String())

	lis, err := stack.Listen(netip.AddrPortFrom(addr.Addr(), 0))
	require.NoError(t, err, "a listener binds to the tunnel address")
	lis.Close()
}
