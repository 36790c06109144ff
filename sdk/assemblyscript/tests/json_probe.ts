// A probe plugin for tests/test_sdk_json.py: each export runs one piece of the SDK's JSON, base64
// and header code on the call input and writes what it produced, so the tests compare real outputs.
// Inputs the SDK rejects produce the bytes INVALID.
import { base64Decode, base64Encode } from "../assembly/base64";
import { Headers, Input, Output, run } from "../assembly/contract";
import { readInputBytes, writeOutputBytes } from "../assembly/io";
import { JsonKind, JsonValue, quote as jsonQuote } from "../assembly/json";

function finish(bytes: Uint8Array): i32 {
  writeOutputBytes(bytes);
  // Built with the minimal runtime, which frees only when asked (as the SDK's run() does).
  __collect();
  return 0;
}

function finishString(s: string): i32 {
  return finish(Uint8Array.wrap(String.UTF8.encode(s)));
}

function invalid(): i32 {
  return finishString("INVALID");
}

/** The input parsed from bytes and written back with the writer. */
export function roundtrip(): i32 {
  const doc = JsonValue.parseBytes(readInputBytes());
  return doc === null ? invalid() : finish(doc.toBytes());
}

/** A deep copy made only with the public builders and text getters. */
function copy(v: JsonValue): JsonValue {
  if (v.isObject) {
    const out = JsonValue.object();
    for (let i = 0; i < v.keys.length; i++) out.set(v.keys[i], copy(v.values[i]));
    return out;
  }
  if (v.isArray) {
    const out = JsonValue.array();
    for (let i = 0; i < v.length; i++) out.push(copy(v.at(i)!));
    return out;
  }
  if (v.isString) return JsonValue.string(v.asString());
  if (v.isNumber) return JsonValue.numberText(v.asString());
  if (v.isBool) return JsonValue.bool(v.asBool());
  return JsonValue.null();
}

/** The input decoded to text, parsed from text, copied through the builders, written as text. */
export function rebuild(): i32 {
  const bytes = readInputBytes();
  const doc = JsonValue.parse(String.UTF8.decodeUnsafe(bytes.dataStart, <usize>bytes.length));
  return doc === null ? invalid() : finishString(copy(doc).toString());
}

function kindName(kind: JsonKind): string {
  switch (kind) {
    case JsonKind.Null: return "null";
    case JsonKind.Bool: return "bool";
    case JsonKind.Number: return "number";
    case JsonKind.String: return "string";
    case JsonKind.Array: return "array";
    default: return "object";
  }
}

/** What every typed getter returns for each member of an object, and for a member it lacks. */
export function typed(): i32 {
  const doc = JsonValue.parseBytes(readInputBytes());
  if (doc === null || !doc.isObject) return invalid();
  const out = JsonValue.object();
  const names = doc.keys.slice(0);
  names.push("absent");
  for (let i = 0; i < names.length; i++) {
    const key = names[i];
    const v = doc.get(key);
    const row = JsonValue.object()
      .set("kind", v === null ? JsonValue.null() : JsonValue.string(kindName(v.kind)))
      .setBool("has", doc.has(key))
      .set("getString", JsonValue.string(doc.getString(key, "fallback")))
      .set("getNumber", JsonValue.number(doc.getNumber(key, -1)))
      .set("asInteger", JsonValue.integer(v === null ? -1 : v.asInteger(-1)))
      .set("getBool", JsonValue.string(doc.getBool(key, false) ? "true" : doc.getBool(key, true) ? "fallback" : "false"))
      .set("length", JsonValue.integer(v === null ? -1 : v.length));
    const strings = JsonValue.array();
    const list = doc.getStrings(key);
    for (let j = 0; j < list.length; j++) strings.push(JsonValue.string(list[j]));
    row.set("getStrings", strings);
    out.set(key, row);
  }
  return finish(out.toBytes());
}

/**
 * Applies `ops` to the object `doc`: ["set", key, value], ["remove", key], ["rename", from, to].
 * Writes {"doc": the result, "results": what each op returned (set: the kind of its return value)}.
 */
