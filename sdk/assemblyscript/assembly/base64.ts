// Standard base64 (RFC 4648 with padding), as proto3 JSON uses for `bytes` fields.
import { ByteBuffer } from "./json";

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

export function base64Encode(b: Uint8Array): string {
  const out = new ByteBuffer(((b.length + 2) / 3) * 4);
  base64Write(out, b);
  return out.toUtf8String();
}

/** Writes the base64 of `b` into `out`: a large body needs no base64 string of its own on the way out. */
export function base64Write(out: ByteBuffer, b: Uint8Array): void {
  let i = 0;
  for (; i + 3 <= b.length; i += 3) {
    const n = (<u32>b[i] << 16) | (<u32>b[i + 1] << 8) | <u32>b[i + 2];
    out.writeByte(<u8>ALPHABET.charCodeAt(n >> 18));
    out.writeByte(<u8>ALPHABET.charCodeAt((n >> 12) & 63));
    out.writeByte(<u8>ALPHABET.charCodeAt((n >> 6) & 63));
    out.writeByte(<u8>ALPHABET.charCodeAt(n & 63));
  }
  const rest = b.length - i;
  if (rest > 0) {
    const n = (<u32>b[i] << 16) | (rest == 2 ? <u32>b[i + 1] << 8 : 0);
    out.writeByte(<u8>ALPHABET.charCodeAt(n >> 18));
    out.writeByte(<u8>ALPHABET.charCodeAt((n >> 12) & 63));
    out.writeByte(rest == 2 ? <u8>ALPHABET.charCodeAt((n >> 6) & 63) : 0x3d);
    out.writeByte(0x3d);
  }
}

function sextet(c: i32): i32 {
  if (c >= 0x41 && c <= 0x5a) return c - 0x41;
  if (c >= 0x61 && c <= 0x7a) return c - 0x61 + 26;
  if (c >= 0x30 && c <= 0x39) return c - 0x30 + 52;
  if (c == 0x2b) return 62;
  if (c == 0x2f) return 63;
  return -1;
}

/** Decodes base64; null when `s` is not valid base64. */
export function base64Decode(s: string): Uint8Array | null {
  return base64DecodeBytes(Uint8Array.wrap(String.UTF8.encode(s)));
}

/** Decodes base64 given as its (ASCII) bytes, e.g. a JSON string value's: no UTF-16 string on the way. */
export function base64DecodeBytes(s: Uint8Array): Uint8Array | null {
  const n = s.length;
  if (n % 4 != 0) return null;
  let pad = 0;
  if (n > 0 && s[n - 1] == 0x3d) pad++;
  if (n > 1 && s[n - 2] == 0x3d) pad++;
  const out = new Uint8Array((n / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < n; i += 4) {
    let acc: u32 = 0;
    for (let j = 0; j < 4; j++) {
      const c = <i32>s[i + j];
      const v = c == 0x3d && i + j >= n - pad ? 0 : sextet(c);
      if (v < 0) return null;
      acc = (acc << 6) | <u32>v;
    }
    if (o < out.length) out[o++] = <u8>(acc >> 16);
    if (o < out.length) out[o++] = <u8>(acc >> 8);
    if (o < out.length) out[o++] = <u8>acc;
  }
  return out;
}
