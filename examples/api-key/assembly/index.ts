// Lets a request through only with a known API key; answers 401 otherwise.
//
//   config:
//     header: x-api-key                 # where the key is read from (default x-api-key)
//     keys: {k-3f9a2c: team-a, k-77be01: team-b}   # key -> client name
//     forward_as: x-client              # optional: tell the upstream who called (set to the client name)
//     public: ["/healthz", "/public/*"] # paths that need no key
//
// The key header itself is removed before the request goes upstream.
import { config, declarePhases, globMatch, Input, JsonValue, Output, Phase, run } from "@extproc/sdk";

function onRequest(input: Input, out: Output): void {
  const cfg = config();
  const open = cfg.getStrings("public");
  const path = input.request.pathOnly;
  for (let i = 0; i < open.length; i++) if (globMatch(open[i], path)) return;
  const header = cfg.getString("header", "x-api-key");
  const key = input.request.headers.get(header);
  const keys = cfg.get("keys");
  let client: JsonValue | null = null;
  if (key !== null && keys !== null) client = keys.get(key);
  if (client === null) {
    out.respond(401)
      .details(key === null ? "api_key_missing" : "api_key_unknown")
      .header("www-authenticate", 'ApiKey header="' + header + '"')
      .json(JsonValue.object().setString("error", key === null ? "missing API key" : "unknown API key"));
    return;
  }
  out.removeHeader(header);
  const forwardAs = cfg.get("forward_as");
  if (forwardAs !== null) out.setHeader(forwardAs.asString(), client.asString());
}

export function process_request_headers(): i32 {
  return run(onRequest);
}

export function declare_phases(): i32 {
  return declarePhases([Phase.REQUEST_HEADERS]);
}
