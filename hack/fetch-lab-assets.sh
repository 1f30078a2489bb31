#!/usr/bin/env bash
# Fetch the pinned lab assets (Debian 13 "trixie" kernel and systemd-boot)
# listed in hack/lab-assets.lock into the cache, verify their sha256 and
# unpack them. Idempotent: a second run with the same lock does nothing.
#
# trixie is never added to the system's apt sources: a private apt
# configuration (sources, lists and cache under the cache dir) is used, and
# the mirror is the one the system already uses (/etc/apt/sources.list*).
#
# Env:
#   LABFLEET_CACHE  cache root (default: <repo>/_cache); assets land in
#                   $LABFLEET_CACHE/lab-assets
#
# Result (stable names, what lab/labbase reads as its AssetsDir):
#   lab-assets/vmlinuz            trixie kernel
#   lab-assets/kernel.release     its version string (uname -r)
#   lab-assets/kernel.config      its build configuration
#   lab-assets/modules/           its /lib/modules/<release> tree
#   lab-assets/systemd-stub.efi   linuxx64.efi.stub (systemd 257)
#   lab-assets/systemd-boot.efi   systemd-bootx64.efi (systemd 257)
#   lab-assets/lock.sha256        sha256 of the lock these were made from
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="${REPO}/hack/lab-assets.lock"
CACHE_ROOT="${LABFLEET_CACHE:-${REPO}/_cache}"
ASSETS="${CACHE_ROOT}/lab-assets"
APTDIR="${ASSETS}/apt"
SUITE="${LAB_ASSETS_SUITE:-trixie}"

log() { echo "lab-assets: $*" >&2; }
die() { echo "lab-assets: error: $*" >&2; exit 1; }

# mirror_uri prints the first URI of the system's sources whose path ends in
# the given suffix (/debian or /debian-security), so we reuse its mirror.
mirror_uri() {
	local suffix="$1" uri
	uri="$(
		{
			grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i=2;i<=NF;i++) print $i}'
			grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{for (i=2;i<=NF;i++) if ($i ~ /:\/\//) {print $i; break}}'
		} | grep -E "${suffix}/?\$" | head -n1
	)"
	[[ -n "${uri}" ]] || die "no ${suffix} mirror in /etc/apt/sources.list*"
	echo "${uri%/}"
}

# apt_private runs apt-get with a configuration that only knows the trixie
# sources written below and keeps its lists and cache under $APTDIR.
apt_private() {
	apt_with apt-get "$@"
}

apt_with() {
	local tool="$1"
	shift
	"${tool}" \
		-o Dir::Etc::sourcelist="${APTDIR}/sources.list" \
		-o Dir::Etc::sourceparts=- \
		-o Dir::Etc::preferences="${APTDIR}/preferences" \
		-o Dir::Etc::preferencesparts="${APTDIR}/preferences.d" \
		-o APT::Sandbox::User=root \
		-o Dir::State::Lists="${APTDIR}/lists" \
		-o Dir::Cache="${APTDIR}/cache" \
		-o APT::Architecture=amd64 \
		-o APT::Architectures::=amd64 \
		-o Acquire::Languages=none \
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
		"$@"
}

apt_setup() {
	local main sec
	main="$(mirror_uri /debian)"
	sec="$(mirror_uri /debian-security)"
	mkdir -p "${APTDIR}/lists/partial" "${APTDIR}/cache/archives/partial" "${APTDIR}/preferences.d"
	cat >"${APTDIR}/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${main} ${SUITE} main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${main} ${SUITE}-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${sec} ${SUITE}-security main
SRC
	log "updating private ${SUITE} package lists from ${main}"
	apt_private -qq update >&2
}

# lock_entries prints "package version sha256" for each lock line.
lock_entries() {
	grep -Ev '^[[:space:]]*(#|$)' "${LOCK}" | awk '{split($1, pv, "="); print pv[1], pv[2], $2}'
}

deb_name() { # package version -> file name apt-get download writes
	local v="${2//:/%3a}"
	echo "${1}_${v}_amd64.deb"
}

