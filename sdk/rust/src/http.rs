//! Outgoing HTTP through the server's `extproc_http_request` (docs/plugin-abi.md#http-calls). The
//! server lets a plugin reach only the hosts in its `allowed_hosts`, checks every redirect again
//! and bounds the response size and the time; a call that gets no answer comes back with `error`
//! set instead of failing the plugin call.

use crate::contract::{is_utf8, Body, Headers};
use crate::json::Json;
use crate::{base64, sys};

/// The values of `CallError::kind`.
pub mod error_kind {
    /// The request is malformed or over a limit (the message says which); also a malformed redirect.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The URL, or a redirect, is not http(s) to a host in the plugin's `allowed_hosts`.
    pub const HOST_REFUSED: &str = "host_refused";
    pub const TOO_MANY_REDIRECTS: &str = "too_many_redirects";
    /// The response body is over the plugin's `max_http_response_bytes`.
    pub const TOO_LARGE: &str = "too_large";
    /// The call's time ran out: its `timeout_ms`, or what the plugin's `timeout_ms` left for it.
    pub const TIMEOUT: &str = "timeout";
    /// Name resolution, connect or TLS failed, the connection broke, or the answer was not HTTP.
    pub const CONNECTION: &str = "connection";
    /// The server could not run the call at all (its log says why).
    pub const INTERNAL: &str = "internal";
}

/// Why a call got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// One of `error_kind`'s values.
    pub kind: String,
    /// What went wrong, naming the URL.
    pub message: String,
}

/// The answer to a call: any status the server answered with, or `error`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The final status after redirects; 0 when `error` is set.
    pub status: i32,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The URL the final response came from.
    pub url: String,
    pub error: Option<CallError>,
}

impl Response {
    fn failed(kind: &str, message: &str) -> Response {
        Response { error: Some(CallError { kind: kind.to_string(), message: message.to_string() }), ..Response::default() }
    }

    /// The body as text (invalid UTF-8 becomes U+FFFD).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; None when it is not valid JSON.
    pub fn json(&self) -> Option<Json> {
        Json::parse(&self.body)
    }

    /// The first value of response header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// One request; the server sets host, content-length and the other framing headers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout_ms: u32,
    max_redirects: Option<u32>,
}

impl Request {
    pub fn new(method: &str, url: &str) -> Request {
        Request { method: method.to_string(), url: url.to_string(), headers: Vec::new(), body: None, timeout_ms: 0, max_redirects: None }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Ends the call sooner than the plugin's own timeout would.
    pub fn timeout_ms(mut self, ms: u32) -> Request {
        self.timeout_ms = ms;
        self
    }

    /// Replaces the server's default of 5 (0: a 3xx is returned as it is).
    pub fn max_redirects(mut self, n: u32) -> Request {
        self.max_redirects = Some(n);
        self
    }

    fn to_json(&self) -> Json {
        let mut req = Json::object();
        req.set("method", self.method.as_str()).set("url", self.url.as_str());
        let mut list = Json::array();
        for (name, value) in &self.headers {
            let mut header = Json::object();
            header.set("name", name.as_str()).set("value", value.as_str());
            list.push(header);
        }
        req.set("headers", list);
        if let Some(body) = &self.body {
            let mut b = Json::object();
            if is_utf8(body) {
                b.set("text", Json::string_bytes(body.clone()));
            } else {
                b.set("data", base64::encode(body));
            }
            req.set("body", b);
        }
        if self.timeout_ms > 0 {
            req.set("timeout_ms", self.timeout_ms as i64);
        }
        if let Some(n) = self.max_redirects {
            req.set("max_redirects", n as i64);
        }
        req
    }

    /// Makes the call; returns when the answer is complete or the call has failed.
    pub fn send(&self) -> Response {
        let answer = match sys::http_request(&self.to_json().to_bytes()) {
            Some(bytes) => bytes,
            None => return Response::failed(error_kind::INTERNAL, "extproc_http_request failed; see the server log"),
        };
        let mut answer = match Json::parse(&answer) {
            Some(answer) => answer,
            None => return Response::failed(error_kind::INTERNAL, "extproc_http_request answered no JSON"),
        };
        if let Some(error) = answer.get("error") {
            return Response::failed(error.get_str("kind", ""), error.get_str("message", ""));
        }
        let body = answer.get_mut("body").map(Json::take);
        Response {
            status: answer.get_i64("status", 0) as i32,
            headers: Headers::from_json(answer.get_mut("headers").map(Json::take)),
            body: Body::from_json(body).map(|b| b.bytes).unwrap_or_default(),
            url: answer.get_str("url", "").to_string(),
            error: None,
        }
    }
}

pub fn get(url: &str) -> Response {
    Request::new("GET", url).send()
}

pub fn post(url: &str, body: &str) -> Response {
    Request::new("POST", url).body(body).send()
}

/// `s` percent-encoded for a URL query or a form body (all but RFC 3986's unreserved characters).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{:02X}", c));
        }
    }
    out
}
