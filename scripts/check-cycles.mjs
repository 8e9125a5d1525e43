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

function edges(file, types = withTypes) {
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
    if (typeOnly && !types) continue;
    const base = resolve(dirname(file), spec.replace(/\.js$/, ""));
    const target = [`${base}.ts`, join(base, "index.ts")].find((p) => existsSync(p));
    if (target) out.push(target);
  }
  return out;
}

const graph = new Map(files(root).map((f) => [f, edges(f)]));
const edgesWithTypes = (f) => edges(f, true);

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

// Rooms (the folders of src/, and its top-level files): a runtime import only runs downward,
// cli → serve → worker/console/http → services → db → domain → models (CONTRIBUTING.md, "Rooms").
// A higher rank may import a lower or equal one; an import from a lower rank to a higher one fails.
const RANK = {
  cli: 10,
  serve: 9,
  worker: 8,
  console: 8,
  http: 8,
  ai: 8,
  testing: 8,
  otel: 8,
  index: 8,
  store: 8,
  manager: 7,
  // The factories of the core's parts (src/core/parts.ts): each builds its service.
  parts: 6.5,
  // The package's own modules' store parts and the in-memory store with them; the store from the environment.
  "built-in-parts": 7,
  "from-env": 7,
  // The core's credit service with the modules' methods (src/credit-service.ts).
  "credit-service": 6.8,
  payments: 6.5,
  health: 6.5,
  transactions: 6.5,
  services: 6,
  db: 5,
  cache: 5,
  ledger: 5,
  queue: 5,
  redis: 5,
  nats: 5,
  webhooks: 5,
  schema: 4,
  domain: 3,
  // The core's module seam (src/core/module.ts): types, the registry and the account column helper.
  module: 3,
  // The core's parts: their public shape and how each builds (src/core/part-builds.ts), types and a registry.
  "part-builds": 3,
  models: 2,
  // credit-management/models: the core's models and every module's, beside them.
  "models-entry": 2,
  // credit-management/models: the shapes of the public methods, picked from models-entry.
  "models-public": 2.5,
  util: 1.5,
  logger: 1.5,
  diagnostics: 1.5,
  errors: 1,
  types: 1,
};
// Known back-edges, each with its reason; a new one fails.
const ALLOWED = new Map([
  [
    "src/schema/mongo-script.ts -> src/db/mongodb/layout.ts",
    "the MongoDB setup script is generated from the store's own layout (collections, indexes); moving the layout under schema/ is a later split",
  ],
]);
// A module (src/modules/<name>/, ARCHITECTURE.md, "Modules") is one folder for one feature; its files
// take the rank of the room their role belongs to, by name: the model is a model, the rules are
// domain, the store part is db, the service is a service, the routes are http, the page is the
// console's, the command is the CLI's; a name's part after a dash only tells files of one role
// apart (`service-checkouts.ts`). A role not listed fails, so a new kind of file gets its rank here.
const ROLE = {
  model: "models",
  rules: "domain",
  schema: "schema",
  store: "db",
  postgres: "db",
  mongodb: "db",
  sqlite: "db",
  memory: "db",
  service: "services",
  csv: "services",
  routes: "http",
  page: "console",
  cli: "cli",
  provider: "payments",
  providers: "payments",
  contract: "testing",
  // A module's error classes and codes (`errors.ts`), and its `CreditModule` (`module.ts`, docs/modules.md).
  errors: "errors",
  module: "credit-service",
  // A notification queue and its delivery (the webhooks module).
  queue: "queue",
  // A module's channels on `node:diagnostics_channel` (docs/observability.md).
  diagnostics: "diagnostics",
  // The service process's own parts (`credit-management serve`).
  serve: "serve",
};
// The core's folders (src/core/<room>) keep their room's rank: src/core/db is db, src/core/errors.ts errors.
const roomOf = (f) => {
  let parts = relative(root, f).split("/");
  if (parts[0] === "core") parts = parts.slice(1);
  if (parts[0] === "modules" && parts.length === 3) return `modules/${parts[1]}/${parts[2].replace(/\.ts$/, "")}`;
  return parts.length === 1 ? parts[0].replace(/\.ts$/, "") : parts[0];
};
// A file's role is its name up to the first dash: `service-checkouts.ts` is a service.
const rankOf = (room) => (room.startsWith("modules/") ? RANK[ROLE[room.split("/")[2].split("-")[0]]] : RANK[room]);
const upward = [];
for (const [from, targets] of graph) {
  if (withTypes) break;
  for (const to of targets) {
    const a = roomOf(from);
    const b = roomOf(to);
    if (a === b) continue;
    if (rankOf(a) === undefined || rankOf(b) === undefined) {
      const missing = rankOf(a) === undefined ? a : b;
      upward.push(
        missing.startsWith("modules/")
          ? `${name(from)} -> ${name(to)}: ${missing}.ts has no role in ROLE of scripts/check-cycles.mjs`
          : `${name(from)} -> ${name(to)}: room ${missing} has no rank in scripts/check-cycles.mjs`,
      );
    } else if (rankOf(a) < rankOf(b) && !ALLOWED.has(`${name(from)} -> ${name(to)}`)) {
      upward.push(`${name(from)} -> ${name(to)}: ${a} imports ${b}, a room above it`);
    }
  }
}

