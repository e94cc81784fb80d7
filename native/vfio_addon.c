/*
 * vfio_addon: the few system calls Node cannot make itself, on Node-API. It knows nothing of VFIO:
 * it moves bytes, integers and errnos; struct layouts and ioctl numbers live in TypeScript (src/uapi).
 * A failed call throws an Error with .code (the errno's name), .errno (its number) and .syscall.
 *
 * Memory it maps (device regions, DMA buffers) is handed to JavaScript as an external ArrayBuffer.
 * unmap() detaches it before munmap, so a stale view reads as empty and the accessors here throw,
 * instead of touching unmapped memory; a mapping that is never unmapped is unmapped when its
 * ArrayBuffer is collected.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <node_api.h>
#include <uv.h>

#define CHECK(env, call)                                                                  \
	do {                                                                              \
		if ((call) != napi_ok) {                                                  \
			napi_throw_error((env), "EADDON", "vfio_addon: " #call " failed");      \
			return NULL;                                                      \
		}                                                                         \
	} while (0)

/* errno -> its name, for every errno Linux defines (aliases such as EWOULDBLOCK and ENOTSUP are the
 * same numbers as EAGAIN and EOPNOTSUPP, and are named as those, as strerrorname_np does). Our own table
 * instead of strerrorname_np(), which would raise the binary's glibc floor from 2.7 to 2.32 alone;
 * test/addon checks it against Node's os.constants.errno. */
#define E(name) [name] = #name
static const char *const errno_names[] = {
	E(EPERM), E(ENOENT), E(ESRCH), E(EINTR), E(EIO), E(ENXIO), E(E2BIG), E(ENOEXEC), E(EBADF), E(ECHILD),
	E(EAGAIN), E(ENOMEM), E(EACCES), E(EFAULT), E(ENOTBLK), E(EBUSY), E(EEXIST), E(EXDEV), E(ENODEV),
	E(ENOTDIR), E(EISDIR), E(EINVAL), E(ENFILE), E(EMFILE), E(ENOTTY), E(ETXTBSY), E(EFBIG), E(ENOSPC),
	E(ESPIPE), E(EROFS), E(EMLINK), E(EPIPE), E(EDOM), E(ERANGE), E(EDEADLK), E(ENAMETOOLONG), E(ENOLCK),
	E(ENOSYS), E(ENOTEMPTY), E(ELOOP), E(ENOMSG), E(EIDRM), E(ECHRNG), E(EL2NSYNC), E(EL3HLT), E(EL3RST),
	E(ELNRNG), E(EUNATCH), E(ENOCSI), E(EL2HLT), E(EBADE), E(EBADR), E(EXFULL), E(ENOANO), E(EBADRQC),
	E(EBADSLT), E(EBFONT), E(ENOSTR), E(ENODATA), E(ETIME), E(ENOSR), E(ENONET), E(ENOPKG), E(EREMOTE),
	E(ENOLINK), E(EADV), E(ESRMNT), E(ECOMM), E(EPROTO), E(EMULTIHOP), E(EDOTDOT), E(EBADMSG),
	E(EOVERFLOW), E(ENOTUNIQ), E(EBADFD), E(EREMCHG), E(ELIBACC), E(ELIBBAD), E(ELIBSCN), E(ELIBMAX),
	E(ELIBEXEC), E(EILSEQ), E(ERESTART), E(ESTRPIPE), E(EUSERS), E(ENOTSOCK), E(EDESTADDRREQ),
	E(EMSGSIZE), E(EPROTOTYPE), E(ENOPROTOOPT), E(EPROTONOSUPPORT), E(ESOCKTNOSUPPORT), E(EOPNOTSUPP),
	E(EPFNOSUPPORT), E(EAFNOSUPPORT), E(EADDRINUSE), E(EADDRNOTAVAIL), E(ENETDOWN), E(ENETUNREACH),
	E(ENETRESET), E(ECONNABORTED), E(ECONNRESET), E(ENOBUFS), E(EISCONN), E(ENOTCONN), E(ESHUTDOWN),
	E(ETOOMANYREFS), E(ETIMEDOUT), E(ECONNREFUSED), E(EHOSTDOWN), E(EHOSTUNREACH), E(EALREADY),
	E(EINPROGRESS), E(ESTALE), E(EUCLEAN), E(ENOTNAM), E(ENAVAIL), E(EISNAM), E(EREMOTEIO), E(EDQUOT),
	E(ENOMEDIUM), E(EMEDIUMTYPE), E(ECANCELED), E(ENOKEY), E(EKEYEXPIRED), E(EKEYREVOKED),
	E(EKEYREJECTED), E(EOWNERDEAD), E(ENOTRECOVERABLE), E(ERFKILL), E(EHWPOISON),
};
#undef E

