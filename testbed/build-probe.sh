#!/usr/bin/env bash
# build-probe.sh [amd64|arm64]: compiles guest/vfio-probe.c against the 6.12 uAPI headers (static, so
# any guest of that architecture runs it; arm64 with Debian's cross compiler) into the cache and
# prints the binary's path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
src=$TESTBED_DIR/guest/vfio-probe.c
inc=$("$TESTBED_DIR/uapi-headers.sh")
case ${1:-amd64} in
	amd64) cc=gcc triplet=x86_64-linux-gnu tag="" ;;
	arm64) cc=aarch64-linux-gnu-gcc triplet=aarch64-linux-gnu tag=-arm64 ;;
	*) die "unknown architecture '$1' (amd64 | arm64)" ;;
esac
out=$CACHE/bin/vfio-probe$tag-$(cat "$src" | sha256sum | cut -c1-12)
if [ ! -x "$out" ]; then
	mkdir -p "$CACHE/bin"
	"$cc" -O2 -Wall -Werror -static -I"$inc/$triplet" -I"$inc" -o "$out.tmp" "$src"
	mv "$out.tmp" "$out"
fi
echo "$out"
