// Moving bytes between the plugin's memory and Extism's (input, output, host-function arguments).
import {
  alloc, error_set, input_length, input_load_u64, input_load_u8, length, load_u64, load_u8,
  output_set, store_u64, store_u8,
} from "./env";

/** The whole call input, copied in 8-byte words. */
export function readInputBytes(): Uint8Array {
  const n = <i32>input_length();
  const bytes = new Uint8Array(n);
  const p = bytes.dataStart;
  let i = 0;
  for (; i + 8 <= n; i += 8) store<u64>(p + i, input_load_u64(<u64>i));
  for (; i < n; i++) store<u8>(p + i, input_load_u8(<u64>i));
  return bytes;
}

/** Copies `bytes` into a new block of Extism memory and returns its offset. */
export function toExtism(bytes: Uint8Array): u64 {
  const offset = alloc(<u64>bytes.length);
  copyToExtism(offset, bytes.dataStart, bytes.length);
  return offset;
}

/** Copies `n` bytes at `src` in the plugin's memory to Extism memory at `offset`, in 8-byte words. */
export function copyToExtism(offset: u64, src: usize, n: i32): void {
  let i = 0;
  for (; i + 8 <= n; i += 8) store_u64(offset + <u64>i, load<u64>(src + i));
  for (; i < n; i++) store_u8(offset + <u64>i, load<u8>(src + i));
}

export function stringToExtism(s: string): u64 {
  return toExtism(Uint8Array.wrap(String.UTF8.encode(s)));
}

/** The bytes of the Extism memory block at `offset` (empty for offset 0). */
export function fromExtism(offset: u64): Uint8Array {
  if (offset == 0) return new Uint8Array(0);
  const n = <i32>length(offset);
  const bytes = new Uint8Array(n);
  const p = bytes.dataStart;
  let i = 0;
  for (; i + 8 <= n; i += 8) store<u64>(p + i, load_u64(offset + <u64>i));
  for (; i < n; i++) store<u8>(p + i, load_u8(offset + <u64>i));
  return bytes;
}

export function writeOutputBytes(bytes: Uint8Array): void {
  output_set(toExtism(bytes), <u64>bytes.length);
}

/** Writes `s` as UTF-8 (as-pdk 1.0.0's Host.outputString cuts non-ASCII text short). */
export function writeOutputString(s: string): void {
  writeOutputBytes(Uint8Array.wrap(String.UTF8.encode(s)));
}

/** Makes the current call fail with `message`; the export should then return 1. */
export function setError(message: string): void {
  error_set(stringToExtism(message));
}
