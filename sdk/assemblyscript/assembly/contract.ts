// Typed views over the plugin contract (docs/plugin-abi.md) and builders for the output.
import { base64DecodeBytes, base64Write } from "./base64";
import { alloc, config_get, free, input_offset, output_set } from "./env";
import { fromExtism, readInputBytes, setError, stringToExtism, writeOutputBytes } from "./io";
import { ByteBuffer, JsonValue, JsonWriter, parseInPlace } from "./json";
import { indexOfBytes, isUtf8, replaceAllBytes } from "./util";

// --- input ----------------------------------------------------------------------------------

/**
 * Header lines in wire order; repeated names appear once per value. Names are lower case.
 * A value whose bytes are not UTF-8 reads as text with U+FFFD for each invalid sequence; the
 * `...Bytes` getters give every value's exact bytes, to compare or to write back unchanged.
 */
export class Headers {
  readonly names: Array<string> = [];
  readonly values: Array<string> = [];
  // The exact bytes of values that are not UTF-8 (the contract's `raw_value`); null for text.
  private readonly raws: Array<Uint8Array | null> = [];

  get count(): i32 { return this.names.length; }

  /** The first value of `name` (any case), or null. */
  get(name: string): string | null {
    const i = this.indexOf(name.toLowerCase(), 0);
    return i < 0 ? null : this.values[i];
  }

  /** Every value of `name`, in order. */
  getAll(name: string): Array<string> {
    const n = name.toLowerCase();
    const out = new Array<string>();
    for (let i = this.indexOf(n, 0); i >= 0; i = this.indexOf(n, i + 1)) out.push(this.values[i]);
    return out;
  }

  /** The exact bytes of the first value of `name` (any case), or null. */
  getBytes(name: string): Uint8Array | null {
    const i = this.indexOf(name.toLowerCase(), 0);
    return i < 0 ? null : this.bytesAt(i);
  }

  /** The exact bytes of every value of `name`, in order. */
  getAllBytes(name: string): Array<Uint8Array> {
    const n = name.toLowerCase();
    const out = new Array<Uint8Array>();
    for (let i = this.indexOf(n, 0); i >= 0; i = this.indexOf(n, i + 1)) out.push(this.bytesAt(i));
    return out;
  }

  /** The exact bytes of the value at `index` (0 <= index < count). */
  bytesAt(index: i32): Uint8Array {
    const raw = this.raws[index];
    return raw !== null ? raw : Uint8Array.wrap(String.UTF8.encode(this.values[index]));
  }

  has(name: string): bool { return this.get(name) !== null; }

  private indexOf(lowerName: string, from: i32): i32 {
    for (let i = from; i < this.names.length; i++) if (this.names[i] == lowerName) return i;
    return -1;
  }

  static from(list: JsonValue | null): Headers {
    const h = new Headers();
    if (list === null) return h;
    const items = list.values;
    for (let i = 0; i < items.length; i++) {
      h.names.push(items[i].getString("name"));
      h.values.push(items[i].getString("value"));
      const raw = items[i].get("raw_value");
      h.raws.push(raw === null ? null : base64DecodeBytes(raw.asUtf8()));
    }
    return h;
  }
}

/**
 * A message body: the bytes, and whether they are UTF-8 text (`text` in the contract) or not (`data`).
 * A text body's bytes are part of the call input (no copy). `text` decodes them to a string of two
 * bytes per character: for a large body, `indexOf`, `replaceAll` and `json()` work on the bytes instead.
 */
export class Body {
  private textCache: string | null = null;

  constructor(private raw: Uint8Array, public readonly isText: bool) {}

  /** The raw bytes. */
  bytes(): Uint8Array { return this.raw; }

  get length(): i32 { return this.raw.length; }

  /** The body as text, or null when it is not UTF-8. */
  get text(): string | null {
    if (!this.isText) return null;
    let t = this.textCache;
    if (t === null) {
      t = String.UTF8.decodeUnsafe(this.raw.dataStart, <usize>this.raw.length);
      this.textCache = t;
    }
    return t;
  }

  /** The body parsed as JSON, or null when it is not text or not valid JSON. Its strings share the body's bytes. */
  json(): JsonValue | null {
    return this.isText ? JsonValue.parseBytes(this.raw) : null;
  }

