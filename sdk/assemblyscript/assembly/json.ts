// A small dynamic JSON model: parse any JSON document, change it, write it back.
// Object members keep their order; numbers keep their original text so that integers
// beyond 2^53 survive a round trip unchanged.
import { copyToExtism } from "./io";
import { isUtf8 } from "./util";

export enum JsonKind { Null, Bool, Number, String, Array, Object }

const NO_ITEMS = new Array<JsonValue>(0);
const NO_NAMES = new Array<string>(0);

export class JsonValue {
  kind: JsonKind = JsonKind.Null;
  private flag: bool = false;
  private num: string = "0"; // number text, as written
  private str: string | null = "";
  // A string value straight from parsing stays UTF-8 until someone asks for the text: large bodies
  // then go from input to output without two UTF-16 conversions.
  private utf8: Uint8Array | null = null;
  // Scalars share these empty arrays (never written to): parsing allocates far less that way.
  private items: Array<JsonValue> = NO_ITEMS;
  private names: Array<string> = NO_NAMES;

  static null(): JsonValue { return new JsonValue(); }
  static bool(value: bool): JsonValue { const v = new JsonValue(); v.kind = JsonKind.Bool; v.flag = value; return v; }
  /** A number; NaN and the infinities, which JSON cannot write, give null (as in JSON.stringify). */
  static number(value: f64): JsonValue { return isFinite(value) ? JsonValue.numberText(formatNumber(value)) : JsonValue.null(); }
  static integer(value: i64): JsonValue { return JsonValue.numberText(value.toString()); }
  static numberText(text: string): JsonValue { const v = new JsonValue(); v.kind = JsonKind.Number; v.num = text; return v; }
  static string(value: string): JsonValue { const v = new JsonValue(); v.kind = JsonKind.String; v.str = value; return v; }
  /** A string value from its UTF-8 bytes (decoded only when read as text). */
  static stringUtf8(bytes: Uint8Array): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.String;
    v.str = null;
    v.utf8 = bytes;
    return v;
  }
  static array(): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.Array;
    v.items = [];
    return v;
  }
  static object(): JsonValue {
    const v = new JsonValue();
    v.kind = JsonKind.Object;
    v.items = [];
    v.names = [];
    return v;
  }

  /** Parses `text`; null when it is not one valid JSON document or nests deeper than MAX_DEPTH (512). */
  static parse(text: string): JsonValue | null {
    return JsonValue.parseBytes(Uint8Array.wrap(String.UTF8.encode(text)));
  }

  /**
   * Parses UTF-8 JSON. String values without escapes are views into `bytes` (no copy), so change
   * `bytes` no more once parsed.
   */
  static parseBytes(bytes: Uint8Array): JsonValue | null {
    return parse(bytes, false);
  }

  /** The UTF-8 bytes of a string value (empty for other kinds). */
  asUtf8(): Uint8Array {
    if (this.kind != JsonKind.String) return new Uint8Array(0);
    let b = this.utf8;
    if (b === null) {
      b = Uint8Array.wrap(String.UTF8.encode(this.asString()));
      this.utf8 = b;
    }
    return b;
  }

  get isNull(): bool { return this.kind == JsonKind.Null; }
  get isBool(): bool { return this.kind == JsonKind.Bool; }
  get isNumber(): bool { return this.kind == JsonKind.Number; }
  get isString(): bool { return this.kind == JsonKind.String; }
  get isArray(): bool { return this.kind == JsonKind.Array; }
  get isObject(): bool { return this.kind == JsonKind.Object; }

  asBool(fallback: bool = false): bool { return this.kind == JsonKind.Bool ? this.flag : fallback; }
  asNumber(fallback: f64 = 0): f64 { return this.kind == JsonKind.Number ? parseFloat(this.num) : fallback; }
  /**
   * The number as an integer: exact when its text is an integer i64 holds (ids, timestamps in ns,
   * counters beyond 2^53); otherwise through f64, truncated and saturated at i64's bounds.
   */
  asInteger(fallback: i64 = 0): i64 {
    if (this.kind != JsonKind.Number) return fallback;
    const text = this.num;
    return isI64Text(text) ? parseI64Text(text) : <i64>parseFloat(text);
  }
  /** The string value; for a number its text; otherwise `fallback`. */
  asString(fallback: string = ""): string {
    if (this.kind == JsonKind.String) {
      const cached = this.str;
      if (cached !== null) return cached;
      const b = this.utf8;
      const s = b === null ? "" : String.UTF8.decodeUnsafe(b.dataStart, <usize>b.length);
      this.str = s;
      return s;
    }
    if (this.kind == JsonKind.Number) return this.num;
    return fallback;
  }

  /** Array elements, or object member values, in order. */
  get values(): Array<JsonValue> { return this.items; }
  /** Object member names, in order. */
  get keys(): Array<string> { return this.names; }
  get length(): i32 { return this.items.length; }
  at(index: i32): JsonValue | null { return index >= 0 && index < this.items.length ? this.items[index] : null; }

  has(key: string): bool { return this.indexOf(key) >= 0; }
  /** The member `key` of an object, or null (also when this is not an object). */
  get(key: string): JsonValue | null {
    const i = this.indexOf(key);
    return i < 0 ? null : this.items[i];
  }
  getString(key: string, fallback: string = ""): string {
    const v = this.get(key);
    return v === null ? fallback : v.asString(fallback);
  }
  getNumber(key: string, fallback: f64 = 0): f64 {
    const v = this.get(key);
    return v === null ? fallback : v.asNumber(fallback);
  }
  getBool(key: string, fallback: bool = false): bool {
    const v = this.get(key);
    return v === null ? fallback : v.asBool(fallback);
  }
  /** A list of strings (`["a","b"]`), or empty when absent or not a list. */
  getStrings(key: string): Array<string> {
    const out = new Array<string>();
    const v = this.get(key);
    if (v === null || !v.isArray) return out;
    for (let i = 0; i < v.items.length; i++) out.push(v.items[i].asString());
    return out;
  }

  /** Sets member `key` (keeping its position when present); returns this for chaining. */
  set(key: string, value: JsonValue): JsonValue {
    if (this.kind != JsonKind.Object) throw new Error("JsonValue.set on a value that is not an object");
    const i = this.indexOf(key);
    if (i >= 0) { this.items[i] = value; } else { this.names.push(key); this.items.push(value); }
    return this;
  }
  setString(key: string, value: string): JsonValue { return this.set(key, JsonValue.string(value)); }
  setNumber(key: string, value: f64): JsonValue { return this.set(key, JsonValue.number(value)); }
  setBool(key: string, value: bool): JsonValue { return this.set(key, JsonValue.bool(value)); }
  push(value: JsonValue): JsonValue {
    if (this.kind != JsonKind.Array) throw new Error("JsonValue.push on a value that is not an array");
    this.items.push(value);
    return this;
  }

  /** Removes member `key`; false when it was not there. */
  remove(key: string): bool {
    const i = this.indexOf(key);
    if (i < 0) return false;
    this.removeAt(i);
    return true;
  }

  /** Renames member `from` to `to` in place (replacing an existing `to`); false when `from` is absent. */
  rename(from: string, to: string): bool {
    const i = this.indexOf(from);
    if (i < 0) return false;
    if (from == to) return true;
    const j = this.indexOf(to);
    this.names[i] = to;
    if (j >= 0) this.removeAt(j);
    return true;
  }

  toString(): string {
    const w = new JsonWriter();
    w.value(this);
    return w.toString();
  }

  toBytes(): Uint8Array {
    // Measured first, then written once at its exact size: a growing buffer would leave each of
    // its smaller predecessors behind until the call's garbage is collected.
    const counter = new JsonWriter(ByteBuffer.counter());
    counter.value(this);
    const w = new JsonWriter(new ByteBuffer(counter.out.length));
    w.value(this);
    return w.toBytes();
  }

  /**
   * Whether the text the writer makes of this value is well-formed UTF-8 without looking at it: false
   * when a string parsed from bytes holds bytes that are not UTF-8 (parsing does not check them) or a
   * lone surrogate.
   */
  writesUtf8(): bool {
    if (this.kind == JsonKind.String) {
      const b = this.utf8;
      return this.str !== null || b === null || isUtf8(b);
    }
    const items = this.items;
    for (let i = 0; i < items.length; i++) if (!unchecked(items[i]).writesUtf8()) return false;
    return true;
  }

  // Shifts the later members down in place: splice would allocate an array of the removed ones, per
  // call, which a plugin redacting a field of every record would pay for every record.
  private removeAt(i: i32): void {
    const names = this.names;
    const items = this.items;
    const last = items.length - 1;
    for (let j = i; j < last; j++) {
      unchecked((names[j] = names[j + 1]));
      unchecked((items[j] = items[j + 1]));
    }
    names.pop();
    items.pop();
  }

  private indexOf(key: string): i32 {
    if (this.kind != JsonKind.Object) return -1;
    const names = this.names;
    for (let i = 0; i < names.length; i++) if (names[i] == key) return i;
    return -1;
  }
}

