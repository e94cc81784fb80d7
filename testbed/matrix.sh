#!/usr/bin/env bash
# matrix.sh [CASE...] [-- COMMAND...]: runs test-bed cases, one guest boot each, one line per case.
#   matrix.sh                  every case, each asserting what its kernel exposes
#   matrix.sh CASE             one case
#   matrix.sh CASE -- COMMAND  any command in that case's guest (output streams; exit status is the command's)
#   matrix.sh --list           the cases
# Environment: VM_JOBS=N guests at a time (default 2); VM_CASE_TIMEOUT=S kills a case's guest after S
# seconds (default 900; the tests' own limit is 600 s); VM_VERBOSE=1 streams each case's guest output
# too (it is always kept in the run dir); VFIO_BIND_CONSUMER=DIR, a project with the packed package
# installed (test/package/check.sh makes one), which the guests bind edu through.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
G=$TESTBED_DIR/guest
E=0000:00:10.0      # QEMU's edu device, bound to vfio-pci by the guest's init
MTTY_UUID=83b8f4f2-509f-382f-3c1e-e6bfe0fa1001

# A second edu at 00:12.0 for two devices in one IOMMU context (the DMA cases). On iommufd-6.12-intel
# also: an edu alone behind a PCIe root port (it gets a bus reset); an e1000e left to its own driver
# (MSI-X, and moving drivers); an edu sharing an IOMMU group with two virtio-rngs on virtio-pci behind
# a PCIe-to-PCI bridge (a group that is not viable, and one that moves only whole); an edu behind its own
# root port for QMP device_del (hot-unplug by pciehp: q35's ACPI hotplug on root ports is turned off,
# or QEMU's _OSC keeps native hotplug from the guest); a PCIe e1000e behind a root port for AER.
EDU2=(--device edu,addr=12.0)
MORE_DEVICES=("${EDU2[@]}" --device pcie-root-port,id=rp1,chassis=1,addr=13.0 --device edu,bus=rp1
              --device e1000e,addr=14.0,romfile= --append vmt.load=e1000e
              --device pcie-pci-bridge,id=br1,addr=15.0 --device edu,bus=br1,addr=1.0
              --device virtio-rng-pci,bus=br1,addr=2.0 --device virtio-rng-pci,bus=br1,addr=3.0
              --device pcie-root-port,id=rp2,chassis=2,addr=16.0 --device edu,bus=rp2,id=hotedu
              --device pcie-root-port,id=rp3,chassis=3,addr=17.0 --device e1000e,bus=rp3,id=nic-aer,romfile=
              --qemu -global --qemu ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off)