  /** The byte offset of the first `search` (as UTF-8) at or after byte `from`, or -1. */
  indexOf(search: string, from: i32 = 0): i32 {
    return indexOfBytes(this.raw, Uint8Array.wrap(String.UTF8.encode(search)), from);
  }

  /**
   * The body's bytes with every `search` replaced by `replacement` (both as UTF-8), for `setBodyBytes`;
   * the body's own bytes when there is none. On text, what `text.replaceAll` gives, without its strings.
   */
  replaceAll(search: string, replacement: string): Uint8Array {
    return replaceAllBytes(this.raw, Uint8Array.wrap(String.UTF8.encode(search)), Uint8Array.wrap(String.UTF8.encode(replacement)));
  }

  static from(v: JsonValue | null): Body | null {
    if (v === null) return null;
    const text = v.get("text");
    if (text !== null) return new Body(text.asUtf8(), true);
    const data = v.get("data");
    if (data !== null) {
      const decoded = base64DecodeBytes(data.asUtf8());
      return new Body(decoded === null ? new Uint8Array(0) : decoded, false);
    }
    return new Body(new Uint8Array(0), true);
  }
}

export class Request {
  method: string = "";
  path: string = "";
  scheme: string = "";
  authority: string = "";
  headers: Headers = new Headers();
  /** Present in REQUEST_BODY (and GENERATE_RESPONSE when the plugin asked for the body); in REQUEST_BODY_CHUNK, the chunk. */
  body: Body | null = null;
  /** Present in REQUEST_TRAILERS. */
  trailers: Headers | null = null;

  /** The path without its query string. */
  get pathOnly(): string {
    const q = this.path.indexOf("?");
    return q < 0 ? this.path : this.path.substring(0, q);
  }
}

export class Response {
  status: i32 = 0;
  headers: Headers = new Headers();
  /** Present in RESPONSE_BODY; in RESPONSE_BODY_CHUNK, the chunk. */
  body: Body | null = null;
  /** Present in RESPONSE_TRAILERS. */
  trailers: Headers | null = null;
}

export class Input {
  /**
   * REQUEST_HEADERS, REQUEST_BODY_CHUNK, REQUEST_BODY, GENERATE_RESPONSE, REQUEST_TRAILERS,
   * RESPONSE_HEADERS, RESPONSE_BODY_CHUNK, RESPONSE_BODY or RESPONSE_TRAILERS.
   */
  phase: string = "";
  pluginName: string = "";
  request: Request = new Request();
  /** Set in RESPONSE_HEADERS and RESPONSE_BODY. */
  response: Response | null = null;
  /** Envoy attributes, keyed by attribute name ("source.address", ...). */
  attributes: JsonValue = JsonValue.object();
  /** Envoy's metadata context: namespace -> values. */
  metadata: JsonValue = JsonValue.object();
  /** What this plugin returned as state in an earlier phase or chunk of this exchange, or null. */
  state: Body | null = null;
  /** The values the route gives this plugin (an empty object when it gives none). */
  route: JsonValue = JsonValue.object();
  /** Chunk phases: this chunk is the body's last (a body that ends with trailers has none). */
  endOfStream: bool = false;
  /** Chunk phases: the chunk's place in its body, from 0. */
  chunkIndex: i32 = 0;

  /** The state as text ("" when there is none). */
  get stateText(): string {
    const s = this.state;
    if (s === null) return "";
    const t = s.text;
    return t === null ? "" : t;
  }

  /** An attribute as text ("source.address" -> "10.0.0.7:53122"), or null. */
  attribute(name: string): string | null {
    const v = this.attributes.get(name);
    return v === null ? null : v.asString();
  }

