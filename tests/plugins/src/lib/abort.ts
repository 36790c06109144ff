// Replacement for AssemblyScript's `env.abort` import (which Extism cannot
// satisfy). Selected at build time with `--use abort=src/lib/abort/pluginAbort`
// (see build.mjs). It records the message as the Extism call error, then traps
// so that the host sees the call fail.
import { Memory } from "@extism/as-pdk";
import { error_set } from "@extism/as-pdk/lib/env";

let aborting = false;

function pluginAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  // Building the message allocates, and the allocation may itself be what
  // failed: a re-entered abort just traps. The flag is cleared before every
  // trap because globals survive a trapped call (the host may call again).
  if (aborting) {
    aborting = false;
    unreachable();
  }
  aborting = true;
  let msg = message === null ? "abort" : message;
  if (fileName !== null) {
    msg += " (" + fileName + ":" + line.toString() + ":" + column.toString() + ")";
  }
  error_set(Memory.allocateString(msg).offset);
  aborting = false;
  unreachable();
}
