// Typed views over the plugin contract's input, the builder for its output, config, and `run`.

use crate::base64;
use crate::json::{write_string, Counter, Json, Sink};
use crate::sys;
use std::fmt;

// --- input --------------------------------------------------------------------------------------

/// One header line. `value` is text; for a value whose bytes are not UTF-8 it shows each invalid
/// sequence as U+FFFD and `raw` holds the exact bytes (the contract's `raw_value`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
    pub raw: Option<Vec<u8>>,
}

impl Header {
    /// The exact bytes of the value.
    pub fn bytes(&self) -> &[u8] {
        self.raw.as_deref().unwrap_or(self.value.as_bytes())
    }
}

/// Header lines in wire order; a repeated name appears once per value. Names are lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    fn first(&self, name: &str) -> Option<&Header> {
        self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name))
    }

    fn all(&self, name: &str) -> Vec<&Header> {
        self.0.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).collect()
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.first(name).map(|h| h.value.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.all(name).into_iter().map(|h| h.value.as_str()).collect()
    }

    /// The exact bytes of the first value of `name`, also when they are not UTF-8.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.first(name).map(Header::bytes)
    }

    /// The exact bytes of every value of `name`, in order.
    pub fn get_all_bytes(&self, name: &str) -> Vec<&[u8]> {
        self.all(name).into_iter().map(Header::bytes).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.first(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.0.iter()
    }

    pub(crate) fn from_json(list: Option<Json>) -> Headers {
        let mut list = match list {
            Some(list) => list,
            None => return Headers::default(),
        };
        let headers = list
            .values_mut()
            .into_iter()
            .map(|item| Header {
                name: take_string(item, "name"),
                value: take_string(item, "value"),
                raw: item.get("raw_value").and_then(Json::as_bytes).and_then(base64::decode),
            })
            .collect();
        Headers(headers)
    }
}

/// A message body: its bytes, and whether they are UTF-8 text (`text` in the contract) or not
/// (`data`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub is_text: bool,
}

impl Body {
    /// The body as text; None when it is not UTF-8.
    pub fn text(&self) -> Option<&str> {
        if self.is_text {
            std::str::from_utf8(&self.bytes).ok()
        } else {
            None
        }
    }

    /// The body parsed as JSON; None when it is not text or not valid JSON.
    pub fn json(&self) -> Option<Json> {
        if self.is_text {
            Json::parse(&self.bytes)
        } else {
            None
        }
    }

    pub(crate) fn from_json(body: Option<Json>) -> Option<Body> {
        let mut body = body?;
        if let Some(text) = body.get_mut("text") {
            return Some(Body { bytes: text.take().into_bytes().unwrap_or_default(), is_text: true });
        }
        if let Some(data) = body.get("data").and_then(Json::as_bytes) {
            return Some(Body { bytes: base64::decode(data).unwrap_or_default(), is_text: false });
        }
        Some(Body { bytes: Vec::new(), is_text: true })
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub scheme: String,
    pub authority: String,
    pub headers: Headers,
    /// In REQUEST_BODY, and in GENERATE_RESPONSE when the plugin asked for the body; in
    /// REQUEST_BODY_CHUNK, the chunk.
    pub body: Option<Body>,
    /// In REQUEST_TRAILERS.
    pub trailers: Option<Headers>,
}

impl Request {
    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub status: i32,
    pub headers: Headers,
    /// In RESPONSE_BODY; in RESPONSE_BODY_CHUNK, the chunk.
    pub body: Option<Body>,
    /// In RESPONSE_TRAILERS.
    pub trailers: Option<Headers>,
}

/// The input of one call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Input {
    /// REQUEST_HEADERS, REQUEST_BODY_CHUNK, REQUEST_BODY, GENERATE_RESPONSE, REQUEST_TRAILERS,
    /// RESPONSE_HEADERS, RESPONSE_BODY_CHUNK, RESPONSE_BODY or RESPONSE_TRAILERS.
    pub phase: String,
    pub plugin_name: String,
    pub request: Request,
    /// In the response phases.
    pub response: Option<Response>,
    /// Envoy attributes by name ("source.address", ...): an object.
    pub attributes: Json,
    /// Envoy's metadata context, namespace -> values: an object.
    pub metadata: Json,
    /// What this plugin returned as state in an earlier phase or chunk of this exchange.
    pub state: Option<Body>,
    /// The values the route gives this plugin: an object (empty when it gives none).
    pub route: Json,
    /// Chunk phases: this chunk is the body's last (a body that ends with trailers has none).
    pub end_of_stream: bool,
    /// Chunk phases: the chunk's place in its body, from 0.
    pub chunk_index: u32,
}

