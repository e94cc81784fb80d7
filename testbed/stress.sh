#!/usr/bin/env bash
# stress.sh CASE [N]: boots one case N times (default 50) in a row, no retries, and counts failures:
# a boot fails when the guest did not print its exit marker with status 0 (run-vm.sh exit 0).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case_name=${1:?usage: stress.sh CASE [N]} n=${2:-50}
fails=0 t0=$(date +%s)
for i in $(seq 1 "$n"); do
	s=$(date +%s.%N)
	"$TESTBED_DIR/matrix.sh" "$case_name" -- true >/dev/null 2>&1; rc=$?
	t=$(printf '%.1f' "$(echo "$(date +%s.%N) - $s" | bc)")
	[ $rc = 0 ] || fails=$((fails + 1))
	echo "boot $i/$n: exit $rc, ${t}s"
done
echo "$case_name: $n boots, $fails failed, $(( $(date +%s) - t0 ))s"
[ $fails = 0 ]
