#!/usr/bin/env node
// Compiles an AssemblyScript extproc plugin into one .wasm file.
// Usage: extproc-build [ENTRY.ts] -o OUT.wasm   (ENTRY defaults to assembly/index.ts)
// Same flags for every plugin, so builds are reproducible byte for byte.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const sdkDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function usage(message) {
  console.error(`extproc-build: ${message}\nusage: extproc-build [ENTRY.ts] -o OUT.wasm`);
  process.exit(2);
}

const args = process.argv.slice(2);
let entry = "assembly/index.ts";
let out = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "-o" || args[i] === "--out") out = args[++i];
  else if (args[i].startsWith("-")) usage(`unknown option ${args[i]}`);
  else entry = args[i];
}
if (!out) usage("missing -o OUT.wasm");
if (!existsSync(entry)) usage(`entry file not found: ${entry}`);

// asc comes from the plugin's own node_modules (the SDK lists assemblyscript as a peer dependency).
let asc;
try {
  asc = createRequire(join(process.cwd(), "package.json")).resolve("assemblyscript/bin/asc.js");
} catch {
  usage("assemblyscript is not installed here; run `npm install` first");
}

// The abort handler must be compiled in as a file of this build and named by its path relative to
// the working directory: that path is how asc names its functions.
const abortFile = relative(process.cwd(), join(sdkDir, "assembly", "abort.ts"));
const abortName = abortFile.replace(/\\/g, "/").replace(/\.ts$/, "");
const ascArgs = [
  entry,
  abortFile,
  "--outFile", out,
  "-O3",
  // The minimal runtime collects only when asked; run() collects after every call. The incremental
  // collector gave memory back too, but its allocation-time work made small calls three times slower.
  "--runtime", "minimal",
  "--use", `abort=${abortName}/pluginAbort`,
];
console.log(`asc ${ascArgs.join(" ")}`);
const result = spawnSync(process.execPath, [asc, ...ascArgs], { stdio: "inherit" });
process.exit(result.status ?? 1);
