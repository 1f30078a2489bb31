package hub

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	pb "github.com/siderolabs/siderolink/api/siderolink"
	"github.com/siderolabs/siderolink/pkg/wgtunnel/wggrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// tunnelGuard wraps SideroLink's WireGuard-over-gRPC service: it names the
// machine behind each stream in the hub's log, refuses streams from
// addresses no enrolled machine has, and ends a stream that carries
// anything but WireGuard messages. Only that one stream ends: the node's
// relay dials again, and no other machine's stream is touched.
func (h *Hub) tunnelGuard(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !strings.HasSuffix(info.FullMethod, "/CreateStream") {
		return handler(srv, ss)
	}

	header := ""
	if md, ok := metadata.FromIncomingContext(ss.Context()); ok {
		if v := md.Get(wggrpc.PeerAddrKey); len(v) > 0 {
			header = v[0]
		}
	}

	ap, err := netip.ParseAddrPort(header)
	if err != nil {
		h.log.Warn("tunnel stream refused", "machine", "unknown", "reason", fmt.Sprintf("header %s is %q, not a virtual address:port", wggrpc.PeerAddrKey, header))

		return status.Error(codes.InvalidArgument, "bad "+wggrpc.PeerAddrKey+" header")
	}

	m, err := h.reg.MachineByAddress(ss.Context(), ap.Addr())
	if err != nil || m.VirtualAddress != ap.Addr().String() {
		h.log.Warn("tunnel stream refused", "machine", "unknown", "reason", fmt.Sprintf("no enrolled machine has virtual address %s (provision first)", ap.Addr()))

		return status.Error(codes.PermissionDenied, "peer not enrolled")
	}

	h.log.Debug("tunnel stream opened", "machine", m.UUID, "virtual_address", ap)

	ctx, cancel := context.WithCancelCause(ss.Context())
	defer cancel(nil)

	err = handler(srv, &checkedStream{ServerStream: ss, ctx: ctx, cancel: cancel, h: h, uuid: m.UUID})
	if cause := context.Cause(ctx); cause != nil && cause != context.Canceled { //nolint:errorlint
		return status.Error(codes.InvalidArgument, cause.Error())
	}

	return err
}

type checkedStream struct {
	grpc.ServerStream

	ctx    context.Context //nolint:containedctx
	cancel context.CancelCauseFunc
	h      *Hub
	uuid   string
}

func (s *checkedStream) Context() context.Context { return s.ctx }

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}

	pkt, ok := m.(*pb.PeerPacket)
	if !ok {
		return nil
	}

	if reason := notWireGuard(pkt.GetData()); reason != "" {
		s.h.log.Warn("garbage on tunnel", "machine", s.uuid, "reason", reason, "action", "stream closed; the node's relay reconnects")
		s.cancel(fmt.Errorf("garbage on tunnel: %s", reason))

		return status.Error(codes.InvalidArgument, "garbage on tunnel: "+reason)
	}

	return nil
}

// notWireGuard says why a packet cannot be a WireGuard message (empty: it
// may be one). WireGuard's four message types have fixed sizes, except
// transport data (at least its 32-byte header incl. the tag, 16-byte padded).
func notWireGuard(b []byte) string {
	if len(b) < 4 {
		return fmt.Sprintf("%d-byte packet is shorter than any WireGuard message", len(b))
	}

	if b[0] < 1 || b[0] > 4 {
		return fmt.Sprintf("message type %d is not WireGuard (1-4)", b[0])
	}

	if b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return fmt.Sprintf("reserved bytes %x are not zero", b[1:4])
	}

	switch b[0] {
	case 1:
		if len(b) != 148 {
			return fmt.Sprintf("handshake initiation of %d bytes (want 148)", len(b))
		}
	case 2:
		if len(b) != 92 {
			return fmt.Sprintf("handshake response of %d bytes (want 92)", len(b))
		}
	case 3:
		if len(b) != 64 {
			return fmt.Sprintf("cookie reply of %d bytes (want 64)", len(b))
		}
	case 4:
		if len(b) < 32 || len(b)%16 != 0 {
			return fmt.Sprintf("transport message of %d bytes (want >= 32, a multiple of 16)", len(b))
		}
	}

	return ""
}
