// Lets a request through only with a bearer token that an OAuth 2.0 introspection endpoint (RFC 7662)
// says is active; answers 401 otherwise. Active answers can be cached in the server's key-value store.
//
//   config:
//     introspect_url: http://127.0.0.1:9000/introspect   # required; its host must be in allowed_hosts
//     header: authorization       # where the token is read from, as "Bearer <token>" (default authorization)
//     forward_as: x-subject       # optional: tell the upstream the token's "sub"
//     cache_ttl_ms: 30000         # optional: remember active tokens this long (default 0: ask every time)
//
// The endpoint answering anything but 200 with a JSON object gives 503: the token could not be checked.
// So does a call that got no answer (host not in allowed_hosts, too large a response, timeout, connection
// failure, too many redirects); the server's log then has a warning line with the reason.
import { config, declarePhases, fnv1a64Hex, formEncode, Http, Input, JsonValue, KV, Log, Output, Phase, run } from "@extproc/sdk";

function deny(out: Output, status: i32, details: string, error: string): void {
  out.respond(status)
    .details(details)
    .header("www-authenticate", 'Bearer error="invalid_token"')
    .json(JsonValue.object().setString("error", error));
}

function onRequest(input: Input, out: Output): void {
  const cfg = config();
  const url = cfg.get("introspect_url");
  if (url === null) {
    out.respond(500).details("token_introspect_misconfigured");
    return;
  }
  const value = input.request.headers.get(cfg.getString("header", "authorization"));
  if (value === null || !value.toLowerCase().startsWith("bearer ") || value.length <= 7) {
    deny(out, 401, "token_missing", "missing bearer token");
    return;
  }
  const token = value.substring(7).trim();
  const ttl = <i64>cfg.getNumber("cache_ttl_ms", 0);
  // Keyed by a hash so the store never holds the token itself.
  const cacheKey = "active:" + fnv1a64Hex(Uint8Array.wrap(String.UTF8.encode(token)));
  const cached = ttl > 0 ? KV.get(cacheKey) : null;
  let subject = "";
  if (cached !== null) {
    subject = cached;
  } else {
    const response = Http.post(url.asString(), "token=" + formEncode(token), [
      ["content-type", "application/x-www-form-urlencoded"],
      ["accept", "application/json"],
    ]);
    if (response.error != "") Log.warn("introspection call failed: " + response.error + ": " + response.message);
    const body = response.status == 200 ? response.json() : null;
    if (body === null || body.get("active") === null) {
      out.respond(503).details("token_introspection_failed")
        .json(JsonValue.object().setString("error", "token could not be checked"));
      return;
    }
    if (!body.get("active")!.asBool()) {
      deny(out, 401, "token_inactive", "inactive token");
      return;
    }
    const sub = body.get("sub");
    subject = sub === null ? "" : sub.asString();
    if (ttl > 0) KV.set(cacheKey, subject, ttl);
  }
  const forwardAs = cfg.get("forward_as");
  if (forwardAs !== null && subject.length > 0) out.setHeader(forwardAs.asString(), subject);
}

export function process_request_headers(): i32 {
  return run(onRequest);
}

export function declare_phases(): i32 {
  return declarePhases([Phase.REQUEST_HEADERS]);
}
