//! Rewrites JSON request and response bodies: removes (redacts) listed fields at any depth and
//! renames keys. Bodies that are not JSON pass through untouched. The server fixes content-length.
//!
//!   config:
//!     request:  {redact: [ssn, password], rename: {name: full_name}}
//!     response: {redact: [internal_id], rename: {}, replacement: "***"}
//!
//! With `replacement`, redacted fields keep their key and get that value instead of disappearing.
//! The Rust twin of examples/json-transform (same config, same CASES.yaml).
use extproc_sdk::{config, log, Body, Headers, Input, Json, Output, Phase};

fn is_json(headers: &Headers) -> bool {
    let t = headers.get("content-type").unwrap_or("").to_ascii_lowercase();
    t.starts_with("application/json") || t.contains("+json")
}

struct Rules<'a> {
    redact: Vec<String>,
    rename: &'a Json,
    replacement: Option<&'a Json>,
}

/// Applies the rules to every object in the document; returns whether anything changed.
fn transform(value: &mut Json, rules: &Rules) -> bool {
    let mut changed = false;
    if value.is_object() {
        for key in &rules.redact {
            if !value.has(key) {
                continue;
            }
            match rules.replacement {
                Some(r) => {
                    value.set(key, r.clone());
                }
                None => {
                    value.remove(key);
                }
            }
            changed = true;
        }
        for (from, to) in rules.rename.entries() {
            changed |= value.rename(&from, to.as_text().unwrap_or(""));
        }
    }
    for child in value.values_mut() {
        changed |= transform(child, rules);
    }
    changed
}

fn rewrite(rules: &Json, headers: &Headers, body: Option<&Body>, out: &mut Output) {
    let body = match body {
        Some(body) if !rules.is_null() && is_json(headers) => body,
        _ => return,
    };
    let mut doc = match body.json() {
        Some(doc) => doc,
        None => {
            log::debug("body says JSON but does not parse; passed through");
            return;
        }
    };
    let rules = Rules { redact: rules.get_strings("redact"), rename: &rules["rename"], replacement: rules.get("replacement") };
    if transform(&mut doc, &rules) {
        out.set_body_json(&doc);
    }
}

fn on_request(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    rewrite(&config()["request"], &input.request.headers, input.request.body.as_ref(), out);
    Ok(())
}

fn on_response(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    if let Some(response) = &input.response {
        rewrite(&config()["response"], &response.headers, response.body.as_ref(), out);
    }
    Ok(())
}

/// Only the bodies the config transforms: each one Envoy buffers for the server costs a round trip.
fn phases() -> Vec<Phase> {
    let sides = [("request", Phase::RequestBody), ("response", Phase::ResponseBody)];
    sides.iter().filter(|(side, _)| config().has(side)).map(|(_, phase)| *phase).collect()
}

extproc_sdk::export!(
    process_request_body => on_request,
    process_response_body => on_response,
    declare_phases => phases,
);