/// Member `key` of `v` as text, moved out ("" when absent).
fn take_string(v: &mut Json, key: &str) -> String {
    let bytes = v.get_mut(key).map(Json::take).and_then(Json::into_bytes).unwrap_or_default();
    // The server sends UTF-8; anything else is shown as the contract shows it, with U+FFFD.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn take(v: &mut Json, key: &str) -> Option<Json> {
    v.get_mut(key).map(Json::take)
}

fn object_or_empty(v: Option<Json>) -> Json {
    match v {
        Some(v) if v.is_object() => v,
        _ => Json::object(),
    }
}

impl Input {
    /// The state as text ("" when there is none or it is not UTF-8).
    pub fn state_text(&self) -> &str {
        self.state.as_ref().and_then(Body::text).unwrap_or("")
    }

    /// An attribute as text ("source.address" -> "10.0.0.7:53122").
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).and_then(Json::as_text)
    }

    /// The input from the contract's JSON; None when it is not a JSON object.
    pub fn parse(bytes: &[u8]) -> Option<Input> {
        let mut root = Json::parse(bytes)?;
        if !root.is_object() {
            return None;
        }
        let mut input = Input {
            phase: take_string(&mut root, "phase"),
            plugin_name: take_string(&mut root, "plugin_name"),
            ..Input::default()
        };
        if let Some(mut req) = take(&mut root, "request") {
            input.request = Request {
                method: take_string(&mut req, "method"),
                path: take_string(&mut req, "path"),
                scheme: take_string(&mut req, "scheme"),
                authority: take_string(&mut req, "authority"),
                headers: Headers::from_json(take(&mut req, "headers")),
                body: Body::from_json(take(&mut req, "body")),
                trailers: take(&mut req, "trailers").map(|list| Headers::from_json(Some(list))),
            };
        }
        if let Some(mut resp) = take(&mut root, "response") {
            input.response = Some(Response {
                status: resp.get_i64("status", 0) as i32,
                headers: Headers::from_json(take(&mut resp, "headers")),
                body: Body::from_json(take(&mut resp, "body")),
                trailers: take(&mut resp, "trailers").map(|list| Headers::from_json(Some(list))),
            });
        }
        input.attributes = object_or_empty(take(&mut root, "attributes"));
        input.metadata = object_or_empty(take(&mut root, "metadata"));
        input.state = Body::from_json(take(&mut root, "state"));
        input.route = object_or_empty(take(&mut root, "route"));
        input.end_of_stream = root.get_bool("end_of_stream", false);
        input.chunk_index = root.get_i64("chunk_index", 0) as u32;
        Some(input)
    }
}

// --- output -------------------------------------------------------------------------------------

/// An immediate response: the client gets it now and the chain stops.
#[derive(Clone, Debug, PartialEq)]
pub struct Immediate {
    status: i32,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    details: String,
    grpc_status: Option<i32>,
}

impl Immediate {
    pub fn header(&mut self, name: &str, value: &str) -> &mut Immediate {
        self.header_bytes(name, value.as_bytes())
    }

