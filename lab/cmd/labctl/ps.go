package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/harness"
)

func init() { commands = append(commands, newPsCommand) }

func newPsCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ps",
		Short: "List lab VMs and whether they run",
		Long:  `ps lists the VMs that have state in the state dir: running ones with their QEMU pid, API endpoint and uptime, stopped ones as stopped.`,
		Example: `  labctl ps
  labctl ps -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPs(g, cmd.OutOrStdout())
		},
	}
}

type psEntry struct {
	Name        string  `json:"name"`
	Running     bool    `json:"running"`
	PID         int     `json:"pid,omitempty"`
	APIEndpoint string  `json:"apiEndpoint,omitempty"`
	UptimeSecs  float64 `json:"uptimeSeconds,omitempty"`
	Console     string  `json:"console"`
	StateDir    string  `json:"stateDir"`
}

func listVMs(root string) ([]psEntry, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}

		return nil, err
	}

	var out []psEntry

	for _, e := range entries {
		if !e.IsDir() {
			continue
		}

		dir := filepath.Join(root, e.Name())
		p := psEntry{Name: e.Name(), StateDir: dir, Console: filepath.Join(dir, "console.log")}

		if inst, err := harness.LoadInstance(dir); err == nil && inst.Running() {
			p.Running = true
			p.PID = inst.QEMUPID
			p.APIEndpoint = inst.APIEndpoint
			p.UptimeSecs = inst.Uptime().Round(time.Second).Seconds()
		}

		out = append(out, p)
	}

	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })

	return out, nil
}

func runPs(g *globals, w io.Writer) error {
	vms, err := listVMs(g.stateRoot)
	if err != nil {
		return err
	}

	if g.output == "json" {
		if vms == nil {
			vms = []psEntry{}
		}

		return writeJSON(w, vms)
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tPID\tAPI\tUPTIME")

	for _, v := range vms {
		state, pid, api, up := "stopped", "-", "-", "-"
		if v.Running {
			state, pid, api, up = "running", fmt.Sprint(v.PID), v.APIEndpoint, (time.Duration(v.UptimeSecs) * time.Second).String()
		}

		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Name, state, pid, api, up)
	}

	return tw.Flush()
}
