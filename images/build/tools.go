package build

import (
	"fmt"
	"os"
	"os/exec"
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
const cpioShim = `#!/bin/sh
list=$(mktemp)
cat > "$list"
while IFS= read -r f; do
	[ -L "$f" ] || chmod go=u-w -- "$f"
	[ -z "$SOURCE_DATE_EPOCH" ] || touch -h -d "@$SOURCE_DATE_EPOCH" -- "$f"
done < "$list"
exec 3< "$list"
rm -f "$list"
exec %q "$@" <&3
`

// writeShims puts the cpio shim into dir and returns dir.
func writeShims(dir string) (string, error) {
	real, err := exec.LookPath("cpio")
	if err != nil {
		return "", fmt.Errorf("the Talos imager needs cpio (apt-get install cpio, or run hack/install-deps.sh): %w", err)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating tool shims: %w", err)
	}

	if err := os.WriteFile(filepath.Join(dir, "cpio"), fmt.Appendf(nil, cpioShim, real), 0o755); err != nil {
		return "", fmt.Errorf("writing cpio shim: %w", err)
	}

	return dir, nil
}
