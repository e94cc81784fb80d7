/*
 * vfio-probe: the test bed's independent witness of what a kernel answers, written in C against the
 * kernel's own uAPI headers so that it shares no code with the library under test. It is also the C
 * baseline of the benchmarks (bench/): the same ioctl sequence, without Node.
 *   vfio-probe [-n N] [-i M] legacy  DEVICE   container + group route
 *   vfio-probe [-n N] [-i M] iommufd DEVICE   cdev + /dev/iommu route
 * DEVICE is a PCI address (0000:00:10.0) or a sysfs device directory (an mdev's, say).
 * Prints one line per step, "STEP <name> ok [detail]" or "STEP <name> <ERRNO>", stops at the first
 * failure, and exits 0 when every step succeeded, 1 otherwise (2 on bad usage).
 * -n N binds and closes N times (steps printed for the first only) and prints the time per bind;
 * -i M then sends VFIO_DEVICE_GET_INFO M times on a bound device and prints the time per ioctl.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>

static char sysdir[PATH_MAX / 2];	/* the device's sysfs directory */
static const char *name;		/* its name: the PCI address or the mdev UUID */
static int quiet;			/* print failures only */
static int opened[8], nopened;		/* fds of the current bind, closed by close_all() */
static int device_fd = -1;		/* the bound device of the current bind */

static const char *errno_name(int e)
{
	switch (e) {
	case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case EBADF: return "EBADF";
	case EACCES: return "EACCES"; case EBUSY: return "EBUSY"; case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL"; case ENOTTY: return "ENOTTY"; case ENOSPC: return "ENOSPC";
	case EFAULT: return "EFAULT"; case ENXIO: return "ENXIO"; case EOPNOTSUPP: return "EOPNOTSUPP";
	default: return "E?";
	}
}

static int step(const char *step_name, long ret, const char *detail)
{
	if (ret < 0) {
		printf("STEP %s %s\n", step_name, errno_name(errno));
		return -1;
	}
	if (!quiet)
		printf("STEP %s ok%s%s\n", step_name, detail ? " " : "", detail ? detail : "");
	return 0;
}

/* an fd this bind owns */
static int own(int fd)
{
	if (fd >= 0)
		opened[nopened++] = fd;
	return fd;
}

static void close_all(void)
{
	while (nopened > 0)
		close(opened[--nopened]);
	device_fd = -1;
}

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

/* readlink of a sysfs attribute of the device, last path component */
static int sysfs_link_tail(const char *attr, char *out, size_t len)
{
	char path[PATH_MAX + 64], target[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", sysdir, attr);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -1;
	target[n] = 0;
	snprintf(out, len, "%s", strrchr(target, '/') + 1);
	return 0;
}

static int get_info(void)
{
	char detail[128];
	struct vfio_device_info info = { .argsz = sizeof(info) };
	int r = ioctl(device_fd, VFIO_DEVICE_GET_INFO, &info);
	snprintf(detail, sizeof(detail), "flags=0x%x regions=%u irqs=%u", info.flags, info.num_regions, info.num_irqs);
	return step("VFIO_DEVICE_GET_INFO", r, detail) ? 1 : 0;
}

static int legacy(void)
{
	char group[64], detail[128], path[PATH_MAX];
	int container, group_fd;

	if (step("readlink-iommu_group", sysfs_link_tail("iommu_group", group, sizeof(group)), group))
		return 1;
	container = own(open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC));
	if (step("open-container", container, NULL))
		return 1;
	snprintf(detail, sizeof(detail), "%ld", (long)ioctl(container, VFIO_GET_API_VERSION));
	step("VFIO_GET_API_VERSION", 0, detail);
	snprintf(path, sizeof(path), "/dev/vfio/%s", group);
	if (access(path, F_OK) != 0)
		snprintf(path, sizeof(path), "/dev/vfio/noiommu-%s", group);
	int noiommu = strstr(path, "noiommu-") != NULL;
	group_fd = own(open(path, O_RDWR | O_CLOEXEC));
	if (step("open-group", group_fd, path))
		return 1;
	struct vfio_group_status status = { .argsz = sizeof(status) };
	int r = ioctl(group_fd, VFIO_GROUP_GET_STATUS, &status);
	if (step("VFIO_GROUP_GET_STATUS", r, (status.flags & VFIO_GROUP_FLAGS_VIABLE) ? "viable" : "not-viable"))
		return 1;
	if (step("VFIO_GROUP_SET_CONTAINER", ioctl(group_fd, VFIO_GROUP_SET_CONTAINER, &container), NULL))
		return 1;
	int type = noiommu ? VFIO_NOIOMMU_IOMMU
		: ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1 ? VFIO_TYPE1v2_IOMMU
		: VFIO_TYPE1_IOMMU;
	snprintf(detail, sizeof(detail), "type=%d", type);
	if (step("VFIO_SET_IOMMU", ioctl(container, VFIO_SET_IOMMU, type), detail))
		return 1;
	device_fd = own(ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, name));
	if (step("VFIO_GROUP_GET_DEVICE_FD", device_fd, NULL))
		return 1;
	return get_info();
}

