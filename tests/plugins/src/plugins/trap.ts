// Traps on every call.
export function process_request_headers(): i32 {
  unreachable();
  return 0;
}
