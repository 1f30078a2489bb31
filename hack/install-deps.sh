#!/usr/bin/env bash
# Install what labfleet needs on a Debian 12 machine, idempotently:
# Debian packages (apt, --no-install-recommends), the pinned lab assets
# (trixie kernel + systemd-boot 257, hack/lab-assets.lock) and host tools
# (trixie mksquashfs, hack/host-tools.lock). Nothing is downloaded from
# anywhere but Debian's mirror and the Go module proxy.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/.." && pwd)"

PACKAGES=(
	qemu-system-x86 qemu-utils ovmf        # the lab's emulated hardware and UEFI firmware
	swtpm swtpm-tools                       # software TPM 2.0 for the lab VMs
	sbsigntool efitools                     # sbverify and EFI signature tools (checks, baseline bench)
	cryptsetup-bin e2fsprogs                # LUKS2 and ext4 tools copied into labos's initramfs; mkfs.ext4 + debugfs make IMAGECACHE
	mtools dosfstools                       # FAT inspection in tests
	squashfs-tools xorriso cpio zstd xz-utils  # used by Talos's imager
	binutils                                # objcopy: the baseline UKI assembly in make bench
	tpm2-tools socat time                   # debugging, /usr/bin/time for peak RSS in benches
	docker-registry                         # the CNCF distribution registry: push/pull tests with auth and TLS
	skopeo umoci                            # OCI conformance test of the installer image (images/build)
	iproute2                                # ip netns/veth: the hub's UDP test between two network namespaces
	softhsm2                                # a PKCS#11 token for the HSM signing tests (images/build, imagectl keys)
	gcc libc6-dev                           # cgo for imagectl only (PKCS#11 modules are C libraries)
	ca-certificates git make
	chromium                                # headless browser for the fleet overview's end-to-end test (fleetctl/overview)
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed" || missing+=("${p}")
done

if ((${#missing[@]} > 0)); then
	echo "install-deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	echo "install-deps: Debian packages present" >&2
fi

command -v go >/dev/null || { echo "install-deps: Go 1.26 is required (go not on PATH)" >&2; exit 1; }

bash "${HERE}/fetch-lab-assets.sh"
bash "${HERE}/fetch-host-tools.sh"

(cd "${REPO}" && go mod download)

# The fleet overview's front end (fleetctl/overview/web): its packages from
# the npm registry, exactly as the lock file pins them. The built page is
# committed (fleetctl/overview/dist), so Go builds without this; CI rebuilds
# it and checks it matches (hack/check-overview-dist.sh). Vite 8 needs
# Node.js 20.19+, newer than Debian 12's nodejs (18).
if command -v node >/dev/null && node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)'; then
	(cd "${REPO}/fleetctl/overview/web" && npm ci --no-audit --no-fund --loglevel=error)
else
	echo "install-deps: Node.js 20.19+ with npm is required for the overview front end (fleetctl/overview/web; found: $(node --version 2>/dev/null || echo none))" >&2
	exit 1
fi
echo "install-deps: done" >&2
