// Each export returns, byte for byte, the Extism config value stored under the
// export's own name, or empty output when that key is absent.
import { Config, Host } from "@extism/as-pdk";

function script(name: string): i32 {
  const mem = Config.getMemory(name);
  if (mem !== null) Host.outputMemory(mem);
  return 0;
}

export function process_request_headers(): i32 {
  return script("process_request_headers");
}

export function process_request_body(): i32 {
  return script("process_request_body");
}

export function process_response_headers(): i32 {
  return script("process_response_headers");
}

export function process_response_body(): i32 {
  return script("process_response_body");
}

export function generate_response(): i32 {
  return script("generate_response");
}

// Empty (no declaration: every export is called) unless the config holds one.
export function declare_phases(): i32 {
  return script("declare_phases");
}
