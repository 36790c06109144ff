// Adds, overwrites, removes and renames request and response headers, as configured:
//
//   config:
//     request:  {set: {x-team: payments}, add: {x-via: extproc}, remove: [x-debug], rename: {x-old: x-new}}
//     response: {set: {...}, add: {...}, remove: [server], rename: {...}}
//
// `set` replaces every value (adds the header when absent), `add` appends one more value (a list
// adds several), `remove` drops every value, `rename` moves every value to the new name.
import { config, declarePhases, Headers, Input, JsonValue, Output, Phase, run } from "@extproc/sdk";

function valuesOf(v: JsonValue): Array<string> {
  const out = new Array<string>();
  if (v.isArray) {
    for (let i = 0; i < v.length; i++) out.push(v.values[i].asString());
  } else {
    out.push(v.asString());
  }
  return out;
}

function rewrite(rules: JsonValue | null, headers: Headers, out: Output): void {
  if (rules === null) return;
  const remove = rules.getStrings("remove");
  for (let i = 0; i < remove.length; i++) out.removeHeader(remove[i]);
  const rename = rules.get("rename");
  if (rename !== null) {
    for (let i = 0; i < rename.keys.length; i++) {
      const from = rename.keys[i];
      // Bytes, not text: a value that is not UTF-8 moves unchanged.
      const values = headers.getAllBytes(from);
      if (values.length == 0) continue;
      out.removeHeader(from);
      const to = rename.values[i].asString();
      for (let j = 0; j < values.length; j++) out.appendHeaderBytes(to, values[j]);
    }
  }
  const set = rules.get("set");
  if (set !== null) {
    for (let i = 0; i < set.keys.length; i++) {
      const values = valuesOf(set.values[i]);
      out.setHeader(set.keys[i], values.length > 0 ? values[0] : "");
      for (let j = 1; j < values.length; j++) out.appendHeader(set.keys[i], values[j]);
    }
  }
  const add = rules.get("add");
  if (add !== null) {
    for (let i = 0; i < add.keys.length; i++) {
      const values = valuesOf(add.values[i]);
      for (let j = 0; j < values.length; j++) out.appendHeader(add.keys[i], values[j]);
    }
  }
}

function onRequest(input: Input, out: Output): void {
  rewrite(config().get("request"), input.request.headers, out);
}

function onResponse(input: Input, out: Output): void {
  const response = input.response;
  if (response !== null) rewrite(config().get("response"), response.headers, out);
}

export function process_request_headers(): i32 {
  return run(onRequest);
}

export function process_response_headers(): i32 {
  return run(onResponse);
}

// Only the sides the config rewrites: with request rules alone, Envoy is never asked for the response.
export function declare_phases(): i32 {
  const phases = new Array<string>();
  if (config().get("request") !== null) phases.push(Phase.REQUEST_HEADERS);
  if (config().get("response") !== null) phases.push(Phase.RESPONSE_HEADERS);
  return declarePhases(phases);
}
