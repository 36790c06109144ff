// Deterministic header/body rewrites on every phase (see README.md).
import { JSON } from "json-as";
import { Host } from "@extism/as-pdk";
import { configOr, outputString } from "../lib/io";

@json
class Body {
  @optional text: string | null = null;
  @optional data: string | null = null;
}

@json
class Request {
  @optional path: string = "";
  @optional body: Body | null = null;
}

@json
class Response {
  @optional status: i64 = 0;
  @optional body: Body | null = null;
}

@json
class Input {
  @optional request: Request | null = null;
  @optional response: Response | null = null;
}

function readInput(): Input {
  return JSON.parse<Input>(Host.inputString());
}

function q(s: string): string {
  return JSON.stringify<string>(s);
}

function header(name: string, value: string): string {
  return '{"name":' + q(name) + ',"value":' + q(value) + "}";
}

function headersOutput(setName: string, setValue: string): string {
  return (
    '{"headers":{"set":[' +
    header(setName, setValue) +
    '],"append":[' +
    header("x-chain", configOr("tag", "transform")) +
    "]}}"
  );
}

function bodyOutput(text: string): string {
  return '{"body":{"text":' + q(text) + "}}";
}

/** Text of a body, or null when absent or not UTF-8 (`data`). */
function textOf(body: Body | null): string | null {
  if (body === null) return null;
  return body.text;
}

export function process_request_headers(): i32 {
  const req = readInput().request;
  outputString(headersOutput("x-seen-path", req === null ? "" : req.path));
  return 0;
}

export function process_request_body(): i32 {
  const req = readInput().request;
  if (req === null) return 0;
  const text = textOf(req.body);
  if (text !== null) outputString(bodyOutput(text + configOr("suffix", "")));
  return 0;
}

export function process_response_headers(): i32 {
  const resp = readInput().response;
  const status: i64 = resp === null ? 0 : resp.status;
  outputString(headersOutput("x-upstream-status", status.toString()));
  return 0;
}

export function process_response_body(): i32 {
  const resp = readInput().response;
  if (resp === null) return 0;
  const text = textOf(resp.body);
  if (text !== null) outputString(bodyOutput(configOr("prefix", "") + text));
  return 0;
}