    /// A header whose value is these exact bytes (they need not be UTF-8).
    pub fn header_bytes(&mut self, name: &str, value: &[u8]) -> &mut Immediate {
        self.headers.push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// The body, with `content-type: text/plain; charset=utf-8`.
    pub fn text(&mut self, body: &str) -> &mut Immediate {
        self.body = Some(body.as_bytes().to_vec());
        self.header("content-type", "text/plain; charset=utf-8")
    }

    /// The body, with `content-type: application/json`.
    pub fn json(&mut self, body: &Json) -> &mut Immediate {
        self.body = Some(body.to_bytes());
        self.header("content-type", "application/json")
    }

    /// The body as it is (no content-type added).
    pub fn bytes(&mut self, body: Vec<u8>) -> &mut Immediate {
        self.body = Some(body);
        self
    }

    /// Recorded by Envoy as the response code details; never sent to the client.
    pub fn details(&mut self, text: &str) -> &mut Immediate {
        self.details = text.to_string();
        self
    }

    /// For gRPC requests (otherwise the server derives it from the status).
    pub fn grpc_status(&mut self, code: i32) -> &mut Immediate {
        self.grpc_status = Some(code);
        self
    }
}

/// The changes of one call, written as the contract's output JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    sets: Vec<(String, Vec<u8>)>,
    appends: Vec<(String, Vec<u8>)>,
    removes: Vec<String>,
    body: Option<Vec<u8>>,
    immediate: Option<Immediate>,
    metadata: Vec<(String, Json)>,
    state: Option<Vec<u8>>,
}

impl Output {
    pub fn new() -> Output {
        Output::default()
    }

    /// Replaces every value of `name` (adds it when absent) in the phase's message: the request
    /// headers in request phases, the response headers in response phases, the trailers in
    /// trailers phases. (Chunk phases may not change headers.)
    pub fn set_header(&mut self, name: &str, value: &str) -> &mut Output {
        self.set_header_bytes(name, value.as_bytes())
    }

    /// Adds one more value of `name`.
    pub fn append_header(&mut self, name: &str, value: &str) -> &mut Output {
        self.append_header_bytes(name, value.as_bytes())
    }

