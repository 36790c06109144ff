// Answers configured endpoints directly; everything else goes to the upstream.
//
//   config:
//     health: /healthz                  # 200 {"status":"ok"}, also during maintenance
//     maintenance: {enabled: true, retry_after: 120, message: "back soon"}   # 503 for everything else
//     routes:                           # first match wins; `path` is a glob, `method` optional
//       - {path: /mock/user, method: GET, status: 200, json: {id: 7, name: Ada}, headers: {x-mock: "1"}}
//       - {path: /docs/*, redirect: https://docs.example.com/, status: 302}
//       - {path: /robots.txt, body: "User-agent: *\nDisallow: /\n", content_type: text/plain}
import { config, declarePhases, globMatch, Input, JsonValue, Output, Phase, run } from "@extproc/sdk";

function answer(route: JsonValue, out: Output): void {
  const redirect = route.get("redirect");
  const status = <i32>route.getNumber("status", redirect !== null ? 302 : 200);
  const r = out.respond(status).details("responder");
  if (redirect !== null) r.header("location", redirect.asString());
  const headers = route.get("headers");
  if (headers !== null) {
    for (let i = 0; i < headers.keys.length; i++) r.header(headers.keys[i], headers.values[i].asString());
  }
  const json = route.get("json");
  const body = route.get("body");
  if (json !== null) r.json(json);
  else if (body !== null) r.text(body.asString(), route.getString("content_type", "text/plain; charset=utf-8"));
}

function onRequest(input: Input, out: Output): void {
  const cfg = config();
  const path = input.request.pathOnly;
  const health = cfg.get("health");
  if (health !== null && path == health.asString()) {
    out.respond(200).details("responder_health").json(JsonValue.object().setString("status", "ok"));
    return;
  }
  const maintenance = cfg.get("maintenance");
  if (maintenance !== null && maintenance.getBool("enabled")) {
    const body = JsonValue.object()
      .setString("error", "maintenance")
      .setString("message", maintenance.getString("message", "The service is down for maintenance."));
    out.respond(503)
      .details("responder_maintenance")
      .header("retry-after", (<i64>maintenance.getNumber("retry_after", 60)).toString())
      .json(body);
    return;
  }
  const routes = cfg.get("routes");
  if (routes === null) return;
  for (let i = 0; i < routes.length; i++) {
    const route = routes.values[i];
    if (!globMatch(route.getString("path", ""), path)) continue;
    const method = route.get("method");
    if (method !== null && method.asString().toUpperCase() != input.request.method) continue;
    answer(route, out);
    return;
  }
}

export function generate_response(): i32 {
  return run(onRequest);
}

export function declare_phases(): i32 {
  return declarePhases([Phase.GENERATE_RESPONSE]);
}
