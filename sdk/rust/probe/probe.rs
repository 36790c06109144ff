// The Rust SDK's probe for tests/test_sdk_json.py: the same exports as the AssemblyScript SDK's
// tests/json_probe.ts, so one table of inputs and expected outputs checks every SDK.
use extproc_sdk::json::quote as json_quote;
use extproc_sdk::{base64_decode, base64_encode, raw, Input, Json, Kind, Output};

fn finish(bytes: &[u8]) -> i32 {
    raw::output(bytes);
    0
}

fn invalid() -> i32 {
    finish(b"INVALID")
}

/// The input parsed from bytes and written back.
#[no_mangle]
pub extern "C" fn roundtrip() -> i32 {
    match Json::parse(&raw::input()) {
        Some(doc) => finish(&doc.to_bytes()),
        None => invalid(),
    }
}

/// A deep copy made only with the public builders and getters.
fn copy(v: &Json) -> Json {
    match v.kind() {
        Kind::Object => {
            let mut out = Json::object();
            for (key, value) in v.members_bytes() {
                out.set_bytes(key, copy(value));
            }
            out
        }
        Kind::Array => {
            let mut out = Json::array();
            for item in v.values() {
                out.push(copy(item));
            }
            out
        }
        Kind::String => Json::string_bytes(v.as_bytes().unwrap_or_default().to_vec()),
        Kind::Number => Json::number_text(v.as_text().unwrap_or_default()).unwrap_or_default(),
        Kind::Bool => Json::bool(v.as_bool().unwrap_or_default()),
        Kind::Null => Json::null(),
    }
}

/// The input read as text, parsed, copied through the builders and written as text.
#[no_mangle]
pub extern "C" fn rebuild() -> i32 {
    let text = String::from_utf8_lossy(&raw::input()).into_owned();
    match Json::parse_str(&text) {
        Some(doc) => finish(copy(&doc).to_string().as_bytes()),
        None => invalid(),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Null => "null",
        Kind::Bool => "bool",
        Kind::Number => "number",
        Kind::String => "string",
        Kind::Array => "array",
        Kind::Object => "object",
    }
}

/// What every typed getter returns for each member of an object, and for a member it lacks.
#[no_mangle]
pub extern "C" fn typed() -> i32 {
    let doc = match Json::parse(&raw::input()) {
        Some(doc) if doc.is_object() => doc,
        _ => return invalid(),
    };
    let mut out = Json::object();
    let mut names: Vec<String> = doc.keys().map(|k| k.into_owned()).collect();
    names.push("absent".to_string());
    for key in &names {
        let v = doc.get(key);
        let bool_text = if doc.get_bool(key, false) {
            "true"
        } else if doc.get_bool(key, true) {
            "fallback"
        } else {
            "false"
        };
        let mut strings = Json::array();
        for s in doc.get_strings(key) {
            strings.push(s);
        }
        let mut row = Json::object();
        row.set("kind", v.map_or(Json::null(), |v| Json::string(kind_name(v.kind()))))
            .set("has", doc.has(key))
            .set("getString", doc.get_str(key, "fallback"))
            .set("getNumber", doc.get_f64(key, -1.0))
            .set("asInteger", v.map_or(-1, |v| v.as_i64().unwrap_or(-1)))
            .set("getBool", bool_text)
            .set("length", v.map_or(-1, |v| v.len() as i64))
            .set("getStrings", strings);
        out.set(key, row);
    }
    finish(&out.to_bytes())
}

/// Applies `ops` to the object `doc`: ["set", key, value], ["remove", key], ["rename", from, to].
/// Writes {"doc": the result, "results": what each op returned}.
#[no_mangle]
pub extern "C" fn edit() -> i32 {
    let input = match Json::parse(&raw::input()) {
        Some(input) => input,
        None => return invalid(),
    };
    let mut doc = input["doc"].clone();
    let mut results = Json::array();
    for op in input["ops"].values() {
        let key = op[1].as_str().unwrap_or_default();
        let result = match op[0].as_str().unwrap_or_default() {
            "set" => {
                doc.set(key, op[2].clone());
                true
            }
            "remove" => doc.remove(key).is_some(),
            "rename" => doc.rename(key, op[2].as_str().unwrap_or_default()),
            _ => return invalid(),
        };
        results.push(result);
    }
    let mut out = Json::object();
    out.set("doc", doc).set("results", results);
    finish(&out.to_bytes())
}

