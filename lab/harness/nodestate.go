package harness

import (
	"context"
	"fmt"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"

	"github.com/labfleet/labfleet/lab/nodeapi/nodestate"
)

// NodeState reads the node's state through its Talos API (Version and the
// COSI resources; see nodestate.Read) with the client certificate from
// talosconfig, the way a client of a Talos node would. Connection errors
// are retried for up to 30 s (the API may come up just after the console
// says the boot settled); a node that answers is reported at once.
func (vm *VM) NodeState(ctx context.Context, talosconfig string) (nodestate.State, error) {
	return NodeStateAt(ctx, vm.APIEndpoint(), talosconfig)
}

// NodeStateAt is NodeState against any endpoint.
func NodeStateAt(ctx context.Context, endpoint, talosconfig string) (nodestate.State, error) {
	c, err := client.New(ctx, client.WithConfigFromFile(talosconfig), client.WithEndpoints(endpoint))
	if err != nil {
		return nodestate.State{}, fmt.Errorf("node state at %s: %w", endpoint, err)
	}
	defer c.Close() //nolint:errcheck

	deadline := time.Now().Add(30 * time.Second)

	for {
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		st, err := nodestate.Read(callCtx, c)

		cancel()

		if err == nil {
			return st, nil
		}

		if !notListening(err) || time.Now().After(deadline) {
			return st, fmt.Errorf("node state at %s: %w", endpoint, err)
		}

		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}
