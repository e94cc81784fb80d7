#!/bin/sh
# npm test: every test. Unit tests (fake kernel), the addon on this host, src/uapi against the kernel's
# uAPI headers, then the real-kernel VM matrix (testbed/matrix.sh), which installs what it needs.
set -eu
cd "$(dirname "$0")/.."
npm run --silent build
echo "== unit, addon and uAPI tests"
node --test --test-reporter=spec dist/test/unit/ dist/test/addon/ dist/test/uapi/ > /tmp/vfio-bind-unit.$$ 2>&1 || {
	cat /tmp/vfio-bind-unit.$$; rm -f /tmp/vfio-bind-unit.$$; exit 1; }
grep -E '^ℹ (tests|pass|fail)' /tmp/vfio-bind-unit.$$; rm -f /tmp/vfio-bind-unit.$$
echo "== real-kernel VM matrix"
testbed/matrix.sh
