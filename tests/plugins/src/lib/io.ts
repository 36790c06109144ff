import { Config, Host } from "@extism/as-pdk";

// Note: as-pdk 1.0.0's Host.outputString() passes the UTF-16 length as the
// byte length, which truncates non-ASCII output. Always encode explicitly.
export function outputString(s: string): void {
  Host.output(Uint8Array.wrap(String.UTF8.encode(s)));
}

export function configOr(key: string, fallback: string): string {
  const v = Config.get(key);
  return v === null ? fallback : v;
}
