// Sets Cache-Control and Vary on responses by path pattern and content type, and answers
// conditional requests with 304 Not Modified.
//
//   config:
//     etag: true            # give 2xx GET responses without an ETag a strong one (hash of the body)
//     rules:                # the first rule whose path (glob) and content_type (prefix) match wins
//       - {path: "/static/*", content_type: "text/css", cache_control: "public, max-age=86400", vary: [Accept-Encoding]}
//       - {path: "/api/*", cache_control: "no-store"}
//
// A GET or HEAD whose If-None-Match lists the response's ETag (or, without If-None-Match, whose
// If-Modified-Since is not older than Last-Modified) gets 304 with the validators and caching headers.
import {
  config, declarePhases, fnv1a64Hex, globMatch, Input, JsonValue, Output, parseHttpDate, Phase, Request, Response, run,
} from "@extproc/sdk";

function ruleFor(request: Request, response: Response): JsonValue | null {
  const rules = config().get("rules");
  if (rules === null) return null;
  const path = request.pathOnly;
  const typeHeader = response.headers.get("content-type");
  const type = typeHeader === null ? "" : typeHeader.toLowerCase();
  for (let i = 0; i < rules.length; i++) {
    const rule = rules.values[i];
    if (!globMatch(rule.getString("path", "*"), path)) continue;
    if (!type.startsWith(rule.getString("content_type", "").toLowerCase())) continue;
    return rule;
  }
  return null;
}

function isCacheable(request: Request, response: Response): bool {
  return (request.method == "GET" || request.method == "HEAD") && response.status >= 200 && response.status < 300;
}

/** Whether If-None-Match (a list, or "*") names `etag`; weak and strong forms compare equal. */
function etagMatches(ifNoneMatch: string, etag: string): bool {
  const wanted = etag.startsWith("W/") ? etag.substring(2) : etag;
  const parts = ifNoneMatch.split(",");
  for (let i = 0; i < parts.length; i++) {
    let tag = parts[i].trim();
    if (tag == "*") return true;
    if (tag.startsWith("W/")) tag = tag.substring(2);
    if (tag == wanted) return true;
  }
  return false;
}

function notModified(request: Request, etag: string | null, lastModified: string | null): bool {
  const ifNoneMatch = request.headers.get("if-none-match");
  if (ifNoneMatch !== null) return etag !== null && etagMatches(ifNoneMatch, etag);
  const ifModifiedSince = request.headers.get("if-modified-since");
  if (ifModifiedSince === null || lastModified === null) return false;
  const since = parseHttpDate(ifModifiedSince);
  const modified = parseHttpDate(lastModified);
  return since >= 0 && modified >= 0 && modified <= since;
}

/** The rule's Cache-Control and Vary values as (name, value) pairs. */
function cachingHeaders(rule: JsonValue | null): Array<string> {
  const pairs = new Array<string>();
  if (rule === null) return pairs;
  const cacheControl = rule.get("cache_control");
  if (cacheControl !== null) { pairs.push("cache-control"); pairs.push(cacheControl.asString()); }
  const vary = rule.getStrings("vary");
  if (vary.length > 0) { pairs.push("vary"); pairs.push(vary.join(", ")); }
  return pairs;
}

function respond304(response: Response, rule: JsonValue | null, etag: string | null, out: Output): void {
  const r = out.respond(304).details("cache_control_not_modified");
  if (etag !== null) r.header("etag", etag);
  const lastModified = response.headers.get("last-modified");
  if (lastModified !== null) r.header("last-modified", lastModified);
  const pairs = cachingHeaders(rule);
  for (let i = 0; i < pairs.length; i += 2) r.header(pairs[i], pairs[i + 1]);
}

function onResponseHeaders(input: Input, out: Output): void {
  const response = input.response;
  if (response === null) return;
  const request = input.request;
  const rule = ruleFor(request, response);
  const etag = response.headers.get("etag");
  if (isCacheable(request, response) && (etag !== null || !config().getBool("etag"))) {
    if (notModified(request, etag, response.headers.get("last-modified"))) {
      respond304(response, rule, etag, out);
      return;
    }
  }
  const pairs = cachingHeaders(rule);
  for (let i = 0; i < pairs.length; i += 2) out.setHeader(pairs[i], pairs[i + 1]);
}

function onResponseBody(input: Input, out: Output): void {
  const response = input.response;
  if (response === null || !config().getBool("etag")) return;
  const request = input.request;
  if (!isCacheable(request, response) || response.headers.has("etag")) return;
  const body = response.body;
  if (body === null) return;
  const etag = '"' + fnv1a64Hex(body.bytes()) + '"';
  const rule = ruleFor(request, response);
  if (notModified(request, etag, response.headers.get("last-modified"))) {
    respond304(response, rule, etag, out);
    return;
  }
  out.setHeader("etag", etag);
}

export function process_response_headers(): i32 {
  return run(onResponseHeaders);
}

export function process_response_body(): i32 {
  return run(onResponseBody);
}

// The response body is read only to compute an ETag.
export function declare_phases(): i32 {
  const phases = [Phase.RESPONSE_HEADERS];
  if (config().getBool("etag")) phases.push(Phase.RESPONSE_BODY);
  return declarePhases(phases);
}