export function edit(): i32 {
  const input = JsonValue.parseBytes(readInputBytes());
  if (input === null) return invalid();
  const doc = input.get("doc");
  const ops = input.get("ops");
  if (doc === null || ops === null) return invalid();
  const results = JsonValue.array();
  for (let i = 0; i < ops.length; i++) {
    const op = ops.at(i)!;
    const name = op.at(0)!.asString();
    const key = op.at(1)!.asString();
    if (name == "set") results.push(JsonValue.bool(doc.set(key, op.at(2)!) === doc));
    else if (name == "remove") results.push(JsonValue.bool(doc.remove(key)));
    else if (name == "rename") results.push(JsonValue.bool(doc.rename(key, op.at(2)!.asString())));
    else return invalid();
  }
  return finish(JsonValue.object().set("doc", doc).set("results", results).toBytes());
}

/** JsonValue.number of the little-endian f64 in the input's 8 bytes. */
export function number(): i32 {
  const bytes = readInputBytes();
  if (bytes.length != 8) return invalid();
  return finishString(JsonValue.number(load<f64>(bytes.dataStart)).toString());
}

/** JsonValue.integer of the little-endian i64 in the input's 8 bytes. */
export function integer(): i32 {
  const bytes = readInputBytes();
  if (bytes.length != 8) return invalid();
  return finishString(JsonValue.integer(load<i64>(bytes.dataStart)).toString());
}

/** quote() of the input text. */
export function quote(): i32 {
  const bytes = readInputBytes();
  return finishString(jsonQuote(String.UTF8.decodeUnsafe(bytes.dataStart, <usize>bytes.length)));
}

export function b64encode(): i32 {
  return finishString(base64Encode(readInputBytes()));
}

export function b64decode(): i32 {
  const bytes = readInputBytes();
  const decoded = base64Decode(String.UTF8.decodeUnsafe(bytes.dataStart, <usize>bytes.length));
  return decoded === null ? invalid() : finish(decoded);
}

/**
 * Input {"headers": [...]} as the server sends a header list; output the changes made from its bytes:
 * set each name to its first value (getBytes), append every value (getAllBytes) and put every value
 * in an immediate response (headerBytes).
 */
export function header_bytes(): i32 {
  const doc = JsonValue.parseBytes(readInputBytes());
  if (doc === null) return invalid();
  const headers = Headers.from(doc.get("headers"));
  const out = new Output();
  const reply = out.respond(200);
  for (let i = 0; i < headers.count; i++) {
    const name = headers.names[i];
    if (headers.names.indexOf(name) != i) continue;
    out.setHeaderBytes(name, headers.getBytes(name)!);
    const all = headers.getAllBytes(name);
    for (let j = 0; j < all.length; j++) {
      out.appendHeaderBytes(name, all[j]);
      reply.headerBytes(name, all[j]);
    }
  }
  return finish(out.toBytes());
}

/** The trailers of both sides as "side name=value" strings, or null when neither side has any. */
function trailerList(input: Input): JsonValue {
  const req = input.request.trailers;
  const response = input.response;
  const resp: Headers | null = response === null ? null : response.trailers;
  if (req === null && resp === null) return JsonValue.null();
  const list = JsonValue.array();
  if (req !== null) for (let i = 0; i < req.count; i++) list.push(JsonValue.string("request " + req.names[i] + "=" + req.values[i]));
  if (resp !== null) for (let i = 0; i < resp.count; i++) list.push(JsonValue.string("response " + resp.names[i] + "=" + resp.values[i]));
  return list;
}

function streamFields(input: Input, out: Output): void {
  out.metadata("chunk_index", JsonValue.integer(input.chunkIndex));
  out.metadata("end_of_stream", JsonValue.bool(input.endOfStream));
  out.metadata("route", input.route);
  out.metadata("trailers", trailerList(input));
  const state = input.state;
  if (state !== null) out.setStateBytes(state.bytes()).metadata("state_is_text", JsonValue.bool(state.isText));
  const body = input.request.body;
  if (body !== null) out.setBodyBytes(body.bytes());
}

/**
 * A contract input through run(): its streaming fields as dynamic metadata (chunk_index, end_of_stream,
 * route, trailers, state_is_text), its state written back as the output state and its request body as the body.
 */
export function stream_fields(): i32 {
  return run(streamFields);
}