  /** Parses the call input in place: `bytes` become the bodies' bytes (no copy), nothing else may use them. */
  static parse(bytes: Uint8Array): Input {
    const parsed = parseInPlace(bytes);
    if (parsed === null || !parsed.isObject) {
      throw new Error("extproc sdk: the input is not a JSON object (is the plugin configured with encoding: protobuf?)");
    }
    const root: JsonValue = parsed;
    const input = new Input();
    input.phase = root.getString("phase");
    input.pluginName = root.getString("plugin_name");
    const req = root.get("request");
    if (req !== null) {
      const r = input.request;
      r.method = req.getString("method");
      r.path = req.getString("path");
      r.scheme = req.getString("scheme");
      r.authority = req.getString("authority");
      r.headers = Headers.from(req.get("headers"));
      r.body = Body.from(req.get("body"));
      const t = req.get("trailers");
      if (t !== null) r.trailers = Headers.from(t);
    }
    const resp = root.get("response");
    if (resp !== null) {
      const r = new Response();
      r.status = <i32>resp.getNumber("status");
      r.headers = Headers.from(resp.get("headers"));
      r.body = Body.from(resp.get("body"));
      const t = resp.get("trailers");
      if (t !== null) r.trailers = Headers.from(t);
      input.response = r;
    }
    const attrs = root.get("attributes");
    if (attrs !== null && attrs.isObject) input.attributes = attrs;
    const meta = root.get("metadata");
    if (meta !== null && meta.isObject) input.metadata = meta;
    input.state = Body.from(root.get("state"));
    const route = root.get("route");
    if (route !== null && route.isObject) input.route = route;
    input.endOfStream = root.getBool("end_of_stream");
    input.chunkIndex = <i32>root.getNumber("chunk_index");
    return input;
  }
}

/**
 * The input of the current call. Extism's copy of the input is freed once it is read, so the output
 * can take its place: after this, `readInputBytes` finds nothing.
 */
export function readInput(): Input {
  const bytes = readInputBytes();
  free(input_offset());
  return Input.parse(bytes);
}

// --- output ---------------------------------------------------------------------------------

class Pair {
  // `raw` (when set) is the exact value bytes and `value` is unused.
  constructor(public name: string, public value: string, public raw: Uint8Array | null = null) {}
}

/** An immediate response: the client gets it now, the chain stops. */
export class ImmediateResponse {
  headers: Array<Pair> = [];
  body: Uint8Array | null = null;
  detailText: string = "";
  grpc: i32 = -1;

  constructor(public status: i32) {}

  header(name: string, value: string): ImmediateResponse { this.headers.push(new Pair(name, value)); return this; }
  /** A header whose value is these exact bytes (they need not be UTF-8). */
  headerBytes(name: string, value: Uint8Array): ImmediateResponse { this.headers.push(new Pair(name, "", value)); return this; }
  text(body: string, contentType: string = "text/plain; charset=utf-8"): ImmediateResponse {
    this.body = Uint8Array.wrap(String.UTF8.encode(body));
    return this.header("content-type", contentType);
  }
  json(body: JsonValue): ImmediateResponse {
    this.body = body.toBytes();
    return this.header("content-type", "application/json");
  }
  bytes(body: Uint8Array): ImmediateResponse { this.body = body; return this; }
  /** Recorded by Envoy as response code details; never sent to the client. */
  details(text: string): ImmediateResponse { this.detailText = text; return this; }
  grpcStatus(code: i32): ImmediateResponse { this.grpc = code; return this; }
}

/** Collects the changes of one call; `write()` turns them into the contract's output JSON. */
export class Output {
  private sets: Array<Pair> = [];
  private appends: Array<Pair> = [];
  private removes: Array<string> = [];
  private newBody: Uint8Array | null = null;
  private newBodyJson: JsonValue | null = null;
  private immediate: ImmediateResponse | null = null;
  private meta: JsonValue = JsonValue.object();
  private newState: Uint8Array | null = null;

  /** Replace every value of `name` (added when absent). In trailers phases these change the trailers. */
  setHeader(name: string, value: string): Output { this.sets.push(new Pair(name.toLowerCase(), value)); return this; }
  /** Add one more value of `name`. */
  appendHeader(name: string, value: string): Output { this.appends.push(new Pair(name.toLowerCase(), value)); return this; }
  /** `setHeader` with a value of these exact bytes (they need not be UTF-8), e.g. from `Headers.getBytes`. */
  setHeaderBytes(name: string, value: Uint8Array): Output { this.sets.push(new Pair(name.toLowerCase(), "", value)); return this; }
  /** `appendHeader` with a value of these exact bytes (they need not be UTF-8). */
  appendHeaderBytes(name: string, value: Uint8Array): Output { this.appends.push(new Pair(name.toLowerCase(), "", value)); return this; }
  /** Remove every value of `name`. */
  removeHeader(name: string): Output { this.removes.push(name.toLowerCase()); return this; }

