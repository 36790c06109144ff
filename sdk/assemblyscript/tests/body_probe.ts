// A probe plugin for tests/test_body_memory.py: the two body rewrites whose memory the SDK bounds,
// written as the SDK's docs advise.
import { Input, Output, run } from "../assembly/index";

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

export function process_request_body(): i32 { return run(upperName); }
export function process_response_body(): i32 { return run(replaceText); }
