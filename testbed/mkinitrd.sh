#!/usr/bin/env bash
# mkinitrd.sh KERNEL_DIR [BUSYBOX]: builds KERNEL_DIR/initrd-<hash>.gz (busybox-static, guest/init, and the modules
# the guest loads, uncompressed, with their dependency closure) and prints its path. Rebuilt only when
# the init, this script or the kernel changes. BUSYBOX is the guest architecture's static busybox (the
# host's by default; an arm64 kernel takes the arm64 root's).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
kdir=${1:?usage: mkinitrd.sh KERNEL_DIR [BUSYBOX]}
kver=$(cat "$kdir/kernel.release")
INIT=$TESTBED_DIR/guest/init
BUSYBOX=${2:-/bin/busybox}
[ -x "$BUSYBOX" ] && file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || die "busybox-static is missing (run testbed/setup-host.sh)"
key=$(cat "$INIT" "$0" "$kdir/kernel.release" "$BUSYBOX" | sha256sum | cut -c1-12)
out=$kdir/initrd-$key.gz
if [ -f "$out" ]; then echo "$out"; exit 0; fi

# Module lists: each top-level module expands, through modprobe --show-depends, to its dependency
# closure in load order. A module that is absent or built in is skipped (6.1 has no virtio-iommu;
# our own kernel builds virtio and 9p in). virtio_mmio carries an arm64 guest's 9p shares, off the
# PCIe bus that the SMMU translates.
declare -A lists=(
	[viommu]="virtio_iommu"
	[base]="virtio_pci virtio_mmio 9pnet_virtio 9p overlay"
	[vfio]="iommufd vfio vfio_iommu_type1 vfio_pci mdev mtty"
	[extra]="e1000e"                       # copied, loaded only on request (vmt.load= or modprobe)
)
ir=$(mktemp -d)
trap 'rm -rf "$ir"' EXIT
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,etc/testbed,lib/modules/$kver}
cp "$BUSYBOX" "$ir/bin/busybox"
cp "$INIT" "$ir/init" && chmod 755 "$ir/init"
seen=" "
for list in viommu base vfio extra; do
	: > "$ir/etc/testbed/mods.$list"
	for top in ${lists[$list]}; do
		deps=$(modprobe -d "$kdir" -S "$kver" --show-depends "$top" 2>/dev/null) || continue
		while read -r kind path _; do
			[ "$kind" = insmod ] || continue
			rel=${path#"$kdir/lib/modules/$kver/"}
			rel=${rel%.xz}; rel=${rel%.zst}
			case "$seen" in *" $rel "*) continue;; esac
			seen="$seen$rel "
			mkdir -p "$ir/lib/modules/$kver/$(dirname "$rel")"
			case $path in
				*.xz) xz -dc "$path" ;;
				*.zst) zstd -qdc "$path" ;;
				*) cat "$path" ;;
			esac > "$ir/lib/modules/$kver/$rel"
			[ "$list" = extra ] || echo "$rel" >> "$ir/etc/testbed/mods.$list"
			echo "$rel" >> "$ir/etc/testbed/mods.all"
		done <<< "$deps"
	done
done
cp "$kdir/lib/modules/$kver"/modules.{builtin,builtin.modinfo,order} "$ir/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$ir" "$kver"
say "initrd for $kver: $(wc -l < "$ir/etc/testbed/mods.all") modules ($(cat "$ir"/etc/testbed/mods.{viommu,base,vfio} | xargs -n1 basename | tr '\n' ' '))"
rm -f "$kdir"/initrd-*.gz   # older inits' images
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
