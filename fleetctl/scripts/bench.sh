#!/usr/bin/env bash
# Measures fleetctl on a SIMULATED fleet of 10,000 clusters (30,000 nodes)
# with 2% injected failures: CPU time and peak RSS of the whole rollout, and
# the time `rollout resume` needs after the rollout was killed with SIGKILL.
# Then runs the Go benchmarks of the fleetctl packages.
# Usage: fleetctl/scripts/bench.sh [benchrun flags, e.g. --clusters 1000]
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cd "$root"
go build -o "$out/fleetctl" ./fleetctl/cmd/fleetctl
go build -o "$out/benchrun" ./fleetctl/scripts/benchrun

"$out/benchrun" --fleetctl "$out/fleetctl" --dir "$out/work" "$@"

if [[ "${BENCH_GO:-1}" == 1 ]]; then
	go test -run '^$' -bench . -benchtime 3x ./fleetctl/...
fi
