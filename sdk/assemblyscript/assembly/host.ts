// The extproc host functions: a key-value store shared by every instance of the plugin (and kept
// in the server, so it survives instance pooling), the server's clock and its log.
import {
  extproc_kv_cas, extproc_kv_delete, extproc_kv_get, extproc_kv_incr, extproc_kv_set, extproc_log,
  extproc_now_ms, free,
} from "./env";
import { fromExtism, stringToExtism, toExtism } from "./io";

/** What `extproc_kv_incr` returns when the stored value is not an integer. */
export const INCR_ERROR: i64 = i64.MIN_VALUE;

export class KV {
  /** The value under `key` as text, or null when absent or expired. */
  static get(key: string): string | null {
    const bytes = KV.getBytes(key);
    return bytes === null ? null : String.UTF8.decode(bytes.buffer);
  }

  static getBytes(key: string): Uint8Array | null {
    const k = stringToExtism(key);
    const offset = extproc_kv_get(k);
    free(k);
    if (offset == 0) return null;
    const bytes = fromExtism(offset);
    free(offset);
    return bytes;
  }

  /** Stores `value`; `ttlMs` 0 keeps it until deleted. False when the server refused it (see its log). */
  static set(key: string, value: string, ttlMs: i64 = 0): bool {
    return KV.setBytes(key, Uint8Array.wrap(String.UTF8.encode(value)), ttlMs);
  }

  static setBytes(key: string, value: Uint8Array, ttlMs: i64 = 0): bool {
    const k = stringToExtism(key);
    const v = toExtism(value);
    const ok = extproc_kv_set(k, v, ttlMs);
    free(k);
    free(v);
    return ok != 0;
  }

  /** Deletes `key`; true when a live value was there. */
  static delete(key: string): bool {
    const k = stringToExtism(key);
    const ok = extproc_kv_delete(k);
    free(k);
    return ok != 0;
  }

  /**
   * Atomically adds `delta` to the integer under `key` (absent counts as 0) and returns the result.
   * `ttlMs` applies only when this call creates the key: a counter that expires a fixed time after
   * its first increment. Returns INCR_ERROR when the stored value is not an integer.
   */
  static incr(key: string, delta: i64 = 1, ttlMs: i64 = 0): i64 {
    const k = stringToExtism(key);
    const n = extproc_kv_incr(k, delta, ttlMs);
    free(k);
    return n;
  }

  /**
   * Atomically stores `value` only if the current value is `expected` (null: only if absent).
   * The building block for read-modify-write state such as token buckets.
   */
  static compareAndSet(key: string, expected: string | null, value: string, ttlMs: i64 = 0): bool {
    const k = stringToExtism(key);
    const e = expected === null ? <u64>0 : stringToExtism(expected);
    const v = stringToExtism(value);
    const ok = extproc_kv_cas(k, e, v, ttlMs);
    free(k);
    if (e != 0) free(e);
    free(v);
    return ok != 0;
  }
}

/** The server's wall clock, Unix milliseconds (a plugin without WASI has no clock). */
export function nowMs(): i64 {
  return extproc_now_ms();
}

/** Lines in the server's log, tagged with the plugin's configured name. */
export class Log {
  static debug(message: string): void { Log.write(0, message); }
  static info(message: string): void { Log.write(1, message); }
  static warn(message: string): void { Log.write(2, message); }
  static error(message: string): void { Log.write(3, message); }

  private static write(level: i32, message: string): void {
    const m = stringToExtism(message);
    extproc_log(level, m);
    free(m);
  }
}
