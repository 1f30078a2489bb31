#!/usr/bin/env bash
# The classic UKI recipe, as the baseline for imagectl's UKI step: append
# .osrel, .cmdline, .initrd and .linux to systemd-stub with objcopy, each at
# the next section-aligned address after the stub's image, then sign the
# result with sbsign. No .pcrsig/.pcrpkey/.sbat/.uname, no machine config,
# no disk or installer: it is the least work that gives a bootable signed UKI.
#
# usage: objcopy-uki.sh STUB KERNEL INITRAMFS CMDLINE-FILE OSREL-FILE KEY CERT OUT.efi
set -euo pipefail

if [ $# -ne 8 ]; then
	echo "usage: $0 STUB KERNEL INITRAMFS CMDLINE-FILE OSREL-FILE KEY CERT OUT.efi" >&2
	exit 2
fi

stub=$1 kernel=$2 initramfs=$3 cmdline=$4 osrel=$5 key=$6 cert=$7 out=$8

hexfield() { objdump -p "$stub" | awk -v f="$1" '$1 == f { print $2 }'; }

align=$((16#$(hexfield SectionAlignment)))
# The first free address is the end of the stub's image (ImageBase + SizeOfImage).
next=$((16#$(hexfield ImageBase) + 16#$(hexfield SizeOfImage)))
roundup() { echo $((($1 + align - 1) / align * align)); }

args=()
# .linux goes last, as ukify puts it: the stub may extend the image for the
# kernel's in-place decompression.
for pair in ".osrel=$osrel" ".cmdline=$cmdline" ".initrd=$initramfs" ".linux=$kernel"; do
	section=${pair%%=*} file=${pair#*=}
	vma=$(roundup "$next")
	args+=(--add-section "$section=$file" --change-section-vma "$(printf '%s=0x%x' "$section" "$vma")")
	next=$((vma + $(stat -Lc %s "$file")))
done

unsigned="$out.unsigned"
objcopy "${args[@]}" "$stub" "$unsigned"
# sbsign always chats on stderr; show it only when it fails.
if ! msg=$(sbsign --key "$key" --cert "$cert" --output "$out" "$unsigned" 2>&1); then
	echo "$msg" >&2
	exit 1
fi
rm -f "$unsigned"