function formatNumber(value: f64): string {
  if (value == Math.floor(value) && Math.abs(value) < 9.007199254740992e15) return (<i64>value).toString();
  return value.toString();
}

// --- integers -------------------------------------------------------------------------------

const I64_MAX_DIGITS = "9223372036854775807";
const I64_MIN_DIGITS = "9223372036854775808"; // of -2^63, without the minus

/** Whether `text` is an optional minus and digits whose value fits in i64. */
function isI64Text(text: string): bool {
  const start = text.startsWith("-") ? 1 : 0;
  const digits = text.length - start;
  if (digits < 1 || digits > I64_MAX_DIGITS.length) return false;
  for (let i = start; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  if (digits < I64_MAX_DIGITS.length) return true;
  // As long as the bound: digit strings of equal length compare like their values.
  return text.substring(start) <= (start ? I64_MIN_DIGITS : I64_MAX_DIGITS);
}

/** The value of text that isI64Text accepted. */
function parseI64Text(text: string): i64 {
  const negative = text.startsWith("-");
  // u64 holds every 19-digit magnitude, -2^63's included; negating it as i64 gives -2^63 back.
  let magnitude: u64 = 0;
  for (let i = negative ? 1 : 0; i < text.length; i++) magnitude = magnitude * 10 + <u64>(text.charCodeAt(i) - 0x30);
  return negative ? -<i64>magnitude : <i64>magnitude;
}

// --- parsing --------------------------------------------------------------------------------

/** The deepest a value may sit inside arrays and objects; deeper documents do not parse. */
const MAX_DEPTH = 512;

/**
 * Parses `bytes` and decodes the escapes of its strings in place, into the bytes themselves (the
 * decoded form is never longer): every string value is then a view into `bytes`, which are garbled
 * for anything else. For a buffer only the parse will read, such as the call input.
 */
export function parseInPlace(bytes: Uint8Array): JsonValue | null {
  return parse(bytes, true);
}

function parse(bytes: Uint8Array, inPlace: bool): JsonValue | null {
  const parser = new Parser(bytes, inPlace);
  const value = parser.value(0);
  if (value === null) return null;
  parser.skipSpace();
  return parser.pos == bytes.length ? value : null;
}

// Member names seen in one parse, by a hash of their bytes: an array of records repeats the same few
// names, and sharing one string per name keeps them from costing memory per record.
const NAME_SLOTS = 256;

class Parser {
  pos: i32 = 0;
  private names: StaticArray<string | null> = new StaticArray<string | null>(NAME_SLOTS);
  constructor(public bytes: Uint8Array, private inPlace: bool) {}

  /** The member name of these UTF-8 bytes: the string of an earlier member of the same name if there was one. */
  name(bytes: Uint8Array): string {
    const n = bytes.length;
    const p = bytes.dataStart;
    let hash: u32 = 2166136261;
    for (let i = 0; i < n; i++) hash = (hash ^ <u32>load<u8>(p + <usize>i)) * 16777619;
    const slot = <i32>(hash & (NAME_SLOTS - 1));
    const seen = unchecked(this.names[slot]);
    if (seen !== null && sameAscii(seen, bytes)) return seen;
    const decoded = String.UTF8.decodeUnsafe(p, <usize>n);
    unchecked((this.names[slot] = decoded));
    return decoded;
  }

  skipSpace(): void {
    const b = this.bytes;
    while (this.pos < b.length) {
      const c = unchecked(b[this.pos]);
      if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
      this.pos++;
    }
  }

  value(depth: i32): JsonValue | null {
    if (depth > MAX_DEPTH) return null;
    this.skipSpace();
    if (this.pos >= this.bytes.length) return null;
    const c = unchecked(this.bytes[this.pos]);
    if (c == 0x7b) return this.object(depth);
    if (c == 0x5b) return this.array(depth);
    if (c == 0x22) {
      const s = this.stringBytes();
      return s === null ? null : JsonValue.stringUtf8(s);
    }
    if (c == 0x74) return this.literal("true") ? JsonValue.bool(true) : null;
    if (c == 0x66) return this.literal("false") ? JsonValue.bool(false) : null;
    if (c == 0x6e) return this.literal("null") ? JsonValue.null() : null;
    return this.number();
  }

  literal(word: string): bool {
    const n = word.length;
    if (this.pos + n > this.bytes.length) return false;
    for (let i = 0; i < n; i++) if (<i32>this.bytes[this.pos + i] != word.charCodeAt(i)) return false;
    this.pos += n;
    return true;
  }

  number(): JsonValue | null {
    const b = this.bytes;
    const start = this.pos;
    if (this.pos < b.length && b[this.pos] == 0x2d) this.pos++;
    const intStart = this.pos;
    while (this.pos < b.length && isDigit(b[this.pos])) this.pos++;
    const intLen = this.pos - intStart;
    if (intLen == 0 || (intLen > 1 && b[intStart] == 0x30)) return null;
    if (this.pos < b.length && b[this.pos] == 0x2e) {
      this.pos++;
      const f = this.pos;
      while (this.pos < b.length && isDigit(b[this.pos])) this.pos++;
      if (this.pos == f) return null;
    }
    if (this.pos < b.length && (b[this.pos] == 0x65 || b[this.pos] == 0x45)) {
      this.pos++;
      if (this.pos < b.length && (b[this.pos] == 0x2b || b[this.pos] == 0x2d)) this.pos++;
      const e = this.pos;
      while (this.pos < b.length && isDigit(b[this.pos])) this.pos++;
      if (this.pos == e) return null;
    }
    return JsonValue.numberText(String.UTF8.decodeUnsafe(b.dataStart + <usize>start, <usize>(this.pos - start)));
  }

  /**
   * The unescaped UTF-8 bytes of the string literal at `pos`, or null when it is malformed: a view
   * into `bytes` when the literal has no escapes or the parse is in place, else a copy of its size.
   */
  stringBytes(): Uint8Array | null {
    const b = this.bytes;
    const start = ++this.pos; // after the opening quote
    // Large bodies make this scan hot, hence scanPlain's raw loads.
    const plainEnd = scanPlain(b, start);
    this.pos = plainEnd;
    if (plainEnd < b.length && unchecked(b[plainEnd]) == 0x22) {
      this.pos++;
      return b.subarray(start, plainEnd);
    }
    if (this.inPlace) {
      const end = this.unescape(b, plainEnd);
      return end < 0 ? null : b.subarray(start, end);
    }
    // Measured first, so the copy has its exact size: doubling a buffer would leave every smaller
    // one behind until the call's garbage is collected.
    const size = this.unescape(null, plainEnd - start);
    if (size < 0) return null;
    const out = new Uint8Array(size);
    memory.copy(out.dataStart, b.dataStart + <usize>start, <usize>(plainEnd - start));
    this.pos = plainEnd;
    this.unescape(out, plainEnd - start);
    return out;
  }

  /**
   * Decodes the rest of a string literal, from `pos` to its closing quote, into `out` from `at` (only
   * counts with null); returns the end in `out`, or -1 when the literal is malformed. In place (`out`
   * is `bytes`), writing never overtakes reading: no escape decodes to more bytes than it takes.
   */
  private unescape(out: Uint8Array | null, at: i32): i32 {
    const b = this.bytes;
    while (this.pos < b.length) {
      const c = unchecked(b[this.pos]);
      if (c == 0x22) {
        this.pos++;
        return at;
      }
      if (c < 0x20) return -1;
      if (c != 0x5c) {
        // The run up to the next quote, backslash or control byte, in one go.
        const run = this.pos;
        this.pos = scanPlain(b, run);
        const n = this.pos - run;
        if (out !== null) memory.copy(out.dataStart + <usize>at, b.dataStart + <usize>run, <usize>n);
        at += n;
        continue;
      }
      this.pos++;
      if (this.pos >= b.length) return -1;
      const e = unchecked(b[this.pos++]);
      let cp: i32;
      if (e == 0x22 || e == 0x5c || e == 0x2f) cp = e;
      else if (e == 0x62) cp = 0x08;
      else if (e == 0x66) cp = 0x0c;
      else if (e == 0x6e) cp = 0x0a;
      else if (e == 0x72) cp = 0x0d;
      else if (e == 0x74) cp = 0x09;
      else if (e == 0x75) {
        cp = this.hex4();
        if (cp < 0) return -1;
        if (cp >= 0xd800 && cp < 0xdc00 && this.pos + 6 <= b.length && b[this.pos] == 0x5c && b[this.pos + 1] == 0x75) {
          const save = this.pos;
          this.pos += 2;
          const low = this.hex4();
          if (low >= 0xdc00 && low < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          else this.pos = save;
        }
      } else return -1;
      at = putCodePoint(out, at, cp);
    }
    return -1;
  }

  hex4(): i32 {
    if (this.pos + 4 > this.bytes.length) return -1;
    let v = 0;
    for (let i = 0; i < 4; i++) {
      const c = <i32>this.bytes[this.pos++];
      let d: i32;
      if (c >= 0x30 && c <= 0x39) d = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) d = c - 0x57;
      else if (c >= 0x41 && c <= 0x46) d = c - 0x37;
      else return -1;
      v = (v << 4) | d;
    }
    return v;
  }

  array(depth: i32): JsonValue | null {
    this.pos++;
    const arr = JsonValue.array();
    this.skipSpace();
    if (this.pos < this.bytes.length && this.bytes[this.pos] == 0x5d) { this.pos++; return arr; }
    while (true) {
      const item = this.value(depth + 1);
      if (item === null) return null;
      arr.push(item);
      this.skipSpace();
      if (this.pos >= this.bytes.length) return null;
      const c = this.bytes[this.pos++];
      if (c == 0x5d) return arr;
      if (c != 0x2c) return null;
    }
  }

  object(depth: i32): JsonValue | null {
    this.pos++;
    const obj = JsonValue.object();
    this.skipSpace();
    if (this.pos < this.bytes.length && this.bytes[this.pos] == 0x7d) { this.pos++; return obj; }
    while (true) {
      this.skipSpace();
      if (this.pos >= this.bytes.length || this.bytes[this.pos] != 0x22) return null;
      const keyBytes = this.stringBytes();
      if (keyBytes === null) return null;
      const key = this.name(keyBytes);
      this.skipSpace();
      if (this.pos >= this.bytes.length || this.bytes[this.pos] != 0x3a) return null;
      this.pos++;
      const item = this.value(depth + 1);
      if (item === null) return null;
      obj.set(key, item);
      this.skipSpace();
      if (this.pos >= this.bytes.length) return null;
      const c = this.bytes[this.pos++];
      if (c == 0x7d) return obj;
      if (c != 0x2c) return null;
    }
  }
}

function isDigit(c: u8): bool { return c >= 0x30 && c <= 0x39; }

/** Whether `s` is the ASCII text of `bytes` (false for any other text, which is then decoded anew). */
function sameAscii(s: string, bytes: Uint8Array): bool {
  const n = bytes.length;
  if (s.length != n) return false;
  const p = bytes.dataStart;
  for (let i = 0; i < n; i++) {
    const c = <i32>load<u8>(p + <usize>i);
    if (c >= 0x80 || c != s.charCodeAt(i)) return false;
  }
  return true;
}

/**
 * The index of the first quote, backslash or control byte at or after `from` (or the length).
 * With `stopAtED` also the first 0xED: the lead byte of a surrogate's (invalid) UTF-8 form, which
 * the writer must escape; parsing passes false.
 */
function scanPlain(b: Uint8Array, from: i32, stopAtED: bool = false): i32 {
  const ptr = b.dataStart;
  const n = b.length;
  // 0x100 matches no byte: without stopAtED the extra test never ends the scan.
  const extra: u32 = stopAtED ? 0xed : 0x100;
  let i = from;
  while (i < n) {
    const c = load<u8>(ptr + <usize>i);
    if (c == 0x22 || c == 0x5c || c < 0x20 || <u32>c == extra) break;
    i++;
  }
  return i;
}

// --- writing --------------------------------------------------------------------------------

/** What a full ByteBuffer does: grow, or hand its bytes on and start over. */
enum Spill { Grow, Count, Extism, Escape }

// The buffer of a ByteBuffer that hands its bytes on: larger runs bypass it.
const SPILL_BUFFER_BYTES = 16 * 1024;

/**
 * A growable byte buffer. Made by `counter()` it only counts the bytes written to it, and made by
 * `extism(offset)` it passes them on into that block of Extism memory: written once to count and
 * once for real, a large output then needs no room of its size in the plugin's memory.
 */
export class ByteBuffer {
  private buf: Uint8Array;
  private used: i32 = 0;
  // Bytes handed on (or only counted) before those in `buf`.
  private passed: i32 = 0;
  private spill: Spill = Spill.Grow;
  private target: u64 = 0;
  private outer: ByteBuffer | null = null;

  constructor(capacity: i32 = 256) { this.buf = new Uint8Array(max(capacity, 16)); }

  /** A buffer that keeps nothing and counts what is written (`length`). */
  static counter(): ByteBuffer {
    const b = new ByteBuffer(SPILL_BUFFER_BYTES);
    b.spill = Spill.Count;
    return b;
  }

  /** A buffer that writes into the Extism memory block at `offset`, which must have room; `flush()` at the end. */
  static extism(offset: u64): ByteBuffer {
    const b = new ByteBuffer(SPILL_BUFFER_BYTES);
    b.spill = Spill.Extism;
    b.target = offset;
    return b;
  }

  /**
   * A buffer that passes what is written to it on into `outer` as the inside of a JSON string literal:
   * a document written this way becomes the text of a string without a copy of it in between. `flush()`
   * at the end. Only quote and backslash are escaped: the JSON writer emits no control bytes.
   */
  static escapingInto(outer: ByteBuffer): ByteBuffer {
    const b = new ByteBuffer(SPILL_BUFFER_BYTES);
    b.spill = Spill.Escape;
    b.outer = outer;
    return b;
  }

  /** Bytes written so far. */
  get length(): i32 { return this.passed + this.used; }

  /** Room for `extra` bytes more; a buffer that hands its bytes on only empties itself, `extra` may still not fit. */
  private reserve(extra: i32): void {
    const need = this.used + extra;
    if (need <= this.buf.length) return;
    if (this.spill != Spill.Grow) {
      this.flush();
      return;
    }
    let cap = this.buf.length * 2;
    while (cap < need) cap *= 2;
    const next = new Uint8Array(cap);
    memory.copy(next.dataStart, this.buf.dataStart, <usize>this.used);
    this.buf = next;
  }

  /** Hands the buffered bytes on (a growable buffer keeps them). */
  flush(): void {
    if (this.spill == Spill.Grow) return;
    this.pass(this.buf.dataStart, this.used);
    this.used = 0;
  }

  private pass(src: usize, n: i32): void {
    if (this.spill == Spill.Extism) copyToExtism(this.target + <u64>this.passed, src, n);
    const outer = this.outer;
    if (outer !== null) outer.writeEscaped(src, n);
    this.passed += n;
  }

  private writeEscaped(src: usize, n: i32): void {
    let run = 0;
    for (let i = 0; i < n; i++) {
      const c = load<u8>(src + <usize>i);
      if (c != 0x22 && c != 0x5c) continue;
      this.writeRaw(src + <usize>run, i - run);
      this.writeByte(0x5c);
      this.writeByte(c);
      run = i + 1;
    }
    this.writeRaw(src + <usize>run, n - run);
  }

  writeByte(c: u8): void {
    this.reserve(1);
    unchecked((this.buf[this.used++] = c));
  }

  writeRange(src: Uint8Array, start: i32, end: i32): void { this.writeRaw(src.dataStart + <usize>start, end - start); }

  private writeRaw(src: usize, n: i32): void {
    this.reserve(n);
    if (this.used + n > this.buf.length) {
      this.pass(src, n);
      return;
    }
    memory.copy(this.buf.dataStart + <usize>this.used, src, <usize>n);
    this.used += n;
  }

  writeBytes(src: Uint8Array): void { this.writeRange(src, 0, src.length); }

  writeAscii(s: string): void {
    for (let i = 0; i < s.length; i++) this.writeByte(<u8>s.charCodeAt(i));
  }

  writeString(s: string): void { this.writeBytes(Uint8Array.wrap(String.UTF8.encode(s))); }

  writeCodePoint(cp: i32): void {
    this.reserve(4);
    this.used = putCodePoint(this.buf, this.used, cp);
  }

  /** What a growable buffer holds: the buffer itself when it is exactly full (no copy), else a copy. */
  toBytes(): Uint8Array { return this.used == this.buf.length ? this.buf : this.buf.slice(0, this.used); }
  toUtf8String(): string { return String.UTF8.decodeUnsafe(this.buf.dataStart, <usize>this.used); }
}

/**
 * Writes `cp` as UTF-8 into `out` at `at` (lone surrogates too, as three bytes) and returns the
 * index after it; with null only counts.
 */
function putCodePoint(out: Uint8Array | null, at: i32, cp: i32): i32 {
  const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  if (out === null) return at + n;
  if (n == 1) {
    out[at] = <u8>cp;
  } else {
    // The lead byte's marker bits for 2, 3 and 4 bytes, then six bits per continuation byte.
    const lead: i32 = n == 2 ? 0xc0 : n == 3 ? 0xe0 : 0xf0;
    out[at] = <u8>(lead | (cp >> (6 * (n - 1))));
    for (let i = 1; i < n; i++) out[at + i] = <u8>(0x80 | ((cp >> (6 * (n - 1 - i))) & 0x3f));
  }
  return at + n;
}

const HEX = "0123456789abcdef";

/** Writes JSON as UTF-8 straight into a byte buffer (no intermediate strings per value). */
export class JsonWriter {
  constructor(public out: ByteBuffer = new ByteBuffer(1024)) {}

  value(v: JsonValue): void {
    switch (v.kind) {
      case JsonKind.Null: this.out.writeAscii("null"); break;
      case JsonKind.Bool: this.out.writeAscii(v.asBool() ? "true" : "false"); break;
      case JsonKind.Number: this.out.writeAscii(v.asString()); break;
      case JsonKind.String: this.stringBytes(v.asUtf8()); break;
      case JsonKind.Array: {
        const items = v.values;
        this.out.writeByte(0x5b);
        for (let i = 0; i < items.length; i++) {
          if (i > 0) this.out.writeByte(0x2c);
          this.value(items[i]);
        }
        this.out.writeByte(0x5d);
        break;
      }
      default: {
        const keys = v.keys;
        const items = v.values;
        this.out.writeByte(0x7b);
        for (let i = 0; i < keys.length; i++) {
          if (i > 0) this.out.writeByte(0x2c);
          this.string(keys[i]);
          this.out.writeByte(0x3a);
          this.value(items[i]);
        }
        this.out.writeByte(0x7d);
      }
    }
  }

  /** A JSON string literal from text. */
  string(s: string): void {
    // Member names are mostly plain ASCII: written from the string itself, as encoding each one to
    // UTF-8 first would leave a copy behind per member, twice per document (counted, then written).
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80 || c < 0x20 || c == 0x22 || c == 0x5c) {
        this.stringBytes(Uint8Array.wrap(String.UTF8.encode(s)));
        return;
      }
    }
    this.out.writeByte(0x22);
    this.out.writeAscii(s);
    this.out.writeByte(0x22);
  }

  /**
   * A JSON string literal from UTF-8 bytes: escapes quote, backslash, control bytes, and lone
   * surrogates (from a `\ud800` escape or a UTF-16 string), which UTF-8 cannot carry.
   */
  stringBytes(b: Uint8Array): void {
    const out = this.out;
    out.writeByte(0x22);
    let run = 0;
    const n = b.length;
    for (let i = scanPlain(b, 0, true); i < n; i = scanPlain(b, i + 1, true)) {
      const c = unchecked(b[i]);
      if (c == 0xed) {
        // ED A0..BF xx is U+D800..U+DFFF in the generalized UTF-8 that parsing and
        // String.UTF8.encode produce for lone surrogates; other ED sequences are ordinary text.
        if (i + 2 >= n || unchecked(b[i + 1]) < 0xa0 || unchecked(b[i + 1]) > 0xbf) continue;
        out.writeRange(b, run, i);
        this.escape(0xd000 | ((<i32>unchecked(b[i + 1]) & 0x3f) << 6) | (<i32>unchecked(b[i + 2]) & 0x3f));
        i += 2;
        run = i + 1;
        continue;
      }
      out.writeRange(b, run, i);
      run = i + 1;
      if (c == 0x22) out.writeAscii("\\\"");
      else if (c == 0x5c) out.writeAscii("\\\\");
      else if (c == 0x0a) out.writeAscii("\\n");
      else if (c == 0x0d) out.writeAscii("\\r");
      else if (c == 0x09) out.writeAscii("\\t");
      else this.escape(c);
    }
    out.writeRange(b, run, b.length);
    out.writeByte(0x22);
  }

  /** `\u` and the four hex digits of the UTF-16 code unit `unit`. */
  private escape(unit: i32): void {
    const out = this.out;
    out.writeAscii("\\u");
    for (let shift = 12; shift >= 0; shift -= 4) out.writeByte(<u8>HEX.charCodeAt((unit >> shift) & 15));
  }

  raw(s: string): void { this.out.writeAscii(s); }
  toBytes(): Uint8Array { return this.out.toBytes(); }
  toString(): string { return this.out.toUtf8String(); }
}

/** `s` as a JSON string literal. */
export function quote(s: string): string {
  const w = new JsonWriter();
  w.string(s);
  return w.toString();
}
