/*
 * extproc.h: C and C++ SDK for extism-extproc plugins, in one header.
 *
 * Typed views over the plugin contract (docs/plugin-abi.md), an output builder, JSON, and the
 * server's host functions (key-value store, log, clock, HTTP). The implementation is extproc.c,
 * compiled with the plugin (sdk/c/extproc-cc adds it):
 *
 *     #include "extproc.h"
 *
 *     static int on_request(const xp_input *in, xp_output *out) {
 *         if (xp_header_has(&in->request.headers, "x-block")) {
 *             xp_immediate *r = xp_respond(out, 403);
 *             xp_immediate_details(r, "hello_blocked");
 *             xp_immediate_text(r, "blocked\n");
 *             return 0;
 *         }
 *         xp_set_header(out, "x-greeting", xp_json_get_string(xp_config(), "greeting", "hello"));
 *         return 0;
 *     }
 *     XP_EXPORT(process_request_headers, on_request)
 *
 * Build with sdk/c/extproc-cc: clang for wasm32 with wasi-libc, whose string and memory
 * functions (and malloc) need no WASI; stdio, time and file functions do, and a module importing
 * WASI does not load. Memory: everything the SDK returns (input views, JSON values, strings) lives in
 * the call's arena and is freed when the export returns, so a plugin frees nothing; keep nothing
 * from one call to the next (the next call may land on another instance anyway). xp_config() is
 * the exception: it lives as long as the instance.
 *
 * Strings are UTF-8. An xp_str's `ptr` is NUL-terminated (so C string functions work) and `len`
 * counts the bytes before that NUL; the bytes may contain NULs of their own. `ptr` is NULL when the
 * value is absent.
 */
#ifndef EXTPROC_H
#define EXTPROC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xp_str {
    const char *ptr;
    size_t len;
} xp_str;

/* --- JSON --------------------------------------------------------------------------------------
 * A dynamic document: parse, read, change, write. Members keep their order and numbers their
 * text (integers beyond 2^53 survive unchanged). Every function accepts NULL as "absent": an
 * absent value has kind XP_NULL, length 0 and no members, so lookups chain without checks. */

typedef struct xp_json xp_json;
typedef enum xp_kind { XP_NULL, XP_BOOL, XP_NUMBER, XP_STRING, XP_ARRAY, XP_OBJECT } xp_kind;

/* The deepest a value may sit inside arrays and objects; deeper documents do not parse. */
#define XP_JSON_MAX_DEPTH 512

/* One JSON document (whitespace around it allowed); NULL when invalid or nested too deep. */
xp_json *xp_json_parse(const void *text, size_t len);

xp_kind xp_json_kind(const xp_json *v);
/* Elements of an array, members of an object; 0 otherwise. */
size_t xp_json_length(const xp_json *v);
/* The array element, or object member value, at `index`; NULL past the end. */
xp_json *xp_json_at(const xp_json *v, size_t index);
/* The object member name at `index`. */
xp_str xp_json_key_at(const xp_json *v, size_t index);
/* Member `key` of an object; NULL when absent or when `v` is not an object. */
xp_json *xp_json_get(const xp_json *v, const char *key);
int xp_json_has(const xp_json *v, const char *key);

int xp_json_as_bool(const xp_json *v, int fallback);
/* A number as double (rounded beyond 2^53; out of range an infinity). */
double xp_json_as_number(const xp_json *v, double fallback);
/* A number as an integer: exact when its text is an integer int64_t holds, otherwise through
 * double, truncated and saturated. */
int64_t xp_json_as_integer(const xp_json *v, int64_t fallback);
/* A string's text, or a number's text; `fallback` for other kinds. */
const char *xp_json_as_string(const xp_json *v, const char *fallback);
/* A string's bytes (ptr NULL for other kinds). */
xp_str xp_json_as_bytes(const xp_json *v);

