//! Calling a plugin's exports from `cargo test` on the build machine (not in the Wasm build).
//!
//! The host functions run against an in-process host per thread: the call's input and output,
//! the plugin's config, a key-value map (without expiry), the log, and a clock. HTTP calls fail
//! with `host_refused`. `extproc plugin test` runs the real server; this is for quick unit tests.
//!
//! ```ignore
//! extproc_sdk::testing::set_config(r#"{"greeting":"hi"}"#);
//! let out = extproc_sdk::testing::call(process_request_headers, r#"{"phase":"REQUEST_HEADERS"}"#).unwrap();
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Default)]
struct Host {
    input: Vec<u8>,
    output: Vec<u8>,
    error: Option<String>,
    config: HashMap<String, Vec<u8>>,
    kv: HashMap<Vec<u8>, Vec<u8>>,
    logs: Vec<(i32, String)>,
    now_ms: i64,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

fn with<T>(f: impl FnOnce(&mut Host) -> T) -> T {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// Sets the plugin's config as the server passes it: the whole mapping under `config`, and each
/// top-level string value under its own key.
pub fn set_config(json: &str) {
    let doc = crate::Json::parse_str(json).expect("set_config: not JSON");
    with(|h| {
        h.config.clear();
        h.config.insert("config".to_string(), json.as_bytes().to_vec());
        for (key, value) in doc.entries() {
            if let Some(text) = value.as_str() {
                h.config.insert(key.into_owned(), text.as_bytes().to_vec());
            }
        }
    });
    crate::contract::forget_config();
}

/// Calls `export` (a function `export!` declared) with `input`; its output, or the error it set.
pub fn call(export: extern "C" fn() -> i32, input: &str) -> Result<Vec<u8>, String> {
    with(|h| {
        h.input = input.as_bytes().to_vec();
        h.output.clear();
        h.error = None;
    });
    let code = export();
    with(|h| match h.error.take() {
        Some(error) => Err(error),
        None if code != 0 => Err(format!("exit code {} without an error", code)),
        None => Ok(std::mem::take(&mut h.output)),
    })
}

/// The lines logged so far, as (level, message); level 0 debug to 3 error.
pub fn logs() -> Vec<(i32, String)> {
    with(|h| h.logs.clone())
}

/// What `now_ms()` returns from now on.
pub fn set_now_ms(ms: i64) {
    with(|h| h.now_ms = ms)
}

pub(crate) mod host {
    use super::with;
    use crate::json::Sink;

    pub fn input() -> Vec<u8> {
        with(|h| h.input.clone())
    }

    /// As on Extism: once taken, the input is gone.
    pub fn take_input() -> Vec<u8> {
        with(|h| std::mem::take(&mut h.input))
    }

    pub struct OutputWriter(Vec<u8>);

    impl OutputWriter {
        pub fn new(len: usize) -> OutputWriter {
            OutputWriter(Vec::with_capacity(len))
        }

        pub fn finish(self) {
            with(|h| h.output = self.0)
        }
    }

    impl Sink for OutputWriter {
        fn put(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    pub fn output(bytes: &[u8]) {
        with(|h| h.output = bytes.to_vec())
    }

    pub fn set_error(message: &str) {
        with(|h| h.error = Some(message.to_string()))
    }

    pub fn config(key: &str) -> Option<Vec<u8>> {
        with(|h| h.config.get(key).cloned())
    }

    pub fn kv_get(key: &[u8]) -> Option<Vec<u8>> {
        with(|h| h.kv.get(key).cloned())
    }

    pub fn kv_set(key: &[u8], value: &[u8], _ttl_ms: i64) -> bool {
        with(|h| h.kv.insert(key.to_vec(), value.to_vec()));
        true
    }

    pub fn kv_delete(key: &[u8]) -> bool {
        with(|h| h.kv.remove(key).is_some())
    }

    pub fn kv_incr(key: &[u8], delta: i64, _ttl_ms: i64) -> i64 {
        with(|h| {
            let current = match h.kv.get(key) {
                Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                    Some(n) => n,
                    None => return crate::kv::INCR_ERROR,
                },
                None => 0,
            };
            let sum = current.wrapping_add(delta);
            h.kv.insert(key.to_vec(), sum.to_string().into_bytes());
            sum
        })
    }

    pub fn kv_cas(key: &[u8], expected: Option<&[u8]>, value: &[u8], _ttl_ms: i64) -> bool {
        with(|h| {
            if h.kv.get(key).map(Vec::as_slice) != expected {
                return false;
            }
            h.kv.insert(key.to_vec(), value.to_vec());
            true
        })
    }

    pub fn now_ms() -> i64 {
        with(|h| h.now_ms)
    }

    pub fn log(level: i32, message: &str) {
        with(|h| h.logs.push((level, message.to_string())))
    }

    pub fn http_request(_request: &[u8]) -> Option<Vec<u8>> {
        Some(br#"{"error":{"kind":"host_refused","message":"no network in extproc_sdk::testing"}}"#.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, http, kv, log, Input, Output};

    fn greet(input: &Input, out: &mut Output) -> crate::Result {
        if input.request.headers.has("X-Block") {
            out.respond(403).details("blocked").text("no\n");
            return Ok(());
        }
        if input.request.headers.has("x-fail") {
            return Err("asked to fail".into());
        }
        let n = kv::incr("calls", 1, 0);
        log::info(&format!("call {}", n));
        out.set_header("X-Greeting", config().get_str("greeting", "hello"));
        out.append_header_bytes("x-raw", input.request.headers.get_bytes("x-raw").unwrap_or(b"none"));
        out.metadata("calls", n).metadata("refused", http::get("http://example.com/").error.is_some());
        Ok(())
    }

    crate::export!(process_request_headers => greet);

    const REQUEST: &str = r#"{"phase":"REQUEST_HEADERS","request":{"path":"/a?b","headers":[
        {"name":"x-raw","value":"caf\ufffd","raw_value":"Y2Fm6Q=="}]}}"#;

    #[test]
    fn a_handler_runs_against_the_in_process_host() {
        set_config(r#"{"greeting":"hi","n":1}"#);
        let first = call(process_request_headers, REQUEST).unwrap();
        assert_eq!(
            String::from_utf8(first).unwrap(),
            r#"{"headers":{"set":[{"name":"x-greeting","value":"hi"}],"append":[{"name":"x-raw","raw_value":"Y2Fm6Q=="}],"remove":[]},"dynamic_metadata":{"calls":1,"refused":true}}"#
        );
        call(process_request_headers, REQUEST).unwrap();
        assert_eq!(logs().last(), Some(&(1, "call 2".to_string())));
        let blocked = call(process_request_headers, r#"{"request":{"headers":[{"name":"x-block","value":""}]}}"#).unwrap();
        assert_eq!(
            String::from_utf8(blocked).unwrap(),
            r#"{"immediate_response":{"status":403,"headers":[{"name":"content-type","value":"text/plain; charset=utf-8"}],"body":{"text":"no\n"},"details":"blocked"}}"#
        );
        assert_eq!(call(process_request_headers, r#"{"request":{"headers":[{"name":"x-fail","value":""}]}}"#), Err("asked to fail".to_string()));
        assert!(call(process_request_headers, "[]").unwrap_err().contains("not a JSON object"));
    }

    // State, route values, chunk index and end of stream, trailers: what a chunk or trailers handler reads.
    fn streaming(input: &Input, out: &mut Output) -> crate::Result {
        let trailers = input.response.as_ref().and_then(|r| r.trailers.as_ref());
        out.set_header("x-grpc-status", trailers.and_then(|t| t.get("grpc-status")).unwrap_or("none"));
        out.set_header("x-tier", input.route.get_str("tier", "none"));
        out.metadata("chunk", i64::from(input.chunk_index)).metadata("last", input.end_of_stream);
        let mut state = input.state.as_ref().map(|s| s.bytes.clone()).unwrap_or_default();
        state.push(0xff);
        out.set_state_bytes(state);
        Ok(())
    }

    crate::export!(process_response_trailers => streaming, declare_phases => declared);

    fn declared() -> Vec<crate::Phase> {
        vec![crate::Phase::ResponseTrailers, crate::Phase::RequestBodyChunk]
    }

    #[test]
    fn streaming_fields_are_read_and_state_written_as_bytes() {
        let input = r#"{"response":{"trailers":[{"name":"grpc-status","value":"0"}]},"state":{"data":"AAE="},
            "route":{"tier":"gold"},"chunk_index":3,"end_of_stream":true}"#;
        assert_eq!(
            String::from_utf8(call(process_response_trailers, input).unwrap()).unwrap(),
            concat!(
                r#"{"headers":{"set":[{"name":"x-grpc-status","value":"0"},{"name":"x-tier","value":"gold"}],"append":[],"remove":[]},"#,
                r#""dynamic_metadata":{"chunk":3,"last":true},"state":{"data":"AAH/"}}"#
            )
        );
        // Absent fields read as their defaults; text state travels as text.
        let parsed = Input::parse(br#"{"state":{"text":"t"}}"#).unwrap();
        assert_eq!((parsed.chunk_index, parsed.end_of_stream, parsed.state_text()), (0, false, "t"));
        assert!(parsed.route.is_object() && parsed.route.is_empty() && parsed.request.trailers.is_none());
        let mut out = Output::new();
        out.set_state("t2");
        assert_eq!(out.to_bytes(), br#"{"state":{"text":"t2"}}"#.to_vec());
        assert_eq!(call(declare_phases, "").unwrap(), br#"{"phases":["response_trailers","request_body_chunk"]}"#.to_vec());
    }
}
