// process_request_headers: a GET of config `url` through Extism's own http_request
// (extism:host/env), which the server must refuse whatever the plugin's allowed_hosts say: Extism
// then traps the call. Returns empty output if the request was made.
import { Config, Memory } from "@extism/as-pdk";
import { http_request } from "@extism/as-pdk/lib/env";

export function process_request_headers(): i32 {
  const url = Config.get("url");
  if (url === null) return 1;
  const request = Memory.allocateString('{"method":"GET","url":"' + url + '"}');
  http_request(request.offset, 0);
  return 0;
}
