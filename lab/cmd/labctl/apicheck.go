package main

import (
	"context"
	"fmt"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"
)

// checkAPI calls Version on the node API through the endpoint forwarded to
// 127.0.0.1, with the client certificate from talosconfig, exactly as
// talosctl would against a Talos node.
func checkAPI(ctx context.Context, talosconfig, endpoint string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	c, err := client.New(ctx, client.WithConfigFromFile(talosconfig), client.WithEndpoints(endpoint))
	if err != nil {
		return fmt.Errorf("creating client: %w", err)
	}
	defer c.Close() //nolint:errcheck

	// labos may still be starting apid when the status marker appears.
	var lastErr error

	for ctx.Err() == nil {
		resp, err := c.Version(ctx)
		if err == nil {
			if len(resp.GetMessages()) == 0 {
				return fmt.Errorf("version: empty answer")
			}

			return nil
		}

		lastErr = err

		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}

	return fmt.Errorf("version: %w", lastErr)
}
