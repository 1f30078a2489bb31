package sim

import (
	"crypto/tls"
	"net"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// ServeOn serves the machine API of the simulated node key on a listener
// the caller made (for example a simulated SideroLink node's tunnel
// address), with mTLS from tlsCfg, which must require client certificates.
// opts are added to the server's options (an interceptor that counts calls).
// Serving ends when the returned server is stopped or the listener closes.
func ServeOn(f *Fleet, key string, lis net.Listener, tlsCfg *tls.Config, opts ...grpc.ServerOption) *grpc.Server {
	g := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(tlsCfg))}, opts...)...)
	machineapi.RegisterMachineServiceServer(g, &machineService{f: f, key: key})

	go g.Serve(lis) //nolint:errcheck // ends with Stop or the listener

	return g
}
