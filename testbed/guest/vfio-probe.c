/*
 * vfio-probe: the test bed's independent witness of what a kernel answers, written in C against the
 * kernel's own uAPI headers so that it shares no code with the library under test. It is also the C
 * baseline of the benchmarks (bench/): the same ioctl sequence, without Node.
 *   vfio-probe [-n N] [-i M] [-d TOTAL:CHUNK] [-r R] legacy  DEVICE   container + group route
 *   vfio-probe [-n N] [-i M] [-d TOTAL:CHUNK] [-r R] iommufd DEVICE   cdev + /dev/iommu route
 * DEVICE is a PCI address (0000:00:10.0) or a sysfs device directory (an mdev's, say).
 * Prints one line per step, "STEP <name> ok [detail]" or "STEP <name> <ERRNO>", stops at the first
 * failure, and exits 0 when every step succeeded, 1 otherwise (2 on bad usage).
 * -n N binds and closes N times (steps printed for the first only) and prints the time per bind;
 * -i M then sends VFIO_DEVICE_GET_INFO M times on a bound device and prints the time per ioctl.
 * -d TOTAL:CHUNK then maps TOTAL bytes for DMA as TOTAL/CHUNK mappings of CHUNK bytes at consecutive
 * IOVAs from 1 GiB, unmaps them, and prints the time (sizes in bytes, or with a K, M or G suffix).
 * -b thread|process: during -d, a neighbour maps, touches, write-protects and unmaps memory without
 * pause, as a garbage collector and a JIT do: a thread of this process (sharing its page tables, so its
 * unmaps shoot down this CPU's TLB), or a child process (another vCPU busy, nothing shared).
 * -r R then mmaps BAR0 and reads the 32-bit register at its offset 0 R times; prints the time per read.
 * -w W then stores to the 32-bit register at offset 4 of BAR0 (edu's liveness register) W times, and
 * prints the time per store and what the register reads back after the last one.
 * The BENCH lines are the benchmarks' (bench/guest.ts); a failure there prints its STEP line and exits 1.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>

static char sysdir[PATH_MAX / 2];	/* the device's sysfs directory */
static const char *name;		/* its name: the PCI address or the mdev UUID */
static int quiet;			/* print failures only */
static int opened[8], nopened;		/* fds of the current bind, closed by close_all() */
static int device_fd = -1;		/* the bound device of the current bind */
static int container_fd = -1;		/* legacy route: the container of the current bind */
static int iommu_fd = -1;		/* iommufd route: /dev/iommu of the current bind... */
static __u32 ioas_id;			/* ...and the IOAS its device is attached to */

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
	device_fd = container_fd = iommu_fd = -1;
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
	container_fd = container;
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
	iommu_fd = iommu;
	ioas_id = alloc.out_ioas_id;
	return get_info();
}

/* maps SIZE bytes at VADDR for DMA at IOVA, readable and writable by the device, on the bound route */
static int dma_map(void *vaddr, __u64 iova, __u64 size)
{
	if (container_fd >= 0) {
		struct vfio_iommu_type1_dma_map map = {
			.argsz = sizeof(map), .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
			.vaddr = (uintptr_t)vaddr, .iova = iova, .size = size,
		};
		return step("VFIO_IOMMU_MAP_DMA", ioctl(container_fd, VFIO_IOMMU_MAP_DMA, &map), NULL);
	}
	struct iommu_ioas_map map = {
		.size = sizeof(map), .ioas_id = ioas_id,
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.user_va = (uintptr_t)vaddr, .length = size, .iova = iova,
	};
	return step("IOMMU_IOAS_MAP", ioctl(iommu_fd, IOMMU_IOAS_MAP, &map), NULL);
}

