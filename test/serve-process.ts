import { spawn, spawnSync } from "node:child_process";
import { inject } from "vitest";
import { runCli } from "../src/cli/run.js";

/**
 * `credit-management serve` and `keys` as child processes, from this run's build of the sources
 * (test/setup/cli-build.ts), for test/serve*.test.ts.
 */

interface Line {
  msg: string;
  [field: string]: unknown;
}

const BASE_ENV = {
  CREDIT_MONGO_URI: undefined,
  CREDIT_PG_URL: undefined,
  CREDIT_SQLITE_PATH: undefined,
  CREDIT_REDIS_URL: undefined,
};

export function cli(args: string[], env: Record<string, string>) {
  const r = spawnSync(process.execPath, [inject("cliEntry"), ...args], {
    env: { ...process.env, ...BASE_ENV, ...env },
    encoding: "utf8",
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * `credit-management keys ...` in this process, with the same environment as `cli`: for a test's
 * setup (the keys a served process is called with). The command itself, as a process, is tested
 * in test/serve.test.ts ("keys: each role ...").
 */
export async function keys(args: string[], env: Record<string, string>) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(
    ["keys", ...args],
    { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) },
    { env: { ...process.env, ...BASE_ENV, ...env } },
  );
  return { code, stdout, stderr };
}

/** `serve` as a child process on a free port; resolves once it logs "serving". */
export async function startServe(env: Record<string, string>, args: string[] = []) {
  const child = spawn(process.execPath, [inject("cliEntry"), "serve", "--port", "0", ...args], {
    env: { ...process.env, ...BASE_ENV, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: Line[] = [];
  let stderr = "";
  let rest = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${stderr}`)), 60_000);
    child.stdout.on("data", (d: Buffer) => {
      rest += d.toString();
      for (let at = rest.indexOf("\n"); at >= 0; at = rest.indexOf("\n")) {
        const line = JSON.parse(rest.slice(0, at)) as Line;
        rest = rest.slice(at + 1);
        lines.push(line);
        if (line.msg === "serving") {
          clearTimeout(timer);
          resolve(line.port as number);
        }
      }
    });
    void exited.then((code) => reject(new Error(`serve exited ${code}: ${stderr}`)));
  });
  const base = `http://127.0.0.1:${port}`;
  return {
    child,
    lines,
    base,
    exited,
    stderr: () => stderr,
    async stop() {
      child.kill("SIGTERM");
      return exited;
    },
  };
}

export type Served = Awaited<ReturnType<typeof startServe>>;

export async function call(
  s: Served,
  method: string,
  path: string,
  token?: string,
  body?: unknown,
  headers: Record<string, string> = {},
) {
  const r = await fetch(`${s.base}${path}`, {
    method,
    headers: {
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: r.status, body: json as Record<string, unknown> & { error?: { code: string } }, headers: r.headers };
}
