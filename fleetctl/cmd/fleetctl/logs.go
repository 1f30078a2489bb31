package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

func newLogsCmd() *cobra.Command {
	var (
		follow bool
		tail   int
	)

	cmd := &cobra.Command{
		Use:   "logs NODE",
		Short: "Show a node's kernel log as the hub received it (NODE: machine UUID or tunnel address)",
		Example: `  fleetctl logs 4c4c4544-0042-3510-8052-b4c04f4b4e32 --db fleet.db --follow
  fleetctl logs fdae:41e4:649b:9303:1d30:5235:fb20:3cf1 --tail 50 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, asJSON, done, err := openRegistry()
			if err != nil {
				return err
			}
			defer done()

			m, err := resolveMachine(cmd.Context(), reg, args[0])
			if err != nil {
				return err
			}

			w := cmd.OutOrStdout()

			var after int64

			for n := tail; ; n = 0 {
				lines, err := reg.Logs(cmd.Context(), m.UUID, after, n)
				if err != nil {
					return err
				}

				for _, l := range lines {
					printLogLine(w, l, asJSON)
					after = l.ID
				}

				if !follow {
					return nil
				}

				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}

	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing lines as they arrive (Ctrl-C stops)")
	cmd.Flags().IntVar(&tail, "tail", 0, "print only the last N lines first (0: all the hub keeps)")

	return cmd
}

// printLogLine prints one line: JSON lines as received with -o json, else
// "TIME MESSAGE" (Talos sends {"msg": ..., "talos-time": ...}).
func printLogLine(w io.Writer, l registry.LogLine, asJSON bool) {
	if asJSON {
		fmt.Fprintln(w, l.Line)

		return
	}

	var msg map[string]any
	if err := json.Unmarshal([]byte(l.Line), &msg); err == nil {
		if text, ok := msg["msg"].(string); ok {
			fmt.Fprintf(w, "%s %s\n", l.At.Local().Format(time.RFC3339Nano), text)

			return
		}
	}

	fmt.Fprintf(w, "%s %s\n", l.At.Local().Format(time.RFC3339Nano), l.Line)
}
