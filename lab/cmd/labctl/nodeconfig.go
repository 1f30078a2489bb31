package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/labfleet/labfleet/extensions/machineconfig"
)

// configOptions say which machine config a node gets in maintenance mode:
// a file, or one generated from a keys folder's secrets bundle.
type configOptions struct {
	file     string
	keys     string
	cluster  string
	endpoint string
	role     string
}

func (c *configOptions) flags(f interface {
	StringVar(p *string, name, value, usage string)
},
) {
	f.StringVar(&c.file, "config", "", "machine config delivered when the node waits in maintenance mode (first boot)")
	f.StringVar(&c.keys, "keys", "", "keys folder: generate the node's config from its secrets.yaml (instead of --config)")
	f.StringVar(&c.cluster, "cluster-name", "lab", "cluster name of the generated config (images/lab.yaml's cluster.name)")
	f.StringVar(&c.endpoint, "endpoint", "https://10.0.2.15:6443", "control plane endpoint of the generated config")
	f.StringVar(&c.role, "role", "controlplane", "machine type of the generated config: controlplane or worker")
}

// load returns the config to deliver, or nil when none was asked for. The
// config carries the machine CA key: it is read or generated in memory and
// sent over the maintenance connection only, never written by labctl.
func (c *configOptions) load() ([]byte, error) {
	switch {
	case c.file != "" && c.keys != "":
		return nil, usageErr("--config and --keys exclude each other")
	case c.file != "":
		data, err := os.ReadFile(c.file)
		if err != nil {
			return nil, usageErr("--config: %v", err)
		}

		return data, nil
	case c.keys != "":
		secrets := filepath.Join(c.keys, "secrets.yaml")
		if _, err := os.Stat(secrets); err != nil {
			return nil, usageErr("--keys: %v (run: imagectl keys generate --dir %s)", err, c.keys)
		}

		if c.role != "controlplane" && c.role != "worker" {
			return nil, usageErr("--role %q: want controlplane or worker", c.role)
		}

		data, err := machineconfig.NodeConfig(machineconfig.Options{ClusterName: c.cluster, Endpoint: c.endpoint, SecretsPath: secrets}, c.role)
		if err != nil {
			return nil, fmt.Errorf("generating the node config from %s: %w", secrets, err)
		}

		return data, nil
	}

	return nil, nil
}
