/*
 * Adds, overwrites, removes and renames request and response headers, as configured:
 *
 *   config:
 *     request:  {set: {x-team: payments}, add: {x-via: extproc}, remove: [x-debug], rename: {x-old: x-new}}
 *     response: {set: {...}, add: {...}, remove: [server], rename: {...}}
 *
 * `set` replaces every value (adds the header when absent), `add` appends one more value (a list
 * adds several), `remove` drops every value, `rename` moves every value to the new name. The C twin
 * of examples/header-rewrite (same config, same CASES.yaml).
 */
#include "extproc.h"

/* Header `name` gets each value of `v` (a value or a list): the first replacing (set) or appended. */
static void put_values(xp_output *out, const char *name, const xp_json *v, int replace_first) {
    int list = xp_json_kind(v) == XP_ARRAY;
    size_t n = list ? xp_json_length(v) : 1;
    for (size_t i = 0; i < n; i++) {
        const char *value = xp_json_as_string(list ? xp_json_at(v, i) : v, "");
        if (i == 0 && replace_first) xp_set_header(out, name, value);
        else xp_append_header(out, name, value);
    }
    if (n == 0 && replace_first) xp_set_header(out, name, "");
}

static void rewrite(const xp_json *rules, const xp_headers *headers, xp_output *out) {
    const xp_json *remove = xp_json_get(rules, "remove");
    for (size_t i = 0; i < xp_json_length(remove); i++) xp_remove_header(out, xp_json_as_string(xp_json_at(remove, i), ""));

    const xp_json *rename = xp_json_get(rules, "rename");
    for (size_t i = 0; i < xp_json_length(rename); i++) {
        const char *from = xp_json_key_at(rename, i).ptr;
        const char *to = xp_json_as_string(xp_json_at(rename, i), "");
        if (!xp_header_has(headers, from)) continue;
        xp_remove_header(out, from);
        /* Bytes, not text: a value that is not UTF-8 moves unchanged. */
        for (size_t j = xp_header_find(headers, from, 0); j < headers->count; j = xp_header_find(headers, from, j + 1)) {
            xp_str value = xp_header_bytes(&headers->items[j]);
            xp_append_header_bytes(out, to, value.ptr, value.len);
        }
    }

    const xp_json *set = xp_json_get(rules, "set");
    for (size_t i = 0; i < xp_json_length(set); i++) put_values(out, xp_json_key_at(set, i).ptr, xp_json_at(set, i), 1);
    const xp_json *add = xp_json_get(rules, "add");
    for (size_t i = 0; i < xp_json_length(add); i++) put_values(out, xp_json_key_at(add, i).ptr, xp_json_at(add, i), 0);
}

static int on_request(const xp_input *in, xp_output *out) {
    rewrite(xp_json_get(xp_config(), "request"), &in->request.headers, out);
    return 0;
}

static int on_response(const xp_input *in, xp_output *out) {
    if (in->response != NULL) rewrite(xp_json_get(xp_config(), "response"), &in->response->headers, out);
    return 0;
}

/* Only the sides the config rewrites: with request rules alone, Envoy is never asked for the response. */
static unsigned phases(void) {
    return (xp_json_has(xp_config(), "request") ? XP_PHASE_REQUEST_HEADERS : 0) |
           (xp_json_has(xp_config(), "response") ? XP_PHASE_RESPONSE_HEADERS : 0);
}

XP_EXPORT(process_request_headers, on_request)
XP_EXPORT(process_response_headers, on_response)
XP_DECLARE_PHASES(phases)