  /** Replace the phase's body (body phases only; in chunk phases, this chunk); the server fixes content-length. */
  setBody(text: string): Output { return this.setBodyBytes(Uint8Array.wrap(String.UTF8.encode(text))); }
  setBodyBytes(bytes: Uint8Array): Output { this.newBody = bytes; this.newBodyJson = null; return this; }
  /**
   * Replace the body with this document, as it stands when the handler returns: it is written straight
   * into the output, never held as bytes in the plugin's memory.
   */
  setBodyJson(value: JsonValue): Output { this.newBodyJson = value; this.newBody = null; return this; }

  /** Answer the client with `status` now; configure the returned response further. */
  respond(status: i32): ImmediateResponse {
    const r = new ImmediateResponse(status);
    this.immediate = r;
    return r;
  }

  /**
   * Hand `bytes` to this plugin's later phases and chunks of the same exchange (`Input.state`), at most
   * 16 KiB; empty drops the state. Without a call the state stays as it was.
   */
  setStateBytes(bytes: Uint8Array): Output { this.newState = bytes; return this; }
  setState(text: string): Output { return this.setStateBytes(Uint8Array.wrap(String.UTF8.encode(text))); }

  /** Emit `key: value` as Envoy dynamic metadata (namespace extproc, under the plugin's name). */
  metadata(key: string, value: JsonValue): Output { this.meta.set(key, value); return this; }

  get isEmpty(): bool {
    return this.sets.length == 0 && this.appends.length == 0 && this.removes.length == 0 &&
      this.newBody === null && this.newBodyJson === null && this.immediate === null && this.meta.keys.length == 0 && this.newState === null;
  }

  /** The output JSON (empty when nothing changed). */
  toBytes(): Uint8Array {
    if (this.isEmpty) return new Uint8Array(0);
    this.prepare();
    const w = new JsonWriter();
    this.writeJson(w);
    return w.toBytes();
  }

  /** Sets the output JSON as the call's output (none when nothing changed). */
  write(): void {
    if (this.isEmpty) return;
    // Measured first, then written once straight into Extism memory: the output, a whole body
    // perhaps, needs no room in the plugin's own memory.
    this.prepare();
    const counter = new JsonWriter(ByteBuffer.counter());
    this.writeJson(counter);
    const n = <u64>counter.out.length;
    const offset = alloc(n);
    const w = new JsonWriter(ByteBuffer.extism(offset));
    this.writeJson(w);
    w.out.flush();
    output_set(offset, n);
  }

  /**
   * A document body is written as its text straight into the output when that text is UTF-8, which is
   * all but always: the rare document with bytes that are not becomes bytes first and goes as base64.
   */
  private prepare(): void {
    const doc = this.newBodyJson;
    if (doc !== null && !doc.writesUtf8()) this.setBodyBytes(doc.toBytes());
  }

  private writeJson(w: JsonWriter): void {
    w.raw("{");
    let first = true;
    if (this.sets.length + this.appends.length + this.removes.length > 0) {
      w.raw('"headers":{"set":');
      pairs(w, this.sets);
      w.raw(',"append":');
      pairs(w, this.appends);
      w.raw(',"remove":[');
      for (let i = 0; i < this.removes.length; i++) {
        if (i > 0) w.raw(",");
        w.string(this.removes[i]);
      }
      w.raw("]}");
      first = false;
    }
    const body = this.newBody;
    if (body !== null) {
      if (!first) w.raw(",");
      w.raw('"body":');
      bodyJson(w, body);
      first = false;
    }
    const doc = this.newBodyJson;
    if (doc !== null) {
      if (!first) w.raw(",");
      w.raw('"body":{"text":"');
      const inner = new JsonWriter(ByteBuffer.escapingInto(w.out));
      inner.value(doc);
      inner.out.flush();
      w.raw('"}');
      first = false;
    }
    const imm = this.immediate;
    if (imm !== null) {
      if (!first) w.raw(",");
      w.raw('"immediate_response":{"status":' + imm.status.toString() + ',"headers":');
      pairs(w, imm.headers);
      const b = imm.body;
      if (b !== null) {
        w.raw(',"body":');
        bodyJson(w, b);
      }
      if (imm.detailText.length > 0) {
        w.raw(',"details":');
        w.string(imm.detailText);
      }
      if (imm.grpc >= 0) w.raw(',"grpc_status":' + imm.grpc.toString());
      w.raw("}");
      first = false;
    }
    if (this.meta.keys.length > 0) {
      if (!first) w.raw(",");
      w.raw('"dynamic_metadata":');
      w.value(this.meta);
      first = false;
    }
    const state = this.newState;
    if (state !== null) {
      if (!first) w.raw(",");
      w.raw('"state":');
      bodyJson(w, state);
    }
    w.raw("}");
  }
}

