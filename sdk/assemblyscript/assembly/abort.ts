// Replacement for AssemblyScript's `env.abort` import, which Extism cannot provide: the message
// (with file and line) becomes the Extism call error, then the call traps. extproc-build wires it
// in with `--use abort=...`; the server logs the message with the plugin name.
import { setError } from "./io";

let aborting = false;

export function pluginAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  // Building the message allocates, and the allocation may be what failed: a re-entered abort
  // just traps. The flag is cleared before every trap because globals survive a trapped call.
  if (aborting) {
    aborting = false;
    unreachable();
  }
  aborting = true;
  let msg = message === null ? "abort" : message;
  if (fileName !== null) msg += " (" + fileName + ":" + line.toString() + ":" + column.toString() + ")";
  setError(msg);
  aborting = false;
  unreachable();
}
