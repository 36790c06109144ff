//! The key-value store the server keeps for the plugin: shared by every instance of it (and, with
//! `state: {backend: redis}`, by every worker and replica), so it survives instance pooling.
//! Keys are scoped to the plugin's configured name. See docs/plugin-abi.md#host-functions.

use crate::sys;

/// What `incr` returns when the stored value is not an integer.
pub const INCR_ERROR: i64 = i64::MIN;

/// The value under `key` as text (invalid UTF-8 becomes U+FFFD), or None when absent or expired.
pub fn get(key: &str) -> Option<String> {
    get_bytes(key).map(|b| String::from_utf8_lossy(&b).into_owned())
}

pub fn get_bytes(key: &str) -> Option<Vec<u8>> {
    sys::kv_get(key.as_bytes())
}

/// Stores `value`; `ttl_ms` 0 keeps it until deleted. False when the server refused it (its log
/// says why).
pub fn set(key: &str, value: &str, ttl_ms: i64) -> bool {
    set_bytes(key, value.as_bytes(), ttl_ms)
}

pub fn set_bytes(key: &str, value: &[u8], ttl_ms: i64) -> bool {
    sys::kv_set(key.as_bytes(), value, ttl_ms)
}

/// Deletes `key`; true when a live value was there.
pub fn delete(key: &str) -> bool {
    sys::kv_delete(key.as_bytes())
}

/// Atomically adds `delta` to the integer under `key` (absent counts as 0) and returns the sum.
/// `ttl_ms` applies only when this call creates the key: a counter that expires a fixed time after
/// its first increment. INCR_ERROR when the stored value is not an integer.
pub fn incr(key: &str, delta: i64, ttl_ms: i64) -> i64 {
    sys::kv_incr(key.as_bytes(), delta, ttl_ms)
}

/// Atomically stores `value` only if the current value is `expected` (None: only if absent): the
/// building block for read-modify-write state such as token buckets.
pub fn compare_and_set(key: &str, expected: Option<&str>, value: &str, ttl_ms: i64) -> bool {
    sys::kv_cas(key.as_bytes(), expected.map(str::as_bytes), value.as_bytes(), ttl_ms)
}
