package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ApplyConfig delivers a machine config to a node in maintenance mode, as
// `talosctl apply-config --insecure` does: TLS without server verification
// and no client certificate, mode auto. Connection errors are retried for a
// few seconds (QEMU's port forward may accept before the guest listens);
// a refusal by the node is returned at once.
func (vm *VM) ApplyConfig(ctx context.Context, data []byte) error {
	_, err := ApplyConfigAt(ctx, vm.APIEndpoint(), data, false)
	if err != nil {
		return fmt.Errorf("delivering the machine config to %s: %w", vm.spec.Name, err)
	}

	return nil
}

// ApplyConfigAt is ApplyConfig against any maintenance-mode endpoint; it
// returns the node's reply.
func ApplyConfigAt(ctx context.Context, endpoint string, data []byte, dryRun bool) (*machine.ApplyConfigurationResponse, error) {
	c, err := client.New(ctx,
		client.WithEndpoints(endpoint),
		client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true})) //nolint:gosec // maintenance mode has no identity to verify yet
	if err != nil {
		return nil, err
	}
	defer c.Close() //nolint:errcheck

	deadline := time.Now().Add(20 * time.Second)

	for {
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := c.ApplyConfiguration(callCtx, &machine.ApplyConfigurationRequest{
			Data: data, Mode: machine.ApplyConfigurationRequest_AUTO, DryRun: dryRun,
		})

		cancel()

		if err == nil || !notListening(err) || time.Now().After(deadline) {
			return resp, err
		}

		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// notListening tells a node that is not (yet) listening from one that
// answered: a TLS refusal (the maintenance API is gone and the mTLS API
// wants a certificate) is an answer and is not retried.
func notListening(err error) bool {
	if status.Code(err) != codes.Unavailable {
		return false
	}

	msg := err.Error()

	return !strings.Contains(msg, "tls:") && !strings.Contains(msg, "certificate")
}