/* unmaps the SIZE bytes mapped at IOVA; the kernel must report that it unmapped all of them */
static int dma_unmap(__u64 iova, __u64 size)
{
	const char *what;
	__u64 unmapped;
	int r;
	if (container_fd >= 0) {
		struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = iova, .size = size };
		what = "VFIO_IOMMU_UNMAP_DMA";
		r = ioctl(container_fd, VFIO_IOMMU_UNMAP_DMA, &unmap);
		unmapped = unmap.size;
	} else {
		struct iommu_ioas_unmap unmap = { .size = sizeof(unmap), .ioas_id = ioas_id, .iova = iova, .length = size };
		what = "IOMMU_IOAS_UNMAP";
		r = ioctl(iommu_fd, IOMMU_IOAS_UNMAP, &unmap);
		unmapped = unmap.length;
	}
	if (step(what, r, NULL))
		return -1;
	if (unmapped != size) {
		printf("STEP %s short %llu-of-%llu\n", what, (unsigned long long)unmapped, (unsigned long long)size);
		return -1;
	}
	return 0;
}

#define DMA_IOVA (1ULL << 30)	/* inside the IOVA ranges of every IOMMU of the test bed */

/*
 * -d TOTAL:CHUNK: maps TOTAL/CHUNK buffers of CHUNK bytes at consecutive IOVAs from DMA_IOVA, then
 * unmaps them in the same order. Each buffer is its own populated anonymous mmap, as the library's
 * allocDmaBuffer() makes them, so that both sides pin the same kind of memory (one mmap of TOTAL
 * bytes would get transparent huge pages where separate 4 KiB buffers cannot). Only the map and
 * unmap ioctls are timed.
 */
static volatile int neighbour_stop;

