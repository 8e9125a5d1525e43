import type * as NodeModule from "node:module";
import { ConfigurationError } from "../../core/errors.js";
import { onBun } from "../../core/util/runtime.js";
import { origin } from "../../core/db/store/errors.js";

// better-sqlite3 13 and later need Node.js 22: on Node.js 20 they crash the process (a segmentation
// fault opening a database), past any try/catch. The store reads the installed version from its
// package.json before loading the driver and refuses the pair with a ConfigurationError that says
// which version to install (docs/runtimes.md).

const major = (version: string | undefined): number => Number(/^v?(\d+)\./.exec(version ?? "")?.[1] ?? Number.NaN);

/**
 * Why `better-sqlite3` at `driverVersion` cannot run on Node.js `nodeVersion`, or null when it can
 * (or when either version is unknown).
 */
export function driverMismatch(driverVersion: string | undefined, nodeVersion: string | undefined): string | null {
  const driver = major(driverVersion);
  const node = major(nodeVersion);
  if (!(driver >= 13) || !(node < 22)) return null;
  return (
    `better-sqlite3 ${driverVersion} needs Node.js 22 or later and crashes on Node.js ${nodeVersion}: ` +
    "on Node.js 20 install better-sqlite3 12 (npm install better-sqlite3@12), or run Node.js 22 or 24"
  );
}

/**
 * The version of the `better-sqlite3` that `import("better-sqlite3")` would load, read from its
 * package.json as found from each of `bases` (the app's entry script, the working folder) in turn;
 * undefined when none finds it or the runtime cannot say.
 */
export function installedDriverVersion(bases: readonly string[]): string | undefined {
  const get = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process?.getBuiltinModule;
  let createRequire: typeof NodeModule.createRequire | undefined;
  try {
    createRequire = (get?.("node:module") as typeof NodeModule | undefined)?.createRequire;
  } catch {
    createRequire = undefined;
  }
  if (createRequire === undefined) return undefined;
  for (const base of bases) {
    try {
      const require = createRequire(base);
      const pkg = require(require.resolve("better-sqlite3/package.json")) as { version?: unknown };
      if (typeof pkg.version === "string") return pkg.version;
    } catch {
      // not found from here: the next base
    }
  }
  return undefined;
}

/**
 * Throws a `ConfigurationError` when the installed `better-sqlite3` cannot run on this Node.js
 * (13 and later on Node.js 20), before it is loaded. Not under Bun or Deno, which report a Node.js
 * version of their own. `versions` stands in for the installed driver and the runtime in tests.
 */
export function refuseDriverForNode(versions?: { driver: string | undefined; node: string | undefined }): void {
  const g = globalThis as {
    Deno?: unknown;
    process?: { argv?: string[]; versions?: { node?: string }; cwd?: () => string };
  };
  if (versions === undefined && (onBun() || g.Deno !== undefined)) return;
  const bases = [g.process?.argv?.[1], g.process?.cwd ? `${g.process.cwd()}/` : undefined].filter(
    (b): b is string => typeof b === "string" && b !== "",
  );
  const { driver, node } = versions ?? { driver: installedDriverVersion(bases), node: g.process?.versions?.node };
  const why = driverMismatch(driver, node);
  if (why !== null) throw new ConfigurationError(origin("sqlite", why));
}
