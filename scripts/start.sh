#!/bin/sh
# npm start: show a real bind. On a host with VFIO devices, list them and bind each in turn (releasing it
# again). On a host without (most machines), do the same inside the test bed: a QEMU guest running
# Debian's stock kernel with QEMU's edu device bound to vfio-pci (a download, not a kernel build).
set -eu
cd "$(dirname "$0")/.."
# A fresh clone: npm install fetched the dependencies only (the package runs no install script), so
# build the library, the CLI bundle and this machine's addon once.
[ -f dist/cli/main.cjs ] && ls prebuilds/*/vfio_addon.node > /dev/null 2>&1 || npm run --silent build
cli="node bin/vfio-bind.js"
devices=$($cli list --json | node -e '
  let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
    for (const d of JSON.parse(s).devices) if (d.routes.iommufd || d.routes.legacy) console.log(d.device);
  });')
if [ -n "$devices" ]; then
	echo "== VFIO devices on this host"
	$cli list
	for d in $devices; do
		echo; echo "== vfio-bind bind $d"
		$cli bind "$d" || true   # a busy or unusable device is reported, and the next one tried
	done
	exit 0
fi
echo "== This host has no VFIO device: $($cli list | sed 's/^No VFIO devices: //')"
echo "== Running the same in the test bed instead:"
echo "   (a QEMU guest with Debian's stock 6.12 kernel and QEMU's edu device bound to vfio-pci)"
testbed/setup-host.sh
exec testbed/run-vm.sh --kernel "${VM_KERNEL:-stock-6.12}" -- \
	'echo "== vfio-bind list"; node bin/vfio-bind.js list; echo; echo "== vfio-bind bind 0000:00:10.0"; node bin/vfio-bind.js bind 0000:00:10.0'
