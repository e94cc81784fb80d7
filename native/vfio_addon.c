/*
 * vfio_addon: the few system calls Node cannot make itself, on Node-API. It knows nothing of VFIO:
 * it moves bytes, integers and errnos; struct layouts and ioctl numbers live in TypeScript (src/uapi).
 * A failed call throws an Error with .code (the errno's name), .errno (its number) and .syscall.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <node_api.h>

#define CHECK(env, call)                                                                  \
	do {                                                                              \
		if ((call) != napi_ok) {                                                  \
			napi_throw_error((env), "EADDON", "vfio_addon: " #call " failed");      \
			return NULL;                                                      \
		}                                                                         \
	} while (0)

/* Throws like Node's own fs errors: message "EPERM: Operation not permitted, ioctl". */
static napi_value throw_errno(napi_env env, int err, const char *syscall)
{
	const char *name = strerrorname_np(err);
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
	napi_throw(env, error);
	return NULL;
}

static napi_value type_error(napi_env env, const char *message)
{
	napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
	return NULL;
}

/* ioctl(fd, request, arg?) -> int. arg: omitted (0), an integer (passed by value), or a
 * Buffer/TypedArray/DataView (its bytes are passed by address and updated in place).
 * This is the hot path of every VFIO call: each argument is probed by the conversion that accepts
 * it (napi_*_expected statuses reject the others) rather than by a napi_typeof round trip first. */
static napi_value js_ioctl(napi_env env, napi_callback_info info)
{
	size_t argc = 3;
	napi_value argv[3], result;
	int64_t fd, request, value = 0;
	void *pointer = NULL;
	bool by_address = false;

	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 2)
		return type_error(env, "ioctl(fd, request, arg?) needs fd and request");
	if (napi_get_value_int64(env, argv[0], &fd) != napi_ok)
		return type_error(env, "fd must be a number");
	if (napi_get_value_int64(env, argv[1], &request) != napi_ok)
		return type_error(env, "request must be a number");
	if (argc >= 3) {
		napi_status number = napi_get_value_int64(env, argv[2], &value);
		if (number == napi_number_expected) {
			if (napi_get_typedarray_info(env, argv[2], NULL, NULL, &pointer, NULL, NULL) == napi_ok ||
			    napi_get_dataview_info(env, argv[2], NULL, &pointer, NULL, NULL) == napi_ok) {
				by_address = true;
			} else {
				napi_valuetype type;
				CHECK(env, napi_typeof(env, argv[2], &type));
				if (type != napi_undefined)
					return type_error(env, "ioctl arg must be a number, a Buffer, a TypedArray or a DataView");
			}
		} else if (number != napi_ok) {
			return type_error(env, "ioctl arg is not a usable number");
		}
	}
	int ret = by_address ? ioctl((int)fd, (unsigned long)request, pointer)
			     : ioctl((int)fd, (unsigned long)request, (unsigned long)value);
	if (ret < 0)
		return throw_errno(env, errno, "ioctl");
	CHECK(env, napi_create_int32(env, ret, &result));
	return result;
}

static napi_value init(napi_env env, napi_value exports)
{
	napi_property_descriptor props[] = {
		{ "ioctl", NULL, js_ioctl, NULL, NULL, NULL, napi_enumerable, NULL },
	};
	CHECK(env, napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props));
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
