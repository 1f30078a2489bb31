package node

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/labos/siderolink"
)

// MarkerSideroLink is printed once the SideroLink link is configured.
const MarkerSideroLink = "siderolink-up"

// SideroLinkTokenPath is where the SideroLink unique token lives, on
// STATE (Talos keeps it in META): the hub knows the machine by it across
// reboots.
var SideroLinkTokenPath = filepath.Join(StateMount, "lib/labos/siderolink-unique-token")

// sideroLinkAddr is the node's tunnel address once the link is up (one
// node per process: labos is PID 1).
var sideroLinkAddr atomic.Pointer[netip.Addr]

// sideroLinkIPs is the tunnel address for the API certificates' SANs, as
// Talos puts its SideroLink address in its API certificate: fleetctl's
// driver verifies the node at that address. The API asks at each
// handshake (api.ReissuingTLSConfig), so a link that comes up after the
// API started is in the certificate of the next connection, as when Talos
// reissues its certificate.
func sideroLinkIPs() []net.IP {
	if a := sideroLinkAddr.Load(); a != nil {
		return []net.IP{net.IP(a.AsSlice())}
	}

	return nil
}

// startSideroLink brings up SideroLink when the image asks for it (kernel
// arguments or a SideroLinkConfig document in the stored config). It runs
// after STATE is unlocked, before maintenance mode: the unique token is
// kept on STATE, and the hub hands the config through the link to the
// maintenance API (whose wildcard listener is on the tunnel address too).
func (n *Node) startSideroLink(ctx context.Context) {
	cmd, cmdOK, err := siderolink.FromCmdline(n.cmdline)
	if err != nil {
		n.fatal("siderolink", err)

		return
	}

	var (
		doc   siderolink.Settings
		docOK bool
	)

	if data, rerr := config.ReadStored(StateMount); rerr == nil {
		if doc, docOK, err = siderolink.FromConfig(data); err != nil {
			n.fatal("siderolink", err)
		}
	} else if !errors.Is(rerr, config.ErrNotStored) {
		n.fatal("siderolink", rerr)
	}

	s, ok := siderolink.Merge(cmd, cmdOK, doc, docOK)
	if !ok {
		return
	}

	uuid, err := siderolink.MachineUUID(siderolink.ProductUUIDPath)
	if err != nil {
		n.fatal("siderolink", err)

		return
	}

	tok, err := siderolink.UniqueToken(SideroLinkTokenPath)
	if err != nil {
		n.fatal("siderolink", err)

		return
	}

	l, err := siderolink.New(siderolink.Options{Settings: s, UUID: uuid, UniqueToken: tok,
		NewDevice: siderolink.KernelTUN(siderolink.TunnelLinkName), Log: n.Log})
	if err != nil {
		n.fatal("siderolink", err)

		return
	}

	go l.Run(ctx) //nolint:errcheck

	go func() {
		select {
		case <-ctx.Done():
			return
		case <-l.Up():
		}

		addr := l.Addr()
		sideroLinkAddr.Store(&addr)

		n.marker(MarkerSideroLink, "address="+l.Addr().String()+" hub="+l.ServerAddr().String())

		sb := "disabled"
		if n.sb.Enabled {
			sb = "enabled"
		}

		// reached only with STATE unlocked: sealed to the TPM
		if err := l.SendReport(ctx, siderolink.Report{ImageVersion: n.version(), SecureBoot: sb, DiskEncryption: "tpm"}); err != nil {
			n.Log.Warn("siderolink: report not sent", "err", err)
		}

		// every event of this boot, then each new one, as Talos's event
		// sink controller sends them; one that cannot be sent is logged
		// and skipped, so a flaky link never stalls the node
		if n.rt != nil {
			go n.rt.Events.Follow(ctx, func(id string, msg proto.Message) error { //nolint:errcheck // ends with ctx
				if err := l.Publish(ctx, id, msg); err != nil {
					n.Log.Warn("siderolink: event not sent", "id", id, "err", err)
				}

				return nil
			})
		}

		if kmsg, err := os.Open("/dev/kmsg"); err == nil {
			defer kmsg.Close() //nolint:errcheck

			l.ForwardKernelLog(ctx, kmsg) //nolint:errcheck
		}
	}()
}