    /// `set_header` with a value of these exact bytes (they need not be UTF-8).
    pub fn set_header_bytes(&mut self, name: &str, value: &[u8]) -> &mut Output {
        self.sets.push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// `append_header` with a value of these exact bytes (they need not be UTF-8).
    pub fn append_header_bytes(&mut self, name: &str, value: &[u8]) -> &mut Output {
        self.appends.push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// Removes every value of `name`.
    pub fn remove_header(&mut self, name: &str) -> &mut Output {
        self.removes.push(name.to_ascii_lowercase());
        self
    }

    /// Replaces the phase's body (body phases only; in chunk phases, this chunk); the server fixes
    /// content-length.
    pub fn set_body(&mut self, text: &str) -> &mut Output {
        self.set_body_bytes(text.as_bytes().to_vec())
    }

    pub fn set_body_bytes(&mut self, bytes: Vec<u8>) -> &mut Output {
        self.body = Some(bytes);
        self
    }

    pub fn set_body_json(&mut self, value: &Json) -> &mut Output {
        self.set_body_bytes(value.to_bytes())
    }

    /// Answers the client with `status` now; configure the returned response further.
    pub fn respond(&mut self, status: i32) -> &mut Immediate {
        self.immediate.insert(Immediate { status, headers: Vec::new(), body: None, details: String::new(), grpc_status: None })
    }

    /// Hands `text` to this plugin's later phases and chunks of the same exchange (`Input::state`),
    /// at most 16 KiB; empty drops the state. Without a call the state stays as it was.
    pub fn set_state(&mut self, text: &str) -> &mut Output {
        self.set_state_bytes(text.as_bytes().to_vec())
    }

    /// `set_state` with bytes (they need not be UTF-8).
    pub fn set_state_bytes(&mut self, bytes: Vec<u8>) -> &mut Output {
        self.state = Some(bytes);
        self
    }

    /// Emits `key: value` as Envoy dynamic metadata (namespace extproc, under the plugin's name).
    pub fn metadata(&mut self, key: &str, value: impl Into<Json>) -> &mut Output {
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        *self == Output::default()
    }

    /// The output JSON; empty when nothing changed.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.written_len());
        self.write_json(&mut out);
        out
    }

    /// Sets the output JSON as the call's output (none when nothing changed). `run` does it.
    pub fn write(&self) {
        if self.is_empty() {
            return;
        }
        // Measured first, then written once straight into Extism memory: the output, a whole body
        // perhaps, needs no room in the plugin's own memory.
        let mut w = sys::OutputWriter::new(self.written_len());
        self.write_json(&mut w);
        w.finish();
    }

    fn written_len(&self) -> usize {
        let mut counter = Counter(0);
        self.write_json(&mut counter);
        counter.0
    }

    fn write_json<S: Sink>(&self, w: &mut S) {
        w.put(b"{");
        let mut first = true;
        let mut member = |w: &mut S, name: &[u8]| {
            if !first {
                w.put(b",");
            }
            first = false;
            w.put(name);
        };
        if !(self.sets.is_empty() && self.appends.is_empty() && self.removes.is_empty()) {
            member(w, b"\"headers\":{\"set\":");
            pairs(w, &self.sets);
            w.put(b",\"append\":");
            pairs(w, &self.appends);
            w.put(b",\"remove\":[");
            for (i, name) in self.removes.iter().enumerate() {
                if i > 0 {
                    w.put(b",");
                }
                write_string(w, name.as_bytes());
            }
            w.put(b"]}");
        }
        if let Some(body) = &self.body {
            member(w, b"\"body\":");
            body_json(w, body);
        }
        if let Some(imm) = &self.immediate {
            member(w, b"\"immediate_response\":{\"status\":");
            w.put(imm.status.to_string().as_bytes());
            w.put(b",\"headers\":");
            pairs(w, &imm.headers);
            if let Some(body) = &imm.body {
                w.put(b",\"body\":");
                body_json(w, body);
            }
            if !imm.details.is_empty() {
                w.put(b",\"details\":");
                write_string(w, imm.details.as_bytes());
            }
            if let Some(code) = imm.grpc_status {
                w.put(b",\"grpc_status\":");
                w.put(code.to_string().as_bytes());
            }
            w.put(b"}");
        }
        if !self.metadata.is_empty() {
            member(w, b"\"dynamic_metadata\":{");
            for (i, (key, value)) in self.metadata.iter().enumerate() {
                if i > 0 {
                    w.put(b",");
                }
                write_string(w, key.as_bytes());
                w.put(b":");
                value.write_json(w);
            }
            w.put(b"}");
        }
        if let Some(state) = &self.state {
            member(w, b"\"state\":");
            body_json(w, state);
        }
        w.put(b"}");
    }
}

/// Whether `b` is well-formed UTF-8 (so it can travel as `text`).
pub fn is_utf8(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok()
}

fn pairs<S: Sink>(w: &mut S, list: &[(String, Vec<u8>)]) {
    w.put(b"[");
    for (i, (name, value)) in list.iter().enumerate() {
        if i > 0 {
            w.put(b",");
        }
        w.put(b"{\"name\":");
        write_string(w, name.as_bytes());
        // Text travels as text, so the output stays readable; only other bytes need raw_value.
        if is_utf8(value) {
            w.put(b",\"value\":");
            write_string(w, value);
        } else {
            w.put(b",\"raw_value\":\"");
            base64::encode_to(w, value);
            w.put(b"\"");
        }
        w.put(b"}");
    }
    w.put(b"]");
}

fn body_json<S: Sink>(w: &mut S, bytes: &[u8]) {
    if is_utf8(bytes) {
        w.put(b"{\"text\":");
        write_string(w, bytes);
    } else {
        w.put(b"{\"data\":\"");
        base64::encode_to(w, bytes);
        w.put(b"\"");
    }
    w.put(b"}");
}

// --- config, errors and the export wrapper ------------------------------------------------------

/// The plugin's `config:` mapping from the server YAML (an empty object when there is none).
/// Read once per instance: the config never changes under a running instance.
pub fn config() -> &'static Json {
    CONFIG.with(|cached| {
        if let Some(config) = cached.get() {
            return config;
        }
        let parsed = sys::config("config").and_then(|bytes| Json::parse(&bytes));
        let config: &'static Json = Box::leak(Box::new(object_or_empty(parsed)));
        cached.set(Some(config));
        config
    })
}

