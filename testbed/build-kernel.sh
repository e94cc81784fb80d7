#!/usr/bin/env bash
# build-kernel.sh: builds the iommufd-6.12 test kernel from Debian's linux-source-6.12 and the config
# fragment in testbed/kernel/, once per (source version, fragment, recipe). Prints the install dir.
# The result is cached in $CACHE/kernels/iommufd-6.12-<version>-<hash>/ (boot/vmlinuz, lib/modules/).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
FRAGMENT=$TESTBED_DIR/kernel/iommufd-6.12.config
JOBS=${VM_BUILD_JOBS:-$(( $(nproc) + 1 ))}

apt_private_update
ver=$(apt_private_version linux-source-6.12 bookworm-backports)
[ -n "$ver" ] || die "linux-source-6.12 not found in bookworm-backports"
# The key covers the source version, the fragment and the recipe: changing any of them rebuilds.
# Bump RECIPE when a change below alters the kernel that comes out (not for messages or progress).
RECIPE="allnoconfig+fragment bzImage modules; v1"
key=$( { cat "$FRAGMENT"; echo "$RECIPE"; } | sha256sum | cut -c1-12)
name=iommufd-6.12-${ver//[~:+]/_}-$key
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
say "configuring $name (allnoconfig + $(basename "$FRAGMENT"))"
make -s -C "$src" O="$obj" allnoconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$FRAGMENT" >/dev/null
make -s -C "$src" O="$obj" olddefconfig >&2
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
done < <(grep -E '^CONFIG_' "$FRAGMENT")
[ $bad = 0 ] || die "the config fragment did not apply cleanly"

log=$obj/build.log
say "building $name with -j$JOBS (log: $log); a one-time build: about 15 minutes on 2 cores"
start=$(date +%s)
make -C "$src" O="$obj" -j"$JOBS" bzImage modules >"$log" 2>&1 &
pid=$!
# Progress: objects compiled so far (the previous build's total, if any, gives a percentage).
total=$(cat "$CACHE/build/objects-total" 2>/dev/null || echo 0)
while kill -0 $pid 2>/dev/null; do
	sleep 15
	n=$(grep -cE '^\s+CC(\s|\s\[M\])' "$log" || true)
	pct=""; [ "$total" -gt 0 ] && pct=" (~$(( n * 100 / total ))%)"
	say "kernel build: $n objects compiled$pct, $(( $(date +%s) - start ))s elapsed"
done
if ! wait $pid; then tail -40 "$log" >&2; die "kernel build failed (full log: $log)"; fi
grep -cE '^\s+CC(\s|\s\[M\])' "$log" > "$CACHE/build/objects-total" || true
say "kernel built in $(( $(date +%s) - start ))s"

rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/boot"
make -s -C "$src" O="$obj" modules_install INSTALL_MOD_PATH="$dest.tmp" INSTALL_MOD_STRIP=1 >&2
kver=$(cat "$obj/include/config/kernel.release")
rm -f "$dest.tmp/lib/modules/$kver/build" "$dest.tmp/lib/modules/$kver/source"
cp "$obj/arch/x86/boot/bzImage" "$dest.tmp/boot/vmlinuz"
cp "$obj/.config" "$dest.tmp/boot/config"
echo "$kver" > "$dest.tmp/kernel.release"
rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.complete"
echo "$dest"
