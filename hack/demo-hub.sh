#!/usr/bin/env bash
# make demo HUB=1: the main job through the fleet hub. The lab image carries
# a site's SideroLink settings (join token, gRPC tunnel); its VM has no
# inbound port at all, its only way out is the hub's API port. The hub
# (fleetctl hub, its own process) lists the machine by UUID, delivers its
# config through the tunnel in maintenance mode; the node seals STATE,
# reports healthy, boots again and unlocks STATE from the TPM by itself.
#
# Needs root (the hub's userspace WireGuard endpoint uses a TUN device) and
# what `make demo` needs (keys, lab base, bin/).
set -euo pipefail

BIN=${BIN:-bin}
OUT=${OUT:-_out}
KEYS=${KEYS:-$OUT/keys}
PORT=${HUB_PORT:-18099}

work=$OUT/demo-hub
rm -rf "$work"
mkdir -p "$work/configs/lab"
chmod 700 "$work"

db=$work/fleet.db
uuid=$(cat /proc/sys/kernel/random/uuid)

step() { printf '\n== %s\n' "$*" >&2; }

step "hub: join token for site demo-site, inventory (machine $uuid), cluster config"
# line 2 of the output is the token (shown once)
token=$("$BIN/fleetctl" --db "$db" hub token create demo-site --hub 10.0.2.101:8099 --grpc-tunnel | sed -n 2p)
[ -n "$token" ] || { echo "demo-hub: no join token created" >&2; exit 1; }

cat >"$work/machines.yaml" <<YAML
machines:
  - {uuid: $uuid, cluster: lab, role: controlplane}
YAML
"$BIN/labctl" gen-config --keys "$KEYS" --out "$work/configs/lab/controlplane.yaml"

cat >"$work/hub.yaml" <<YAML
version: v1alpha1
apiListen: 127.0.0.1:$PORT
wireguardListen: 127.0.0.1:0
prefix: fdae:41e4:649b:9303::/64
interface: lfdemo0
eventSinkPort: 8090
logReceiverPort: 8092
inventory: $work/machines.yaml
configDir: $work/configs
YAML

"$BIN/fleetctl" --db "$db" hub --config "$work/hub.yaml" 2>"$work/hub.log" &
hub=$!
trap 'kill $hub 2>/dev/null; wait $hub 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
	grep -q "hub serving" "$work/hub.log" && break
	kill -0 $hub 2>/dev/null || { cat "$work/hub.log" >&2; exit 1; }
	sleep 0.1
done

step "image: images/lab.yaml with the site's SideroLink settings -> $OUT/labos-hub/"
# the join token is baked on purpose (it only lets the machine be seen)
sed -e 's/^name: labos$/name: labos-hub/' -e 's/^outputs: .*/outputs: [uki, disk]/' images/lab.yaml >"$work/lab-hub.yaml"
cat >>"$work/lab-hub.yaml" <<YAML
sideroLink:
  api: grpc://10.0.2.101:8099
  joinToken: $token
  tunnel: true
YAML
chmod 600 "$work/lab-hub.yaml"
"$BIN/imagectl" build "$work/lab-hub.yaml"

step "first boot: no inbound port; enroll keys, hub delivers the config through the tunnel, seal STATE"
"$BIN/labctl" up "$OUT/labos-hub/disk.raw" --name demo-hub --fresh --hub-port "$PORT" --uuid "$uuid"

step "second boot: unlock STATE from the TPM, reconnect to the hub by itself"
"$BIN/labctl" up "$OUT/labos-hub/disk.raw" --name demo-hub --hub-port "$PORT" --uuid "$uuid"

step "what the hub knows"
"$BIN/fleetctl" --db "$db" machines show "$uuid"
"$BIN/fleetctl" --db "$db" events "$uuid" | tail -5