const char *xp_json_get_string(const xp_json *obj, const char *key, const char *fallback);
double xp_json_get_number(const xp_json *obj, const char *key, double fallback);
int64_t xp_json_get_integer(const xp_json *obj, const char *key, int64_t fallback);
int xp_json_get_bool(const xp_json *obj, const char *key, int fallback);

xp_json *xp_json_null(void);
xp_json *xp_json_bool(int value);
/* A number written the way JavaScript writes it; NaN and the infinities give null. */
xp_json *xp_json_number(double value);
xp_json *xp_json_integer(int64_t value);
/* A number written as `text`; NULL when `text` is not a JSON number. */
xp_json *xp_json_number_text(const char *text);
xp_json *xp_json_string(const char *text);
xp_json *xp_json_string_n(const void *bytes, size_t len);
xp_json *xp_json_array(void);
xp_json *xp_json_object(void);

/* Sets member `key` of an object (keeping its position when present); returns `obj`. */
xp_json *xp_json_set(xp_json *obj, const char *key, xp_json *value);
/* Appends to an array; returns `arr`. */
xp_json *xp_json_push(xp_json *arr, xp_json *value);
/* Removes member `key`; 0 when it was not there. */
int xp_json_remove(xp_json *obj, const char *key);
/* Renames member `from` to `to` in place (replacing an existing `to`); 0 when `from` is absent. */
int xp_json_rename(xp_json *obj, const char *from, const char *to);

/* The JSON text: no whitespace, members in order, non-ASCII as UTF-8. */
xp_str xp_json_write(const xp_json *v);
/* `bytes` as a JSON string literal. */
xp_str xp_json_quote(const void *bytes, size_t len);

/* --- input ------------------------------------------------------------------------------------- */

/* One header line. For a value whose bytes are not UTF-8, `value` shows each invalid sequence as
 * U+FFFD and `raw` holds the exact bytes (the contract's raw_value); otherwise raw.ptr is NULL. */
typedef struct xp_header {
    xp_str name;
    xp_str value;
    xp_str raw;
} xp_header;

/* Header lines in wire order; a repeated name appears once per value. Names are lower case. */
typedef struct xp_headers {
    const xp_header *items;
    size_t count;
} xp_headers;

typedef struct xp_body {
    xp_str bytes;
    /* 1 when the body is UTF-8 text (`text` in the contract), 0 for other bytes (`data`). */
    int is_text;
} xp_body;

typedef struct xp_request {
    xp_str method, path, scheme, authority;
    xp_headers headers;
    /* In REQUEST_BODY, and in GENERATE_RESPONSE when the plugin asked for the body; in REQUEST_BODY_CHUNK,
     * the chunk; else NULL. */
    const xp_body *body;
    /* In REQUEST_TRAILERS; else NULL. */
    const xp_headers *trailers;
} xp_request;

typedef struct xp_response {
    int status;
    xp_headers headers;
    /* In RESPONSE_BODY; in RESPONSE_BODY_CHUNK, the chunk; else NULL. */
    const xp_body *body;
    /* In RESPONSE_TRAILERS; else NULL. */
    const xp_headers *trailers;
} xp_response;

typedef struct xp_input {
    /* REQUEST_HEADERS, REQUEST_BODY_CHUNK, REQUEST_BODY, GENERATE_RESPONSE, REQUEST_TRAILERS,
     * RESPONSE_HEADERS, RESPONSE_BODY_CHUNK, RESPONSE_BODY or RESPONSE_TRAILERS. */
    xp_str phase;
    xp_str plugin_name;
    xp_request request;
    /* In the response phases; else NULL. */
    const xp_response *response;
    /* Envoy attributes by name ("source.address", ...), and Envoy's metadata context: objects. */
    const xp_json *attributes;
    const xp_json *metadata;
    /* What this plugin returned as state in an earlier phase or chunk of this exchange; else NULL. */
    const xp_body *state;
    /* The values the route gives this plugin: an object (empty when it gives none). */
    const xp_json *route;
    /* Chunk phases: 1 when this chunk is the body's last (a body that ends with trailers has none). */
    int end_of_stream;
    /* Chunk phases: the chunk's place in its body, from 0. */
    uint32_t chunk_index;
} xp_input;

