// Token-bucket rate limiting per client. The buckets live in the server's key-value store, so every
// pooled instance of the plugin (and every request thread) draws from the same bucket.
//
//   config:
//     capacity: 10              # burst size: requests allowed at once
//     refill_per_second: 5      # tokens added per second, up to capacity
//     key_header: x-api-key     # optional: bucket per value of this header; default: per client address
//
// Over the limit: 429 with Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset.
import { config, declarePhases, Input, JsonValue, KV, Log, nowMs, Output, Phase, run, stripPort } from "@extproc/sdk";

// Attempts at the read-modify-write before giving up; each failed attempt means another request
// changed the bucket in between, so this bounds work under contention, not correctness.
const MAX_ATTEMPTS = 64;

class Bucket {
  constructor(public tokens: f64, public atMs: i64) {}

  static parse(text: string | null, capacity: f64, now: i64): Bucket {
    if (text === null) return new Bucket(capacity, now);
    const sep = text.indexOf(":");
    if (sep < 0) return new Bucket(capacity, now);
    return new Bucket(parseFloat(text.substring(0, sep)), I64.parseInt(text.substring(sep + 1)));
  }

  toString(): string {
    return this.tokens.toString() + ":" + this.atMs.toString();
  }
}

function clientKey(input: Input): string {
  const header = config().get("key_header");
  if (header !== null) {
    const value = input.request.headers.get(header.asString());
    if (value !== null) return "h:" + value;
  }
  const address = input.attribute("source.address");
  return "a:" + (address === null ? "unknown" : stripPort(address));
}

function reject(out: Output, capacity: f64, rate: f64, tokens: f64): void {
  // Seconds until one whole token is back, and until the bucket is full again.
  const retryAfter = rate > 0 ? <i64>Math.ceil((1 - tokens) / rate) : 3600;
  const reset = rate > 0 ? <i64>Math.ceil((capacity - tokens) / rate) : 3600;
  out.respond(429)
    .details("rate_limited")
    .header("retry-after", max<i64>(retryAfter, 1).toString())
    .header("x-ratelimit-limit", (<i64>capacity).toString())
    .header("x-ratelimit-remaining", "0")
    .header("x-ratelimit-reset", max<i64>(reset, 1).toString())
    .json(JsonValue.object().setString("error", "rate limited"));
}

function onRequest(input: Input, out: Output): void {
  const cfg = config();
  const capacity = cfg.getNumber("capacity", 10);
  const rate = cfg.getNumber("refill_per_second", 1);
  const key = clientKey(input);
  // Once untouched for this long the bucket is full again, so the key can expire.
  const ttlMs: i64 = rate > 0 ? <i64>Math.ceil((capacity / rate) * 1000) + 1000 : 0;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const now = nowMs();
    const current = KV.get(key);
    const bucket = Bucket.parse(current, capacity, now);
    const elapsed = <f64>max<i64>(now - bucket.atMs, 0) / 1000;
    const tokens = min(capacity, bucket.tokens + elapsed * rate);
    if (tokens < 1) {
      reject(out, capacity, rate, tokens);
      return;
    }
    if (KV.compareAndSet(key, current, new Bucket(tokens - 1, now).toString(), ttlMs)) return;
  }
  Log.warn("bucket " + key + " too contended; request rejected");
  reject(out, capacity, rate, 0);
}

export function process_request_headers(): i32 {
  return run(onRequest);
}

export function declare_phases(): i32 {
  return declarePhases([Phase.REQUEST_HEADERS]);
}
