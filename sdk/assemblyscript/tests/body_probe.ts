// A probe plugin for tests/test_body_memory.py: the two body rewrites whose memory the SDK bounds,
// written as the SDK's docs advise, and a document written back as it was parsed.
import { Input, JsonValue, Output, run } from "../assembly/index";

/** Uppercases the `name` field of a JSON request body. */
function upperName(input: Input, out: Output): void {
  const body = input.request.body;
  if (body === null) return;
  const doc = body.json();
  if (doc === null) return;
  doc.setString("name", doc.getString("name").toUpperCase());
  out.setBodyJson(doc);
}

/** Replaces "Ada" with "Eve" in a response body, on its bytes. */
function replaceText(input: Input, out: Output): void {
  const response = input.response;
  if (response === null) return;
  const body = response.body;
  if (body !== null) out.setBodyBytes(body.replaceAll("Ada", "Eve"));
}

/**
 * The request body's document as parsed, set as the new body: what the writer makes of any document.
 * Parsed from the bytes (Body.json() takes text only) so that strings that are not UTF-8 get through.
 */
function sameDocument(input: Input, out: Output): void {
  const body = input.request.body;
  if (body === null) return;
  const doc = JsonValue.parseBytes(body.bytes());
  if (doc !== null) out.setBodyJson(doc);
}

export function process_request_body(): i32 { return run(upperName); }
export function same_document(): i32 { return run(sameDocument); }
export function process_response_body(): i32 { return run(replaceText); }
