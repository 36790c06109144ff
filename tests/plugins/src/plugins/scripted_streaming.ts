// The scripted plugin (see scripted.ts) for the chunk and trailers exports: each returns, byte for byte,
// the Extism config value stored under its own name, or empty output when that key is absent. Apart from
// scripted because a plugin may not export a body phase both whole and in chunks.
import { Config, Host } from "@extism/as-pdk";

function script(name: string): i32 {
  const mem = Config.getMemory(name);
  if (mem !== null) Host.outputMemory(mem);
  return 0;
}

export function process_request_headers(): i32 {
  return script("process_request_headers");
}

export function process_response_headers(): i32 {
  return script("process_response_headers");
}

export function process_request_body_chunk(): i32 {
  return script("process_request_body_chunk");
}

export function process_response_body_chunk(): i32 {
  return script("process_response_body_chunk");
}

export function process_request_trailers(): i32 {
  return script("process_request_trailers");
}

export function process_response_trailers(): i32 {
  return script("process_response_trailers");
}

// With process_response_body_chunk: a module that reads one body both ways, which loads only narrowed.
export function process_response_body(): i32 {
  return script("process_response_body");
}
