#!/usr/bin/env bash
# kernel.sh NAME [amd64|arm64]: makes sure the test-bed kernel NAME for that architecture (amd64 by
# default) and its initramfs are in the cache (downloading or building them when missing) and prints
# two lines: the kernel image to boot, and the initrd.
#   stock-6.1     Debian bookworm's kernel: VFIO legacy route only
#   stock-6.12    Debian bookworm-backports' kernel: VFIO group + container, no iommufd, no cdev
#   iommufd-6.12  built here from Debian's linux-source-6.12 with testbed/kernel/iommufd-6.12.config
#                 (arm64: iommufd-6.12-arm64.config, cross-compiled)
#   iommufd-6.12-64k  arm64 only: that kernel with 64 KiB pages
set -euo pipefail
. "$(dirname "$0")/lib.sh"
name=${1:?usage: kernel.sh stock-6.1|stock-6.12|iommufd-6.12 [amd64|arm64]} arch=${2:-amd64}
case $name in
	stock-6.1|stock-6.12) kdir=$("$TESTBED_DIR/fetch-stock-kernel.sh" "$name" "$arch") ;;
	iommufd-6.12) kdir=$("$TESTBED_DIR/build-kernel.sh" "$arch") ;;
	iommufd-6.12-64k) [ "$arch" = arm64 ] || die "iommufd-6.12-64k is an arm64 kernel"
	                  kdir=$("$TESTBED_DIR/build-kernel.sh" arm64-64k) ;;
	*) die "unknown kernel '$name' (stock-6.1 | stock-6.12 | iommufd-6.12 | iommufd-6.12-64k)" ;;
esac
case $arch in
	amd64) initrd=$("$TESTBED_DIR/mkinitrd.sh" "$kdir") ;;
	arm64) initrd=$("$TESTBED_DIR/mkinitrd.sh" "$kdir" "$("$TESTBED_DIR/arm64-root.sh")/bin/busybox") ;;
esac
# Prefer the uncompressed ELF (x86's PVH entry) where there is one: stock images decompress slowly under TCG.
if [ -f "$kdir/boot/vmlinux" ]; then echo "$kdir/boot/vmlinux"; else echo "$kdir/boot/vmlinuz"; fi
echo "$initrd"