static const char *errno_name(int err)
{
	if (err > 0 && (size_t)err < sizeof(errno_names) / sizeof(errno_names[0]) && errno_names[err])
		return errno_names[err];
	return NULL;
}

/* An error like Node's own fs errors: message "EPERM: Operation not permitted, ioctl". */
static napi_value errno_error(napi_env env, int err, const char *syscall)
{
	const char *name = errno_name(err);
	char message[160];
	napi_value error, code, msg, number, call;

	snprintf(message, sizeof(message), "%s: %s, %s", name ? name : "EUNKNOWN", strerror(err), syscall);
	CHECK(env, napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code));
	CHECK(env, napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg));
	CHECK(env, napi_create_error(env, code, msg, &error));
	CHECK(env, napi_create_int32(env, -err, &number));   /* negative, as libuv's errors are */
	CHECK(env, napi_set_named_property(env, error, "errno", number));
	CHECK(env, napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &call));
	CHECK(env, napi_set_named_property(env, error, "syscall", call));
	return error;
}

static napi_value throw_errno(napi_env env, int err, const char *syscall)
{
	napi_value error = errno_error(env, err, syscall);
	if (error)
		napi_throw(env, error);
	return NULL;
}

static napi_value type_error(napi_env env, const char *message)
{
	napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
	return NULL;
}

/* Issues ioctl(fd, request, arg?) from a JS call's arguments. arg: omitted (0), an integer (passed by
 * value), or a Buffer/TypedArray/DataView (its bytes are passed by address and updated in place).
 * This is the hot path of every VFIO call: each argument is probed by the conversion that accepts
 * it (napi_*_expected statuses reject the others) rather than by a napi_typeof round trip first.
 * Returns false, with a TypeError thrown, for arguments it cannot use; else true, with the call's
 * result in *ret and its errno in *err. */
static bool issue_ioctl(napi_env env, napi_callback_info info, int *ret, int *err)
{
	size_t argc = 3;
	napi_value argv[3];
	int32_t fd;
	uint32_t request;
	int64_t value = 0;
	void *pointer = NULL;
	bool by_address = false;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
		return napi_throw_error(env, "EADDON", "vfio_addon: napi_get_cb_info failed"), false;
	if (argc < 2)
		return type_error(env, "ioctl(fd, request, arg?) needs fd and request"), false;
	/* int32/uint32: an fd is an int and a request number 32 bits, and these skip int64's double handling */
	if (napi_get_value_int32(env, argv[0], &fd) != napi_ok)
		return type_error(env, "fd must be a number"), false;
	if (napi_get_value_uint32(env, argv[1], &request) != napi_ok)
		return type_error(env, "request must be a number"), false;
	/* a Buffer first: the call layer passes one for nearly every request */
	if (argc >= 3 && napi_get_buffer_info(env, argv[2], &pointer, NULL) == napi_ok) {
		by_address = true;
	} else if (argc >= 3) {
		napi_status number = napi_get_value_int64(env, argv[2], &value);
		if (number == napi_number_expected) {
			if (napi_get_typedarray_info(env, argv[2], NULL, NULL, &pointer, NULL, NULL) == napi_ok ||
			    napi_get_dataview_info(env, argv[2], NULL, &pointer, NULL, NULL) == napi_ok) {
				by_address = true;
			} else {
				napi_valuetype type;
				if (napi_typeof(env, argv[2], &type) != napi_ok)
					return napi_throw_error(env, "EADDON", "vfio_addon: napi_typeof failed"), false;
				if (type != napi_undefined)
					return type_error(env, "ioctl arg must be a number, a Buffer, a TypedArray or a DataView"), false;
			}
		} else if (number != napi_ok) {
			return type_error(env, "ioctl arg is not a usable number"), false;
		}
	}
	*ret = by_address ? ioctl((int)fd, (unsigned long)request, pointer)
			  : ioctl((int)fd, (unsigned long)request, (unsigned long)value);
	*err = *ret < 0 ? errno : 0;
	return true;
}