static int iommufd(void)
{
	char vfio_dev[NAME_MAX + 1], path[PATH_MAX], detail[128];
	int iommu;
	/* the cdev's name is the one vfioN entry of the device's vfio-dev/ directory */
	snprintf(path, sizeof(path), "%s/vfio-dev", sysdir);
	DIR *dir = opendir(path);
	struct dirent *entry = NULL;
	vfio_dev[0] = 0;
	while (dir && (entry = readdir(dir)))
		if (!strncmp(entry->d_name, "vfio", 4))
			snprintf(vfio_dev, sizeof(vfio_dev), "%s", entry->d_name);
	if (dir)
		closedir(dir);
	if (!vfio_dev[0]) {
		errno = ENOENT;
		step("find-vfio-dev", -1, NULL);
		return 1;
	}
	iommu = own(open("/dev/iommu", O_RDWR | O_CLOEXEC));
	if (step("open-iommu", iommu, NULL))
		return 1;
	snprintf(path, sizeof(path), "/dev/vfio/devices/%s", vfio_dev);
	device_fd = own(open(path, O_RDWR | O_CLOEXEC));
	if (step("open-cdev", device_fd, path))
		return 1;
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommu };
	int r = ioctl(device_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind);
	snprintf(detail, sizeof(detail), "devid=%u", bind.out_devid);
	if (step("VFIO_DEVICE_BIND_IOMMUFD", r, detail))
		return 1;
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	r = ioctl(iommu, IOMMU_IOAS_ALLOC, &alloc);
	snprintf(detail, sizeof(detail), "ioas=%u", alloc.out_ioas_id);
	if (step("IOMMU_IOAS_ALLOC", r, detail))
		return 1;
	struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = alloc.out_ioas_id };
	r = ioctl(device_fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach);
	snprintf(detail, sizeof(detail), "pt=%u", attach.pt_id);
	if (step("VFIO_DEVICE_ATTACH_IOMMUFD_PT", r, detail))
		return 1;
	return get_info();
}

int main(int argc, char **argv)
{
	long binds = 1, infos = 0;
	int opt;
	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt(argc, argv, "n:i:")) != -1) {
		if (opt == 'n')
			binds = atol(optarg);
		else if (opt == 'i')
			infos = atol(optarg);
		else
			goto usage;
	}
	if (argc - optind != 2 || binds < 1 || infos < 0)
		goto usage;
	const char *route = argv[optind], *device = argv[optind + 1];
	int (*bind)(void) = !strcmp(route, "legacy") ? legacy : !strcmp(route, "iommufd") ? iommufd : NULL;
	if (!bind)
		goto usage;
	if (device[0] == '/')
		snprintf(sysdir, sizeof(sysdir), "%s", device);
	else
		snprintf(sysdir, sizeof(sysdir), "/sys/bus/pci/devices/%s", device);
	name = strrchr(sysdir, '/') + 1;

	double start = now_ns();
	for (long i = 0; i < binds; i++) {
		int failed = bind();
		quiet = 1;
		if (failed)
			return 1;
		if (i + 1 < binds)
			close_all();
	}
	if (binds > 1)
		printf("BENCH %s binds=%ld ns_per_bind=%.0f\n", route, binds, (now_ns() - start) / binds);
	if (infos > 0) {
		struct vfio_device_info info = { .argsz = sizeof(info) };
		start = now_ns();
		for (long i = 0; i < infos; i++)
			if (ioctl(device_fd, VFIO_DEVICE_GET_INFO, &info) < 0)
				return step("VFIO_DEVICE_GET_INFO", -1, NULL), 1;
		printf("BENCH get_info n=%ld ns_per_ioctl=%.1f\n", infos, (now_ns() - start) / infos);
	}
	close_all();
	return 0;
usage:
	fprintf(stderr, "usage: vfio-probe [-n BINDS] [-i GET_INFOS] legacy|iommufd DEVICE\n");
	return 2;
}
