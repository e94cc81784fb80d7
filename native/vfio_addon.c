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

static int get_int(napi_env env, napi_value value, int64_t *out, const char *what)
{
	napi_valuetype type;
	if (napi_typeof(env, value, &type) != napi_ok || type != napi_number ||
	    napi_get_value_int64(env, value, out) != napi_ok) {
		char message[96];
		snprintf(message, sizeof(message), "%s must be a number", what);
		napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
		return -1;
	}
	return 0;
}

/* ioctl(fd, request, arg?) -> int. arg: omitted (0), an integer (passed by value), or a
 * Buffer/TypedArray/DataView (its bytes are passed by address and updated in place). */
static napi_value js_ioctl(napi_env env, napi_callback_info info)
{
	size_t argc = 3;
	napi_value argv[3], result;
	int64_t fd, request, value = 0;
	void *pointer = NULL;
	bool is_view = false;

	CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 2) {
		napi_throw_type_error(env, "ERR_MISSING_ARGS", "ioctl(fd, request, arg?) needs fd and request");
		return NULL;
	}
	if (get_int(env, argv[0], &fd, "fd") || get_int(env, argv[1], &request, "request"))
		return NULL;
	if (argc >= 3) {
		napi_valuetype type;
		CHECK(env, napi_typeof(env, argv[2], &type));
		if (type == napi_number) {
			CHECK(env, napi_get_value_int64(env, argv[2], &value));
		} else if (type != napi_undefined) {
			bool is_typed, is_dataview;
			CHECK(env, napi_is_typedarray(env, argv[2], &is_typed));
			CHECK(env, napi_is_dataview(env, argv[2], &is_dataview));
			if (is_typed) {
				CHECK(env, napi_get_typedarray_info(env, argv[2], NULL, NULL, &pointer, NULL, NULL));
			} else if (is_dataview) {
				CHECK(env, napi_get_dataview_info(env, argv[2], NULL, &pointer, NULL, NULL));
			} else {
				napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
						      "ioctl arg must be a number, a Buffer, a TypedArray or a DataView");
				return NULL;
			}
			is_view = true;
		}
	}
	int ret = is_view ? ioctl((int)fd, (unsigned long)request, pointer)
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
