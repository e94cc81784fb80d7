#!/usr/bin/env bash
# run-vm.sh [options] [--] COMMAND...: boots a test-bed guest and runs COMMAND in it, chrooted into a
# writable (tmpfs overlay, discarded) view of this host's root, in the current directory. The guest
# command's stdout and stderr stream to ours; our exit status is the command's.
#   --arch A          amd64 (default: q35) | arm64 (QEMU's virt machine, GICv3 with its ITS, the
#                     arm64 user space of testbed/arm64-root.sh with the checkout and the cache over it)
#   --kernel K        stock-6.1 | stock-6.12 (default) | iommufd-6.12 | iommufd-6.12-64k (arm64)
#   --iommu I         intel (default on amd64) | smmuv3 (default on arm64) | virtio | virtio-strict | none | noiommu
#                       virtio: virtio-iommu plus the allow_unsafe_interrupts parameters x86 needs
#                       (it has no MSI isolation); virtio-strict: without them (VFIO answers EPERM);
#                       noiommu: no IOMMU and vfio.enable_unsafe_noiommu_mode=1
#   --device DEV      add a QEMU -device (repeatable), e.g. e1000e,addr=12.0 or pcie-root-port,id=rp1
#   --no-default-devices   drop the default edu (0000:00:10.0) and pci-testdev (0000:00:11.0)
#   --bind IDS        vendor:device ids the guest binds to vfio-pci (default 1234:11e8,1b36:0005)
#   --append WORDS    extra kernel command line (module parameters, vmt.load=, vmt.hide=, ...)
#   --env NAME=VALUE  set in the guest command's environment (repeatable)
#   --qemu ARG        one more raw QEMU argument (repeatable), e.g. --qemu -global --qemu ICH9-LPC.x=off
#   --mttcg           multi-threaded TCG: the guest's vCPUs really run in parallel (races need it), at
#                     the price of QEMU 7.2's early int3 Oops in some boots, which are retried
#   --timeout SEC     kill the guest after SEC seconds (default 300)
#   --quiet           do not print the run's summary line
# Exit status: the command's; 124 when the guest was killed at its timeout, or twice for a stalled
# kernel (below); 125 when the guest ended without reporting a status (kernel panic, Oops, QEMU
# error): the tail of its serial log is shown.
# A guest kernel whose CPU never wakes again (RCU reports "timer wakeup didn't happen" twice: a lost
# timer interrupt, seen once in a stock-6.1 guest under multi-threaded TCG) is killed at once and
# booted again, once; the first attempt's files move to attempt1/ and the output says so.
# The host's hand on the guest: every guest has a QMP socket, and a guest test asks the host to run a
# QMP (or, through human-monitor-command, HMP) command by writing it to /vmrun/host-requests/<id>.json;
# testbed/qmp-relay.mjs runs it and writes <id>.reply.json; QMP events land in /vmrun/qmp-events.jsonl.
# Each run's files (serial.log, dmesg.txt, stdout, stderr, qemu-cmdline) stay in $CACHE/runs/.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
ARCH=amd64 KERNEL=stock-6.12 IOMMU="" TIMEOUT=300 QUIET=0 BIND=1234:11e8,1b36:0005 APPEND_EXTRA=""
ACCEL=tcg,thread=single
DEVICES=() ENVS=() EXTRA_QEMU=() DEFAULT_DEVICES=(edu,addr=10.0 pci-testdev,addr=11.0)
usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
	case $1 in
		--arch) ARCH=${2:?}; shift 2 ;;
		--kernel) KERNEL=${2:?}; shift 2 ;;
		--iommu) IOMMU=${2:?}; shift 2 ;;
		--device) DEVICES+=("${2:?}"); shift 2 ;;
		--no-default-devices) DEFAULT_DEVICES=(); shift ;;
		--bind) BIND=${2?}; shift 2 ;;
		--append) APPEND_EXTRA="$APPEND_EXTRA ${2?}"; shift 2 ;;
		--env) ENVS+=("${2:?}"); shift 2 ;;
		--qemu) EXTRA_QEMU+=("${2:?}"); shift 2 ;;
		--mttcg) ACCEL=tcg,thread=multi; shift ;;
		--timeout) TIMEOUT=${2:?}; shift 2 ;;
		--quiet) QUIET=1; shift ;;
		-h|--help) usage ;;
		--) shift; break ;;
		-*) echo "run-vm: unknown option $1" >&2; usage ;;
		*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "run-vm: no command given" >&2; usage; }