/* The input from the contract's JSON (xp_run does this); 0 when it is not a JSON object. */
int xp_input_parse(const void *bytes, size_t len, xp_input *input);
/* The state's bytes (len 0 when there is none). */
xp_str xp_input_state(const xp_input *input);

/* The first value of `name` (any case), or NULL. */
const char *xp_header_get(const xp_headers *h, const char *name);
/* The exact bytes of the first value of `name`, also when they are not UTF-8 (ptr NULL: absent). */
xp_str xp_header_get_bytes(const xp_headers *h, const char *name);
int xp_header_has(const xp_headers *h, const char *name);
/* The index of the next line named `name` at or after `from`, or h->count: every value in order is
 *     for (size_t i = xp_header_find(h, "x-a", 0); i < h->count; i = xp_header_find(h, "x-a", i + 1)) */
size_t xp_header_find(const xp_headers *h, const char *name, size_t from);
/* The exact bytes of one line's value. */
xp_str xp_header_bytes(const xp_header *line);

/* The body parsed as JSON; NULL when absent, not text, or not valid JSON. */
xp_json *xp_body_json(const xp_body *body);
/* The request path without its query string. */
xp_str xp_path_only(const xp_request *request);
/* An attribute as text, or NULL. */
const char *xp_input_attribute(const xp_input *input, const char *name);

/* --- output ------------------------------------------------------------------------------------ */

typedef struct xp_output xp_output;
typedef struct xp_immediate xp_immediate;

/* Header changes of the phase's message (request headers in request phases, response headers in
 * response phases, the trailers in trailers phases; chunk phases may not change headers): set replaces
 * every value (adds the header when absent), append adds one. */
void xp_set_header(xp_output *out, const char *name, const char *value);
void xp_append_header(xp_output *out, const char *name, const char *value);
/* The same with values of exact bytes (they need not be UTF-8), e.g. from xp_header_get_bytes. */
void xp_set_header_bytes(xp_output *out, const char *name, const void *value, size_t len);
void xp_append_header_bytes(xp_output *out, const char *name, const void *value, size_t len);
void xp_remove_header(xp_output *out, const char *name);

/* Replaces the phase's body (body phases only; in chunk phases, this chunk); the server fixes
 * content-length. */
void xp_set_body(xp_output *out, const void *bytes, size_t len);
void xp_set_body_text(xp_output *out, const char *text);
void xp_set_body_json(xp_output *out, const xp_json *value);

/* Hands these bytes to this plugin's later phases and chunks of the same exchange (xp_input.state), at
 * most 16 KiB; empty drops the state. Without a call the state stays as it was. */
void xp_set_state(xp_output *out, const void *bytes, size_t len);
void xp_set_state_text(xp_output *out, const char *text);

/* Emits `key: value` as Envoy dynamic metadata (namespace extproc, under the plugin's name). */
void xp_metadata(xp_output *out, const char *key, xp_json *value);

/* An immediate response: the client gets it now and the chain stops. */
xp_immediate *xp_respond(xp_output *out, int status);
void xp_immediate_header(xp_immediate *r, const char *name, const char *value);
void xp_immediate_header_bytes(xp_immediate *r, const char *name, const void *value, size_t len);
/* The body, with content-type text/plain; charset=utf-8 (text) or application/json (json). */
void xp_immediate_text(xp_immediate *r, const char *text);
void xp_immediate_json(xp_immediate *r, const xp_json *body);
/* The body as it is, no content-type added. */
void xp_immediate_bytes(xp_immediate *r, const void *bytes, size_t len);
/* Recorded by Envoy as the response code details; never sent to the client. */
void xp_immediate_details(xp_immediate *r, const char *details);
/* For gRPC requests (otherwise the server derives it from the status). */
void xp_immediate_grpc_status(xp_immediate *r, int code);

