// Bundles a Worker for workerd as wrangler does with nodejs_compat (.ci/runtimes/check.sh workerd;
// docs/runtimes.md): Node built-ins (with or without `node:`) and `cloudflare:*` stay imports for
// workerd to provide, a CommonJS `require` of one becomes an import, and everything else is bundled,
// pg with its `workerd` export (pg-cloudflare: TCP through cloudflare:sockets).
//   node build.mjs <entry> <outfile>
import { builtinModules } from "node:module";
import { build } from "esbuild";
const [entry, outfile] = process.argv.slice(2);
const builtins = new Set(builtinModules);
const OPTIONAL = /^(mongodb|ioredis|better-sqlite3|vitest|fast-check|@opentelemetry\/.*|@nats-io\/.*)$/;
await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  conditions: ["workerd", "worker", "browser"],
  mainFields: ["module", "main"],
  logLevel: "warning",
  plugins: [
    {
      name: "workerd-builtins",
      setup(b) {
        // The package's optional peers that a Worker does not use (other stores, OpenTelemetry):
        // an empty module, so the bundle neither needs them nor fails at load.
        b.onResolve({ filter: OPTIONAL }, ({ path }) => ({ path, namespace: "absent-peer" }));
        b.onLoad({ filter: /.*/, namespace: "absent-peer" }, () => ({ contents: "module.exports = {};", loader: "js" }));
        b.onResolve({ filter: /^[a-z_:/]+$/ }, ({ path, kind }) => {
          const name = path.startsWith("node:") ? path : builtins.has(path) ? `node:${path}` : null;
          if (name === null) return path.startsWith("cloudflare:") ? { path, external: true } : undefined;
          // `require("os")` in CommonJS (pino, pg): a module that imports it, since an ES module
          // has no require (wrangler does the same).
          if (kind === "require-call") return { path: name, namespace: "require-builtin" };
          return { path: name, external: true };
        });
        b.onLoad({ filter: /.*/, namespace: "require-builtin" }, ({ path }) => ({
          contents: `import * as m from "${path}"; module.exports = "default" in m ? m.default : m;`,
          loader: "js",
        }));
      },
    },
  ],
});
