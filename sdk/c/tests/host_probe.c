/*
 * The C SDK's host-function probe, the twin of sdk/assemblyscript/tests/http_probe.ts:
 *
 * - generate_response makes the HTTP call its config describes and answers 200 with what the SDK
 *   made of the result, as JSON. config: {url, method (GET), body (none), header: [name, value]
 *   (none), timeout_ms (0), max_redirects (-1)}
 * - process_request_headers runs a fixed sequence of key-value operations, reads the clock and logs
 *   a line; the results go out as dynamic metadata `results` (a list, in order) and `now_ms`.
 */
#include <string.h>

#include "extproc.h"

static int call(const xp_input *in, xp_output *out) {
    (void)in;
    const xp_json *cfg = xp_config();
    const xp_json *header = xp_json_get(cfg, "header");
    const char *headers[3] = {NULL, NULL, NULL};
    if (xp_json_length(header) == 2) {
        headers[0] = xp_json_as_string(xp_json_at(header, 0), "");
        headers[1] = xp_json_as_string(xp_json_at(header, 1), "");
    }
    const char *body = xp_json_get_string(cfg, "body", NULL);
    xp_http_response r = xp_http_request(xp_json_get_string(cfg, "method", "GET"), xp_json_get_string(cfg, "url", ""),
                                         headers, body, body == NULL ? 0 : strlen(body),
                                         (int)xp_json_get_integer(cfg, "timeout_ms", 0),
                                         (int)xp_json_get_integer(cfg, "max_redirects", -1));
    xp_json *seen = xp_json_object();
    xp_json_set(seen, "status", xp_json_integer(r.status));
    xp_json_set(seen, "error", xp_json_string(r.error == NULL ? "" : r.error));
    xp_json_set(seen, "message", xp_json_string(r.message == NULL ? "" : r.message));
    xp_json_set(seen, "url", xp_json_string_n(r.url.ptr, r.url.len));
    xp_json_set(seen, "body", xp_json_string_n(r.body.ptr, r.body.len));
    const char *content_type = xp_header_get(&r.headers, "Content-Type");
    if (content_type != NULL) xp_json_set(seen, "content_type", xp_json_string(content_type));
    xp_immediate_json(xp_respond(out, 200), seen);
    return 0;
}

static xp_json *text_or_null(xp_str s) { return s.ptr == NULL ? xp_json_null() : xp_json_string_n(s.ptr, s.len); }

static int state(const xp_input *in, xp_output *out) {
    (void)in;
    xp_json *r = xp_json_array();
    xp_json_push(r, xp_json_bool(xp_kv_set("k", "v\xc3\xa9", 0)));
    xp_json_push(r, text_or_null(xp_kv_get("k")));
    xp_json_push(r, xp_json_integer(xp_kv_incr("n", 5, 0)));
    xp_json_push(r, xp_json_integer(xp_kv_incr("n", 2, 60000)));
    xp_json_push(r, xp_json_bool(xp_kv_incr("k", 1, 0) == XP_INCR_ERROR));
    xp_json_push(r, xp_json_bool(xp_kv_cas("c", NULL, "1", 0)));
    xp_json_push(r, xp_json_bool(xp_kv_cas("c", NULL, "2", 0)));
    xp_json_push(r, xp_json_bool(xp_kv_cas("c", "1", "2", 0)));
    xp_json_push(r, text_or_null(xp_kv_get("c")));
    xp_json_push(r, xp_json_bool(xp_kv_delete("c")));
    xp_json_push(r, xp_json_bool(xp_kv_delete("c")));
    xp_json_push(r, text_or_null(xp_kv_get("c")));
    xp_json_push(r, xp_json_bool(xp_kv_set_bytes("b", "\xff\x00", 2, 0)));
    xp_str b = xp_kv_get("b");
    xp_json_push(r, xp_json_integer(b.ptr == NULL ? -1 : (int64_t)b.len));
    xp_log(XP_LOG_WARN, "host probe: state done");
    xp_metadata(out, "results", r);
    xp_metadata(out, "now_ms", xp_json_integer(xp_now_ms()));
    return 0;
}

XP_EXPORT(generate_response, call)
XP_EXPORT(process_request_headers, state)