/* ioctl(fd, request, arg?) -> int: the call's non-negative result; a failure throws an errno error. */
static napi_value js_ioctl(napi_env env, napi_callback_info info)
{
	int ret, err;
	napi_value result;

	if (!issue_ioctl(env, info, &ret, &err))
		return NULL;
	if (ret < 0)
		return throw_errno(env, err, "ioctl");
	CHECK(env, napi_create_int32(env, ret, &result));
	return result;
}

/* ioctlErrno(fd, request, arg?) -> int: as ioctl(), but a failure returns -errno instead of throwing.
 * For a probe whose refusal is an answer (does this device have an error interrupt?): a thrown error,
 * with its message and stack, costs far more than the call itself (about a millisecond under TCG). */
static napi_value js_ioctl_errno(napi_env env, napi_callback_info info)
{
	int ret, err;
	napi_value result;

	if (!issue_ioctl(env, info, &ret, &err))
		return NULL;
	CHECK(env, napi_create_int32(env, ret < 0 ? -err : ret, &result));
	return result;
}

/* ioctlEach(fd, request, records, stride) -> count: one ioctl per STRIDE-byte record of RECORDS (a
 * Buffer), in order, each by address, stopping at the first that fails. A batch (mapping a VMM's
 * guest RAM, a driver's queues) costs one Node-API call instead of one per record. On failure it
 * throws as ioctl() does, with .index: the failed record (every record before it succeeded). */
static napi_value js_ioctl_each(napi_env env, napi_callback_info info)
{
	size_t argc = 4, length, i;
	napi_value argv[4], result, index;
	int32_t fd;
	uint32_t request, stride;
	char *records;

	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 4 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
	    napi_get_value_uint32(env, argv[1], &request) != napi_ok ||
	    napi_get_buffer_info(env, argv[2], (void **)&records, &length) != napi_ok ||
	    napi_get_value_uint32(env, argv[3], &stride) != napi_ok)
		return type_error(env, "ioctlEach(fd, request, records: Buffer, stride)");
	if (stride == 0 || length % stride != 0) {
		napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "records must be a whole number of stride-byte records");
		return NULL;
	}
	for (i = 0; i < length / stride; i++) {
		if (ioctl((int)fd, (unsigned long)request, records + i * stride) < 0) {
			napi_value error = errno_error(env, errno, "ioctl");
			if (!error)
				return NULL;
			CHECK(env, napi_create_uint32(env, (uint32_t)i, &index));
			CHECK(env, napi_set_named_property(env, error, "index", index));
			napi_throw(env, error);
			return NULL;
		}
	}
	CHECK(env, napi_create_uint32(env, (uint32_t)i, &result));
	return result;
}

/* noop(): nothing. The cost of a Node-API call itself, the floor under every addon call (npm run bench). */
static napi_value js_noop(napi_env env, napi_callback_info info)
{
	(void)env;
	(void)info;
	return NULL;
}

