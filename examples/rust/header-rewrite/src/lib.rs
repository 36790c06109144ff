//! Adds, overwrites, removes and renames request and response headers, as configured:
//!
//!   config:
//!     request:  {set: {x-team: payments}, add: {x-via: extproc}, remove: [x-debug], rename: {x-old: x-new}}
//!     response: {set: {...}, add: {...}, remove: [server], rename: {...}}
//!
//! `set` replaces every value (adds the header when absent), `add` appends one more value (a list
//! adds several), `remove` drops every value, `rename` moves every value to the new name. The Rust
//! twin of examples/header-rewrite (same config, same CASES.yaml).
use extproc_sdk::{config, Headers, Input, Json, Output, Phase};

/// A value or a list of values, as text.
fn values_of(v: &Json) -> Vec<&str> {
    if v.is_array() {
        v.values().map(|item| item.as_text().unwrap_or("")).collect()
    } else {
        vec![v.as_text().unwrap_or("")]
    }
}

fn rewrite(rules: &Json, headers: &Headers, out: &mut Output) {
    for name in rules.get_strings("remove") {
        out.remove_header(&name);
    }
    for (from, to) in rules["rename"].entries() {
        // Bytes, not text: a value that is not UTF-8 moves unchanged.
        let values = headers.get_all_bytes(&from);
        if values.is_empty() {
            continue;
        }
        out.remove_header(&from);
        for value in values {
            out.append_header_bytes(to.as_text().unwrap_or(""), value);
        }
    }
    for (name, value) in rules["set"].entries() {
        let values = values_of(value);
        out.set_header(&name, values.first().copied().unwrap_or(""));
        for extra in &values[1..] {
            out.append_header(&name, extra);
        }
    }
    for (name, value) in rules["add"].entries() {
        for v in values_of(value) {
            out.append_header(&name, v);
        }
    }
}

fn on_request(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    rewrite(&config()["request"], &input.request.headers, out);
    Ok(())
}

fn on_response(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    if let Some(response) = &input.response {
        rewrite(&config()["response"], &response.headers, out);
    }
    Ok(())
}

/// Only the sides the config rewrites: with request rules alone, Envoy is never asked for the response.
fn phases() -> Vec<Phase> {
    let sides = [("request", Phase::RequestHeaders), ("response", Phase::ResponseHeaders)];
    sides.iter().filter(|(side, _)| config().has(side)).map(|(_, phase)| *phase).collect()
}

extproc_sdk::export!(
    process_request_headers => on_request,
    process_response_headers => on_response,
    declare_phases => phases,
);
