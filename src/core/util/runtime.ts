import { ConfigurationError } from "../errors.js";

/**
 * The JavaScript runtime this process runs on, in words (for errors and logs): "Cloudflare Workers
 * (workerd)", "Deno 2.9.6", "Bun 1.4.5", "Node.js v22.23.3", or "an edge runtime".
 */
export function runtimeName(): string {
  const g = globalThis as {
    navigator?: { userAgent?: string };
    Deno?: { version?: { deno?: string } };
    Bun?: { version?: string };
    EdgeRuntime?: unknown;
    process?: { versions?: { node?: string } };
  };
  if (g.navigator?.userAgent === "Cloudflare-Workers") return "Cloudflare Workers (workerd)";
  if (g.Deno !== undefined) return `Deno ${g.Deno.version?.deno ?? ""}`.trim();
  if (g.Bun !== undefined) return `Bun ${g.Bun.version ?? ""}`.trim();
  if (g.EdgeRuntime !== undefined) return "an edge runtime";
  const node = g.process?.versions?.node;
  return node === undefined ? "this runtime" : `Node.js v${node}`;
}

/** True under Bun (which sets `Bun` and `process.versions.bun`). */
export function onBun(): boolean {
  const g = globalThis as { Bun?: unknown; process?: { versions?: { bun?: string } } };
  return g.Bun !== undefined || g.process?.versions?.bun !== undefined;
}

/** True on Cloudflare Workers (workerd): no file system of its own, no threads, no native addons. */
export function onWorkers(): boolean {
  return (globalThis as { navigator?: { userAgent?: string } }).navigator?.userAgent === "Cloudflare-Workers";
}

/**
 * Refuses, at construction, a part that cannot work on Cloudflare Workers (docs/runtimes.md): a
 * `ConfigurationError` naming the runtime and what to use instead, never a failure at the first
 * request.
 */
export function refuseOnWorkers(what: string, instead: string): void {
  if (onWorkers()) throw new ConfigurationError(`${what} cannot run on ${runtimeName()}: ${instead}`);
}

/**
 * A Node.js built-in module, loaded when the part that needs it runs rather than when the package
 * is imported (`process.getBuiltinModule`: Node.js 20.16+, Bun, Deno, workerd), so that importing
 * the package needs no Node-only module on runtimes that lack one (docs/runtimes.md). Throws a
 * `ConfigurationError` naming the runtime when it is not there.
 */
export function nodeBuiltin<T>(name: `node:${string}`): T {
  const get = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process?.getBuiltinModule;
  let module: unknown;
  try {
    module = get?.(name);
  } catch {
    module = undefined;
  }
  if (module === undefined || module === null) {
    throw new ConfigurationError(`${name} is not available on ${runtimeName()}`);
  }
  return module as T;
}
