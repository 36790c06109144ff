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

/** `data` with every token that begins with one of `prefixes` replaced by `replacement`. */
function redact(data: Uint8Array, prefixes: Array<Uint8Array>, replacement: Uint8Array): Uint8Array {
  const out = new Array<u8>();
  let i = 0;
  while (i < data.length) {
    let end = -1;
    // A token begins where the previous byte is not part of one.
    if (i == 0 || !isTokenByte(data[i - 1])) {
      for (let p = 0; p < prefixes.length && end < 0; p++) {
        if (!startsWith(data, i, prefixes[p])) continue;
        let j = i + prefixes[p].length;
        while (j < data.length && isTokenByte(data[j])) j++;
        if (j > i + prefixes[p].length) end = j;
      }
    }
    if (end < 0) {
      out.push(data[i++]);
      continue;
    }
    for (let r = 0; r < replacement.length; r++) out.push(replacement[r]);
    i = end;
  }
  const bytes = new Uint8Array(out.length);
  for (let k = 0; k < out.length; k++) bytes[k] = out[k];
  return bytes;
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
