#!/usr/bin/env bash
# Refresh hack/lab-assets.lock to the current Debian 13 "trixie" versions of
# the lab assets: the 6.12 kernel behind linux-image-amd64 and
# systemd-boot-efi. Downloads each .deb once (private apt configuration, the
# system's own mirror), records package=version and its sha256, then runs
# hack/fetch-lab-assets.sh to unpack it. Review and commit the lock afterwards.
set -euo pipefail

# shellcheck source=fetch-lab-assets.sh
source "$(dirname "${BASH_SOURCE[0]}")/fetch-lab-assets.sh"

# candidate prints the version apt would pick for a package in the private config.
candidate() {
	apt_with apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'
}

update_main() {
	mkdir -p "${ASSETS}/debs"
	apt_setup

	# linux-image-amd64 is a metapackage; pin the real image package it
	# depends on (linux-image-6.12.*-amd64) so the lock names a kernel.
	local meta_ver kpkg
	meta_ver="$(candidate linux-image-amd64)"
	[[ -n "${meta_ver}" && "${meta_ver}" != "(none)" ]] || die "linux-image-amd64 not found in ${SUITE}"
	kpkg="$(apt_with apt-cache show "linux-image-amd64=${meta_ver}" 2>/dev/null |
		awk -F': ' '/^Depends:/ {print $2; exit}' | tr ',' '\n' |
		grep -oE 'linux-image-[0-9][^ ]*-amd64' | head -n1)"
	[[ "${kpkg}" == linux-image-6.12.* ]] || die "linux-image-amd64 ${meta_ver} depends on ${kpkg:-nothing}, not a 6.12 kernel"

	local pkgs=("${kpkg}" systemd-boot-efi) pkg ver f lines=()
	for pkg in "${pkgs[@]}"; do
		ver="$(candidate "${pkg}")"
		[[ -n "${ver}" && "${ver}" != "(none)" ]] || die "${pkg} not found in ${SUITE}"
		if [[ "${pkg}" == systemd-boot-efi && "${ver}" != 257.* ]]; then
			die "systemd-boot-efi in ${SUITE} is ${ver}, the lab needs 257.x"
		fi
		f="${ASSETS}/debs/$(deb_name "${pkg}" "${ver}")"
		if [[ ! -f "${f}" ]]; then
			log "downloading ${pkg}=${ver}"
			(cd "${ASSETS}/debs" && apt_private -qq download "${pkg}=${ver}" >&2)
		fi
		lines+=("${pkg}=${ver} $(sha256sum "${f}" | cut -d' ' -f1)")
	done

	{
		echo "# Lab assets: Debian ${SUITE} packages, pinned (package=version sha256-of-.deb)."
		echo "# Written by hack/update-lab-assets.sh; read by hack/fetch-lab-assets.sh."
		printf '%s\n' "${lines[@]}"
	} >"${LOCK}"
	log "wrote ${LOCK}"
	main
}

update_main "$@"
