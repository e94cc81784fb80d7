#!/usr/bin/env bash
# uapi-headers.sh: prints an include directory holding the kernel uAPI headers of linux-libc-dev 6.12
# (bookworm-backports; bookworm's 6.1 headers have no iommufd.h). Downloaded once, never installed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
apt_private_update
ver=$(apt_private_version linux-libc-dev bookworm-backports)
[ -n "$ver" ] || die "linux-libc-dev not found in bookworm-backports"
dest=$CACHE/uapi-${ver//[~:+]/_}
if [ ! -f "$dest/.complete" ]; then
	deb=$(apt_private_fetch linux-libc-dev "$ver")
	rm -rf "$dest" && dpkg-deb -x "$deb" "$dest" && touch "$dest/.complete"
fi
[ -f "$dest/usr/include/linux/iommufd.h" ] || die "$dest has no linux/iommufd.h"
echo "$dest/usr/include"
