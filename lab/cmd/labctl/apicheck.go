package main

import (
	"context"
	"fmt"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"

	"github.com/labfleet/labfleet/lab/nodeapi/nodestate"
)

// checkAPI reads the node's state through the Talos API (Version and the
// COSI resources, nodestate.Read) at the endpoint forwarded to 127.0.0.1,
// with the client certificate from talosconfig, exactly as talosctl would
// against a Talos node, and checks the node says it runs and is ready.
func checkAPI(ctx context.Context, talosconfig, endpoint string) (*nodestate.State, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	c, err := client.New(ctx, client.WithConfigFromFile(talosconfig), client.WithEndpoints(endpoint))
	if err != nil {
		return nil, fmt.Errorf("creating client: %w", err)
	}
	defer c.Close() //nolint:errcheck

	// labos may still be starting apid when the status marker appears.
	var lastErr error

	for ctx.Err() == nil {
		st, err := nodestate.Read(ctx, c)
		if err == nil {
			return &st, st.Check()
		}

		lastErr = err

		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}

	return nil, fmt.Errorf("node state: %w", lastErr)
}
