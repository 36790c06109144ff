// The Rust SDK's host-function probe, the twin of sdk/assemblyscript/tests/http_probe.ts:
//
// - generate_response makes the HTTP call its config describes and answers 200 with what the SDK
//   made of the result, as JSON. config: {url, method (GET), body (none), header: [name, value]
//   (none), timeout_ms (0), max_redirects (-1)}
// - process_request_headers runs a fixed sequence of key-value operations, reads the clock and logs
//   a line; the results go out as dynamic metadata `results` (a list, in order) and `now_ms`.
use extproc_sdk::{config, http, kv, log, now_ms, Input, Json, Output};

fn call(_input: &Input, out: &mut Output) -> extproc_sdk::Result {
    let cfg = config();
    let mut request = http::Request::new(cfg.get_str("method", "GET"), cfg.get_str("url", ""));
    if let [name, value] = cfg.get_strings("header").as_slice() {
        request = request.header(name, value);
    }
    if let Some(body) = cfg.get("body").and_then(Json::as_text) {
        request = request.body(body);
    }
    let timeout = cfg.get_i64("timeout_ms", 0);
    if timeout > 0 {
        request = request.timeout_ms(timeout as u32);
    }
    let redirects = cfg.get_i64("max_redirects", -1);
    if redirects >= 0 {
        request = request.max_redirects(redirects as u32);
    }
    let response = request.send();
    let error = response.error.clone().map(|e| (e.kind, e.message)).unwrap_or_default();
    let mut seen = Json::object();
    seen.set("status", response.status as i64)
        .set("error", error.0)
        .set("message", error.1)
        .set("url", response.url.as_str())
        .set("body", response.text());
    if let Some(content_type) = response.header("Content-Type") {
        seen.set("content_type", content_type);
    }
    out.respond(200).json(&seen);
    Ok(())
}

fn state(_input: &Input, out: &mut Output) -> extproc_sdk::Result {
    let absent = |v: Option<String>| v.map_or(Json::null(), Json::from);
    let mut results = Json::array();
    results
        .push(kv::set("k", "v\u{e9}", 0))
        .push(absent(kv::get("k")))
        .push(kv::incr("n", 5, 0))
        .push(kv::incr("n", 2, 60_000))
        .push(kv::incr("k", 1, 0) == kv::INCR_ERROR)
        .push(kv::compare_and_set("c", None, "1", 0))
        .push(kv::compare_and_set("c", None, "2", 0))
        .push(kv::compare_and_set("c", Some("1"), "2", 0))
        .push(absent(kv::get("c")))
        .push(kv::delete("c"))
        .push(kv::delete("c"))
        .push(absent(kv::get("c")))
        .push(kv::set_bytes("b", b"\xff\x00", 0))
        .push(kv::get_bytes("b").map_or(-1, |b| b.len() as i64));
    log::warn("host probe: state done");
    out.metadata("results", results).metadata("now_ms", now_ms());
    Ok(())
}

extproc_sdk::export!(generate_response => call, process_request_headers => state);
