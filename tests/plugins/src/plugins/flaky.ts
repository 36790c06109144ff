// Traps when the request carries a header named x-fail; otherwise sets x-flaky: ok.
// Lets a test make one plugin fail and recover without reloading it.
import { Host } from "@extism/as-pdk";
import { outputString } from "../lib/io";

export function process_request_headers(): i32 {
  const input = String.UTF8.decode(Host.input().buffer);
  if (input.includes('"name":"x-fail"')) {
    unreachable();
  }
  outputString('{"headers":{"set":[{"name":"x-flaky","value":"ok"}]}}');
  return 0;
}
