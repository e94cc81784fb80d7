/* ioctl-loop N FILE: the C baseline of bench/run.ts's per-ioctl cost: N ioctl(FIONREAD) calls on FILE. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: ioctl-loop N FILE\n");
		return 2;
	}
	long n = atol(argv[1]);
	int fd = open(argv[2], O_RDONLY), avail;
	if (fd < 0) {
		perror(argv[2]);
		return 1;
	}
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		if (ioctl(fd, FIONREAD, &avail) < 0) {
			perror("ioctl");
			return 1;
		}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	close(fd);
	return 0;
}
