#!/usr/bin/env bash
# build-probe.sh: compiles guest/vfio-probe.c against the 6.12 uAPI headers (static, so any guest
# runs it) into the cache and prints the binary's path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
src=$TESTBED_DIR/guest/vfio-probe.c
inc=$("$TESTBED_DIR/uapi-headers.sh")
out=$CACHE/bin/vfio-probe-$(cat "$src" | sha256sum | cut -c1-12)
if [ ! -x "$out" ]; then
	mkdir -p "$CACHE/bin"
	gcc -O2 -Wall -Werror -static -I"$inc/x86_64-linux-gnu" -I"$inc" -o "$out.tmp" "$src"
	mv "$out.tmp" "$out"
fi
echo "$out"
