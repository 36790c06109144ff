// Outputs bytes that are not JSON.
import { outputString } from "../lib/io";

export function process_request_headers(): i32 {
  outputString("not json {");
  return 0;
}
