#!/usr/bin/env bash
# fetch-stock-kernel.sh stock-6.1|stock-6.12 [amd64|arm64]: downloads Debian's own kernel image (never
# installed: apt-get download + dpkg-deb -x) into the cache and prints its directory. The version is
# the one Debian's linux-image-<arch> points at in the suite, so the cache key follows Debian's updates.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
name=${1:?usage: fetch-stock-kernel.sh stock-6.1|stock-6.12 [amd64|arm64]} arch=${2:-amd64}
case $arch in amd64) qual="" tag="" ;; arm64) qual=:arm64 tag=-arm64 ;; *) die "unknown architecture '$arch' (amd64 | arm64)" ;; esac
case $name in
	stock-6.1)  suite='bookworm(-security)?/' ;;   # bookworm's 6.1, with security updates
	stock-6.12) suite='bookworm-backports/' ;;
	*) die "unknown stock kernel '$name' (stock-6.1 | stock-6.12)" ;;
esac
apt_private_update
# linux-image-<arch> (the metapackage) depends on exactly one versioned image package.
meta=linux-image-$arch$qual
read -r meta_ver < <(apt_private_query madison "$meta" | awk -F' \\| ' -v s="$suite" \
	'$3 ~ s { gsub(/ /, "", $2); print $2; exit }')
[ -n "${meta_ver:-}" ] || die "$meta not found for $name"
pkg=$(apt_private_query show "$meta=$meta_ver" | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
ver=$(apt_private_query show "$meta=$meta_ver" | sed -n 's/^Depends: linux-image-[^ ]* (= \([^)]*\)).*/\1/p' | head -1)
[ -n "$pkg" ] && [ -n "$ver" ] || die "cannot resolve the image package behind $meta=$meta_ver"
dest=$KERNELS/$name$tag-${ver//[~:+]/_}
if [ -f "$dest/.complete" ]; then echo "$dest"; exit 0; fi
deb=$(apt_private_fetch "$pkg$qual" "$ver")
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
# Stock x86 images are XZ/ZSTD bzImages that take ~2.5 s to decompress under TCG; booting the ELF
# inside through QEMU's PVH entry (Debian sets CONFIG_PVH) skips that. An arm64 vmlinuz is a gzipped
# Image, which QEMU unpacks itself.
[ "$arch" = arm64 ] || "$TESTBED_DIR/extract-vmlinux.sh" "$dest.tmp/boot/vmlinuz" > "$dest.tmp/boot/vmlinux"
rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.complete"
echo "$dest"
