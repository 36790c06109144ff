//! Rust SDK for extism-extproc plugins: typed views over the plugin contract
//! (docs/plugin-abi.md), an output builder, JSON, and the server's host functions.
//!
//! ```ignore
//! use extproc_sdk::{config, Input, Output};
//!
//! fn on_request(input: &Input, out: &mut Output) -> extproc_sdk::Result {
//!     if input.request.headers.has("x-block") {
//!         out.respond(403).details("hello_blocked").text("blocked\n");
//!         return Ok(());
//!     }
//!     out.set_header("x-greeting", config().get_str("greeting", "hello"));
//!     Ok(())
//! }
//!
//! extproc_sdk::export!(process_request_headers => on_request);
//! ```
//!
//! The crate depends on nothing but std and builds with Rust 1.63 and later for
//! `wasm32-unknown-unknown`. Built for the build machine instead, the host functions run against
//! the in-process host of [`testing`], so `cargo test` can call a plugin's exports.

mod base64;
mod contract;
pub mod http;
pub mod json;
pub mod kv;
pub mod log;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use base64::{decode as base64_decode, encode as base64_encode};
pub use contract::{
    config, declare_phases, is_utf8, run, Body, Error, Header, Headers, Immediate, Input, Output, Phase, Request, Response, Result,
};
pub use json::{Json, Kind};

/// The call's input and output as bytes, for a plugin that decodes them itself (one configured
/// with `encoding: protobuf`, say). `set_error` fails the call when the export then returns 1.
pub mod raw {
    pub use crate::sys::{input, output, set_error};
}

/// The server's wall clock in Unix milliseconds (a plugin has no clock of its own).
pub fn now_ms() -> i64 {
    sys::now_ms()
}

/// Declares plugin exports, each running a handler through [`run`]:
///
/// ```ignore
/// extproc_sdk::export!(
///     process_request_headers => on_request,
///     process_response_headers => on_response,
///     declare_phases => phases,
/// );
/// ```
///
/// A handler is `fn(&Input, &mut Output) -> extproc_sdk::Result`. The phase exports are
/// process_request_headers, process_request_body_chunk, process_request_body, generate_response,
/// process_request_trailers, process_response_headers, process_response_body_chunk,
/// process_response_body and process_response_trailers; a misspelt one fails to compile instead of
/// never being called. `declare_phases => f` takes `fn() -> Vec<Phase>`: the phases the plugin's
/// config needs (see [`declare_phases`]).
#[macro_export]
macro_rules! export {
    ($($name:ident => $handler:path),+ $(,)?) => {
        $( $crate::__export_one!($name, $handler); )+
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_one {
    (process_request_headers, $handler:path) => { $crate::__export_fn!(process_request_headers, $handler); };
    (process_request_body_chunk, $handler:path) => { $crate::__export_fn!(process_request_body_chunk, $handler); };
    (process_request_body, $handler:path) => { $crate::__export_fn!(process_request_body, $handler); };
    (generate_response, $handler:path) => { $crate::__export_fn!(generate_response, $handler); };
    (process_request_trailers, $handler:path) => { $crate::__export_fn!(process_request_trailers, $handler); };
    (process_response_headers, $handler:path) => { $crate::__export_fn!(process_response_headers, $handler); };
    (process_response_body_chunk, $handler:path) => { $crate::__export_fn!(process_response_body_chunk, $handler); };
    (process_response_body, $handler:path) => { $crate::__export_fn!(process_response_body, $handler); };
    (process_response_trailers, $handler:path) => { $crate::__export_fn!(process_response_trailers, $handler); };
    (declare_phases, $phases:path) => {
        #[no_mangle]
        pub extern "C" fn declare_phases() -> i32 {
            let phases: ::std::vec::Vec<$crate::Phase> = $phases();
            $crate::declare_phases(&phases)
        }
    };
    ($other:ident, $handler:path) => {
        compile_error!(concat!(
            "`", stringify!($other), "` is not a plugin export: use process_request_headers, process_request_body_chunk, ",
            "process_request_body, generate_response, process_request_trailers, process_response_headers, ",
            "process_response_body_chunk, process_response_body, process_response_trailers or declare_phases"
        ));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_fn {
    ($name:ident, $handler:path) => {
        #[no_mangle]
        pub extern "C" fn $name() -> i32 {
            $crate::run($handler)
        }
    };
}
