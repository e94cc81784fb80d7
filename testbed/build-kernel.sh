#!/usr/bin/env bash
# build-kernel.sh [amd64|arm64|arm64-64k]: builds the iommufd-6.12 test kernel from Debian's
# linux-source-6.12 and the config fragments in testbed/kernel/, once per (source version, fragments,
# recipe). Prints the install dir. arm64 is cross-compiled with Debian's gcc-aarch64-linux-gnu;
# arm64-64k is that kernel with 64 KiB pages. The result is cached in
# $CACHE/kernels/iommufd-6.12[-arm64[-64k]]-<version>-<hash>/ (boot/vmlinuz, lib/modules/).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
K=$TESTBED_DIR/kernel
variant=${1:-amd64}
case $variant in
	amd64) FRAGMENTS=("$K/iommufd-6.12.config") MAKE_ARGS=() TARGET=bzImage IMAGE=arch/x86/boot/bzImage tag=""
	       RECIPE="allnoconfig+fragment bzImage modules; v1" ;;
	arm64|arm64-64k)
	       FRAGMENTS=("$K/iommufd-6.12-arm64.config") MAKE_ARGS=(ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
	       TARGET=Image IMAGE=arch/arm64/boot/Image tag=-$variant RECIPE="arm64 allnoconfig+fragments Image modules; v1"
	       [ "$variant" = arm64 ] || FRAGMENTS+=("$K/iommufd-6.12-arm64-64k.config") ;;
	*) die "unknown variant '$variant' (amd64 | arm64 | arm64-64k)" ;;
esac
JOBS=${VM_BUILD_JOBS:-$(( $(nproc) + 1 ))}

apt_private_update
ver=$(apt_private_version linux-source-6.12 bookworm-backports)
[ -n "$ver" ] || die "linux-source-6.12 not found in bookworm-backports"
# The key covers the source version, the fragments and the recipe: changing any of them rebuilds.
# Bump a RECIPE above when a change below alters the kernel that comes out (not for messages or progress).
key=$( { cat "${FRAGMENTS[@]}"; echo "$RECIPE"; } | sha256sum | cut -c1-12)
name=iommufd-6.12$tag-${ver//[~:+]/_}-$key
dest=$KERNELS/$name
if [ -f "$dest/.complete" ]; then echo "$dest"; exit 0; fi

src=$CACHE/src/linux-source-6.12-$ver
if [ ! -f "$src/.complete" ]; then
	deb=$(apt_private_fetch linux-source-6.12 "$ver")
	say "unpacking $(basename "$deb")"
	rm -rf "$src" && mkdir -p "$src"
	dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-6.12.tar.xz | tar -xJ -C "$src" --strip-components=1
	touch "$src/.complete"
fi

obj=$CACHE/build/$name
mkdir -p "$obj"
say "configuring $name (allnoconfig + $(for f in "${FRAGMENTS[@]}"; do basename "$f"; done | paste -sd+))"
make -s -C "$src" O="$obj" "${MAKE_ARGS[@]+"${MAKE_ARGS[@]}"}" allnoconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${FRAGMENTS[@]}" >/dev/null
make -s -C "$src" O="$obj" "${MAKE_ARGS[@]+"${MAKE_ARGS[@]}"}" olddefconfig >&2
# Every setting of the fragment must have stuck: Kconfig silently drops a symbol whose dependencies
# are unmet, and the kernel would then lack what the tests rely on.
bad=0
while IFS= read -r line; do
	sym=${line%%=*} val=${line#*=}
	if [ "$val" = n ]; then
		! grep -q "^$sym=" "$obj/.config" || { say "config: $sym should be unset"; bad=1; }
	else
		grep -qxF "$line" "$obj/.config" || { say "config: wanted $line, got '$(grep -E "^(# )?$sym[= ]" "$obj/.config")'"; bad=1; }
	fi
done < <(grep -hE '^CONFIG_' "${FRAGMENTS[@]}")
[ $bad = 0 ] || die "the config fragment did not apply cleanly"

log=$obj/build.log
say "building $name with -j$JOBS (log: $log); a one-time build: about 15 minutes on 2 cores"
start=$(date +%s)
make -C "$src" O="$obj" "${MAKE_ARGS[@]+"${MAKE_ARGS[@]}"}" -j"$JOBS" "$TARGET" modules >"$log" 2>&1 &
pid=$!
# Progress: objects compiled so far (the previous build's total, if any, gives a percentage).
total=$(cat "$CACHE/build/objects-total$tag" 2>/dev/null || echo 0)
while kill -0 $pid 2>/dev/null; do
	sleep 15
	n=$(grep -cE '^\s+CC(\s|\s\[M\])' "$log" || true)
	pct=""; [ "$total" -gt 0 ] && pct=" (~$(( n * 100 / total ))%)"
	say "kernel build: $n objects compiled$pct, $(( $(date +%s) - start ))s elapsed"
done
if ! wait $pid; then tail -40 "$log" >&2; die "kernel build failed (full log: $log)"; fi
grep -cE '^\s+CC(\s|\s\[M\])' "$log" > "$CACHE/build/objects-total$tag" || true
say "kernel built in $(( $(date +%s) - start ))s"

rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/boot"
make -s -C "$src" O="$obj" "${MAKE_ARGS[@]+"${MAKE_ARGS[@]}"}" modules_install INSTALL_MOD_PATH="$dest.tmp" INSTALL_MOD_STRIP=1 >&2
kver=$(cat "$obj/include/config/kernel.release")
rm -f "$dest.tmp/lib/modules/$kver/build" "$dest.tmp/lib/modules/$kver/source"
cp "$obj/$IMAGE" "$dest.tmp/boot/vmlinuz"
cp "$obj/.config" "$dest.tmp/boot/config"
echo "$kver" > "$dest.tmp/kernel.release"
rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.complete"
echo "$dest"