/* errnoName(number) -> string | null: the name a failed call's .code would carry (for tests). */
static napi_value js_errno_name(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1], result;
	int32_t err;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 1 || napi_get_value_int32(env, argv[0], &err) != napi_ok)
		return type_error(env, "errnoName(number)");
	const char *name = errno_name(err);
	if (name)
		CHECK(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &result));
	else
		CHECK(env, napi_get_null(env, &result));
	return result;
}

/* ---- live objects, counted so that tests can prove nothing leaks -------------------------- */

static int64_t live_mappings, live_watches, finalized_mappings, finalized_watches;

/* liveCounts() -> { mappings, watches, finalized: { mappings, watches } }: mappings not yet unmapped,
 * eventfd watches not yet stopped; and those the garbage collector had to undo (a mapping or watch
 * dropped without unmap/unwatch: a leak the live counts alone would hide once collected). */
static napi_value js_live_counts(napi_env env, napi_callback_info info)
{
	napi_value result, finalized, value;
	(void)info;
	CHECK(env, napi_create_object(env, &result));
	CHECK(env, napi_create_object(env, &finalized));
	CHECK(env, napi_create_int64(env, live_mappings, &value));
	CHECK(env, napi_set_named_property(env, result, "mappings", value));
	CHECK(env, napi_create_int64(env, live_watches, &value));
	CHECK(env, napi_set_named_property(env, result, "watches", value));
	CHECK(env, napi_create_int64(env, finalized_mappings, &value));
	CHECK(env, napi_set_named_property(env, finalized, "mappings", value));
	CHECK(env, napi_create_int64(env, finalized_watches, &value));
	CHECK(env, napi_set_named_property(env, finalized, "watches", value));
	CHECK(env, napi_set_named_property(env, result, "finalized", finalized));
	return result;
}

/* ---- mappings ---------------------------------------------------------------------------- */

struct mapping {
	void *base;
	size_t length;
	int unmapped;
};

/*
 * V8 counts an external ArrayBuffer's bytes as external memory, and enough of it starts a major GC
 * (concurrent marking on V8's helper threads): allocating 1 GiB of DMA buffers in 2 MiB pieces set off
 * one after another, beside the DMA map loop that followed. A garbage collection cannot free this
 * memory (it is unmapped explicitly; a finalizer only catches a leak), so each mapping takes its bytes
 * back out of V8's count when it is made and puts them back when V8 drops them, at unmap (detach) or
 * finalization.
 */
static void uncount(napi_env env, size_t length, int sign)
{
	int64_t total;
	napi_adjust_external_memory(env, sign * (int64_t)length, &total);
}

static void mapping_finalize(napi_env env, void *data, void *hint)
{
	struct mapping *m = hint;
	(void)data;
	if (!m->unmapped) {
		munmap(m->base, m->length);
		live_mappings--;
		finalized_mappings++;
		uncount(env, m->length, +1);
	}
	free(m);
}

static int get_u64(napi_env env, napi_value value, uint64_t *out, const char *what)
{
	bool lossless;
	int64_t i;
	if (napi_get_value_bigint_uint64(env, value, out, &lossless) == napi_ok)
		return 0;
	if (napi_get_value_int64(env, value, &i) == napi_ok && i >= 0) {
		*out = (uint64_t)i;
		return 0;
	}
	char message[96];
	snprintf(message, sizeof(message), "%s must be a non-negative number or bigint", what);
	type_error(env, message);
	return -1;
}

/* Wraps [base, base+length) as an external ArrayBuffer owning the mapping. */
static napi_value wrap_mapping(napi_env env, void *base, size_t length)
{
	struct mapping *m = malloc(sizeof(*m));
	napi_value buffer;
	if (!m) {
		munmap(base, length);
		return throw_errno(env, ENOMEM, "malloc");
	}
	*m = (struct mapping){ base, length, 0 };
	live_mappings++;
	if (napi_create_external_arraybuffer(env, base, length, mapping_finalize, m, &buffer) != napi_ok) {
		munmap(base, length);
		free(m);
		napi_throw_error(env, "EADDON", "vfio_addon: napi_create_external_arraybuffer failed");
		return NULL;
	}
	/* the mapping record travels with the ArrayBuffer, for unmap() */
	CHECK(env, napi_wrap(env, buffer, m, NULL, NULL, NULL));
	uncount(env, length, -1);
	return buffer;
}