fetch_debs() {
	local pkg ver sum f need=() updated=0
	mkdir -p "${ASSETS}/debs"
	while read -r pkg ver sum; do
		f="${ASSETS}/debs/$(deb_name "${pkg}" "${ver}")"
		if [[ -f "${f}" ]] && echo "${sum}  ${f}" | sha256sum -c --status; then
			continue
		fi
		need+=("${pkg}=${ver}")
	done < <(lock_entries)
	if ((${#need[@]} > 0)); then
		apt_setup
		log "downloading ${need[*]}"
		(cd "${ASSETS}/debs" && apt_private -qq download "${need[@]}" >&2) ||
			die "download failed; if the mirror dropped a pinned version run hack/update-lab-assets.sh"
	fi
	while read -r pkg ver sum; do
		f="${ASSETS}/debs/$(deb_name "${pkg}" "${ver}")"
		echo "${sum}  ${f}" | sha256sum -c --status || die "sha256 mismatch for ${f} (lock says ${sum})"
	done < <(lock_entries)
}

extract() {
	local pkg ver sum root kver
	rm -rf "${ASSETS}/root.tmp"
	mkdir -p "${ASSETS}/root.tmp"
	while read -r pkg ver sum; do
		dpkg -x "${ASSETS}/debs/$(deb_name "${pkg}" "${ver}")" "${ASSETS}/root.tmp"
	done < <(lock_entries)
	root="${ASSETS}/root.tmp"
	local moddir
	for moddir in "${root}/usr/lib/modules" "${root}/lib/modules"; do
		[[ -d "${moddir}" ]] && break
	done
	kver="$(ls "${moddir}")"
	[[ -n "${kver}" && "$(echo "${kver}" | wc -l)" == 1 ]] || die "expected one kernel in the lock, found: ${kver}"
	# The package ships no modules.dep (its postinst runs depmod); lab/labbase
	# resolves dependencies from each module's .modinfo instead, so no kmod
	# is needed on the host.
	rm -rf "${ASSETS}/root"
	mv "${root}" "${ASSETS}/root"
	root="${ASSETS}/root"
	moddir="${moddir/root.tmp/root}"
	ln -sfn "root/boot/vmlinuz-${kver}" "${ASSETS}/vmlinuz"
	ln -sfn "root/boot/config-${kver}" "${ASSETS}/kernel.config"
	ln -sfn "${moddir#"${ASSETS}/"}/${kver}" "${ASSETS}/modules"
	ln -sfn root/usr/lib/systemd/boot/efi/linuxx64.efi.stub "${ASSETS}/systemd-stub.efi"
	ln -sfn root/usr/lib/systemd/boot/efi/systemd-bootx64.efi "${ASSETS}/systemd-boot.efi"
	echo "${kver}" >"${ASSETS}/kernel.release"
	local l
	for l in vmlinuz kernel.config modules systemd-stub.efi systemd-boot.efi; do
		[[ -e "${ASSETS}/${l}" ]] || die "missing ${l} after extraction"
	done
}

main() {
	[[ -f "${LOCK}" ]] || die "no lock file ${LOCK}; run hack/update-lab-assets.sh"
	mkdir -p "${ASSETS}"
	# The cache never belongs in git.
	[[ -f "${CACHE_ROOT}/.gitignore" ]] || echo '*' >"${CACHE_ROOT}/.gitignore"
	local want
	want="$(sha256sum <"${LOCK}" | cut -d' ' -f1)"
	if [[ -f "${ASSETS}/lock.sha256" && "$(cat "${ASSETS}/lock.sha256")" == "${want}" && -e "${ASSETS}/vmlinuz" ]]; then
		fetch_debs # cheap when cached: re-verifies the sha256 of each .deb
		log "up to date in ${ASSETS} (kernel $(cat "${ASSETS}/kernel.release"))"
		return 0
	fi
	rm -f "${ASSETS}/lock.sha256"
	fetch_debs
	extract
	echo "${want}" >"${ASSETS}/lock.sha256"
	log "ready in ${ASSETS} (kernel $(cat "${ASSETS}/kernel.release"))"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	main "$@"
fi