CMD="$*"

case $ARCH in
	amd64) IOMMU=${IOMMU:-intel} CONSOLE=ttyS0,115200 MACHINE=q35 CPU=max ;;
	# cortex-a72: max's pointer authentication (QARMA) and SVE are slow under TCG, and nothing here
	# uses them; it has both the 4 KiB and the 64 KiB translation granules.
	arm64) IOMMU=${IOMMU:-smmuv3} CONSOLE=ttyAMA0 MACHINE=virt,gic-version=3,its=on CPU=cortex-a72 ;;
	*) echo "run-vm: unknown --arch $ARCH (amd64 | arm64)" >&2; exit 2 ;;
esac
APPEND="console=$CONSOLE quiet loglevel=4 panic=-1 oops=panic vmt.bind=$BIND"
IOMMU_ARGS=()
case $ARCH/$IOMMU in
	amd64/intel) IOMMU_ARGS=(-device intel-iommu); APPEND="$APPEND intel_iommu=on" ;;
	arm64/smmuv3) MACHINE=$MACHINE,iommu=smmuv3 ;;
	*/intel|*/smmuv3) echo "run-vm: --iommu $IOMMU is not on $ARCH" >&2; exit 2 ;;
	*/virtio) IOMMU_ARGS=(-device virtio-iommu-pci)
	        APPEND="$APPEND vfio_iommu_type1.allow_unsafe_interrupts=1 iommufd.allow_unsafe_interrupts=1" ;;
	*/virtio-strict) IOMMU_ARGS=(-device virtio-iommu-pci) ;;
	*/none) ;;
	*/noiommu) APPEND="$APPEND vfio.enable_unsafe_noiommu_mode=1" ;;
	*) echo "run-vm: unknown --iommu $IOMMU (intel | smmuv3 | virtio | virtio-strict | none | noiommu)" >&2; exit 2 ;;
esac
# Debian's kernels harden things the test bed does not exercise and TCG emulates slowly: CPU
# vulnerability mitigations, zeroing of every page allocated (node's heap), an audit record per exec,
# voluntary preemption. None of them changes what VFIO or iommufd do; with them off, node starts in a
# stock-6.1 guest in 0.77 s instead of 1.2 s, and a CLI bind takes 1.6 s instead of 2.4 s.
case $KERNEL in stock-*) APPEND="$APPEND mitigations=off init_on_alloc=0 audit=0 preempt=none" ;; esac
APPEND="$APPEND$APPEND_EXTRA"

{ read -r KIMG; read -r INITRD; } < <("$TESTBED_DIR/kernel.sh" "$KERNEL" "$ARCH")
[ -n "${INITRD:-}" ] || die "kernel $KERNEL is not available"

