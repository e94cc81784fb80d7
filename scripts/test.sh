#!/bin/sh
# npm test: every test. Unit tests (fake kernel), the addon on this host, src/uapi against the kernel's
# uAPI headers; the package as a consumer installs it (test/package/check.sh: npm pack, an install with
# no compiler and no install script, several Node builds, arm64 under qemu-user); then the real-kernel
# VM matrix (testbed/matrix.sh), whose guests also bind edu through that consumer's installed package.
set -eu
cd "$(dirname "$0")/.."
npm run --silent build
echo "== unit, addon and uAPI tests"
node --test --test-reporter=spec dist/test/unit/ dist/test/addon/ dist/test/uapi/ > /tmp/vfio-bind-unit.$$ 2>&1 || {
	cat /tmp/vfio-bind-unit.$$; rm -f /tmp/vfio-bind-unit.$$; exit 1; }
grep -E '^ℹ (tests|pass|fail)' /tmp/vfio-bind-unit.$$; rm -f /tmp/vfio-bind-unit.$$
echo "== the package, as a consumer installs it"
consumer=$(mktemp -d /tmp/vfio-bind-consumer.XXXXXX)
trap 'rm -rf "$consumer"' EXIT
bash test/package/check.sh "$consumer" > "$consumer.log" 2>&1 || { cat "$consumer.log"; rm -f "$consumer.log"; exit 1; }
grep -E '^(== |package check)|npm install .*first' "$consumer.log"; rm -f "$consumer.log"
echo "== real-kernel VM matrix"
VFIO_BIND_CONSUMER=$consumer testbed/matrix.sh
