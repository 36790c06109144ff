// Builds every src/plugins/<name>.ts into build/<name>.wasm with the
// AssemblyScript compiler (the same `asc` that `npx asc` runs).
// Usage: npm run build
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const asc = join(here, "node_modules", "assemblyscript", "bin", "asc.js");

// Plugins that allocate per call and may be called many times get the
// garbage-collected runtime; the rest the smaller, never-freeing stub.
const INCREMENTAL = new Set(["echo", "flaky", "scripted", "scripted_streaming", "stream", "transform"]);

function ascArgs(name) {
  return [
    `src/plugins/${name}.ts`,
    "src/lib/abort.ts",
    "--outFile", `build/${name}.wasm`,
    "-Oz",
    "--runtime", INCREMENTAL.has(name) ? "incremental" : "stub",
    // Extism cannot satisfy AssemblyScript's env.abort import.
    "--use", "abort=src/lib/abort/pluginAbort",
    "--transform", "json-as",
  ];
}

function compile(name) {
  const args = ascArgs(name);
  console.log(`npx asc ${args.join(" ")}`);
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [asc, ...args], { cwd: here, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    child.on("close", (code) => {
      console.log(`  ${name}: ${code === 0 ? "ok" : "FAILED"} in ${((Date.now() - started) / 1000).toFixed(1)}s`);
      resolve({ name, code, output });
    });
  });
}

const names = readdirSync(join(here, "src", "plugins"))
  .filter((f) => f.endsWith(".ts"))
  .map((f) => f.slice(0, -3))
  .sort();
mkdirSync(join(here, "build"), { recursive: true });

const queue = [...names];
const failed = [];
const jobs = Math.max(1, Math.min(cpus().length, 4));
await Promise.all(
  Array.from({ length: jobs }, async () => {
    for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
      const r = await compile(name);
      if (r.code !== 0) failed.push(r);
    }
  }),
);
if (failed.length > 0) {
  for (const r of failed) console.error(`--- ${r.name} failed (exit ${r.code}) ---\n${r.output}`);
  console.error(`build failed: ${failed.map((r) => r.name).join(", ")}`);
  process.exit(1);
}
console.log(`built ${names.length} plugins into build/`);
