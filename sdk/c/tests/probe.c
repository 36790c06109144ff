/*
 * The C SDK's probe for tests/test_sdk_json.py: the same exports as the AssemblyScript SDK's
 * tests/json_probe.ts, so one table of inputs and expected outputs checks every SDK. Written in the
 * common subset of C and C++ and built as C++, so the header is checked from C++ too.
 */
#include <string.h>

#include "extproc.h"

#ifdef __cplusplus
#define PROBE_EXPORT(name) extern "C" __attribute__((export_name(#name))) int name(void)
#else
#define PROBE_EXPORT(name) __attribute__((export_name(#name))) int name(void)
#endif

static int finish(xp_str bytes) {
    xp_raw_output(bytes.ptr, bytes.len);
    xp_call_end();
    return 0;
}

static int finish_text(const char *text) {
    xp_str s = {text, strlen(text)};
    return finish(s);
}

static int invalid(void) { return finish_text("INVALID"); }

static xp_json *parse_input(void) {
    xp_str in = xp_raw_input();
    return xp_json_parse(in.ptr, in.len);
}

/* The input parsed from bytes and written back. */
PROBE_EXPORT(roundtrip) {
    xp_json *doc = parse_input();
    return doc == NULL ? invalid() : finish(xp_json_write(doc));
}

/* A deep copy made only with the public builders and getters. */
static xp_json *copy(const xp_json *v) {
    switch (xp_json_kind(v)) {
    case XP_OBJECT: {
        xp_json *out = xp_json_object();
        for (size_t i = 0; i < xp_json_length(v); i++) xp_json_set(out, xp_json_key_at(v, i).ptr, copy(xp_json_at(v, i)));
        return out;
    }
    case XP_ARRAY: {
        xp_json *out = xp_json_array();
        for (size_t i = 0; i < xp_json_length(v); i++) xp_json_push(out, copy(xp_json_at(v, i)));
        return out;
    }
    case XP_STRING: {
        xp_str s = xp_json_as_bytes(v);
        return xp_json_string_n(s.ptr, s.len);
    }
    case XP_NUMBER:
        return xp_json_number_text(xp_json_as_string(v, ""));
    case XP_BOOL:
        return xp_json_bool(xp_json_as_bool(v, 0));
    default:
        return xp_json_null();
    }
}

/* The input parsed, copied through the builders and written. */
PROBE_EXPORT(rebuild) {
    xp_json *doc = parse_input();
    return doc == NULL ? invalid() : finish(xp_json_write(copy(doc)));
}

static const char *kind_name(xp_kind kind) {
    static const char *const names[] = {"null", "bool", "number", "string", "array", "object"};
    return names[kind];
}

/* What every typed getter returns for each member of an object, and for a member it lacks. */
PROBE_EXPORT(typed) {
    xp_json *doc = parse_input();
    if (xp_json_kind(doc) != XP_OBJECT) return invalid();
    xp_json *out = xp_json_object();
    size_t n = xp_json_length(doc);
    for (size_t i = 0; i <= n; i++) {
        const char *key = i < n ? xp_json_key_at(doc, i).ptr : "absent";
        const xp_json *v = xp_json_get(doc, key);
        const char *bool_text = xp_json_get_bool(doc, key, 0) ? "true" : xp_json_get_bool(doc, key, 1) ? "fallback" : "false";
        xp_json *strings = xp_json_array();
        if (xp_json_kind(v) == XP_ARRAY) {
            for (size_t j = 0; j < xp_json_length(v); j++) xp_json_push(strings, xp_json_string(xp_json_as_string(xp_json_at(v, j), "")));
        }
        xp_json *row = xp_json_object();
        xp_json_set(row, "kind", v == NULL ? xp_json_null() : xp_json_string(kind_name(xp_json_kind(v))));
        xp_json_set(row, "has", xp_json_bool(xp_json_has(doc, key)));
        xp_json_set(row, "getString", xp_json_string(xp_json_get_string(doc, key, "fallback")));
        xp_json_set(row, "getNumber", xp_json_number(xp_json_get_number(doc, key, -1)));
        xp_json_set(row, "asInteger", xp_json_integer(v == NULL ? -1 : xp_json_as_integer(v, -1)));
        xp_json_set(row, "getBool", xp_json_string(bool_text));
        xp_json_set(row, "length", xp_json_integer(v == NULL ? -1 : (int64_t)xp_json_length(v)));
        xp_json_set(row, "getStrings", strings);
        xp_json_set(out, key, row);
    }
    return finish(xp_json_write(out));
}

/* Applies `ops` to the object `doc`: ["set", key, value], ["remove", key], ["rename", from, to].
 * Writes {"doc": the result, "results": what each op returned}. */
PROBE_EXPORT(edit) {
    xp_json *input = parse_input();
    xp_json *doc = xp_json_get(input, "doc");
    const xp_json *ops = xp_json_get(input, "ops");
    if (doc == NULL || ops == NULL) return invalid();
    xp_json *results = xp_json_array();
    for (size_t i = 0; i < xp_json_length(ops); i++) {
        const xp_json *op = xp_json_at(ops, i);
        const char *name = xp_json_as_string(xp_json_at(op, 0), "");
        const char *key = xp_json_as_string(xp_json_at(op, 1), "");
        int result;
        if (strcmp(name, "set") == 0) result = xp_json_set(doc, key, xp_json_at(op, 2)) == doc;
        else if (strcmp(name, "remove") == 0) result = xp_json_remove(doc, key);
        else if (strcmp(name, "rename") == 0) result = xp_json_rename(doc, key, xp_json_as_string(xp_json_at(op, 2), ""));
        else return invalid();
        xp_json_push(results, xp_json_bool(result));
    }
    xp_json *out = xp_json_object();
    xp_json_set(out, "doc", doc);
    xp_json_set(out, "results", results);
    return finish(xp_json_write(out));
}