mkdir -p "$CACHE/runs"
# keep the newest 100 runs
ls -1dt "$CACHE"/runs/*/ 2>/dev/null | tail -n +100 | xargs -r rm -rf
label=$KERNEL-$IOMMU; [ "$ARCH" = amd64 ] || label=$ARCH-$label
RUN=$(mktemp -d "$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$label-XXXX")
printf '%s\n' "$CMD" > "$RUN/cmd.sh"
pwd > "$RUN/cwd"
: > "$RUN/env"
for e in "${ENVS[@]+"${ENVS[@]}"}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}" >> "$RUN/env"; done
: > "$RUN/stdout"; : > "$RUN/stderr"

DEV_ARGS=()
for d in "${DEFAULT_DEVICES[@]+"${DEFAULT_DEVICES[@]}"}" "${DEVICES[@]+"${DEVICES[@]}"}"; do DEV_ARGS+=(-device "$d"); done
# tcg,thread=single: QEMU 7.2's multi-threaded TCG crashes some boots (an int3 Oops while the kernel
# patches its own code); single-threaded had no failure in 130 boots for ~1 s more per boot. But a
# single thread runs the vCPUs in turn: two system calls of a few hundred microseconds almost never
# overlap, so the ownership races ask for --mttcg.
# The shares: the host's root (read-only) and the run directory; an arm64 guest also gets its own
# root, on virtio-mmio (off the PCIe bus the SMMU translates), with the host paths it needs over it.
share() { # tag path [readonly]
	if [ "$ARCH" = amd64 ]; then SHARES+=(-virtfs "local,path=$2,mount_tag=$1,security_model=none${3:+,readonly=on,multidevs=remap}")
	else SHARES+=(-fsdev "local,id=fs-$1,path=$2,security_model=none${3:+,readonly=on,multidevs=remap}" -device "virtio-9p-device,fsdev=fs-$1,mount_tag=$1"); fi
}
SHARES=()
share hostroot / ro
share vmrun "$RUN"
if [ "$ARCH" = arm64 ]; then
	share guestroot "$("$TESTBED_DIR/arm64-root.sh")" ro
	APPEND="$APPEND vmt.guestroot=1"
	{ pwd; echo "$CACHE"; } > "$RUN/host-paths"
fi
case $ARCH in amd64) QEMU=(qemu-system-x86_64) ;; arm64) QEMU=(qemu-system-aarch64) ;; esac
QEMU+=(-machine "$MACHINE" -accel "$ACCEL" -cpu "$CPU" -m "${VM_MEM:-2G}" -smp 2
	-nographic -nodefaults -no-reboot -monitor none -serial stdio
	"${IOMMU_ARGS[@]+"${IOMMU_ARGS[@]}"}"
	-kernel "$KIMG" -initrd "$INITRD" -append "$APPEND"
	"${SHARES[@]}"
	"${DEV_ARGS[@]+"${DEV_ARGS[@]}"}" "${EXTRA_QEMU[@]+"${EXTRA_QEMU[@]}"}")
# QMP on a short path (a unix socket path has at most 107 bytes; the run dir may be deep)
QMP=$(mktemp -u /tmp/vfio-bind-qmp.XXXXXX)
QEMU+=(-qmp "unix:$QMP,server=on,wait=off" -pidfile "$RUN/qemu.pid")
printf '%q ' "${QEMU[@]}" > "$RUN/qemu-cmdline"; echo >> "$RUN/qemu-cmdline"

# One boot. With --mttcg, a boot that dies before the command starts with QEMU 7.2's int3 Oops (its
# multi-threaded TCG races the kernel's code patching) is booted again, at most twice: the command
# had not run, so nothing is repeated.
boot() {
	start=$(date +%s.%N)
	# The serial console goes to serial.log with host timestamps; the command's own output streams live.
	( timeout -k 5 "$TIMEOUT" "${QEMU[@]}" </dev/null 2>"$RUN/qemu.stderr"; echo $? > "$RUN/qemu.rc" ) |
		START=$start perl -MTime::HiRes=time -ne 'BEGIN { $| = 1 } s/\r//g; s/\e(\[[0-9;?]*[A-Za-z]|c)//g;
			printf "[%7.2f] %s", time - $ENV{START}, $_' > "$RUN/serial.log" &
	vm=$!
	node "$TESTBED_DIR/qmp-relay.mjs" "$RUN" "$QMP" 2>>"$RUN/qmp-relay.log" &
	relay=$!
	tail -q -s 0.2 -n +1 -F --pid=$vm "$RUN/stdout" 2>/dev/null &
	t1=$!
	tail -q -s 0.2 -n +1 -F --pid=$vm "$RUN/stderr" >&2 2>/dev/null &
	t2=$!
	watch_stall &
	watcher=$!
	wait $vm
	wait $t1 $t2 2>/dev/null
	kill $watcher 2>/dev/null; wait $watcher 2>/dev/null
	kill $relay 2>/dev/null; wait $relay 2>/dev/null; rm -f "$QMP"
	elapsed=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")

	qrc=$(cat "$RUN/qemu.rc" 2>/dev/null || echo 125)
	marker=$(grep -ao 'VMTEST_EXIT=[0-9]*' "$RUN/serial.log" | tail -1)
}
# Kills QEMU once RCU has twice reported a CPU whose timer never fired (the report repeats every ~21 s
# of a stall that lasts): such a guest never recovers, and would otherwise sit until the timeout.
STALL_LINE="kthread timer wakeup didn't happen"
watch_stall() {
	while sleep 2; do
		[ "$(grep -ac "$STALL_LINE" "$RUN/serial.log" 2>/dev/null)" -ge 2 ] || continue
		grep -a -m1 "$STALL_LINE" "$RUN/serial.log" > "$RUN/stalled"
		kill -TERM "$(cat "$RUN/qemu.pid")" 2>/dev/null
		return
	done
}
stall_retried=0
for attempt in 1 2 3; do
	boot
	if [ -f "$RUN/stalled" ] && [ $stall_retried = 0 ]; then
		stall_retried=1
		echo "[run-vm] STALL: the guest kernel lost a CPU's timer ($(sed 's/^\[[^]]*\] *//' "$RUN/stalled" | cut -c1-120)); booting again and running the command once more (the first attempt's files: $RUN/attempt1/)" >&2
		mkdir "$RUN/attempt1"
		for f in "$RUN"/*; do
			case ${f##*/} in attempt1|cmd.sh|cwd|env|host-paths|qemu-cmdline) ;; *) mv "$f" "$RUN/attempt1/" ;; esac
		done
		: > "$RUN/stdout"; : > "$RUN/stderr"
		continue
	fi
	[ "$ACCEL" = tcg,thread=multi ] && [ -z "$marker" ] && ! grep -q VMTEST_BEGIN "$RUN/serial.log" &&
		grep -q "Oops: int3" "$RUN/serial.log" && [ $attempt -lt 3 ] || break
	echo "[run-vm] the guest hit QEMU's multi-threaded TCG int3 Oops while booting; booting again" >&2
	mv "$RUN/serial.log" "$RUN/serial.attempt$attempt.log"; rm -f "$RUN/qemu.rc"; : > "$RUN/stdout"; : > "$RUN/stderr"
