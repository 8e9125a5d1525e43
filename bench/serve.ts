/**
 * `credit-management serve` (issue 41): requests per second of an admin deduction through the whole
 * service (API key check, request id, one pino line per request, the Prometheus metrics) against
 * the same handler mounted by hand in node:http (bench/serve-baseline.ts), both on a SQLite file
 * (the service's default store), each in its own process, measured in turns in the same run.
 * Target: serve >= 0.9× the hand-mounted handler.
 *   tsx bench/serve.ts       (also run by `npm run bench`)
 * BENCH_SERVE_SECONDS: seconds per turn (default 3); 16 keep-alive connections (autocannon, in this process).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { printTable, type BenchRow } from "./lib.js";
import { newKey } from "../src/serve/keys.js";
import { openStores } from "../src/serve/store.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const SECONDS = Number(process.env.BENCH_SERVE_SECONDS ?? 3);
const USERS = 100;

/** Starts a child and resolves its port from its output (`port N`, or serve's "serving" line). */
function start(args: string[], env: Record<string, string>): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, ["--import", "tsx", ...args], {
    cwd: root,
    // CREDIT_LOG_LEVEL=info: the port is read from serve's "serving" line, an info line (a level
    // above info in the caller's environment would hide it and the bench would wait for nothing).
    env: { ...process.env, CREDIT_PG_URL: "", CREDIT_MONGO_URI: "", CREDIT_LOG_LEVEL: "info", ...env },
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
  });
}

async function load(port: number, token: string, seconds: number): Promise<number> {
  const requests = Array.from({ length: USERS }, (_, i) => ({
    method: "POST" as const,
    path: `/admin/credits/users/u${i}/deduct`,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: '{"amount":1}',
  }));
  const r = await autocannon({ url: `http://127.0.0.1:${port}`, connections: 16, duration: seconds, requests });
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

export async function run(): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), "bench-serve-"));
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
    const serve = await start(["src/cli/index.ts", "serve", "--port", "0", "--host", "127.0.0.1"], {
      CREDIT_SQLITE_PATH: servePath,
    });
    children.push(serve.child);
    const hand = await start(["bench/serve-baseline.ts", join(dir, "hand.sqlite")], {});
    children.push(hand.child);
    await fund(serve.port, key);
    await fund(hand.port, "any");
    await load(serve.port, key, 1); // warm-up
    await load(hand.port, "any", 1);
    const a: number[] = [];
    const b: number[] = [];
    // Four turns, the order swapped each turn (ABBA), so neither side always runs first.
    for (let turn = 0; turn < 4; turn++) {
      if (turn % 2 === 0) {
        b.push(await load(hand.port, "any", SECONDS));
        a.push(await load(serve.port, key, SECONDS));
      } else {
        a.push(await load(serve.port, key, SECONDS));
        b.push(await load(hand.port, "any", SECONDS));
      }
    }
    const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
    const ratio = mean(a) / mean(b);
    const { loadavg } = await import("node:os");
    const note = `turns (req/s): hand ${b.map(Math.round).join(", ")}; serve ${a.map(Math.round).join(", ")}; load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`;
    return [
      {
        backend: "sqlite",
        scenario: "HTTP deduction: createCreditHandler in node:http by hand (16 conns)",
        opsPerSec: Math.round(mean(b)),
      },
      {
        backend: "sqlite",
        scenario: "HTTP deduction: credit-management serve (API key, logs, metrics)",
        opsPerSec: Math.round(mean(a)),
        baseline: "HTTP deduction: createCreditHandler in node:http by hand (16 conns)",
        ratio,
        target: ">= 0.90 of baseline",
        met: ratio >= 0.9,
        note,
      },
    ];
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await new Promise((resolve) => setTimeout(resolve, 500));
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) printTable(await run());