fn eight_bytes() -> Option<[u8; 8]> {
    let input = raw::input();
    let mut b = [0u8; 8];
    if input.len() != 8 {
        return None;
    }
    b.copy_from_slice(&input);
    Some(b)
}

/// Json::number of the little-endian f64 in the input's 8 bytes.
#[no_mangle]
pub extern "C" fn number() -> i32 {
    match eight_bytes() {
        Some(b) => finish(&Json::number(f64::from_le_bytes(b)).to_bytes()),
        None => invalid(),
    }
}

/// Json::integer of the little-endian i64 in the input's 8 bytes.
#[no_mangle]
pub extern "C" fn integer() -> i32 {
    match eight_bytes() {
        Some(b) => finish(&Json::integer(i64::from_le_bytes(b)).to_bytes()),
        None => invalid(),
    }
}

#[no_mangle]
pub extern "C" fn quote() -> i32 {
    finish(json_quote(&String::from_utf8_lossy(&raw::input())).as_bytes())
}

#[no_mangle]
pub extern "C" fn b64encode() -> i32 {
    finish(base64_encode(&raw::input()).as_bytes())
}

#[no_mangle]
pub extern "C" fn b64decode() -> i32 {
    match base64_decode(&raw::input()) {
        Some(bytes) => finish(&bytes),
        None => invalid(),
    }
}

/// Input {"headers": [...]} as the server sends a header list; output the changes made from its
/// bytes: set each name to its first value, append every value, put every value in an immediate
/// response.
#[no_mangle]
pub extern "C" fn header_bytes() -> i32 {
    let doc = match Json::parse(&raw::input()) {
        Some(doc) => doc,
        None => return invalid(),
    };
    let mut request = Json::object();
    request.set("headers", doc["headers"].clone());
    let mut wrapper = Json::object();
    wrapper.set("request", request);
    let input = match Input::parse(&wrapper.to_bytes()) {
        Some(input) => input,
        None => return invalid(),
    };
    let headers = &input.request.headers;
    let mut out = Output::new();
    let mut seen: Vec<&str> = Vec::new();
    for header in headers.iter() {
        if seen.contains(&header.name.as_str()) {
            continue;
        }
        seen.push(&header.name);
        out.set_header_bytes(&header.name, headers.get_bytes(&header.name).unwrap_or_default());
        for value in headers.get_all_bytes(&header.name) {
            out.append_header_bytes(&header.name, value);
        }
    }
    let reply = out.respond(200);
    for name in &seen {
        for value in headers.get_all_bytes(name) {
            reply.header_bytes(name, value);
        }
    }
    finish(&out.to_bytes())
}

/// The trailers of both sides as "side name=value" strings, or null when neither side has any.
fn trailer_list(input: &Input) -> Json {
    let sides = [("request", input.request.trailers.as_ref()), ("response", input.response.as_ref().and_then(|r| r.trailers.as_ref()))];
    if sides.iter().all(|(_, t)| t.is_none()) {
        return Json::null();
    }
    let mut list = Json::array();
    for (side, trailers) in sides {
        for h in trailers.iter().flat_map(|t| t.iter()) {
            list.push(format!("{} {}={}", side, h.name, h.value));
        }
    }
    list
}

fn stream_fields_handler(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    out.metadata("chunk_index", i64::from(input.chunk_index))
        .metadata("end_of_stream", input.end_of_stream)
        .metadata("route", input.route.clone())
        .metadata("trailers", trailer_list(input));
    if let Some(state) = &input.state {
        out.set_state_bytes(state.bytes.clone()).metadata("state_is_text", state.is_text);
    }
    if let Some(body) = &input.request.body {
        out.set_body_bytes(body.bytes.clone());
    }
    Ok(())
}

/// A contract input through run(): its streaming fields as dynamic metadata (chunk_index, end_of_stream,
/// route, trailers, state_is_text), its state written back as the output state and its request body as the body.
#[no_mangle]
pub extern "C" fn stream_fields() -> i32 {
    extproc_sdk::run(stream_fields_handler)
}