done
show_tail() { echo "[run-vm] $1; last lines of the serial log ($RUN/serial.log):" >&2; tail -n 25 "$RUN/serial.log" >&2; }
if [ -f "$RUN/stalled" ]; then
	show_tail "STALL: the guest kernel lost a CPU's timer again, in its second boot"
	exit 124
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	show_tail "TIMEOUT: the guest was killed after ${TIMEOUT}s"
	exit 124
fi
# A guest Oops with -no-reboot still makes QEMU exit 0: only the marker and rc file prove the command ran.
if [ -z "$marker" ] || [ ! -f "$RUN/rc" ]; then
	[ -s "$RUN/qemu.stderr" ] && { echo "[run-vm] qemu said:" >&2; cat "$RUN/qemu.stderr" >&2; }
	show_tail "the guest ended without reporting the command's exit status (QEMU exit $qrc)"
	exit 125
fi
rc=$(cat "$RUN/rc")
if [ "$rc" != 0 ]; then
	show_tail "the guest command exited with status $rc"
	# Last, where a log shown only in part (its head and tail) still shows it: which tests failed, and how.
	if grep -q '^✖' "$RUN/stdout" 2>/dev/null; then
		echo "[run-vm] the failing tests (from $RUN/stdout):" >&2
		awk '/^✖ failing tests:/ {f=1; next} f && /^✖/ {print; n=3; next} f && n-- > 0 {print}' "$RUN/stdout" | cut -c1-300 | head -n 40 >&2
	fi
fi
[ "$QUIET" = 1 ] || echo "[run-vm] $ARCH/$KERNEL/$IOMMU: exit $rc in ${elapsed}s (run files: $RUN)" >&2
exit "$rc"
