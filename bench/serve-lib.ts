/**
 * What bench/serve.ts and bench/serve-cpu.ts share: a SQLite store with an admin API key, a server
 * process started and its port read from its output, the funding of the users, and the load (admin
 * deductions, 16 keep-alive connections, autocannon in this process).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { newKey, type ApiKeyRecord } from "../src/serve/keys.js";
import { openStores } from "../src/serve/store.js";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..");
export const USERS = 100;
const SOURCE = process.env.BENCH_SOURCE === "1";

/**
 * `serve` on the SQLite file of the environment's CREDIT_SQLITE_PATH, as users run it: the built
 * CLI (dist/cli/index.js, what `npx credit-management serve` runs), or src/ through tsx with
 * BENCH_SOURCE=1 (bench/pkg.ts says why the two differ). Node's arguments, from the script on.
 */
export function serveArgs(): string[] {
  const tail = ["serve", "--port", "0", "--host", "127.0.0.1"];
  if (SOURCE) return ["--import", "tsx", "src/cli/index.ts", ...tail];
  if (!existsSync(join(root, "dist/cli/index.js")))
    throw new Error(
      "bench: dist/cli/index.js is missing: run `npm run build` first (npm run bench does), or set BENCH_SOURCE=1",
    );
  return ["dist/cli/index.js", ...tail];
}

/** The hand-mounted baseline (bench/serve-baseline.ts) on the SQLite file `path`; it loads the package as `serve` does. */
export const baselineArgs = (path: string): string[] => ["--import", "tsx", "bench/serve-baseline.ts", path];

export interface Started {
  child: ChildProcess;
  port: number;
}

/** A new admin key (the key, shown once, and its record). */
export const adminKey = () => newKey("admin", null, "bench");

/** Creates the SQLite store at `path` with the key `record` in it (serve's default store). */
export async function storeWithKey(path: string, record: ApiKeyRecord): Promise<void> {
  const stores = await openStores({ kind: "sqlite", path });
  await stores.db.init();
  await stores.keys.init();
  await stores.keys.insert(record);
  await stores.keys.close();
  await stores.db.close();
}

/**
 * Starts `node ...args` (from `cwd`; `serveArgs()` or `baselineArgs(path)`) and resolves its port
 * from its output (`port N`, or serve's "serving" line); `nodeArgs` go before (e.g. `--cpu-prof`),
 * and `launcher` before node itself (e.g. valgrind). A server that prints no port within
 * `timeoutMs` (default 30 s) is ended and the promise rejects, so a bench never waits for nothing.
 */
export function startServer(
  args: string[],
  env: Record<string, string>,
  { cwd = root, nodeArgs = [] as string[], launcher = [] as string[], timeoutMs = 30_000 } = {},
): Promise<Started> {
  const [command, ...before] = [...launcher, process.execPath];
  const child = spawn(command as string, [...before, ...nodeArgs, ...args], {
    cwd,
    // CREDIT_LOG_LEVEL=info: the port is read from serve's "serving" line, an info line (a level
    // above info in the caller's environment would hide it).
    env: { ...process.env, CREDIT_PG_URL: undefined, CREDIT_MONGO_URI: undefined, CREDIT_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let found = false;
    let text = "";
    child.stdout?.on("data", (d: Buffer) => {
      if (found) return; // serve's request lines: read and dropped, as a log shipper would
      text += d.toString();
      const m = /"port":(\d+)|^port (\d+)/m.exec(text);
      if (m !== null) {
        found = true;
        resolve({ child, port: Number(m[1] ?? m[2]) });
      }
    });
    child.on("exit", (code) => reject(new Error(`exited ${code} before listening`)));
    setTimeout(() => {
      if (found) return;
      child.kill("SIGTERM");
      reject(new Error(`no port printed within ${timeoutMs / 1000} s`));
    }, timeoutMs).unref();
  });
}

/** Gives each of the USERS users a billion credits. */
export async function fund(port: number, token: string): Promise<void> {
  for (let i = 0; i < USERS; i++) {
    const r = await fetch(`http://127.0.0.1:${port}/admin/credits/users/u${i}/add`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: '{"amount":1000000000}',
    });
    if (!r.ok) throw new Error(`add: ${r.status}`);
  }
}

/** Admin deductions of 1 over the users, for `seconds` or `amount` requests; resolves to the mean req/s. */
export async function deductions(
  port: number,
  token: string,
  how: { seconds: number } | { amount: number },
): Promise<number> {
  const requests = Array.from({ length: USERS }, (_, i) => ({
    method: "POST" as const,
    path: `/admin/credits/users/u${i}/deduct`,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: '{"amount":1}',
  }));
  const r = await autocannon({
    url: `http://127.0.0.1:${port}`,
    connections: 16,
    requests,
    ...("seconds" in how ? { duration: how.seconds } : { amount: how.amount }),
  });
  if (r.non2xx > 0 || r.errors > 0) throw new Error(`${r.non2xx} non-2xx, ${r.errors} errors`);
  return r.requests.average;
}
