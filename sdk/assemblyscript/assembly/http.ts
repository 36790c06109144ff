// Outgoing HTTP through the server's extproc_http_request (docs/plugin-abi.md). The server lets a
// plugin reach only the hosts in its `allowed_hosts`, checks every redirect again, and bounds the
// response size and the time; a call that gets no answer comes back with `error` set to one of
// HttpErrorKind's values instead of failing the plugin call.
import { Body, Headers } from "./contract";
import { isUtf8 } from "./util";
import { base64Encode } from "./base64";
import { extproc_http_request, free } from "./env";
import { JsonValue } from "./json";
import { fromExtism, toExtism } from "./io";

/**
 * Why a call got no answer: the values of `HttpResponse.error`. Getters rather than constants, so a
 * plugin that makes no HTTP call carries none of these strings.
 */
export class HttpErrorKind {
  /** The request is malformed or over a limit (the message says which); also a malformed redirect. */
  static get BAD_REQUEST(): string { return "bad_request"; }
  /** The URL, or a redirect, is not http(s) to a host in the plugin's `allowed_hosts`. */
  static get HOST_REFUSED(): string { return "host_refused"; }
  static get TOO_MANY_REDIRECTS(): string { return "too_many_redirects"; }
  /** The response body is over the plugin's `max_http_response_bytes`. */
  static get TOO_LARGE(): string { return "too_large"; }
  /** The call's time ran out: its `timeoutMs`, or what the plugin's `timeout_ms` left for it. */
  static get TIMEOUT(): string { return "timeout"; }
  /** Name resolution, connect or TLS failed, the connection broke, or the answer was not HTTP. */
  static get CONNECTION(): string { return "connection"; }
  /** The server could not run the call at all (its log says why). */
  static get INTERNAL(): string { return "internal"; }
}

export class HttpResponse {
  constructor(
    /** The final status after redirects; 0 when `error` is set. */
    public status: i32,
    public body: Uint8Array,
    public headers: Headers = new Headers(),
    /** The URL the final response came from. */
    public url: string = "",
    /** "" when the server answered (any status); otherwise an HttpErrorKind value. */
    public error: string = "",
    /** What went wrong, naming the URL; "" when `error` is "". */
    public message: string = "",
  ) {}

  text(): string {
    return String.UTF8.decode(this.body.buffer);
  }

  /** The body as JSON; null when it is not valid JSON. */
  json(): JsonValue | null {
    return JsonValue.parseBytes(this.body);
  }

  /** The first value of response header `name` (any case), or null. */
  header(name: string): string | null {
    return this.headers.get(name);
  }

  static failed(kind: string, message: string): HttpResponse {
    return new HttpResponse(0, new Uint8Array(0), new Headers(), "", kind, message);
  }
}

export class Http {
  /**
   * One request; `headers` are name/value pairs (the server sets host, content-length and the other
   * framing headers itself). `timeoutMs` > 0 ends the call sooner than the plugin's own timeout would;
   * `maxRedirects` >= 0 replaces the server's default of 5 (0: a 3xx is returned as it is).
   */
  static request(
    method: string,
    url: string,
    headers: string[][] = [],
    body: Uint8Array | null = null,
    timeoutMs: i32 = 0,
    maxRedirects: i32 = -1,
  ): HttpResponse {
    const req = JsonValue.object().setString("method", method).setString("url", url);
    const list = JsonValue.array();
    for (let i = 0; i < headers.length; i++) {
      list.push(JsonValue.object().setString("name", headers[i][0]).setString("value", headers[i][1]));
    }
    req.set("headers", list);
    if (body !== null) {
      const b = JsonValue.object();
      if (isUtf8(body)) b.set("text", JsonValue.stringUtf8(body));
      else b.setString("data", base64Encode(body));
      req.set("body", b);
    }
    if (timeoutMs > 0) req.set("timeout_ms", JsonValue.integer(timeoutMs));
    if (maxRedirects >= 0) req.set("max_redirects", JsonValue.integer(maxRedirects));

    const r = toExtism(req.toBytes());
    const offset = extproc_http_request(r);
    free(r);
    if (offset == 0) return HttpResponse.failed(HttpErrorKind.INTERNAL, "extproc_http_request failed; see the server log");
    const answer = JsonValue.parseBytes(fromExtism(offset));
    free(offset);
    if (answer === null) return HttpResponse.failed(HttpErrorKind.INTERNAL, "extproc_http_request answered no JSON");
    const error = answer.get("error");
    if (error !== null) return HttpResponse.failed(error.getString("kind"), error.getString("message"));
    const received = Body.from(answer.get("body"));
    return new HttpResponse(
      <i32>answer.getNumber("status"),
      received === null ? new Uint8Array(0) : received.bytes(),
      Headers.from(answer.get("headers")),
      answer.getString("url"),
    );
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