function pairs(w: JsonWriter, list: Array<Pair>): void {
  w.raw("[");
  for (let i = 0; i < list.length; i++) {
    if (i > 0) w.raw(",");
    w.raw('{"name":');
    w.string(list[i].name);
    const raw = list[i].raw;
    if (raw === null) {
      w.raw(',"value":');
      w.string(list[i].value);
    } else if (isUtf8(raw)) {
      // Text travels as text, so the output stays readable; only other bytes need raw_value.
      w.raw(',"value":');
      w.stringBytes(raw);
    } else {
      w.raw(',"raw_value":"');
      base64Write(w.out, raw);
      w.raw('"');
    }
    w.raw("}");
  }
  w.raw("]");
}

function bodyJson(w: JsonWriter, bytes: Uint8Array): void {
  if (isUtf8(bytes)) {
    w.raw('{"text":');
    w.stringBytes(bytes);
  } else {
    w.raw('{"data":"');
    base64Write(w.out, bytes);
    w.raw('"');
  }
  w.raw("}");
}

// --- config and the export wrapper ----------------------------------------------------------

let configCache: JsonValue | null = null;

/** The plugin's `config:` mapping from the server YAML (an empty object when none). */
export function config(): JsonValue {
  const cached = configCache;
  if (cached !== null) return cached;
  const k = stringToExtism("config");
  const offset = config_get(k);
  free(k);
  let c = JsonValue.object();
  if (offset != 0) {
    const parsed = JsonValue.parseBytes(fromExtism(offset));
    if (parsed !== null && parsed.isObject) c = parsed;
  }
  configCache = c;
  return c;
}

export type Handler = (input: Input, output: Output) => void;

/**
 * Runs one export: reads the input, calls `handler`, writes the output, frees the call's garbage
 * (plugins are built with AssemblyScript's minimal runtime, which collects only when asked). Use it as
 * `export function process_request_headers(): i32 { return run(onRequest); }`.
 */
export function run(handler: Handler): i32 {
  const input = readInput();
  const output = new Output();
  handler(input, output);
  output.write();
  // Nothing survives the call but globals, so this is cheap; without it the heap only grows.
  __collect();
  return 0;
}

/** The phases a plugin can declare, by their config names (see declarePhases). */
export namespace Phase {
  export const REQUEST_HEADERS = "request_headers";
  export const REQUEST_BODY_CHUNK = "request_body_chunk";
  export const REQUEST_BODY = "request_body";
  export const GENERATE_RESPONSE = "generate_response";
  export const REQUEST_TRAILERS = "request_trailers";
  export const RESPONSE_HEADERS = "response_headers";
  export const RESPONSE_BODY_CHUNK = "response_body_chunk";
  export const RESPONSE_BODY = "response_body";
  export const RESPONSE_TRAILERS = "response_trailers";
}

/**
 * Answers the server's `declare_phases` call: the phases this plugin's config uses. The server then
 * calls only those exports and asks Envoy for only those phases. Use it as the whole body of the export:
 *
 *   export function declare_phases(): i32 {
 *     return declarePhases([Phase.REQUEST_HEADERS]);
 *   }
 */
export function declarePhases(phases: Array<string>): i32 {
  const w = new JsonWriter();
  w.raw('{"phases":[');
  for (let i = 0; i < phases.length; i++) {
    if (i > 0) w.raw(",");
    w.string(phases[i]);
  }
  w.raw("]}");
  writeOutputBytes(w.toBytes());
  return 0;
}

/** Makes the call fail with `message` (the server logs it and answers per on_error); returns 1. */
export function fail(message: string): i32 {
  setError(message);
  return 1;
}