/* mmap(fd, offset, length, writable) -> ArrayBuffer: a shared mapping of a device region. */
static napi_value js_mmap(napi_env env, napi_callback_info info)
{
	size_t argc = 4;
	napi_value argv[4];
	int64_t fd;
	uint64_t offset, length;
	bool writable = false;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 3 || napi_get_value_int64(env, argv[0], &fd) != napi_ok)
		return type_error(env, "mmap(fd, offset, length, writable)");
	if (get_u64(env, argv[1], &offset, "offset") || get_u64(env, argv[2], &length, "length"))
		return NULL;
	if (argc >= 4)
		napi_get_value_bool(env, argv[3], &writable);
	if (length == 0)
		return type_error(env, "length must not be 0");
	void *base = mmap(NULL, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, (int)fd, (off_t)offset);
	if (base == MAP_FAILED)
		return throw_errno(env, errno, "mmap");
	return wrap_mapping(env, base, length);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack it */
#endif
#define THP_SIZE ((size_t)2 << 20)

/*
 * 2 MiB or more without reserved huge pages: 2 MiB-aligned, advised for transparent huge pages, and
 * only then populated. MAP_POPULATE would fault it in 4 KiB pages before any madvise could run, so a
 * host with THP in "madvise" mode (Ubuntu's default) would get none; and 6.1 does not align large
 * anonymous mappings itself.
 */
static void *alloc_thp(size_t length)
{
	size_t span = length + THP_SIZE;
	char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return MAP_FAILED;
	char *start = (char *)(((uintptr_t)raw + THP_SIZE - 1) & ~(uintptr_t)(THP_SIZE - 1));
	size_t head = (size_t)(start - raw), tail = span - head - length;
	if (head)
		munmap(raw, head);
	if (tail)
		munmap(start + length, tail);
	madvise(start, length, MADV_HUGEPAGE); /* EINVAL where THP is compiled out: 4 KiB pages then */
	if (madvise(start, length, MADV_POPULATE_WRITE) != 0) {
		if (errno != EINVAL) { /* ENOMEM, EFAULT: not all of it could be faulted in */
			int err = errno;
			munmap(start, length);
			errno = err;
			return MAP_FAILED;
		}
		for (size_t off = 0; off < length; off += 4096) /* before 5.14: a write per page */
			((volatile char *)start)[off] = 0;
	}
	return start;
}

/* allocDma(length, hugePages) -> ArrayBuffer: page-aligned anonymous memory, populated, for DMA. */
static napi_value js_alloc_dma(napi_env env, napi_callback_info info)
{
	size_t argc = 2;
	napi_value argv[2];
	uint64_t length;
	bool huge = false;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 1 || get_u64(env, argv[0], &length, "length"))
		return argc < 1 ? type_error(env, "allocDma(length, hugePages)") : NULL;
	if (argc >= 2)
		napi_get_value_bool(env, argv[1], &huge);
	if (length == 0)
		return type_error(env, "length must not be 0");
	void *base = !huge && length >= THP_SIZE ? alloc_thp(length)
		: mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | (huge ? MAP_HUGETLB : 0), -1, 0);
	if (base == MAP_FAILED)
		return throw_errno(env, errno, "mmap");
	return wrap_mapping(env, base, length);
}

static struct mapping *get_mapping(napi_env env, napi_value buffer, bool *detached)
{
	struct mapping *m = NULL;
	if (napi_unwrap(env, buffer, (void **)&m) != napi_ok || !m) {
		type_error(env, "not a mapping made by this addon");
		return NULL;
	}
	if (napi_is_detached_arraybuffer(env, buffer, detached) != napi_ok) {
		type_error(env, "not an ArrayBuffer");
		return NULL;
	}
	return m;
}

