#!/usr/bin/env bash
# Fetch the pinned host tools in hack/host-tools.lock (trixie's mksquashfs and
# the libraries it needs) into $LABFLEET_CACHE/lab-assets/tools and write a
# wrapper, tools/bin/mksquashfs, that runs it with its own loader and libc.
# imagectl puts tools/bin in front of PATH while Talos's imager runs.
# Reuses the private trixie apt configuration of hack/fetch-lab-assets.sh.
#
#   hack/fetch-host-tools.sh           fetch + verify + unpack (idempotent)
#   hack/fetch-host-tools.sh --update  re-pin the lock to current trixie versions
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/fetch-lab-assets.sh
source "${HERE}/fetch-lab-assets.sh"

LOCK="${REPO}/hack/host-tools.lock"
TOOLS="${ASSETS}/tools"

update_lock() {
	apt_setup
	local tmp pkgs pkg ver f
	tmp="$(mktemp -d)"
	pkgs="$(lock_entries | awk '{print $1}')"
	{
		grep -E '^#' "${LOCK}"
		for pkg in ${pkgs}; do
			ver="$(apt_with apt-cache policy "${pkg}" | awk '/Candidate:/ {print $2}')"
			(cd "${tmp}" && apt_private -qq download "${pkg}=${ver}" >&2)
			f="${tmp}/$(deb_name "${pkg}" "${ver}")"
			echo "${pkg}=${ver} $(sha256sum "${f}" | cut -d' ' -f1)"
		done
	} >"${LOCK}.new"
	mv "${LOCK}.new" "${LOCK}"
	rm -rf "${tmp}"
	log "host tools lock updated"
}

main_tools() {
	if [[ "${1:-}" == "--update" ]]; then
		update_lock
	fi
	local want
	want="$(sha256sum <"${LOCK}" | cut -d' ' -f1)"
	if [[ -f "${TOOLS}/lock.sha256" && "$(cat "${TOOLS}/lock.sha256")" == "${want}" && -x "${TOOLS}/bin/mksquashfs" ]]; then
		log "host tools up to date in ${TOOLS}"
		return 0
	fi
	ASSETS="${TOOLS}" fetch_debs
	rm -rf "${TOOLS}/root"
	mkdir -p "${TOOLS}/root" "${TOOLS}/bin"
	local pkg ver sum
	while read -r pkg ver sum; do
		dpkg -x "${TOOLS}/debs/$(deb_name "${pkg}" "${ver}")" "${TOOLS}/root"
	done < <(lock_entries)
	cat >"${TOOLS}/bin/mksquashfs" <<'WRAP'
#!/bin/sh
# trixie's mksquashfs run with its own loader and libraries (hack/fetch-host-tools.sh).
R="$(cd "$(dirname "$0")/../root" && pwd)"
L="$R/usr/lib/x86_64-linux-gnu"
exec "$L/ld-linux-x86-64.so.2" --library-path "$L:$R/lib/x86_64-linux-gnu" "$R/usr/bin/mksquashfs" "$@"
WRAP
	chmod +x "${TOOLS}/bin/mksquashfs"
	"${TOOLS}/bin/mksquashfs" -version | head -n1 | grep -q 'version 4\.[6-9]' || die "unpacked mksquashfs does not run or is older than 4.6"
	echo "${want}" >"${TOOLS}/lock.sha256"
	log "host tools ready in ${TOOLS}"
}

main_tools "$@"
