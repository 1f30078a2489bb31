#!/usr/bin/env bash
# One SIMULATED rollout of `fleetctl rollout start` alone, as benchrun's
# first step runs it, under /usr/bin/time: prints the outcome, CPU time
# (user + sys), wall time and peak RSS. For paired comparisons of two
# builds (run them alternately); benchrun also measures the resume.
# Usage: fleetctl/scripts/rollout-cpu.sh FLEETCTL_BINARY   (CL=100000 for 300,000 nodes)
set -euo pipefail

bin=${1:?usage: rollout-cpu.sh FLEETCTL_BINARY}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT

"$bin" sim init --dir "$d" --clusters "${CL:-10000}" --nodes-per-cluster 3 --fail-rate 0.02 \
	--concurrency 500 --health-timeout 1s --health-interval 20ms >/dev/null
/usr/bin/time -f '%U %S %e %M' -o "$d/time" "$bin" --db "$d/fleet.db" --log-level warn rollout start \
	--inventory "$d/inventory.yaml" --plan "$d/plan.yaml" --driver sim --sim-dir "$d" -o json >"$d/out" 2>/dev/null || true

read -r user sys wall rss <"$d/time"
outcome=$(grep -o '"\(done\|failed\|skipped\)": [0-9]*' "$d/out" | tail -3 | tr '\n' ' ')
echo "${outcome}cpu $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') s  wall ${wall} s  peak RSS $((rss / 1024)) MiB"