// The core (ARCHITECTURE.md, "Where the core ends") imports nothing of src/ outside src/core/ (no module,
// no layer, no adapter), type-only imports included. The layers (cli, serve, worker, console, http, …),
// the entry points and the stores' adapters wire modules in and may import them.
const isCore = (f) => relative(root, f).startsWith("core/");
const allEdges = new Map([...graph.keys()].map((f) => [f, withTypes ? graph.get(f) : edgesWithTypes(f)]));
const leaks = [];
for (const [from, targets] of allEdges) {
  if (!isCore(from)) continue;
  for (const to of targets) {
    if (relative(root, to).startsWith("modules/"))
      leaks.push(`${name(from)} -> ${name(to)}: the core imports a module`);
    else if (!isCore(to)) leaks.push(`${name(from)} -> ${name(to)}: the core imports a file outside src/core/`);
  }
}
// The stores (src/db/) import no module, type-only imports included: a module brings its store part
// to the store (`ModuleStorePart`, docs/writing-a-store.md, "A module's part").
const storeLeaks = [];
for (const [from, targets] of allEdges) {
  if (!relative(root, from).startsWith("db/")) continue;
  for (const to of targets)
    if (relative(root, to).startsWith("modules/"))
      storeLeaks.push(`${name(from)} -> ${name(to)}: a store imports a module`);
}
if (storeLeaks.length > 0) {
  console.error(`check-cycles: ${storeLeaks.length} imports from src/db/ into src/modules/:`);
  for (const l of storeLeaks) console.error(`  ${l}`);
  process.exitCode = 1;
} else if (!withTypes) {
  console.log("check-cycles: the stores (src/db/) import no module");
}
if (leaks.length > 0) {
  console.error(`check-cycles: ${leaks.length} imports cross the core's edge:`);
  for (const l of leaks) console.error(`  ${l}`);
  process.exitCode = 1;
} else if (!withTypes) {
  console.log("check-cycles: the core imports nothing of src/ outside src/core/");
}
if (upward.length > 0) {
  console.error(`check-cycles: ${upward.length} runtime imports run upward between rooms in src/:`);
  for (const u of upward) console.error(`  ${u}`);
  process.exitCode = 1;
}
if (cycles.length === 0) {
  console.log(`check-cycles: no ${withTypes ? "" : "runtime "}import cycle in src/ (${graph.size} modules)`);
} else {
  const what = withTypes ? "import cycles (type-only imports included)" : "runtime import cycles";
  console.error(`check-cycles: ${cycles.length} ${what} in src/:`);
  for (const c of cycles) console.error(`  ${c.map(name).sort().join(" <-> ")}`);
  if (!withTypes) process.exit(1);
}
