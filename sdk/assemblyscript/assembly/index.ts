// extproc SDK for AssemblyScript plugins. See docs/writing-plugins.md.
export { Body, config, declarePhases, fail, Handler, Headers, ImmediateResponse, Input, Output, Phase, readInput, Request, Response, run } from "./contract";
export { ByteBuffer, JsonKind, JsonValue, JsonWriter, quote } from "./json";
export { base64Decode, base64Encode } from "./base64";
export { INCR_ERROR, KV, Log, nowMs } from "./host";
export { formEncode, Http, HttpErrorKind, HttpResponse } from "./http";
export { readInputBytes, writeOutputBytes, writeOutputString } from "./io";
export { fnv1a64Hex, globMatch, isUtf8, parseHttpDate, stripPort } from "./util";
