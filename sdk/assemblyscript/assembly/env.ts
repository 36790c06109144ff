// The Extism kernel ("extism:host/env") and the extproc host functions ("extism:host/user").
// Declared here rather than imported from @extism/as-pdk so the SDK has no runtime dependency
// and can move input and output in 8-byte words without per-byte bounds checks.

@external("extism:host/env", "input_length")
export declare function input_length(): u64;
@external("extism:host/env", "input_load_u8")
export declare function input_load_u8(offset: u64): u8;
@external("extism:host/env", "input_load_u64")
export declare function input_load_u64(offset: u64): u64;
@external("extism:host/env", "input_offset")
export declare function input_offset(): u64;
@external("extism:host/env", "length")
export declare function length(offset: u64): u64;
@external("extism:host/env", "alloc")
export declare function alloc(length: u64): u64;
@external("extism:host/env", "free")
export declare function free(offset: u64): void;
@external("extism:host/env", "output_set")
export declare function output_set(offset: u64, length: u64): void;
@external("extism:host/env", "error_set")
export declare function error_set(offset: u64): void;
@external("extism:host/env", "config_get")
export declare function config_get(offset: u64): u64;
@external("extism:host/env", "store_u8")
export declare function store_u8(offset: u64, value: u8): void;
@external("extism:host/env", "load_u8")
export declare function load_u8(offset: u64): u8;
@external("extism:host/env", "store_u64")
export declare function store_u64(offset: u64, value: u64): void;
@external("extism:host/env", "load_u64")
export declare function load_u64(offset: u64): u64;

@external("extism:host/user", "extproc_kv_get")
export declare function extproc_kv_get(key: u64): u64;
@external("extism:host/user", "extproc_kv_set")
export declare function extproc_kv_set(key: u64, value: u64, ttlMs: i64): i32;
@external("extism:host/user", "extproc_kv_delete")
export declare function extproc_kv_delete(key: u64): i32;
@external("extism:host/user", "extproc_kv_incr")
export declare function extproc_kv_incr(key: u64, delta: i64, ttlMs: i64): i64;
@external("extism:host/user", "extproc_kv_cas")
export declare function extproc_kv_cas(key: u64, expected: u64, value: u64, ttlMs: i64): i32;
@external("extism:host/user", "extproc_now_ms")
export declare function extproc_now_ms(): i64;
@external("extism:host/user", "extproc_log")
export declare function extproc_log(level: i32, message: u64): void;
// Not Extism's own http_request, which the server refuses for every host (docs/security.md).
@external("extism:host/user", "extproc_http_request")
export declare function extproc_http_request(request: u64): u64;
