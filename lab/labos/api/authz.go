package api

import (
	"context"
	"slices"

	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// methodRoles is which roles may call each method labos serves, the same
// sets Talos v1.14.1 grants (machined's rules in
// internal/app/machined/pkg/system/services/machined.go). A method missing
// here is refused for everyone: labos never serves more than it lists.
var methodRoles = map[string]role.Set{
	"/machine.MachineService/ApplyConfiguration": role.MakeSet(role.Admin),
	"/machine.MachineService/Events":             role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/machine.MachineService/Read":               role.MakeSet(role.Admin),
	"/machine.MachineService/Reboot":             role.MakeSet(role.Admin, role.Operator),
	"/machine.MachineService/Rollback":           role.MakeSet(role.Admin),
	"/machine.MachineService/ServiceList":        role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/machine.MachineService/Shutdown":           role.MakeSet(role.Admin, role.Operator),
	"/machine.MachineService/Upgrade":            role.MakeSet(role.Admin),
	"/machine.MachineService/Version":            role.MakeSet(role.Admin, role.Operator, role.Reader),

	"/machine.ImageService/List": role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/machine.ImageService/Pull": role.MakeSet(role.Admin, role.Operator),

	"/machine.LifecycleService/Upgrade": role.MakeSet(role.Admin),

	"/cosi.resource.State/Get":   role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/cosi.resource.State/List":  role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/cosi.resource.State/Watch": role.MakeSet(role.Admin, role.Operator, role.Reader),
	// Talos lets admins write a few resource types; labos's resources are
	// all read-only (see readOnly), so the writes are listed for the role
	// answer only.
	"/cosi.resource.State/Create":             role.MakeSet(role.Admin),
	"/cosi.resource.State/Update":             role.MakeSet(role.Admin),
	"/cosi.resource.State/Destroy":            role.MakeSet(role.Admin),
	"/cosi.resource.State/Teardown":           role.MakeSet(role.Admin),
	"/cosi.resource.State/TeardownAndDestroy": role.MakeSet(role.Admin),
}

// authorize checks the client certificate's organizations (Talos encodes
// roles there) against the method's role set.
func authorize(ctx context.Context, method string) error {
	allowed, ok := methodRoles[method]
	if !ok {
		return status.Errorf(codes.Unimplemented, "%s is not served by labos", method)
	}

	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer")
	}

	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return status.Error(codes.Unauthenticated, "no client certificate")
	}

	have := ti.State.PeerCertificates[0].Subject.Organization
	for _, r := range allowed.Strings() {
		if slices.Contains(have, r) {
			return nil
		}
	}

	return status.Errorf(codes.PermissionDenied, "%s: client certificate lacks role %v (has %v)", method, allowed.Strings(), have)
}

func unaryAuthz(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}

	return handler(ctx, req)
}

func streamAuthz(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}

	return handler(srv, ss)
}
