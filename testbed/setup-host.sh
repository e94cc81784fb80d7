#!/usr/bin/env bash
# Installs the host packages the test bed needs, when missing: QEMU, busybox-static, kmod (depmod and
# modprobe, for module load order) and the kernel build tools; and what packing and checking the npm
# package needs: the arm64 cross compiler (the linux-arm64 prebuilt addon), qemu-user-static and the
# arm64 C and C++ runtimes (to run an arm64 node on this x86_64 host); for the arm64 guests,
# qemu-system-arm and debootstrap (their user space). Needs root (CI runs as root).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
for p in qemu-system-x86 busybox-static kmod cpio bison flex libelf-dev bc libssl-dev xz-utils zstd \
         make gcc perl util-linux binutils gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstdc++6-arm64-cross \
         qemu-user-static qemu-system-arm debootstrap; do
	have_pkg "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing packages (${need[*]}); run this script as root to install them"
	say "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -qq update >&2
	apt-get -qq install -y --no-install-recommends "${need[@]}" >&2
fi
apt_private_update
say "host packages ready"
