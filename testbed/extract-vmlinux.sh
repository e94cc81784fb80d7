#!/usr/bin/env bash
# extract-vmlinux.sh BZIMAGE > vmlinux: finds the compressed payload in a bzImage by its magic
# number and prints the first candidate that decompresses to an ELF file.
set -u   # no pipefail: a decompressor stopped by head, or one that meets trailing data, is expected
img=${1:?usage: extract-vmlinux.sh bzImage}
try() { # magic(hex, for grep -P) decompressor...
	local magic=$1; shift
	local off
	for off in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1 | head -20); do
		if tail -c +$((off + 1)) "$img" | "$@" 2>/dev/null | head -c 4 | cmp -s - <(printf '\177ELF'); then
			tail -c +$((off + 1)) "$img" | "$@" 2>/dev/null
			return 0
		fi
	done
	return 1
}
try '\xFD\x37\x7A\x58\x5A\x00' xz -dc || try '\x28\xB5\x2F\xFD' zstd -dcq || try '\x1F\x8B\x08' gzip -dc ||
	{ echo "extract-vmlinux: no ELF payload found in $img" >&2; exit 1; }
