// Small helpers plugins keep needing: path globs, HTTP dates, a stable content hash.

/** Glob match where `*` stands for any run of characters (including "/"): "/static/*", "*.css". */
export function globMatch(pattern: string, text: string): bool {
  let p = 0;
  let t = 0;
  let star = -1;
  let mark = 0;
  while (t < text.length) {
    if (p < pattern.length && pattern.charCodeAt(p) == 0x2a) {
      star = p++;
      mark = t;
    } else if (p < pattern.length && pattern.charCodeAt(p) == text.charCodeAt(t)) {
      p++;
      t++;
    } else if (star >= 0) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern.charCodeAt(p) == 0x2a) p++;
  return p == pattern.length;
}

const MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec";

function digits(s: string, at: i32, n: i32): i32 {
  let v = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(at + i) - 0x30;
    if (c < 0 || c > 9) return -1;
    v = v * 10 + c;
  }
  return v;
}

function daysFromCivil(y: i64, m: i64, d: i64): i64 {
  // Howard Hinnant's days_from_civil.
  const yy = m <= 2 ? y - 1 : y;
  const era = (yy >= 0 ? yy : yy - 399) / 400;
  const yoe = yy - era * 400;
  const mp = (m + 9) % 12;
  const doy = (153 * mp + 2) / 5 + d - 1;
  const doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/** Seconds since the Unix epoch of an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), or -1. */
export function parseHttpDate(s: string): i64 {
  if (s.length != 29 || !s.endsWith(" GMT")) return -1;
  const day = digits(s, 5, 2);
  const month = MONTHS.indexOf(s.substr(8, 3));
  const year = digits(s, 12, 4);
  const h = digits(s, 17, 2);
  const min = digits(s, 20, 2);
  const sec = digits(s, 23, 2);
  if (day < 1 || month < 0 || month % 3 != 0 || year < 0 || h < 0 || min < 0 || sec < 0) return -1;
  return daysFromCivil(year, month / 3 + 1, day) * 86400 + <i64>(h * 3600 + min * 60 + sec);
}

const HEX = "0123456789abcdef";

/** FNV-1a 64-bit hash of `bytes` as 16 hex digits: a cheap, stable ETag. */
export function fnv1a64Hex(bytes: Uint8Array): string {
  let h: u64 = 0xcbf29ce484222325;
  for (let i = 0; i < bytes.length; i++) {
    h ^= <u64>unchecked(bytes[i]);
    h *= 0x100000001b3;
  }
  let out = "";
  for (let shift = 60; shift >= 0; shift -= 4) out += HEX.charAt(<i32>((h >> <u64>shift) & 15));
  return out;
}

/** The host part of "host:port" or "[v6]:port". */
export function stripPort(address: string): string {
  if (address.startsWith("[")) {
    const end = address.indexOf("]");
    return end < 0 ? address : address.substring(0, end + 1);
  }
  const colon = address.lastIndexOf(":");
  return colon < 0 || address.indexOf(":") != colon ? address : address.substring(0, colon);
}

/** The index of the first `needle` in `haystack` at or after `from`, or -1 (an empty needle is at `from`). */
export function indexOfBytes(haystack: Uint8Array, needle: Uint8Array, from: i32 = 0): i32 {
  const n = needle.length;
  const start = max(from, 0);
  if (n == 0) return start <= haystack.length ? start : -1;
  const first = unchecked(needle[0]);
  const hay = haystack.dataStart;
  for (let i = start, last = haystack.length - n; i <= last; i++) {
    if (load<u8>(hay + <usize>i) == first && memory.compare(hay + <usize>i, needle.dataStart, <usize>n) == 0) return i;
  }
  return -1;
}

/**
 * `haystack` with every `needle` replaced by `replacement`, left to right, in a new array of the exact
 * size; `haystack` itself when there is nothing to replace (also for an empty needle). UTF-8 finds the
 * same matches in bytes as in text, so text needs no decoding (a string takes two bytes per character).
 */
export function replaceAllBytes(haystack: Uint8Array, needle: Uint8Array, replacement: Uint8Array): Uint8Array {
  const n = needle.length;
  if (n == 0) return haystack;
  let count = 0;
  for (let i = indexOfBytes(haystack, needle); i >= 0; i = indexOfBytes(haystack, needle, i + n)) count++;
  if (count == 0) return haystack;
  const out = new Uint8Array(haystack.length + count * (replacement.length - n));
  let from = 0;
  let at = 0;
  for (let i = indexOfBytes(haystack, needle); i >= 0; i = indexOfBytes(haystack, needle, i + n)) {
    memory.copy(out.dataStart + <usize>at, haystack.dataStart + <usize>from, <usize>(i - from));
    at += i - from;
    memory.copy(out.dataStart + <usize>at, replacement.dataStart, <usize>replacement.length);
    at += replacement.length;
    from = i + n;
  }
  memory.copy(out.dataStart + <usize>at, haystack.dataStart + <usize>from, <usize>(haystack.length - from));
  return out;
}

/** Whether `b` is well-formed UTF-8 (so it can travel as `text`). */
export function isUtf8(b: Uint8Array): bool {
  let i = 0;
  const n = b.length;
  const p = b.dataStart;
  while (i < n) {
    // Eight ASCII bytes at a time: bodies are mostly ASCII, and this runs on every output body.
    if (i + 8 <= n && (load<u64>(p + <usize>i) & 0x8080808080808080) == 0) { i += 8; continue; }
    const c = unchecked(b[i]);
    if (c < 0x80) { i++; continue; }
    let extra = 0;
    let min: u32 = 0;
    let cp: u32 = 0;
    if (c >= 0xc2 && c <= 0xdf) { extra = 1; min = 0x80; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { extra = 2; min = 0x800; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { extra = 3; min = 0x10000; cp = c & 0x07; }
    else return false;
    if (i + extra >= n) return false;
    for (let j = 1; j <= extra; j++) {
      const d = unchecked(b[i + j]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}
