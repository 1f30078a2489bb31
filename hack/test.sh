#!/usr/bin/env bash
# make test: every test. The unit and HSM tests (no VMs) run in the
# background from the start; in the foreground the harness's own VM tests
# run first, then the emulated-hardware scenarios (qemu-tests), the long
# pole, which leave much of the two cores idle (VMs waiting on timers,
# windows, reboots) for the unit tests to use. The harness tests go before
# the scenarios, not beside them: the scenarios keep both machine-wide VM
# slots busy and the harness tests' short deadlines include their wait for
# a slot. Each phase's log is printed whole when it ends, then the times and
# the total; the exit code is non-zero if any phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
OUT=${OUT:-_out}
LOGS=$OUT/test
mkdir -p "$LOGS"
rm -f "$LOGS"/*.rc "$LOGS"/*.seconds

start=$(date +%s)

# phase NAME CMD...: runs CMD with its output in $LOGS/NAME.log; its exit
# code and time go to NAME.rc and NAME.seconds.
phase() {
	local name=$1 t0
	shift
	t0=$(date +%s)
	"$@" >"$LOGS/$name.log" 2>&1
	echo $? >"$LOGS/$name.rc"
	echo $(($(date +%s) - t0)) >"$LOGS/$name.seconds"
}

show() {
	echo "=== $1 (exit $(cat "$LOGS/$1.rc"), $(cat "$LOGS/$1.seconds") s)"
	cat "$LOGS/$1.log"
}

unit_pkgs=$($GO list ./... | grep -v -e /qemu-tests -e /lab/harness)
(
	phase unit env CGO_ENABLED=0 $GO test -count=1 -timeout 20m $unit_pkgs
	# Packages whose HSM tests (SoftHSM2 through crypto11) need cgo run a
	# second time with CGO_ENABLED=1, only those tests.
	phase hsm env CGO_ENABLED=1 $GO test -count=1 -timeout 20m -run 'HSM|PKCS11' ./images/build/ ./images/cmd/imagectl/ ./images/keys/...
) &
bg=$!
echo "make test: unit and HSM tests started in the background (logs: $LOGS/)"

phase harness env CGO_ENABLED=0 $GO test -count=1 -timeout 10m ./lab/harness/...
show harness

phase qemu-tests env CGO_ENABLED=1 $GO test -count=1 -timeout 60m -parallel 32 -v ./qemu-tests/
cp "$LOGS/qemu-tests.log" "$OUT/qemu-tests.log"

wait "$bg"
show unit
show hsm
show qemu-tests

echo
summary="make test:"
failed=0
for p in harness unit hsm qemu-tests; do
	summary+=" $p $(cat "$LOGS/$p.seconds") s (exit $(cat "$LOGS/$p.rc")),"
	[ "$(cat "$LOGS/$p.rc")" -eq 0 ] || failed=1
done
echo "$summary total $(($(date +%s) - start)) s"
exit "$failed"