/* unmap(buffer): detaches the ArrayBuffer (its views become empty), then munmap. Idempotent. */
static napi_value js_unmap(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	bool detached;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	struct mapping *m = argc == 1 ? get_mapping(env, argv[0], &detached) : NULL;
	if (!m)
		return argc == 1 ? NULL : type_error(env, "unmap(buffer)");
	if (!m->unmapped) {
		CHECK(env, napi_detach_arraybuffer(env, argv[0]));
		munmap(m->base, m->length);
		m->unmapped = 1;
		live_mappings--;
		uncount(env, m->length, +1);
	}
	return NULL;
}

/* addressOf(buffer) -> bigint: the mapping's virtual address (for DMA map ioctls). */
static napi_value js_address_of(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1], result;
	bool detached;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	struct mapping *m = argc == 1 ? get_mapping(env, argv[0], &detached) : NULL;
	if (!m)
		return argc == 1 ? NULL : type_error(env, "addressOf(buffer)");
	if (m->unmapped)
		return throw_errno(env, EFAULT, "addressOf");
	CHECK(env, napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)m->base, &result));
	return result;
}

/* The address of `width` bytes at `offset` in a live mapping, aligned to the width, or NULL (thrown). */
static volatile void *register_at(napi_env env, napi_value buffer, napi_value offset_value, int64_t width)
{
	bool detached;
	int64_t offset;
	struct mapping *m = get_mapping(env, buffer, &detached);
	if (!m)
		return NULL;
	if (m->unmapped || detached) {
		throw_errno(env, EFAULT, "mmio");
		return NULL;
	}
	if (width != 1 && width != 2 && width != 4 && width != 8) {
		type_error(env, "width must be 1, 2, 4 or 8");
		return NULL;
	}
	if (napi_get_value_int64(env, offset_value, &offset) != napi_ok || offset < 0 ||
	    (uint64_t)offset + (uint64_t)width > m->length || offset % width != 0) {
		napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "register offset out of range or not aligned to its width");
		return NULL;
	}
	return (volatile char *)m->base + offset;
}

/* mmioRead(buffer, offset, width) -> number (bigint for width 8): exactly one load of that width. */
static napi_value js_mmio_read(napi_env env, napi_callback_info info)
{
	size_t argc = 3;
	napi_value argv[3], result;
	int64_t width;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 3 || napi_get_value_int64(env, argv[2], &width) != napi_ok)
		return type_error(env, "mmioRead(buffer, offset, width)");
	volatile void *reg = register_at(env, argv[0], argv[1], width);
	if (!reg)
		return NULL;
	switch (width) {
	case 1: CHECK(env, napi_create_uint32(env, *(volatile uint8_t *)reg, &result)); break;
	case 2: CHECK(env, napi_create_uint32(env, *(volatile uint16_t *)reg, &result)); break;
	case 4: CHECK(env, napi_create_uint32(env, *(volatile uint32_t *)reg, &result)); break;
	default: CHECK(env, napi_create_bigint_uint64(env, *(volatile uint64_t *)reg, &result)); break;
	}
	return result;
}

/* mmioWrite(buffer, offset, width, value): exactly one store of that width. */
static napi_value js_mmio_write(napi_env env, napi_callback_info info)
{
	size_t argc = 4;
	napi_value argv[4];
	int64_t width;
	uint64_t value;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 4 || napi_get_value_int64(env, argv[2], &width) != napi_ok)
		return type_error(env, "mmioWrite(buffer, offset, width, value)");
	if (get_u64(env, argv[3], &value, "value"))
		return NULL;
	volatile void *reg = register_at(env, argv[0], argv[1], width);
	if (!reg)
		return NULL;
	switch (width) {
	case 1: *(volatile uint8_t *)reg = (uint8_t)value; break;
	case 2: *(volatile uint16_t *)reg = (uint16_t)value; break;
	case 4: *(volatile uint32_t *)reg = (uint32_t)value; break;
	default: *(volatile uint64_t *)reg = value; break;
	}
	return NULL;
}