thread_local! {
    static CONFIG: std::cell::Cell<Option<&'static Json>> = const { std::cell::Cell::new(None) };
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn forget_config() {
    CONFIG.with(|cached| cached.set(None));
}

/// Why a call failed; the server logs it with the plugin's name and answers per `on_error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error(message.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error(message)
    }
}

/// What a handler returns: `Ok(())`, or an error that fails the call.
pub type Result<T = ()> = std::result::Result<T, Error>;

/// Runs one export: reads the input, calls `handler` with it and an output builder, writes the
/// output. Returns the export's result code (0, or 1 when the handler failed). `export!` calls it.
pub fn run<F>(handler: F) -> i32
where
    F: FnOnce(&Input, &mut Output) -> Result,
{
    report_panics();
    // The input's bytes go once parsed (the body was copied out of them), so the handler's work can
    // reuse their memory; Extism's copy goes at once (sys::take_input).
    let input = match Input::parse(&sys::take_input()) {
        Some(input) => input,
        None => {
            sys::set_error("extproc sdk: the input is not a JSON object (is the plugin configured with encoding: protobuf?)");
            return 1;
        }
    };
    let mut out = Output::new();
    match handler(&input, &mut out) {
        Ok(()) => {
            out.write();
            0
        }
        Err(e) => {
            sys::set_error(&e.0);
            1
        }
    }
}

/// Makes a panic's message (with file and line) the call's error before the call traps, so the
/// server's log says what went wrong instead of only "unreachable".
fn report_panics() {
    #[cfg(target_arch = "wasm32")]
    {
        use std::sync::Once;
        static HOOK: Once = Once::new();
        HOOK.call_once(|| std::panic::set_hook(Box::new(|info| sys::set_error(&info.to_string()))));
    }
}

// --- declared phases ----------------------------------------------------------------------------

/// A phase a plugin can declare (see `declare_phases`), shown by its config name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    RequestBodyChunk,
    RequestBody,
    GenerateResponse,
    RequestTrailers,
    ResponseHeaders,
    ResponseBodyChunk,
    ResponseBody,
    ResponseTrailers,
}

impl Phase {
    /// Every phase, in the order the server calls them.
    pub const ALL: [Phase; 9] = [
        Phase::RequestHeaders,
        Phase::RequestBodyChunk,
        Phase::RequestBody,
        Phase::GenerateResponse,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
        Phase::ResponseBodyChunk,
        Phase::ResponseBody,
        Phase::ResponseTrailers,
    ];

    /// The phase's name in the server config and the declaration ("request_headers", ...).
    pub fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBodyChunk => "request_body_chunk",
            Phase::RequestBody => "request_body",
            Phase::GenerateResponse => "generate_response",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBodyChunk => "response_body_chunk",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
        }
    }
}

/// Answers the server's `declare_phases` call: the phases this plugin's config uses. The server then
/// calls only those exports and asks Envoy for only those phases. `export!(declare_phases => f)`
/// calls it with what `f` returns; returns the export's result code.
pub fn declare_phases(phases: &[Phase]) -> i32 {
    report_panics();
    let mut out = b"{\"phases\":[".to_vec();
    for (i, phase) in phases.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(&mut out, phase.name().as_bytes());
    }
    out.extend_from_slice(b"]}");
    sys::output(&out);
    0
}
