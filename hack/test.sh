#!/usr/bin/env bash
# make test: every test. The emulated-hardware scenarios (qemu-tests) start
# first, in the background, because they are the long pole and leave much
# of the two cores idle (VMs waiting on timers, windows, reboots); the unit
# tests, the HSM tests and the harness's own VM tests run beside them. VMs
# of every process share the harness's two machine-wide slots. Each phase's
# log is printed whole when it ends, then the times and the total.
set -uo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
OUT=${OUT:-_out}
CGO_PKGS=(./images/build/ ./images/cmd/imagectl/ ./images/keys/...)
mkdir -p "$OUT/test"

start=$(date +%s)
declare -A took rc

# phase NAME CMD...: runs CMD with its output in $OUT/test/NAME.log and
# records its exit code and time.
phase() {
	local name=$1
	shift
	local t0
	t0=$(date +%s)
	"$@" >"$OUT/test/$name.log" 2>&1
	rc[$name]=$?
	took[$name]=$(($(date +%s) - t0))
}

qemu_tests() {
	CGO_ENABLED=1 $GO test -count=1 -timeout 60m -parallel 32 -v ./qemu-tests/
}

(
	t0=$(date +%s)
	qemu_tests >"$OUT/test/qemu-tests.log" 2>&1
	r=$?
	echo $(($(date +%s) - t0)) >"$OUT/test/qemu-tests.seconds"
	exit $r
) &
qemu_pid=$!
echo "make test: qemu-tests started in the background (log: $OUT/test/qemu-tests.log)"

unit_pkgs=$($GO list ./... | grep -v -e /qemu-tests -e /lab/harness)
for p in unit hsm harness; do
	case $p in
	unit) phase unit env CGO_ENABLED=0 $GO test -count=1 -timeout 20m $unit_pkgs ;;
	hsm) phase hsm env CGO_ENABLED=1 $GO test -count=1 -timeout 20m -run 'HSM|PKCS11' "${CGO_PKGS[@]}" ;;
	harness) phase harness env CGO_ENABLED=0 $GO test -count=1 -timeout 10m ./lab/harness/... ;;
	esac
	echo "=== $p (exit ${rc[$p]}, ${took[$p]} s)"
	cat "$OUT/test/$p.log"
done

wait "$qemu_pid"
qemu_rc=$?
echo "=== qemu-tests (exit $qemu_rc, $(cat "$OUT/test/qemu-tests.seconds") s)"
cat "$OUT/test/qemu-tests.log"
cp "$OUT/test/qemu-tests.log" "$OUT/qemu-tests.log"

echo
echo "make test: unit ${took[unit]} s (exit ${rc[unit]}), hsm ${took[hsm]} s (exit ${rc[hsm]}), harness ${took[harness]} s (exit ${rc[harness]}), qemu-tests $(cat "$OUT/test/qemu-tests.seconds") s (exit $qemu_rc); total $(($(date +%s) - start)) s"

for p in unit hsm harness; do
	[ "${rc[$p]}" -eq 0 ] || exit 1
done
exit "$qemu_rc"