/* -b: what V8's helper threads do to an mm, in a loop: new memory, touched, write-protected, unmapped */
static void *neighbour(void *arg)
{
	(void)arg;
	while (!neighbour_stop) {
		char *p = mmap(NULL, 256 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			continue;
		for (int i = 0; i < 256 << 10; i += 4096)
			p[i] = 1;
		mprotect(p, 256 << 10, PROT_READ);
		munmap(p, 256 << 10);
	}
	return NULL;
}

static int dma_bench(unsigned long long total, unsigned long long chunk, const char *busy)
{
	pthread_t thread;
	pid_t child = -1;
	int threaded = 0;
	size_t count = total / chunk, mapped = 0, allocated = 0, i;
	void **buffers = calloc(count, sizeof(*buffers));
	double t_map = 0, t_unmap = 0, start;
	int failed = 1;

	if (!buffers) {
		errno = ENOMEM;
		step("calloc", -1, NULL);
		return 1;
	}
	/* the neighbour starts first: a child forked after the buffers exist would make them copy-on-write */
	if (busy && !strcmp(busy, "thread"))
		threaded = pthread_create(&thread, NULL, neighbour, NULL) == 0;
	else if (busy && (child = fork()) == 0) {
		neighbour(NULL);
		_exit(0);
	}
	for (; allocated < count; allocated++) {
		buffers[allocated] = mmap(NULL, chunk, PROT_READ | PROT_WRITE,
					  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (buffers[allocated] == MAP_FAILED) {
			step("mmap-dma", -1, NULL);
			goto out;
		}
	}
	start = now_ns();
	for (; mapped < count; mapped++)
		if (dma_map(buffers[mapped], DMA_IOVA + mapped * chunk, chunk))
			break;
	t_map = now_ns() - start;
	/* unmap what was mapped, also after a failed map */
	start = now_ns();
	for (i = 0; i < mapped; i++)
		if (dma_unmap(DMA_IOVA + i * chunk, chunk))
			goto out;
	t_unmap = now_ns() - start;
	if (mapped < count)
		goto out;
	printf("BENCH dma total=%llu chunk=%llu mappings=%zu ns_map=%.0f ns_unmap=%.0f ns_total=%.0f ns_per_mapping=%.0f\n",
	       total, chunk, count, t_map, t_unmap, t_map + t_unmap, (t_map + t_unmap) / count);
	failed = 0;
out:
	if (threaded) {
		neighbour_stop = 1;
		pthread_join(thread, NULL);
	}
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	while (allocated > 0)
		munmap(buffers[--allocated], chunk);
	free(buffers);
	return failed;
}

/* -r R: mmaps BAR0 and reads its 32-bit register at offset 0 R times, one load each (volatile);
 * -w W: stores i to its 32-bit register at offset 4 for i < W, one store each (volatile) */
static int mmio_bench(long reads, long writes)
{
	struct vfio_region_info region = { .argsz = sizeof(region), .index = VFIO_PCI_BAR0_REGION_INDEX };
	if (step("VFIO_DEVICE_GET_REGION_INFO", ioctl(device_fd, VFIO_DEVICE_GET_REGION_INFO, &region), NULL))
		return 1;
	if (!(region.flags & VFIO_REGION_INFO_FLAG_MMAP) || region.size < 8) {
		errno = EINVAL;
		step("mmap-BAR0", -1, NULL);
		return 1;
	}
	void *bar = mmap(NULL, region.size, PROT_READ | PROT_WRITE, MAP_SHARED, device_fd, region.offset);
	if (bar == MAP_FAILED)
		return step("mmap-BAR0", -1, NULL), 1;
	volatile __u32 *reg = bar;
	__u32 value = 0;
	double start = now_ns();
	for (long i = 0; i < reads; i++)
		value = reg[0];
	double elapsed = now_ns() - start;
	if (reads > 0)
		printf("BENCH mmio n=%ld value=0x%08x ns_per_read=%.1f\n", reads, value, elapsed / reads);
	start = now_ns();
	for (long i = 0; i < writes; i++)
		reg[1] = (__u32)i;
	elapsed = now_ns() - start;
	if (writes > 0)
		printf("BENCH mmio-write n=%ld readback=0x%08x ns_per_write=%.1f\n", writes, reg[1], elapsed / writes);
	munmap(bar, region.size);
	return 0;
}

/* TOTAL:CHUNK of -d, each in bytes with an optional K, M or G suffix; 0 when malformed */
static int parse_sizes(const char *arg, unsigned long long *total, unsigned long long *chunk)
{
	unsigned long long *out[2] = { total, chunk };
	char *end = (char *)arg;
	for (int i = 0; i < 2; i++) {
		const char *s = end;
		*out[i] = strtoull(s, &end, 10);
		if (end == s)
			return 0;
		switch (*end) {
		case 'K': *out[i] <<= 10; end++; break;
		case 'M': *out[i] <<= 20; end++; break;
		case 'G': *out[i] <<= 30; end++; break;
		}
		if (*end != (i == 0 ? ':' : 0))
			return 0;
		end++;
	}
	/* whole pages (the kernel's: 64 KiB on some arm64 kernels), whole chunks, and IOVAs that end by
	 * 3 GiB, below x86's MSI window (0xfee00000) and above arm-smmu-v3's (0x8000000) */
	return *chunk > 0 && *chunk % (unsigned long long)sysconf(_SC_PAGESIZE) == 0 && *total > 0 && *total % *chunk == 0 && *total <= 2 * DMA_IOVA;
}

int main(int argc, char **argv)
{
	long binds = 1, infos = 0, reads = 0, writes = 0;
	const char *busy = NULL;
	unsigned long long dma_total = 0, dma_chunk = 0;
	int opt;
	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt(argc, argv, "n:i:d:r:w:b:")) != -1) {
		if (opt == 'n')
			binds = atol(optarg);
		else if (opt == 'i')
			infos = atol(optarg);
		else if (opt == 'd' && parse_sizes(optarg, &dma_total, &dma_chunk))
			;
		else if (opt == 'r')
			reads = atol(optarg);
		else if (opt == 'w')
			writes = atol(optarg);
		else if (opt == 'b' && (!strcmp(optarg, "thread") || !strcmp(optarg, "process")))
			busy = optarg;
		else
			goto usage;
	}
	if (argc - optind != 2 || binds < 1 || infos < 0 || reads < 0 || writes < 0)
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
	if (dma_total > 0 && dma_bench(dma_total, dma_chunk, busy))
		return 1;
	if ((reads > 0 || writes > 0) && mmio_bench(reads, writes))
		return 1;
	close_all();
	return 0;
usage:
	fprintf(stderr, "usage: vfio-probe [-n BINDS] [-i GET_INFOS] [-d TOTAL:CHUNK] [-r READS] [-w WRITES] [-b thread|process] legacy|iommufd DEVICE\n");
	return 2;
}
