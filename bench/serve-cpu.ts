/**
 * Where bench/serve.ts's gap goes: CPU time per request of `credit-management serve` and of the
 * hand-mounted handler (bench/serve-baseline.ts), each under the same fixed number of admin
 * deductions, read from /proc/<pid>/stat (user + system) before and after (Linux only).
 *   tsx bench/serve-cpu.ts [requests]       (default 20,000 per side and turn, 16 connections)
 * SERVE_CPU_ROUNDS: rounds of turns (default 2), each round in the reverse order of the one before.
 * The report: each side's mean CPU per request, and its difference to the hand-mounted one's
 * (docs/benchmarks.md, `credit-management serve`).
 * SERVE_CPU_PROF=dir: every server also writes a V8 CPU profile there (`node --cpu-prof`).
 * Extra environment for serve (and other) only: SERVE_ENV='{"CREDIT_METRICS":"off"}'.
 * SERVE_OTHER=dir: a third server, `serve` run from another checkout (its src/; e.g. an older commit
 * unpacked with `git archive`), measured in the same turns as "other".
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { newKey } from "../src/serve/keys.js";
import { openStores } from "../src/serve/store.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const REQUESTS = Number(process.argv[2] ?? 20_000);
const USERS = 100;
const PROF = process.env.SERVE_CPU_PROF;

function start(args: string[], env: Record<string, string>, cwd = root) {
  const prof = PROF === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", PROF];
  const child = spawn(process.execPath, [...prof, "--import", "tsx", ...args], {
    cwd,
    // CREDIT_LOG_LEVEL=info: the port is read from serve's "serving" line, an info line (a level
    // above info in the caller's environment would hide it and the bench would wait for nothing).
    env: { ...process.env, CREDIT_PG_URL: "", CREDIT_MONGO_URI: "", CREDIT_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise<{ child: ChildProcess; port: number }>((resolve, reject) => {
    let found = false;
    let text = "";
    child.stdout?.on("data", (d: Buffer) => {
      if (found) return;
      text += d.toString();
      const m = /"port":(\d+)|^port (\d+)/m.exec(text);
      if (m !== null) {
        found = true;
        resolve({ child, port: Number(m[1] ?? m[2]) });
      }
    });
    child.on("exit", (code) => reject(new Error(`exited ${code} before listening`)));
    // Never hold the shared bench lock for a server that does not say its port (a log level above info).
    setTimeout(() => {
      if (found) return;
      child.kill("SIGTERM");
      reject(new Error("no port printed within 30 s"));
    }, 30_000).unref();
  });
}

/** User + system CPU of a process, in ms (/proc/<pid>/stat, 100 ticks a second). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function load(port: number, token: string, amount: number) {
  const requests = Array.from({ length: USERS }, (_, i) => ({
    method: "POST" as const,
    path: `/admin/credits/users/u${i}/deduct`,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: '{"amount":1}',
  }));
  const r = await autocannon({ url: `http://127.0.0.1:${port}`, connections: 16, amount, requests });
  if (r.non2xx > 0 || r.errors > 0) throw new Error(`${r.non2xx} non-2xx, ${r.errors} errors`);
  return r.requests.average;
}

async function fund(port: number, token: string) {
  for (let i = 0; i < USERS; i++) {
    const r = await fetch(`http://127.0.0.1:${port}/admin/credits/users/u${i}/add`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: '{"amount":1000000000}',
    });
    if (!r.ok) throw new Error(`add: ${r.status}`);
  }
}

const dir = mkdtempSync(join(tmpdir(), "bench-serve-cpu-"));
const children: ChildProcess[] = [];
try {
  const servePath = join(dir, "serve.sqlite");
  const stores = await openStores({ kind: "sqlite", path: servePath }, {});
  await stores.db.init();
  await stores.keys.init();
  const { key, record } = newKey("admin", null, "bench");
  await stores.keys.insert(record);
  await stores.keys.close();
  await stores.db.close();
  const extra = JSON.parse(process.env.SERVE_ENV ?? "{}") as Record<string, string>;
  const serve = await start(["src/cli/index.ts", "serve", "--port", "0", "--host", "127.0.0.1"], {
    CREDIT_SQLITE_PATH: servePath,
    ...extra,
  });
  children.push(serve.child);
  const hand = await start(["bench/serve-baseline.ts", join(dir, "hand.sqlite")], {});
  children.push(hand.child);
  const sides: [string, { child: ChildProcess; port: number }, string][] = [
    ["hand", hand, "any"],
    ["serve", serve, key],
  ];
  const otherRoot = process.env.SERVE_OTHER;
  if (otherRoot !== undefined) {
    const otherPath = join(dir, "other.sqlite");
    const s2 = await openStores({ kind: "sqlite", path: otherPath }, {});
    await s2.db.init();
    await s2.keys.init();
    await s2.keys.insert(record);
    await s2.keys.close();
    await s2.db.close();
    const other = await start(
      ["src/cli/index.ts", "serve", "--port", "0", "--host", "127.0.0.1"],
      { CREDIT_SQLITE_PATH: otherPath, ...extra },
      otherRoot,
    );
    children.push(other.child);
    sides.push(["other", other, key]);
  }
  console.log(`pids: ${sides.map(([n, x]) => `${n} ${x.child.pid}`).join(", ")}`);
  for (const [, side, token] of sides) await fund(side.port, token);
  for (const [, side, token] of sides) await load(side.port, token, 2000); // warm-up
  const cpu = new Map<string, number[]>();
  const rounds = Number(process.env.SERVE_CPU_ROUNDS ?? 2);
  for (let round = 0; round < rounds; round++) {
    // Forward then backward each round (ABC CBA), so no side always runs first.
    const order = round % 2 === 0 ? sides : [...sides].reverse();
    for (const [name, side, token] of order) {
      const pid = side.child.pid as number;
      const before = cpuMs(pid);
      const rps = await load(side.port, token, REQUESTS);
      const per = ((cpuMs(pid) - before) * 1000) / REQUESTS;
      cpu.set(name, [...(cpu.get(name) ?? []), per]);
      console.log(`${name.padEnd(5)} ${REQUESTS} requests: ${Math.round(rps)} req/s, ${per.toFixed(1)} µs CPU/request`);
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const handMean = mean(cpu.get("hand") ?? []);
  for (const [name, xs] of cpu)
    console.log(
      `${name.padEnd(5)} mean ${mean(xs).toFixed(1)} µs CPU/request, ${(mean(xs) / handMean).toFixed(3)}× hand, +${(mean(xs) - handMean).toFixed(1)} µs`,
    );
} finally {
  for (const c of children) c.kill("SIGTERM");
  await new Promise((resolve) => setTimeout(resolve, 1500));
  rmSync(dir, { recursive: true, force: true });
}
