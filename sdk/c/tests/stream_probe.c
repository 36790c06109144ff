/*
 * The C SDK's streaming probe, the twin of sdk/rust/stream-probe (see there for what each export does):
 * chunks, trailers, state, route values and declared phases, through the server's stream code.
 */
#include <string.h>

#include "extproc.h"

static unsigned phases(void) {
    const xp_json *listed = xp_json_get(xp_config(), "phases");
    if (listed == NULL) {
        return XP_PHASE_REQUEST_HEADERS | XP_PHASE_REQUEST_BODY_CHUNK | XP_PHASE_REQUEST_TRAILERS |
               XP_PHASE_RESPONSE_HEADERS | XP_PHASE_RESPONSE_BODY_CHUNK | XP_PHASE_RESPONSE_TRAILERS;
    }
    unsigned bits = 0;
    for (size_t i = 0; i < xp_json_length(listed); i++) {
        const char *name = xp_json_as_string(xp_json_at(listed, i), "");
        for (unsigned phase = 1; xp_phase_name(phase) != NULL; phase <<= 1) {
            if (strcmp(name, xp_phase_name(phase)) == 0) bits |= phase;
        }
    }
    return bits;
}

static int on_request_headers(const xp_input *in, xp_output *out) {
    xp_set_header(out, "x-route", xp_json_write(in->route).ptr);
    xp_set_state_text(out, "h");
    return 0;
}

static int on_response_headers(const xp_input *in, xp_output *out) {
    xp_set_header(out, "x-state", xp_input_state(in).ptr);
    return 0;
}

/* The decimal digits of `n`, in the call's arena. */
static const char *decimal(uint32_t n) {
    return xp_json_write(xp_json_integer(n)).ptr;
}

static int chunk(const xp_body *body, const xp_input *in, xp_output *out) {
    const char *index = decimal(in->chunk_index);
    size_t n = body == NULL ? 0 : body->bytes.len;
    size_t head = strlen(index) + (in->end_of_stream ? 3 : 2);
    char *marked = (char *)xp_alloc(head + n + 1);
    strcpy(marked, "<");
    strcat(marked, index);
    strcat(marked, in->end_of_stream ? "$>" : ">");
    for (size_t i = 0; i < n; i++) {
        char c = body->bytes.ptr[i];
        marked[head + i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    xp_set_body(out, marked, head + n);
    xp_str state = xp_input_state(in);
    char *next = (char *)xp_alloc(state.len + strlen(index) + 1);
    memcpy(next, state.ptr, state.len);
    strcpy(next + state.len, index);
    xp_set_state_text(out, next);
    return 0;
}

static int on_request_chunk(const xp_input *in, xp_output *out) { return chunk(in->request.body, in, out); }

static int on_response_chunk(const xp_input *in, xp_output *out) {
    return chunk(in->response == NULL ? NULL : in->response->body, in, out);
}

static int trailers(const xp_headers *list, const xp_input *in, xp_output *out) {
    const char *status = list == NULL ? NULL : xp_header_get(list, "grpc-status");
    xp_set_header(out, "x-state", xp_input_state(in).ptr);
    xp_set_header(out, "x-seen-grpc-status", status == NULL ? "" : status);
    return 0;
}

static int on_request_trailers(const xp_input *in, xp_output *out) { return trailers(in->request.trailers, in, out); }

static int on_response_trailers(const xp_input *in, xp_output *out) {
    return trailers(in->response == NULL ? NULL : in->response->trailers, in, out);
}

XP_EXPORT(process_request_headers, on_request_headers)
XP_EXPORT(process_request_body_chunk, on_request_chunk)
XP_EXPORT(process_request_trailers, on_request_trailers)
XP_EXPORT(process_response_headers, on_response_headers)
XP_EXPORT(process_response_body_chunk, on_response_chunk)
XP_EXPORT(process_response_trailers, on_response_trailers)
XP_DECLARE_PHASES(phases)
