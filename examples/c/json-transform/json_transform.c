/*
 * Rewrites JSON request and response bodies: removes (redacts) listed fields at any depth and
 * renames keys. Bodies that are not JSON pass through untouched. The server fixes content-length.
 *
 *   config:
 *     request:  {redact: [ssn, password], rename: {name: full_name}}
 *     response: {redact: [internal_id], rename: {}, replacement: "***"}
 *
 * With `replacement`, redacted fields keep their key and get that value instead of disappearing.
 * The C twin of examples/json-transform (same config, same CASES.yaml).
 */
#include <string.h>

#include "extproc.h"

static int is_json(const xp_headers *headers) {
    const char *type = xp_header_get(headers, "content-type");
    if (type == NULL) return 0;
    /* Media types are case-insensitive; the structured suffix may sit anywhere before parameters. */
    size_t n = strlen(type);
    char *lower = (char *)xp_alloc(n + 1);
    for (size_t i = 0; i <= n; i++) lower[i] = (char)(type[i] >= 'A' && type[i] <= 'Z' ? type[i] + 32 : type[i]);
    return strncmp(lower, "application/json", 16) == 0 || strstr(lower, "+json") != NULL;
}

/* Applies the rules to every object in the document; returns whether anything changed. */
static int transform(xp_json *value, const xp_json *redact, const xp_json *rename, xp_json *replacement) {
    int changed = 0;
    if (xp_json_kind(value) == XP_OBJECT) {
        for (size_t i = 0; i < xp_json_length(redact); i++) {
            const char *key = xp_json_as_string(xp_json_at(redact, i), "");
            if (!xp_json_has(value, key)) continue;
            if (replacement == NULL) xp_json_remove(value, key);
            else xp_json_set(value, key, replacement);
            changed = 1;
        }
        for (size_t i = 0; i < xp_json_length(rename); i++) {
            changed |= xp_json_rename(value, xp_json_key_at(rename, i).ptr, xp_json_as_string(xp_json_at(rename, i), ""));
        }
    }
    for (size_t i = 0; i < xp_json_length(value); i++) changed |= transform(xp_json_at(value, i), redact, rename, replacement);
    return changed;
}

static void rewrite(const xp_json *rules, const xp_headers *headers, const xp_body *body, xp_output *out) {
    if (rules == NULL || body == NULL || !is_json(headers)) return;
    xp_json *doc = xp_body_json(body);
    if (doc == NULL) {
        xp_log(XP_LOG_DEBUG, "body says JSON but does not parse; passed through");
        return;
    }
    if (transform(doc, xp_json_get(rules, "redact"), xp_json_get(rules, "rename"), xp_json_get(rules, "replacement"))) {
        xp_set_body_json(out, doc);
    }
}

static int on_request(const xp_input *in, xp_output *out) {
    rewrite(xp_json_get(xp_config(), "request"), &in->request.headers, in->request.body, out);
    return 0;
}

static int on_response(const xp_input *in, xp_output *out) {
    if (in->response != NULL) rewrite(xp_json_get(xp_config(), "response"), &in->response->headers, in->response->body, out);
    return 0;
}

/* Only the bodies the config transforms: each one Envoy buffers for the server costs a round trip. */
static unsigned phases(void) {
    return (xp_json_has(xp_config(), "request") ? XP_PHASE_REQUEST_BODY : 0) |
           (xp_json_has(xp_config(), "response") ? XP_PHASE_RESPONSE_BODY : 0);
}

XP_EXPORT(process_request_body, on_request)
XP_EXPORT(process_response_body, on_response)
XP_DECLARE_PHASES(phases)
