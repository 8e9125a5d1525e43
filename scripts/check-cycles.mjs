#!/usr/bin/env node
/* global process, console */
// Fails when modules under src/ import each other in a cycle at runtime. Type-only imports
// (`import type`, `import { type A }`, `export type … from`) are erased by the compiler and do not
// count; `--types` lists their cycles too (for information: it never fails on them). A runtime
// cycle makes a module run before the one it reads from has finished (undefined bindings at load,
// order-dependent bundles). Run by `npm run lint`.
import { readFileSync, readdirSync, statSync, existsSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const root = resolve(process.cwd(), "src");
const withTypes = process.argv.includes("--types");

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : path.endsWith(".ts") ? [path] : [];
  });
}

// Static import and export-from statements (dynamic import() loads lazily and is left out).
const STATEMENT = /^\s*(import|export)\s+([^;]*?)\s+from\s+["']([^"']+)["']|^\s*import\s+["']([^"']+)["']/gm;

function edges(file) {
  const text = readFileSync(file, "utf8");
  const out = [];
  for (const m of text.matchAll(STATEMENT)) {
    const spec = m[3] ?? m[4];
    if (!spec.startsWith(".")) continue;
    const clause = (m[2] ?? "").trim();
    let typeOnly = /^type\s/.test(clause);
    const braces = clause.match(/^\{([\s\S]*)\}$/);
    if (!typeOnly && braces) {
      const names = braces[1]
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
      typeOnly = names.length > 0 && names.every((n) => n.startsWith("type "));
    }
    if (typeOnly && !withTypes) continue;
    const base = resolve(dirname(file), spec.replace(/\.js$/, ""));
    const target = [`${base}.ts`, join(base, "index.ts")].find((p) => existsSync(p));
    if (target) out.push(target);
  }
  return out;
}

const graph = new Map(files(root).map((f) => [f, edges(f)]));

// Tarjan's strongly connected components: every component of more than one module is a cycle.
let index = 0;
const stack = [];
const info = new Map();
const cycles = [];
function visit(v) {
  info.set(v, { index, low: index, onStack: true });
  index++;
  stack.push(v);
  for (const w of graph.get(v) ?? []) {
    if (!info.has(w)) {
      visit(w);
      info.get(v).low = Math.min(info.get(v).low, info.get(w).low);
    } else if (info.get(w).onStack) info.get(v).low = Math.min(info.get(v).low, info.get(w).index);
  }
  if (info.get(v).low === info.get(v).index) {
    const component = [];
    let w;
    do {
      w = stack.pop();
      info.get(w).onStack = false;
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(component);
  }
}
for (const v of graph.keys()) if (!info.has(v)) visit(v);

const name = (f) => relative(resolve(root, ".."), f);
if (cycles.length === 0) {
  console.log(`check-cycles: no ${withTypes ? "" : "runtime "}import cycle in src/ (${graph.size} modules)`);
} else {
  const what = withTypes ? "import cycles (type-only imports included)" : "runtime import cycles";
  console.error(`check-cycles: ${cycles.length} ${what} in src/:`);
  for (const c of cycles) console.error(`  ${c.map(name).sort().join(" <-> ")}`);
  if (!withTypes) process.exit(1);
}
