#!/bin/sh
# expect-probe.sh ROUTE DEVICE ok | ROUTE DEVICE STEP ERRNO: runs vfio-probe ($VFIO_PROBE) and checks that
# the route succeeds, or that it stops at STEP with ERRNO. Prints the probe's steps.
route=$1 dev=$2 want_step=$3 want_errno=${4:-}
out=$("$VFIO_PROBE" "$route" "$dev"); rc=$?
echo "$out" | sed "s/^/  [$route] /"
last=$(echo "$out" | tail -1)
if [ "$want_step" = ok ]; then
	[ $rc = 0 ] && { echo "ok   $route route succeeded"; exit 0; }
	echo "FAIL $route route: expected success, stopped at: $last"; exit 1
fi
case "$last" in
	"STEP $want_step $want_errno") echo "ok   $route route stops at $want_step with $want_errno"; exit 0 ;;
esac
echo "FAIL $route route: expected $want_step to answer $want_errno, got: $last"; exit 1
