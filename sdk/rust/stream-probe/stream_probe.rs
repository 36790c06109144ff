// The Rust SDK's streaming probe, the twin of sdk/c/tests/stream_probe.c and, written with the SDK, of the
// test plugin tests/plugins/src/plugins/stream.ts (tests/plugins/README.md), plus route values and phases:
//
// - declare_phases: config `phases` (a list of config names), or the six exports below when absent;
// - request headers: state `h`, and `x-route` set to the route's values as JSON;
// - response headers: `x-state` set to the state;
// - each chunk becomes `<I>` (`<I$>` on the last) and its bytes upper-cased, and `I` is appended to the state;
// - trailers: `x-state` set to the state, `x-seen-grpc-status` to the `grpc-status` trailer ("" when absent).
use extproc_sdk::{config, Body, Headers, Input, Output, Phase};

const EXPORTED: [Phase; 6] = [
    Phase::RequestHeaders,
    Phase::RequestBodyChunk,
    Phase::RequestTrailers,
    Phase::ResponseHeaders,
    Phase::ResponseBodyChunk,
    Phase::ResponseTrailers,
];

fn phases() -> Vec<Phase> {
    if !config().has("phases") {
        return EXPORTED.to_vec();
    }
    let names = config().get_strings("phases");
    Phase::ALL.iter().copied().filter(|phase| names.iter().any(|name| name == phase.name())).collect()
}

fn on_request_headers(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    out.set_header("x-route", &input.route.to_string()).set_state("h");
    Ok(())
}

fn on_response_headers(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    out.set_header("x-state", input.state_text());
    Ok(())
}

fn chunk(body: Option<&Body>, input: &Input, out: &mut Output) -> extproc_sdk::Result {
    let mut marked = format!("<{}{}>", input.chunk_index, if input.end_of_stream { "$" } else { "" }).into_bytes();
    marked.extend(body.map_or(&[][..], |b| &b.bytes).iter().map(u8::to_ascii_uppercase));
    out.set_body_bytes(marked);
    out.set_state(&format!("{}{}", input.state_text(), input.chunk_index));
    Ok(())
}

fn on_request_chunk(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    chunk(input.request.body.as_ref(), input, out)
}

fn on_response_chunk(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    chunk(input.response.as_ref().and_then(|r| r.body.as_ref()), input, out)
}

fn trailers(trailers: Option<&Headers>, input: &Input, out: &mut Output) -> extproc_sdk::Result {
    let status = trailers.and_then(|t| t.get("grpc-status")).unwrap_or("");
    out.set_header("x-state", input.state_text()).set_header("x-seen-grpc-status", status);
    Ok(())
}

fn on_request_trailers(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    trailers(input.request.trailers.as_ref(), input, out)
}

fn on_response_trailers(input: &Input, out: &mut Output) -> extproc_sdk::Result {
    trailers(input.response.as_ref().and_then(|r| r.trailers.as_ref()), input, out)
}

extproc_sdk::export!(
    process_request_headers => on_request_headers,
    process_request_body_chunk => on_request_chunk,
    process_request_trailers => on_request_trailers,
    process_response_headers => on_response_headers,
    process_response_body_chunk => on_response_chunk,
    process_response_trailers => on_response_trailers,
    declare_phases => phases,
);
