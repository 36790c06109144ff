// Outgoing HTTP through Extism's kernel (http_request / http_status_code). The server lets a plugin
// reach only the hosts in its `allowed_hosts`; a refused host, a response over
// `max_http_response_bytes` or a request that outlasts the plugin's timeout fails the whole call,
// and the plugin's `on_error` policy applies.
import { free, http_request, http_status_code } from "./env";
import { JsonValue, quote } from "./json";
import { fromExtism, stringToExtism, toExtism } from "./io";

export class HttpResponse {
  constructor(public status: i32, public body: Uint8Array) {}

  text(): string {
    return String.UTF8.decode(this.body.buffer);
  }

  /** The body as JSON; null when it is not valid JSON. */
  json(): JsonValue | null {
    return JsonValue.parseBytes(this.body);
  }
}

export class Http {
  /** One request; `headers` are name/value pairs. */
  static request(method: string, url: string, headers: string[][] = [], body: Uint8Array | null = null): HttpResponse {
    let req = '{"method":' + quote(method) + ',"url":' + quote(url) + ',"headers":{';
    for (let i = 0; i < headers.length; i++) {
      if (i > 0) req += ",";
      req += quote(headers[i][0]) + ":" + quote(headers[i][1]);
    }
    req += "}}";
    const r = stringToExtism(req);
    const b = body === null ? <u64>0 : toExtism(body);
    const offset = http_request(r, b);
    free(r);
    if (b != 0) free(b);
    const status = http_status_code();
    if (offset == 0) return new HttpResponse(status, new Uint8Array(0));
    const bytes = fromExtism(offset);
    free(offset);
    return new HttpResponse(status, bytes);
  }

  static get(url: string, headers: string[][] = []): HttpResponse {
    return Http.request("GET", url, headers);
  }

  static post(url: string, body: string, headers: string[][] = []): HttpResponse {
    return Http.request("POST", url, headers, Uint8Array.wrap(String.UTF8.encode(body)));
  }
}

/** `s` percent-encoded for a URL query or a form body (everything but RFC 3986's unreserved characters). */
export function formEncode(s: string): string {
  const bytes = Uint8Array.wrap(String.UTF8.encode(s));
  const hex = "0123456789ABCDEF";
  let out = "";
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    const unreserved = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) ||
      c == 0x2d || c == 0x2e || c == 0x5f || c == 0x7e;
    out += unreserved ? String.fromCharCode(c) : "%" + hex.charAt(c >> 4) + hex.charAt(c & 15);
  }
  return out;
}
