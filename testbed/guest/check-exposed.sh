#!/bin/sh
# check-exposed.sh DEVICE KEY=VALUE...: asserts what the guest kernel exposes for DEVICE (a PCI address
# or a sysfs device directory). One line per check; exits 1 when any check failed.
#   driver=NAME|none       the device's bound driver
#   group=node|noiommu|none   /dev/vfio/N, /dev/vfio/noiommu-N, or no IOMMU group at all
#   vfio_dev=yes|no        the sysfs vfio-dev/vfioN entry
#   vfio_dev_attr=yes|no   its `dev` attribute (major:minor of the cdev)
#   cdev=yes|no            /dev/vfio/devices/vfioN
#   iommu=yes|no           /dev/iommu
dev=$1; shift
case $dev in /*) sys=$dev ;; *) sys=/sys/bus/pci/devices/$dev ;; esac
fails=0
check() { # name expected actual
	if [ "$2" = "$3" ]; then echo "ok   $1=$3"; else echo "FAIL $1: expected $2, found $3"; fails=$((fails + 1)); fi
}
yes_no() { if eval "$1"; then echo yes; else echo no; fi; }
vfio_dev=$(ls "$sys/vfio-dev" 2>/dev/null | head -1)
group=$(readlink "$sys/iommu_group" 2>/dev/null); group=${group##*/}
for kv in "$@"; do
	key=${kv%%=*} want=${kv#*=}
	case $key in
		driver) d=$(readlink "$sys/driver" 2>/dev/null); d=${d##*/}; check driver "$want" "${d:-none}" ;;
		group)
			if [ -z "$group" ]; then got=none
			elif [ -c "/dev/vfio/$group" ]; then got=node
			elif [ -c "/dev/vfio/noiommu-$group" ]; then got=noiommu
			else got="group-$group-without-node"; fi
			check group "$want" "$got" ;;
		vfio_dev) check vfio_dev "$want" "$(yes_no '[ -n "$vfio_dev" ]')" ;;
		vfio_dev_attr) check vfio_dev_attr "$want" "$(yes_no '[ -n "$vfio_dev" ] && [ -f "$sys/vfio-dev/$vfio_dev/dev" ]')" ;;
		cdev) check cdev "$want" "$(yes_no '[ -n "$vfio_dev" ] && [ -c "/dev/vfio/devices/$vfio_dev" ]')" ;;
		iommu) check iommu "$want" "$(yes_no '[ -c /dev/iommu ]')" ;;
		*) echo "FAIL unknown check $kv"; fails=$((fails + 1)) ;;
	esac
done
[ $fails = 0 ]
