#!/usr/bin/env bash
# kernel.sh NAME: makes sure the test-bed kernel NAME and its initramfs are in the cache (downloading
# or building them when missing) and prints two lines: the kernel image to boot, and the initrd.
#   stock-6.1     Debian bookworm's kernel: VFIO legacy route only
#   stock-6.12    Debian bookworm-backports' kernel: VFIO group + container, no iommufd, no cdev
#   iommufd-6.12  built here from Debian's linux-source-6.12 with testbed/kernel/iommufd-6.12.config
set -euo pipefail
. "$(dirname "$0")/lib.sh"
name=${1:?usage: kernel.sh stock-6.1|stock-6.12|iommufd-6.12}
case $name in
	stock-6.1|stock-6.12) kdir=$("$TESTBED_DIR/fetch-stock-kernel.sh" "$name") ;;
	iommufd-6.12) kdir=$("$TESTBED_DIR/build-kernel.sh") ;;
	*) die "unknown kernel '$name' (stock-6.1 | stock-6.12 | iommufd-6.12)" ;;
esac
initrd=$("$TESTBED_DIR/mkinitrd.sh" "$kdir")
# Prefer the uncompressed ELF (PVH entry) where there is one: stock images decompress slowly under TCG.
if [ -f "$kdir/boot/vmlinux" ]; then echo "$kdir/boot/vmlinux"; else echo "$kdir/boot/vmlinuz"; fi
echo "$initrd"
