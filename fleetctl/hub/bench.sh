#!/usr/bin/env bash
# Measures fleetctl hub with simulated nodes that speak the real protocol
# (SideroLink provisioning API, WireGuard tunnelled over gRPC, handshakes and
# keepalives): time to accept all, hub CPU and RSS per connected peer, and
# how they grow from 100 to 1,000 peers. The hub runs as its own process
# (the real `fleetctl hub`, root: it creates a TUN device); the simulated
# nodes run in hubbench. With --rollout the nodes also serve the simulated
# Talos machine API on their tunnel address and fleetctl's engine upgrades
# all of them through the hub (inventory by machine UUID, resolved in the
# hub's registry; two waves, 50 clusters at once): wall time, nodes
# done/failed, hub CPU and RSS during the rollout, calls the nodes served.
# Prints Markdown.
# Usage: fleetctl/hub/bench.sh [hubbench flags, e.g. --peers 100,1000 --idle 30s --rollout]
# Targets (issue 12): 1,000 peers connected < 60 s; < 1 MiB RSS per idle peer.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cd "$root"

if [ "$(id -u)" != 0 ]; then
	echo "not measured: fleetctl hub needs root (CAP_NET_ADMIN) for its TUN device"
	exit 3
fi

export CGO_ENABLED=0
go build -o "$out/fleetctl" ./fleetctl/cmd/fleetctl
go build -o "$out/hubbench" ./fleetctl/hub/hubbench

echo "machine: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$out/hubbench" --fleetctl "$out/fleetctl" "$@"
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