/* xp_json_number of the little-endian double in the input's 8 bytes. */
PROBE_EXPORT(number) {
    xp_str in = xp_raw_input();
    double d;
    if (in.len != 8) return invalid();
    memcpy(&d, in.ptr, 8);
    return finish(xp_json_write(xp_json_number(d)));
}

/* xp_json_integer of the little-endian int64_t in the input's 8 bytes. */
PROBE_EXPORT(integer) {
    xp_str in = xp_raw_input();
    int64_t n;
    if (in.len != 8) return invalid();
    memcpy(&n, in.ptr, 8);
    return finish(xp_json_write(xp_json_integer(n)));
}

PROBE_EXPORT(quote) {
    xp_str in = xp_raw_input();
    return finish(xp_json_quote(in.ptr, in.len));
}

PROBE_EXPORT(b64encode) {
    xp_str in = xp_raw_input();
    return finish(xp_base64_encode(in.ptr, in.len));
}

PROBE_EXPORT(b64decode) {
    xp_str in = xp_raw_input();
    xp_str out;
    return xp_base64_decode(in.ptr, in.len, &out) ? finish(out) : invalid();
}

/* Input {"headers": [...]} as the server sends a header list; output the changes made from its
 * bytes: set each name to its first value, append every value, put every value in an immediate
 * response. The list is wrapped as a request's, so the SDK's own input parsing reads it. */
static int header_bytes_handler(const xp_input *in, xp_output *out) {
    const xp_headers *h = &in->request.headers;
    xp_immediate *reply = xp_respond(out, 200);
    for (size_t i = 0; i < h->count; i++) {
        const char *name = h->items[i].name.ptr;
        if (xp_header_find(h, name, 0) != i) continue;
        xp_str first = xp_header_get_bytes(h, name);
        xp_set_header_bytes(out, name, first.ptr, first.len);
        for (size_t j = xp_header_find(h, name, 0); j < h->count; j = xp_header_find(h, name, j + 1)) {
            xp_str value = xp_header_bytes(&h->items[j]);
            xp_append_header_bytes(out, name, value.ptr, value.len);
            xp_immediate_header_bytes(reply, name, value.ptr, value.len);
        }
    }
    return 0;
}

PROBE_EXPORT(header_bytes) {
    xp_json *doc = parse_input();
    if (doc == NULL) return invalid();
    xp_json *request = xp_json_object();
    xp_json_set(request, "headers", xp_json_get(doc, "headers"));
    xp_json *wrapper = xp_json_object();
    xp_json_set(wrapper, "request", request);
    xp_str text = xp_json_write(wrapper);
    xp_input input;
    if (!xp_input_parse(text.ptr, text.len, &input)) return invalid();
    xp_output *out = xp_output_new();
    header_bytes_handler(&input, out);
    return finish(xp_output_bytes(out));
}

/* The trailers of both sides as "side name=value" strings, or null when neither side has any. */
static xp_json *trailer_list(const xp_input *in) {
    const xp_headers *sides[2] = {in->request.trailers, in->response == NULL ? NULL : in->response->trailers};
    const char *names[2] = {"request ", "response "};
    if (sides[0] == NULL && sides[1] == NULL) return xp_json_null();
    xp_json *list = xp_json_array();
    for (int side = 0; side < 2; side++) {
        for (size_t i = 0; sides[side] != NULL && i < sides[side]->count; i++) {
            const xp_header *h = &sides[side]->items[i];
            size_t n = strlen(names[side]) + h->name.len + 1 + h->value.len;
            char *text = (char *)xp_alloc(n + 1);
            strcpy(text, names[side]);
            strcat(text, h->name.ptr);
            strcat(text, "=");
            strcat(text, h->value.ptr);
            xp_json_push(list, xp_json_string(text));
        }
    }
    return list;
}

static int stream_fields_handler(const xp_input *in, xp_output *out) {
    xp_metadata(out, "chunk_index", xp_json_integer(in->chunk_index));
    xp_metadata(out, "end_of_stream", xp_json_bool(in->end_of_stream));
    xp_metadata(out, "route", (xp_json *)in->route);
    xp_metadata(out, "trailers", trailer_list(in));
    if (in->state != NULL) {
        xp_set_state(out, in->state->bytes.ptr, in->state->bytes.len);
        xp_metadata(out, "state_is_text", xp_json_bool(in->state->is_text));
    }
    if (in->request.body != NULL) xp_set_body(out, in->request.body->bytes.ptr, in->request.body->bytes.len);
    return 0;
}

/* A contract input through xp_run: its streaming fields as dynamic metadata (chunk_index, end_of_stream, route,
 * trailers, state_is_text), its state written back as the output state and its request body as the body. */
PROBE_EXPORT(stream_fields) { return xp_run(stream_fields_handler); }