# Each case sets KERNEL, IOMMU, VM_ARGS (more run-vm options), CHECK (the guest's assertions) and, for
# an arm64 guest, ARCH=arm64.
# The cases race.test.ts races in boot with --mttcg and run ALONE: single-threaded TCG runs the vCPUs
# in turn, so two claims of a few hundred microseconds would almost never meet inside the kernel.
# Guest commands see the checkout as their working directory and $VFIO_PROBE, a C witness (guest/vfio-probe.c).
case_stock-6.1-intel() { KERNEL=stock-6.1 IOMMU=intel VM_ARGS=("${EDU2[@]}" --mttcg) ALONE=1
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev=yes vfio_dev_attr=no cdev=no iommu=no
	       && $G/expect-probe.sh legacy $E ok && $G/expect-probe.sh iommufd $E open-iommu ENOENT"; }
case_stock-6.12-intel() { KERNEL=stock-6.12 IOMMU=intel VM_ARGS=("${EDU2[@]}")
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev=yes vfio_dev_attr=no cdev=no iommu=no
	       && $G/expect-probe.sh legacy $E ok && $G/expect-probe.sh iommufd $E open-iommu ENOENT"; }
case_iommufd-6.12-intel() { KERNEL=iommufd-6.12 IOMMU=intel VM_ARGS=("${MORE_DEVICES[@]}")
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev=yes vfio_dev_attr=yes cdev=yes iommu=yes
	       && $G/expect-probe.sh iommufd $E ok && $G/expect-probe.sh legacy $E ok"; }
# What a container handed only the group node sees; "iommufd not loaded" is no real state (vfio needs it).
case_iommufd-6.12-hidden-iommu() { KERNEL=iommufd-6.12 IOMMU=intel VM_ARGS=(--append vmt.hide=/dev/iommu --mttcg) ALONE=1
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node cdev=yes iommu=no
	       && $G/expect-probe.sh iommufd $E open-iommu ENOENT && $G/expect-probe.sh legacy $E ok"; }
case_iommufd-6.12-noiommu() { KERNEL=iommufd-6.12 IOMMU=noiommu
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=noiommu vfio_dev=yes vfio_dev_attr=no cdev=no iommu=yes
	       && $G/expect-probe.sh legacy $E ok && $G/expect-probe.sh iommufd $E open-cdev ENOENT"; }
case_iommufd-6.12-virtio() { KERNEL=iommufd-6.12 IOMMU=virtio VM_ARGS=(--mttcg) ALONE=1
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev_attr=yes cdev=yes iommu=yes
	       && $G/expect-probe.sh iommufd $E ok && $G/expect-probe.sh legacy $E ok"; }
# x86 virtio-iommu has no MSI isolation: without allow_unsafe_interrupts both routes answer EPERM.
case_iommufd-6.12-virtio-strict() { KERNEL=iommufd-6.12 IOMMU=virtio-strict
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node cdev=yes iommu=yes
	       && $G/expect-probe.sh iommufd $E VFIO_DEVICE_BIND_IOMMUFD EPERM
	       && $G/expect-probe.sh legacy $E VFIO_SET_IOMMU EPERM"; }
# No IOMMU: vfio-pci cannot take edu, but an mdev (the mtty sample) is a VFIO device that needs none.
case_iommufd-6.12-mtty() { KERNEL=iommufd-6.12 IOMMU=none
	CHECK="$G/check-exposed.sh $E driver=none group=none
	       && echo $MTTY_UUID > /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create
	       && $G/check-exposed.sh /sys/bus/mdev/devices/$MTTY_UUID group=node vfio_dev_attr=yes cdev=yes iommu=yes
	       && $G/expect-probe.sh iommufd /sys/bus/mdev/devices/$MTTY_UUID ok
	       && $G/expect-probe.sh legacy /sys/bus/mdev/devices/$MTTY_UUID ok"; }
# arm64: QEMU's virt machine with SMMUv3 and the GICv3 ITS, the same edu at 00:10.0. MSIs are
# isolated by the ITS: no allow_unsafe_interrupts anywhere.
case_stock-6.1-smmuv3() { ARCH=arm64 KERNEL=stock-6.1 IOMMU=smmuv3 VM_ARGS=("${EDU2[@]}")
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev=yes vfio_dev_attr=no cdev=no iommu=no
	       && $G/expect-probe.sh legacy $E ok && $G/expect-probe.sh iommufd $E open-iommu ENOENT"; }
case_stock-6.12-smmuv3() { ARCH=arm64 KERNEL=stock-6.12 IOMMU=smmuv3 VM_ARGS=("${EDU2[@]}")
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev=yes vfio_dev_attr=no cdev=no iommu=no
	       && $G/expect-probe.sh legacy $E ok && $G/expect-probe.sh iommufd $E open-iommu ENOENT"; }
case_iommufd-6.12-smmuv3() { ARCH=arm64 KERNEL=iommufd-6.12 IOMMU=smmuv3 VM_ARGS=("${EDU2[@]}" --mttcg) ALONE=1
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev=yes vfio_dev_attr=yes cdev=yes iommu=yes
	       && $G/expect-probe.sh iommufd $E ok && $G/expect-probe.sh legacy $E ok"; }
# 64 KiB pages: the kernel's, and so the SMMU's granule
case_iommufd-6.12-64k-smmuv3() { ARCH=arm64 KERNEL=iommufd-6.12-64k IOMMU=smmuv3 VM_ARGS=("${EDU2[@]}")
	CHECK="$G/check-exposed.sh $E driver=vfio-pci group=node vfio_dev=yes vfio_dev_attr=yes cdev=yes iommu=yes
	       && test \"\$(getconf PAGESIZE)\" = 65536
	       && $G/expect-probe.sh iommufd $E ok && $G/expect-probe.sh legacy $E ok"; }
# The cases that run ALONE first, one after the other; then the rest two at a time, longest first, so
# that the guests running side by side finish together instead of one long case starting last.
ALL=(iommufd-6.12-virtio iommufd-6.12-hidden-iommu stock-6.1-intel iommufd-6.12-smmuv3
     iommufd-6.12-intel iommufd-6.12-64k-smmuv3 stock-6.12-smmuv3 stock-6.1-smmuv3
     iommufd-6.12-mtty stock-6.12-intel iommufd-6.12-noiommu iommufd-6.12-virtio-strict)

load_case() { ARCH=amd64 KERNEL="" IOMMU="" VM_ARGS=() CHECK="" ALONE=0
	declare -F "case_$1" >/dev/null || die "unknown case '$1' (matrix.sh --list shows the cases)"
	"case_$1"
	# then the library's own real-kernel tests (test/vm), all in one node process
	CHECK="$CHECK && node --test-reporter=spec dist/test/vm/all.js"
	CHECK=${CHECK//$'\n'/ }; }   # the definitions above wrap lines for reading

cases=() cmd=()
while [ $# -gt 0 ]; do
	case $1 in
		--list) printf '%s\n' "${ALL[@]}"; exit 0 ;;
		--) shift; cmd=("$@"); break ;;
		*) cases+=("$1"); shift ;;
	esac
done
[ ${#cases[@]} -gt 0 ] || cases=("${ALL[@]}")
for c in "${cases[@]}"; do load_case "$c"; done     # fail fast on a misspelt case

"$TESTBED_DIR/setup-host.sh"
# Fetch and build every kernel first, so the boots below are timed alone; an arm64 case also needs
# the arm64 C witness and the checkout's arm64 prebuilt addon.
declare -A PROBES=()
for ak in $(for c in "${cases[@]}"; do load_case "$c"; echo "$ARCH/$KERNEL"; done | sort -u); do
	"$TESTBED_DIR/kernel.sh" "${ak#*/}" "${ak%/*}" >/dev/null || die "kernel ${ak#*/} ($ak) is not available"
	[ -n "${PROBES[${ak%/*}]:-}" ] || PROBES[${ak%/*}]=$("$TESTBED_DIR/build-probe.sh" "${ak%/*}")
	if [ "${ak%/*}" = arm64 ] && [ -z "${ARM64_ADDON:-}" ]; then   # rebuilt: seconds, and never stale
		node "$TESTBED_DIR/../scripts/build-addon.mjs" --all >&2 || die "cannot build the arm64 addon"
		ARM64_ADDON=built
	fi
done

if [ ${#cmd[@]} -gt 0 ]; then
	[ ${#cases[@]} = 1 ] || die "a command runs in exactly one case"
	load_case "${cases[0]}"
	exec "$TESTBED_DIR/run-vm.sh" --arch "$ARCH" --kernel "$KERNEL" --iommu "$IOMMU" "${VM_ARGS[@]+"${VM_ARGS[@]}"}" \
		--env "VFIO_PROBE=${PROBES[$ARCH]}" --env "VFIO_BIND_CONSUMER=${VFIO_BIND_CONSUMER:-}" --env "VM_CASE=${cases[0]}" -- "${cmd[*]}"
fi

# Two guests at a time by default: each QEMU (single-threaded TCG) keeps one core busy.
JOBS=${VM_JOBS:-2}
t0=$(date +%s) logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
run_case() { # case -> writes $logs/<case>.{out,rc,time}
	local c=$1 s rc
	load_case "$c"
	s=$(date +%s.%N)
	if [ "${VM_VERBOSE:-0}" = 1 ]; then
		"$TESTBED_DIR/run-vm.sh" --quiet --timeout "${VM_CASE_TIMEOUT:-900}" --arch "$ARCH" --kernel "$KERNEL" --iommu "$IOMMU" "${VM_ARGS[@]+"${VM_ARGS[@]}"}" \
			--env "VFIO_PROBE=${PROBES[$ARCH]}" --env "VFIO_BIND_CONSUMER=${VFIO_BIND_CONSUMER:-}" --env "VM_CASE=$c" -- "$CHECK" 2>&1 | tee "$logs/$c.out"; rc=${PIPESTATUS[0]}
	else
		"$TESTBED_DIR/run-vm.sh" --quiet --timeout "${VM_CASE_TIMEOUT:-900}" --arch "$ARCH" --kernel "$KERNEL" --iommu "$IOMMU" "${VM_ARGS[@]+"${VM_ARGS[@]}"}" \
			--env "VFIO_PROBE=${PROBES[$ARCH]}" --env "VFIO_BIND_CONSUMER=${VFIO_BIND_CONSUMER:-}" --env "VM_CASE=$c" -- "$CHECK" > "$logs/$c.out" 2>&1; rc=$?
	fi
	printf '%.1f' "$(echo "$(date +%s.%N) - $s" | bc)" > "$logs/$c.time"
	echo "$rc" > "$logs/$c.rc"
}
report_case() { # prints the case's line (and its output when it failed)
	local c=$1 rc
	rc=$(cat "$logs/$c.rc")
	if [ "$rc" = 0 ]; then
		# run-vm.sh boots a guest whose kernel stalled once more: the retry shows on the case's line
		printf 'PASS  %-32s %6ss%s\n' "$c" "$(cat "$logs/$c.time")" \
			"$(grep -q '^\[run-vm\] STALL:' "$logs/$c.out" && echo '  (its first boot stalled: booted again)')"
	else
		printf 'FAIL  %-32s %6ss  (exit %s)\n' "$c" "$(cat "$logs/$c.time")" "$rc"
		[ "${VM_VERBOSE:-0}" = 1 ] || sed 's/^/      | /' "$logs/$c.out"
	fi
}
declare -A pid_case=()
failed=()
reap() { # waits for one running case and reports it
	local pid c
	wait -n -p pid "${!pid_case[@]}" 2>/dev/null || true
	c=${pid_case[$pid]}
	unset "pid_case[$pid]"
	report_case "$c"
	[ "$(cat "$logs/$c.rc")" = 0 ] || failed+=("$c")
}
# A case with ALONE=1 (the race cases) runs with no other guest beside it: two guests' vCPU threads on
# two cores would hold its racers back by milliseconds, and their claims would rarely meet.
for c in "${cases[@]}"; do
	load_case "$c"
	if [ "$ALONE" = 1 ]; then
		while [ ${#pid_case[@]} -gt 0 ]; do reap; done
		run_case "$c"
		report_case "$c"
		[ "$(cat "$logs/$c.rc")" = 0 ] || failed+=("$c")
		continue
	fi
	while [ ${#pid_case[@]} -ge "$JOBS" ]; do reap; done
	run_case "$c" &
	pid_case[$!]=$c
done
while [ ${#pid_case[@]} -gt 0 ]; do reap; done
echo "${#cases[@]} cases, ${#failed[@]} failed, $(( $(date +%s) - t0 ))s ($JOBS at a time)"
[ ${#failed[@]} = 0 ]