/*
 * dmaWriteBarrier(): stores made before it (to DMA buffers) reach memory before any MMIO store after
 * it (a doorbell) reaches the device, as the kernel's dma_wmb() before a writel(). On x86 stores are
 * not reordered with other stores, so this is a compiler barrier plus sfence, which also covers
 * write-combining and non-temporal stores; on arm64 it is dmb oshst (the outer-shareable domain,
 * where a device's DMA observes memory), which JavaScript's own atomics (inner-shareable) never emit.
 * dmaReadBarrier(): loads after it (from DMA buffers) are not satisfied before an MMIO load before it
 * (a status register saying the DMA is done), as dma_rmb(): lfence / dmb oshld.
 * Being a call out of JavaScript, each is also a point no JIT moves a load or store across.
 */
static napi_value js_dma_write_barrier(napi_env env, napi_callback_info info)
{
	(void)env;
	(void)info;
#if defined(__x86_64__) || defined(__i386__)
	__asm__ __volatile__("sfence" ::: "memory");
#elif defined(__aarch64__)
	__asm__ __volatile__("dmb oshst" ::: "memory");
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
	return NULL;
}

static napi_value js_dma_read_barrier(napi_env env, napi_callback_info info)
{
	(void)env;
	(void)info;
#if defined(__x86_64__) || defined(__i386__)
	__asm__ __volatile__("lfence" ::: "memory");
#elif defined(__aarch64__)
	__asm__ __volatile__("dmb oshld" ::: "memory");
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
	return NULL;
}

/* ---- eventfds ------------------------------------------------------------------------------ */

/* eventfd() -> fd: non-blocking, close-on-exec, counter 0. */
static napi_value js_eventfd(napi_env env, napi_callback_info info)
{
	napi_value result;
	(void)info;
	int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (fd < 0)
		return throw_errno(env, errno, "eventfd");
	CHECK(env, napi_create_int32(env, fd, &result));
	return result;
}

/* A libuv poll handle on an eventfd: each time it becomes readable, its counter is read (which
 * resets it) and the callback gets the count. Lives on the main loop: no thread per vector. */
struct watch {
	uv_poll_t poll;
	napi_env env;
	napi_ref callback;
	napi_async_context async;
	int fd;
	int stopped;
};

static void watch_closed(uv_handle_t *handle)
{
	free(handle->data);
}

static void watch_stop(struct watch *w)
{
	if (w->stopped)
		return;
	w->stopped = 1;
	live_watches--;
	uv_poll_stop(&w->poll);
	napi_delete_reference(w->env, w->callback);
	napi_async_destroy(w->env, w->async);
	uv_close((uv_handle_t *)&w->poll, watch_closed);
}

static void watch_ready(uv_poll_t *poll, int status, int events)
{
	struct watch *w = poll->data;
	uint64_t count = 0;
	napi_handle_scope scope;
	napi_value callback, resource, args[2], ignored;
	(void)events;
	if (w->stopped)
		return;
	ssize_t n = status < 0 ? -1 : read(w->fd, &count, sizeof(count));
	if (n < 0 && errno == EAGAIN)
		return; /* another reader took it */
	napi_open_handle_scope(w->env, &scope);
	if (napi_get_reference_value(w->env, w->callback, &callback) == napi_ok && callback) {
		napi_get_null(w->env, &args[0]);
		if (n != (ssize_t)sizeof(count)) {
			napi_value code, msg;
			int err = status < 0 ? EIO : errno;
			napi_create_string_utf8(w->env, errno_name(err) ? errno_name(err) : "EIO", NAPI_AUTO_LENGTH, &code);
			napi_create_string_utf8(w->env, "eventfd read failed", NAPI_AUTO_LENGTH, &msg);
			napi_create_error(w->env, code, msg, &args[0]);
			napi_get_undefined(w->env, &args[1]);
		} else {
			napi_create_bigint_uint64(w->env, count, &args[1]);
		}
		napi_create_object(w->env, &resource);
		napi_make_callback(w->env, w->async, resource, callback, 2, args, &ignored);
	}
	napi_close_handle_scope(w->env, scope);
}

