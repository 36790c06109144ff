// generate_response: answers 200 (or config `status`) with content-type
// application/json and, as the body text, the exact input JSON it received.
import { Config, Host } from "@extism/as-pdk";
import { JSON } from "json-as";

@json
class EchoConfig {
  @optional status: i32 = 0;
}

const HEX = "0123456789abcdef";

// Length of `b` once escaped as the inside of a JSON string. Works on the raw
// bytes, so UTF-8 sequences pass through untouched.
function escapedLength(b: Uint8Array): i32 {
  let n = 0;
  for (let i = 0; i < b.length; i++) {
    const c = b[i];
    if (c == 0x22 || c == 0x5c || c == 0x08 || c == 0x0c || c == 0x0a || c == 0x0d || c == 0x09) n += 2;
    else if (c < 0x20) n += 6;
    else n += 1;
  }
  return n;
}

function writeEscaped(b: Uint8Array, out: Uint8Array, at: i32): i32 {
  let j = at;
  for (let i = 0; i < b.length; i++) {
    const c = b[i];
    let short: i32 = 0;
    if (c == 0x22) short = 0x22;
    else if (c == 0x5c) short = 0x5c;
    else if (c == 0x08) short = 0x62; // b
    else if (c == 0x0c) short = 0x66; // f
    else if (c == 0x0a) short = 0x6e; // n
    else if (c == 0x0d) short = 0x72; // r
    else if (c == 0x09) short = 0x74; // t
    if (short != 0) {
      out[j++] = 0x5c;
      out[j++] = <u8>short;
    } else if (c < 0x20) {
      out[j++] = 0x5c;
      out[j++] = 0x75; // u
      out[j++] = 0x30;
      out[j++] = 0x30;
      out[j++] = <u8>HEX.charCodeAt(c >> 4);
      out[j++] = <u8>HEX.charCodeAt(c & 15);
    } else {
      out[j++] = c;
    }
  }
  return j;
}

function writeAscii(s: string, out: Uint8Array, at: i32): i32 {
  for (let i = 0; i < s.length; i++) out[at + i] = <u8>s.charCodeAt(i);
  return at + s.length;
}

function parseStatus(s: string): i32 {
  if (s.length == 0 || s.length > 9) throw new Error("echo: config status must be an integer, got '" + s + "'");
  let v = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) throw new Error("echo: config status must be an integer, got '" + s + "'");
    v = v * 10 + (c - 0x30);
  }
  return v;
}

function status(): i32 {
  // A string-valued `status` arrives as its own config key; a numeric one
  // only inside the whole-config JSON under `config`.
  const s = Config.get("status");
  if (s !== null) return parseStatus(s);
  const whole = Config.get("config");
  if (whole !== null) {
    const cfg = JSON.parse<EchoConfig>(whole);
    if (cfg.status != 0) return cfg.status;
  }
  return 200;
}

export function generate_response(): i32 {
  const input = Host.input();
  const head =
    '{"immediate_response":{"status":' +
    status().toString() +
    ',"headers":[{"name":"content-type","value":"application/json"}],"body":{"text":"';
  const tail = '"}}}';
  const out = new Uint8Array(head.length + escapedLength(input) + tail.length);
  let j = writeAscii(head, out, 0);
  j = writeEscaped(input, out, j);
  writeAscii(tail, out, j);
  Host.output(out);
  return 0;
}
