import { config, Input, Output, run } from "../assembly/index";

function upper(input: Input, out: Output): void {
  const body = input.request.body;
  if (body === null) return;
  const doc = body.json();
  if (doc === null) return;
  doc.setString("name", doc.getString("name").toUpperCase());
  out.setBodyJson(doc);
}

function replace(input: Input, out: Output): void {
  const response = input.response;
  if (response === null) return;
  const body = response.body;
  if (body === null) return;
  const mode = config().getString("mode");
  if (mode == "noop") return;
  if (mode == "echo") { out.setBodyBytes(body.bytes()); return; }
  if (config().getBool("text")) {
    const text = body.text;
    if (text !== null) out.setBody(text.replaceAll("Ada", "Eve"));
  } else {
    out.setBodyBytes(body.replaceAll("Ada", "Eve"));
  }
}

export function process_request_body(): i32 { return run(upper); }
export function process_response_body(): i32 { return run(replace); }