static void watch_finalize(napi_env env, void *data, void *hint)
{
	struct watch *w = data;
	(void)env;
	(void)hint;
	if (!w->stopped)
		finalized_watches++;
	watch_stop(w);
}

/* watch(fd, callback(err, count), keepAlive = true) -> handle: calls back on the main loop when the
 * eventfd fires. With keepAlive false the watch does not keep the process alive by itself (a device's
 * request channel, armed for as long as the device is open, must not stop a script from exiting). */
static napi_value js_watch(napi_env env, napi_callback_info info)
{
	size_t argc = 3;
	napi_value argv[3], handle, name;
	int64_t fd;
	bool keep_alive = true;
	uv_loop_t *loop;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 2 || napi_get_value_int64(env, argv[0], &fd) != napi_ok)
		return type_error(env, "watch(fd, callback, keepAlive)");
	if (argc >= 3)
		napi_get_value_bool(env, argv[2], &keep_alive);
	struct watch *w = calloc(1, sizeof(*w));
	if (!w)
		return throw_errno(env, ENOMEM, "calloc");
	w->env = env;
	w->fd = (int)fd;
	w->stopped = 1; /* until started: watch_stop() on a failure below must not count it */
	CHECK(env, napi_get_uv_event_loop(env, &loop));
	int r = uv_poll_init(loop, &w->poll, w->fd);
	if (r < 0) {
		free(w);
		return throw_errno(env, -r, "uv_poll_init");
	}
	w->poll.data = w;
	w->stopped = 0;
	live_watches++;
	CHECK(env, napi_create_reference(env, argv[1], 1, &w->callback));
	CHECK(env, napi_create_string_utf8(env, "vfio-bind:eventfd", NAPI_AUTO_LENGTH, &name));
	CHECK(env, napi_async_init(env, NULL, name, &w->async));
	CHECK(env, napi_create_object(env, &handle));
	CHECK(env, napi_wrap(env, handle, w, watch_finalize, NULL, NULL));
	r = uv_poll_start(&w->poll, UV_READABLE, watch_ready);
	if (r < 0) {
		watch_stop(w);
		return throw_errno(env, -r, "uv_poll_start");
	}
	if (!keep_alive)
		uv_unref((uv_handle_t *)&w->poll);
	return handle;
}

/* unwatch(handle): stops the poll; the eventfd itself is the caller's to close, after this. */
static napi_value js_unwatch(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	struct watch *w = NULL;
	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 1 || napi_remove_wrap(env, argv[0], (void **)&w) != napi_ok || !w)
		return NULL; /* already unwatched */
	watch_stop(w);
	return NULL;
}

static napi_value init(napi_env env, napi_value exports)
{
	napi_property_descriptor props[] = {
		{ "ioctl", NULL, js_ioctl, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "ioctlErrno", NULL, js_ioctl_errno, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "ioctlEach", NULL, js_ioctl_each, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "mmap", NULL, js_mmap, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "allocDma", NULL, js_alloc_dma, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "unmap", NULL, js_unmap, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "addressOf", NULL, js_address_of, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "mmioRead", NULL, js_mmio_read, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "mmioWrite", NULL, js_mmio_write, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "dmaWriteBarrier", NULL, js_dma_write_barrier, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "dmaReadBarrier", NULL, js_dma_read_barrier, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "eventfd", NULL, js_eventfd, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "watch", NULL, js_watch, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "unwatch", NULL, js_unwatch, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "liveCounts", NULL, js_live_counts, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "errnoName", NULL, js_errno_name, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "noop", NULL, js_noop, NULL, NULL, NULL, napi_enumerable, NULL },
	};
	CHECK(env, napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props));
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
