// A probe plugin for tests/test_http_calls.py: generate_response makes the HTTP call its config
// describes with the SDK's Http and answers 200 with what the SDK made of the result, as JSON.
//
//   config: {url, method (GET), body (none), header: [name, value] (none), timeout_ms (0), max_redirects (-1)}
import { config, Http, Input, JsonValue, Output, run } from "../assembly/index";

function probe(input: Input, out: Output): void {
  const cfg = config();
  const headers: string[][] = [];
  const header = cfg.getStrings("header");
  if (header.length == 2) headers.push(header);
  const body = cfg.get("body");
  const response = Http.request(
    cfg.getString("method", "GET"),
    cfg.getString("url"),
    headers,
    body === null ? null : Uint8Array.wrap(String.UTF8.encode(body.asString())),
    <i32>cfg.getNumber("timeout_ms", 0),
    <i32>cfg.getNumber("max_redirects", -1),
  );
  const seen = JsonValue.object()
    .setNumber("status", response.status)
    .setString("error", response.error)
    .setString("message", response.message)
    .setString("url", response.url)
    .setString("body", response.text());
  const contentType = response.header("Content-Type");
  if (contentType !== null) seen.setString("content_type", contentType);
  out.respond(200).json(seen);
}

export function generate_response(): i32 {
  return run(probe);
}
