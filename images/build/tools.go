package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// cpioShim wraps cpio for the imager. The imager archives files it has just
// written (the system-extension images, including the embedded machine
// config) and cpio records their mtimes and modes, which would make every
// UKI differ, and differ again under another umask (0600 under umask 077;
// owners are already forced to 0:0 by the imager's -R +0:+0). The shim
// clamps the listed files' mtimes to SOURCE_DATE_EPOCH and sets group and
// other to the owner's bits without write (what umask 022 gives), as
// reproducible-build tooling does, and then runs the real cpio unchanged.
// It reads the list with the shell's own read and runs chmod and touch once
// each over all the files: the imager waits for it, and each process it
// started (mktemp, cat, rm, and chmod and touch per file) cost 5-10 ms here.
const cpioShim = `#!/bin/sh
set -f
IFS='
'
list=
while IFS= read -r f || [ -n "$f" ]; do
	list="$list$f
"
done
mode=
for f in $list; do
	[ -L "$f" ] || mode="$mode$f
"
done
[ -z "$mode" ] || chmod go=u-w -- $mode || exit 1
[ -z "$list" ] || [ -z "$SOURCE_DATE_EPOCH" ] || touch -h -d "@$SOURCE_DATE_EPOCH" -- $list || exit 1
printf '%%s' "$list" | %q "$@"
`

// zstdShim wraps zstd for the imager. The imager pipes the cpio of the
// system extensions (with the embedded machine config) into
// `zstd -T0 -18 -c --quiet`; on a stream of unknown size zstd sizes its
// level-18 match tables for the largest input (~50 MB, zeroed and faulted
// in), which for the ~30 kB cpio of a lab image was 0.3 s of CPU and most of
// the imager's wall time after the base initramfs was read. The shim writes
// the stream to a file first and compresses that file with the same
// options: zstd then sizes its tables for the input and records its size in
// the frame header. The output is still one zstd frame of the same cpio
// that the kernel unpacks after the base initramfs; it is not the bytes
// the stream would have given (the UKI changed once with this shim, see
// images/README.md "Speed pass"), and it is as reproducible. Any other call
// runs zstd unchanged. The file stays in the shim's folder, inside the
// build's work folder, which the build removes.
const zstdShim = `#!/bin/sh
if [ "$#" -eq 4 ] && [ "$1 $2 $3 $4" = "-T0 -18 -c --quiet" ]; then
	in="${0%%/*}/zstd-in.$$"
	cat > "$in" || exit 1
	exec %[1]q -T0 -18 -c --quiet -- "$in"
fi
exec %[1]q "$@"
`

// writeShims puts the tool shims into dir and returns dir. path is the
// search path the imager runs with, without dir: the shims run the tools
// it resolves to.
func writeShims(dir, path string) (string, error) {
	real := lookPathIn("cpio", path)
	if real == "" {
		return "", errors.New("the Talos imager needs cpio (apt-get install cpio, or run hack/install-deps.sh): not found in PATH")
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating tool shims: %w", err)
	}

	if err := os.WriteFile(filepath.Join(dir, "cpio"), fmt.Appendf(nil, cpioShim, real), 0o755); err != nil {
		return "", fmt.Errorf("writing cpio shim: %w", err)
	}

	// Without zstd there is nothing to wrap: an imager that needs it says so.
	if zstd := lookPathIn("zstd", path); zstd != "" {
		if err := os.WriteFile(filepath.Join(dir, "zstd"), fmt.Appendf(nil, zstdShim, zstd), 0o755); err != nil {
			return "", fmt.Errorf("writing zstd shim: %w", err)
		}
	}

	return dir, nil
}
