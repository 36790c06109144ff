// The streaming parts of the contract, observably (see README.md): chunks, trailers and state.
import { JSON } from "json-as";
import { Host } from "@extism/as-pdk";
import { outputString } from "../lib/io";

@json
class Body {
  @optional text: string | null = null;
}

@json
class Header {
  name: string = "";
  @optional value: string = "";
}

@json
class Message {
  @optional body: Body | null = null;
  @optional trailers: Array<Header> | null = null;
}

@json
class Input {
  @optional request: Message | null = null;
  @optional response: Message | null = null;
  @optional state: Body | null = null;
  @optional end_of_stream: bool = false;
  @optional chunk_index: i64 = 0;
}

function q(s: string): string {
  return JSON.stringify<string>(s);
}

function stateOf(input: Input): string {
  const state = input.state;
  return state === null || state.text === null ? "" : <string>state.text;
}

function textOf(message: Message | null): string {
  if (message === null || message.body === null) return "";
  const text = (<Body>message.body).text;
  return text === null ? "" : text;
}

// Each chunk becomes "<index[$]>" + its text upper-cased ("$" on the last); the state lists the indexes seen.
function chunk(message: Message | null, input: Input): i32 {
  const mark = "<" + input.chunk_index.toString() + (input.end_of_stream ? "$" : "") + ">";
  const state = stateOf(input) + input.chunk_index.toString();
  outputString('{"body":{"text":' + q(mark + textOf(message).toUpperCase()) + '},"state":{"text":' + q(state) + "}}");
  return 0;
}

// Trailers: x-state (the state so far) and x-seen-grpc-status (the grpc-status trailer, when present) are set.
function trailers(message: Message | null, input: Input): i32 {
  let status = "";
  if (message !== null && message.trailers !== null) {
    const list = <Array<Header>>message.trailers;
    for (let i = 0; i < list.length; i++) if (list[i].name == "grpc-status") status = list[i].value;
  }
  outputString(
    '{"headers":{"set":[{"name":"x-state","value":' + q(stateOf(input)) + '},' +
    '{"name":"x-seen-grpc-status","value":' + q(status) + "}]}}",
  );
  return 0;
}

function input(): Input {
  return JSON.parse<Input>(Host.inputString());
}

// The request headers start the state; the response headers show it.
export function process_request_headers(): i32 {
  outputString('{"state":{"text":"h"}}');
  return 0;
}

export function process_response_headers(): i32 {
  outputString('{"headers":{"set":[{"name":"x-state","value":' + q(stateOf(input())) + "}]}}");
  return 0;
}

export function process_request_body_chunk(): i32 {
  const i = input();
  return chunk(i.request, i);
}

export function process_response_body_chunk(): i32 {
  const i = input();
  return chunk(i.response, i);
}

export function process_request_trailers(): i32 {
  const i = input();
  return trailers(i.request, i);
}

export function process_response_trailers(): i32 {
  const i = input();
  return trailers(i.response, i);
}