xp_output *xp_output_new(void);
/* The output JSON; len 0 when nothing changed. */
xp_str xp_output_bytes(const xp_output *out);

/* --- config, host functions -------------------------------------------------------------------- */

/* The plugin's `config:` mapping from the server YAML (an empty object when there is none). */
const xp_json *xp_config(void);

/* The key-value store the server keeps for the plugin, shared by all its instances. ttl_ms 0 keeps a
 * value until deleted. */
xp_str xp_kv_get(const char *key);
int xp_kv_set(const char *key, const char *value, int64_t ttl_ms);
int xp_kv_set_bytes(const char *key, const void *value, size_t len, int64_t ttl_ms);
int xp_kv_delete(const char *key);
/* Atomically adds `delta` to the integer at `key` (absent = 0), returns the sum; ttl_ms applies only
 * when this call creates the key. XP_INCR_ERROR when the value is not an integer. */
int64_t xp_kv_incr(const char *key, int64_t delta, int64_t ttl_ms);
#define XP_INCR_ERROR INT64_MIN
/* Atomically stores `value` only if the current value is `expected` (NULL: only if absent). */
int xp_kv_cas(const char *key, const char *expected, const char *value, int64_t ttl_ms);

/* The server's wall clock, Unix milliseconds. */
int64_t xp_now_ms(void);

enum { XP_LOG_DEBUG = 0, XP_LOG_INFO = 1, XP_LOG_WARN = 2, XP_LOG_ERROR = 3 };
/* One line in the server's log, tagged with the plugin's name. */
void xp_log(int level, const char *message);

/* HTTP through the server's extproc_http_request, to hosts in the plugin's allowed_hosts. */
typedef struct xp_http_response {
    /* The final status after redirects; 0 when `error` is set. */
    int status;
    xp_headers headers;
    xp_str body;
    /* The URL the final response came from. */
    xp_str url;
    /* NULL when the server answered (any status); otherwise one of the XP_HTTP_* kinds. */
    const char *error;
    /* What went wrong, naming the URL; NULL when `error` is NULL. */
    const char *message;
} xp_http_response;

#define XP_HTTP_BAD_REQUEST "bad_request"
#define XP_HTTP_HOST_REFUSED "host_refused"
#define XP_HTTP_TOO_MANY_REDIRECTS "too_many_redirects"
#define XP_HTTP_TOO_LARGE "too_large"
#define XP_HTTP_TIMEOUT "timeout"
#define XP_HTTP_CONNECTION "connection"
#define XP_HTTP_INTERNAL "internal"

/* One request. `headers` is name, value, name, value, ..., NULL (or NULL for none); `body` may be
 * NULL. timeout_ms > 0 ends the call sooner than the plugin's timeout; max_redirects < 0 keeps the
 * server's default of 5. */
xp_http_response xp_http_request(const char *method, const char *url, const char *const *headers,
                                 const void *body, size_t body_len, int timeout_ms, int max_redirects);
xp_http_response xp_http_get(const char *url);
xp_http_response xp_http_post(const char *url, const char *body);
/* `s` percent-encoded for a URL query or a form body (all but RFC 3986's unreserved characters). */
xp_str xp_form_encode(const char *s);

/* --- bytes, memory, raw I/O -------------------------------------------------------------------- */

xp_str xp_base64_encode(const void *bytes, size_t len);
/* 0 when `text` is not padded standard base64. */
int xp_base64_decode(const char *text, size_t len, xp_str *out);
/* Whether `bytes` are well-formed UTF-8. */
int xp_is_utf8(const void *bytes, size_t len);
/* Memory from the call's arena, freed when the export returns. */
void *xp_alloc(size_t len);
/* A copy of `len` bytes in the arena, NUL-terminated. */
xp_str xp_str_copy(const void *bytes, size_t len);

