// Digests the request body as it streams past (FNV-1a 64) and reports it to the client:
//
//   config:
//     header: x-request-digest     # the response header (and, for responses with trailers, the trailer)
//
// The running hash travels from chunk to chunk, and on to the response, in the exchange's state: no chunk
// is kept, however large the body. Responses that end with trailers (gRPC) carry the digest there too, so a
// client reading the trailers gets it next to grpc-status.
import { config, Input, Output, run } from "@extproc/sdk";

const OFFSET: u64 = 0xcbf29ce484222325;
const PRIME: u64 = 0x100000001b3;

function hexDigit(n: u32): string {
  return String.fromCharCode(n < 10 ? 0x30 + n : 0x57 + n);
}

function toHex(h: u64): string {
  let s = "";
  for (let shift = 60; shift >= 0; shift -= 4) s += hexDigit(<u32>((h >> <u64>shift) & 0xf));
  return s;
}

function fromHex(s: string): u64 {
  let h: u64 = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    h = (h << 4) | <u64>(c <= 0x39 ? c - 0x30 : c - 0x57);
  }
  return h;
}

function onChunk(input: Input, out: Output): void {
  const state = input.stateText;
  let h: u64 = state.length > 0 ? fromHex(state) : OFFSET;
  const chunk = input.request.body;
  if (chunk !== null) {
    const bytes = chunk.bytes();
    for (let i = 0; i < bytes.length; i++) h = (h ^ <u64>bytes[i]) * PRIME;
  }
  out.setState(toHex(h));
}

function digest(input: Input): string | null {
  const state = input.stateText;
  return state.length > 0 ? "fnv1a64:" + state : null;
}

function onResponseHeaders(input: Input, out: Output): void {
  const value = digest(input);
  if (value !== null) out.setHeader(config().getString("header", "x-request-digest"), value);
}

export function process_request_body_chunk(): i32 {
  return run(onChunk);
}

export function process_response_headers(): i32 {
  return run(onResponseHeaders);
}

// In the trailers phase, header changes apply to the trailers.
export function process_response_trailers(): i32 {
  return run(onResponseHeaders);
}
