// Rewrites JSON request and response bodies: removes (redacts) listed fields at any depth and
// renames keys. Bodies that are not JSON pass through untouched. The server fixes content-length.
//
//   config:
//     request:  {redact: [ssn, password], rename: {name: full_name}}
//     response: {redact: [internal_id], rename: {}, replacement: "***"}
//
// With `replacement`, redacted fields keep their key and get that string instead of disappearing.
import { Body, config, declarePhases, Headers, Input, JsonValue, Log, Output, Phase, run } from "@extproc/sdk";

function isJson(headers: Headers): bool {
  const type = headers.get("content-type");
  if (type === null) return false;
  const t = type.toLowerCase();
  return t.startsWith("application/json") || (t.indexOf("+json") >= 0);
}

/** Applies the rules to every object in the document; returns whether anything changed. */
function transform(value: JsonValue, redact: Array<string>, rename: JsonValue | null, replacement: JsonValue | null): bool {
  let changed = false;
  if (value.isObject) {
    for (let i = 0; i < redact.length; i++) {
      if (!value.has(redact[i])) continue;
      if (replacement === null) value.remove(redact[i]);
      else value.set(redact[i], replacement);
      changed = true;
    }
    if (rename !== null) {
      for (let i = 0; i < rename.keys.length; i++) {
        if (value.rename(rename.keys[i], rename.values[i].asString())) changed = true;
      }
    }
  }
  if (value.isObject || value.isArray) {
    const children = value.values;
    for (let i = 0; i < children.length; i++) {
      if (transform(children[i], redact, rename, replacement)) changed = true;
    }
  }
  return changed;
}

function rewrite(rules: JsonValue | null, headers: Headers, body: Body | null, out: Output): void {
  if (rules === null || body === null || !isJson(headers)) return;
  const doc = body.json();
  if (doc === null) {
    Log.debug("body says JSON but does not parse; passed through");
    return;
  }
  const replacement = rules.get("replacement");
  if (transform(doc, rules.getStrings("redact"), rules.get("rename"), replacement)) out.setBodyJson(doc);
}

function onRequest(input: Input, out: Output): void {
  rewrite(config().get("request"), input.request.headers, input.request.body, out);
}

function onResponse(input: Input, out: Output): void {
  const response = input.response;
  if (response !== null) rewrite(config().get("response"), response.headers, response.body, out);
}

export function process_request_body(): i32 {
  return run(onRequest);
}

export function process_response_body(): i32 {
  return run(onResponse);
}

// Only the bodies the config transforms: each one Envoy buffers for the server costs a round trip.
export function declare_phases(): i32 {
  const phases = new Array<string>();
  if (config().get("request") !== null) phases.push(Phase.REQUEST_BODY);
  if (config().get("response") !== null) phases.push(Phase.RESPONSE_BODY);
  return declarePhases(phases);
}
