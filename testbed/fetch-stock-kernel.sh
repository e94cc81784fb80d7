#!/usr/bin/env bash
# fetch-stock-kernel.sh stock-6.1|stock-6.12: downloads Debian's own kernel image (never installed:
# apt-get download + dpkg-deb -x) into the cache and prints its directory. The version is the one
# Debian's linux-image-amd64 points at in the suite, so the cache key follows Debian's updates.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
name=${1:?usage: fetch-stock-kernel.sh stock-6.1|stock-6.12}
case $name in
	stock-6.1)  suite='bookworm(-security)?/' ;;   # bookworm's 6.1, with security updates
	stock-6.12) suite='bookworm-backports/' ;;
	*) die "unknown stock kernel '$name' (stock-6.1 | stock-6.12)" ;;
esac
apt_private_update
# linux-image-amd64 (the metapackage) depends on exactly one versioned image package.
read -r meta_ver < <(apt_private_query madison linux-image-amd64 | awk -F' \\| ' -v s="$suite" \
	'$3 ~ s { gsub(/ /, "", $2); print $2; exit }')
[ -n "${meta_ver:-}" ] || die "linux-image-amd64 not found for $name"
pkg=$(apt_private_query show "linux-image-amd64=$meta_ver" | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
ver=$(apt_private_query show "linux-image-amd64=$meta_ver" | sed -n 's/^Depends: linux-image-[^ ]* (= \([^)]*\)).*/\1/p' | head -1)
[ -n "$pkg" ] && [ -n "$ver" ] || die "cannot resolve the image package behind linux-image-amd64=$meta_ver"
dest=$KERNELS/$name-${ver//[~:+]/_}
if [ -f "$dest/.complete" ]; then echo "$dest"; exit 0; fi
deb=$(apt_private_fetch "$pkg" "$ver")
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
say "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$dest.tmp/root"
kver=$(ls "$dest.tmp/root/lib/modules" | head -1)
mkdir -p "$dest.tmp/boot" "$dest.tmp/lib/modules"
mv "$dest.tmp/root/boot/vmlinuz-$kver" "$dest.tmp/boot/vmlinuz"
mv "$dest.tmp/root/boot/config-$kver" "$dest.tmp/boot/config"
mv "$dest.tmp/root/lib/modules/$kver" "$dest.tmp/lib/modules/$kver"
rm -rf "$dest.tmp/root"
depmod -b "$dest.tmp" "$kver"
echo "$kver" > "$dest.tmp/kernel.release"
# Stock images are XZ/ZSTD bzImages that take ~2.5 s to decompress under TCG; booting the ELF inside
# through QEMU's PVH entry (Debian sets CONFIG_PVH) skips that.
"$TESTBED_DIR/extract-vmlinux.sh" "$dest.tmp/boot/vmlinuz" > "$dest.tmp/boot/vmlinux"
rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.complete"
echo "$dest"