/* The call's input and output as bytes, for a plugin that decodes them itself. xp_run frees Extism's copy
 * of the input once it has read it (its memory then holds the output): xp_raw_input is empty after that. */
xp_str xp_raw_input(void);
void xp_raw_output(const void *bytes, size_t len);
/* Makes the call fail with `message` (the server logs it and answers per on_error); returns 1,
 * for `return xp_fail("...");` from a handler. */
int xp_fail(const char *message);
/* Frees the call's arena; xp_run does it, a hand-written export calls it before returning. */
void xp_call_end(void);

/* --- exports ----------------------------------------------------------------------------------- */

/* A handler gets the call's input and an output builder; it returns 0, or xp_fail(...). */
typedef int (*xp_handler)(const xp_input *input, xp_output *out);

/* Reads the input, calls `handler`, writes the output, frees the call's memory. */
int xp_run(xp_handler handler);

#define XP__PHASE_process_request_headers 1
#define XP__PHASE_process_request_body_chunk 1
#define XP__PHASE_process_request_body 1
#define XP__PHASE_generate_response 1
#define XP__PHASE_process_request_trailers 1
#define XP__PHASE_process_response_headers 1
#define XP__PHASE_process_response_body_chunk 1
#define XP__PHASE_process_response_body 1
#define XP__PHASE_process_response_trailers 1
#ifdef __cplusplus
#define XP__EXTERN_C extern "C"
#else
#define XP__EXTERN_C
#endif

/* Declares export `name` running `handler`: process_request_headers, process_request_body_chunk,
 * process_request_body, generate_response, process_request_trailers, process_response_headers,
 * process_response_body_chunk, process_response_body or process_response_trailers. Another name does not
 * compile (it names an undeclared XP__PHASE_... identifier) instead of never being called. */
#define XP_EXPORT(name, handler)                                                              \
    enum { xp__##name##_is_a_phase_export = XP__PHASE_##name };                               \
    XP__EXTERN_C __attribute__((export_name(#name))) int name(void) { return xp_run(handler); }

/* --- declared phases --------------------------------------------------------------------------- */

/* The phases a plugin can declare, as bits to combine: XP_PHASE_REQUEST_HEADERS | XP_PHASE_RESPONSE_HEADERS. */
enum {
    XP_PHASE_REQUEST_HEADERS = 1 << 0,
    XP_PHASE_REQUEST_BODY_CHUNK = 1 << 1,
    XP_PHASE_REQUEST_BODY = 1 << 2,
    XP_PHASE_GENERATE_RESPONSE = 1 << 3,
    XP_PHASE_REQUEST_TRAILERS = 1 << 4,
    XP_PHASE_RESPONSE_HEADERS = 1 << 5,
    XP_PHASE_RESPONSE_BODY_CHUNK = 1 << 6,
    XP_PHASE_RESPONSE_BODY = 1 << 7,
    XP_PHASE_RESPONSE_TRAILERS = 1 << 8
};

/* The config name of one XP_PHASE_* bit ("request_headers", ...); NULL for anything else. */
const char *xp_phase_name(unsigned phase);

/* Answers the server's declare_phases call with these phases (XP_PHASE_* bits): the ones the plugin's
 * config needs. The server then calls only those exports and asks Envoy for only those phases. Returns 0. */
int xp_declare_phases(unsigned phases);

/* Declares the declare_phases export: `phases` is `unsigned phases(void)`, returning XP_PHASE_* bits.
 *
 *     static unsigned phases(void) { return xp_json_has(xp_config(), "response") ? XP_PHASE_RESPONSE_HEADERS : 0; }
 *     XP_DECLARE_PHASES(phases)
 */
#define XP_DECLARE_PHASES(phases) \
    XP__EXTERN_C __attribute__((export_name("declare_phases"))) int declare_phases(void) { return xp_declare_phases(phases()); }

#ifdef __cplusplus
}
#endif

#endif /* EXTPROC_H */

