// Redacts secrets from a text/event-stream response event by event, as the upstream streams it:
//
//   config:
//     prefixes: [sk-, ghp_]        # a token starting with one of these (then letters, digits, - and _) ...
//     replacement: "[redacted]"    # ... becomes this
//
// Each chunk goes out as soon as its complete events are redacted; the unfinished event at its end (a token
// may be cut in two there) waits in the exchange's state for the next chunk. Other content types pass
// through untouched. An event longer than MAX_PENDING bytes is redacted and sent without waiting for its end.
import { config, Input, Output, run } from "@extproc/sdk";

// Below the server's 16 KiB state limit.
const MAX_PENDING = 8 * 1024;

function isTokenByte(c: u8): bool {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2d || c == 0x5f;
}

function startsWith(data: Uint8Array, at: i32, prefix: Uint8Array): bool {
  if (at + prefix.length > data.length) return false;
  for (let i = 0; i < prefix.length; i++) if (data[at + i] != prefix[i]) return false;
  return true;
}

/** Where the token that begins with one of `prefixes` at `at` ends, or -1 when none begins there. */
function tokenEnd(data: Uint8Array, at: i32, prefixes: Array<Uint8Array>): i32 {
  // A token begins where the previous byte is not part of one.
  if (at > 0 && isTokenByte(data[at - 1])) return -1;
  for (let p = 0; p < prefixes.length; p++) {
    if (!startsWith(data, at, prefixes[p])) continue;
    let end = at + prefixes[p].length;
    while (end < data.length && isTokenByte(data[end])) end++;
    if (end > at + prefixes[p].length) return end;
  }
  return -1;
}

/** `data` with every token that begins with one of `prefixes` replaced by `replacement`. Two passes (size,
 * then copy) so a large chunk costs one output allocation: the plugin's memory limit bounds the chunk size. */
function redact(data: Uint8Array, prefixes: Array<Uint8Array>, replacement: Uint8Array): Uint8Array {
  let size = 0;
  for (let i = 0; i < data.length; ) {
    const end = tokenEnd(data, i, prefixes);
    if (end < 0) {
      size++;
      i++;
    } else {
      size += replacement.length;
      i = end;
    }
  }
  if (size == data.length && prefixes.length == 0) return data;
  const out = new Uint8Array(size);
  let o = 0;
  for (let i = 0; i < data.length; ) {
    const end = tokenEnd(data, i, prefixes);
    if (end < 0) {
      out[o++] = data[i++];
    } else {
      out.set(replacement, o);
      o += replacement.length;
      i = end;
    }
  }
  return out;
}

/** Where the last complete event of `data` ends (after its blank line), or 0. */
function completeEnd(data: Uint8Array): i32 {
  for (let i = data.length - 1; i > 0; i--) {
    // "\n\n" ends an event; "\r\n\r\n" ends in "\n\r\n" and so is found at its final "\n" too.
    if (data[i] == 0x0a && (data[i - 1] == 0x0a || (i >= 2 && data[i - 1] == 0x0d && data[i - 2] == 0x0a))) return i + 1;
  }
  return 0;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

function onChunk(input: Input, out: Output): void {
  const response = input.response;
  if (response === null) return;
  const contentType = response.headers.get("content-type");
  if (contentType === null || !contentType.startsWith("text/event-stream")) return;
  const chunk = response.body;
  const pending = input.state;
  let data = chunk === null ? new Uint8Array(0) : chunk.bytes();
  if (pending !== null) data = concat(pending.bytes(), data);
  let end = input.endOfStream ? data.length : completeEnd(data);
  if (data.length - end > MAX_PENDING) end = data.length;
  const settings = config();
  const prefixes = settings.getStrings("prefixes");
  const encoded = new Array<Uint8Array>();
  for (let i = 0; i < prefixes.length; i++) if (prefixes[i].length > 0) encoded.push(Uint8Array.wrap(String.UTF8.encode(prefixes[i])));
  const replacement = Uint8Array.wrap(String.UTF8.encode(settings.getString("replacement", "[redacted]")));
  out.setBodyBytes(redact(data.subarray(0, end), encoded, replacement));
  out.setStateBytes(data.subarray(end));
}

export function process_response_body_chunk(): i32 {
  return run(onChunk);
}
