import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { logDestination } from "../src/serve/server.js";
import { call, keys, startServe } from "./serve-process.js";

/** serve's log lines written in batches (docs/service.md, "Logs"; CREDIT_LOG_FLUSH_MS). */

const line = (level: number, msg: string) => `{"level":${level},"time":1,"msg":"${msg}"}\n`;

describe("serve: logDestination", () => {
  afterEach(() => vi.useRealTimers());

  it("holds info lines up to flushMs and writes them in one write, in order", () => {
    vi.useFakeTimers();
    const writes: string[] = [];
    const d = logDestination((t) => writes.push(t), 100);
    d.write(line(30, "a"));
    d.write(line(30, "b"));
    expect(writes).toEqual([]);
    vi.advanceTimersByTime(99);
    expect(writes).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(writes).toEqual([line(30, "a") + line(30, "b")]);
    // A line after a flush starts a new wait of its own.
    d.write(line(30, "c"));
    vi.advanceTimersByTime(100);
    expect(writes).toEqual([line(30, "a") + line(30, "b"), line(30, "c")]);
    vi.advanceTimersByTime(1000);
    expect(writes).toHaveLength(2); // nothing held: nothing written
  });

  it("writes a warning or an error at once, after the lines held before it", () => {
    vi.useFakeTimers();
    const writes: string[] = [];
    const d = logDestination((t) => writes.push(t), 1000);
    d.write(line(30, "request"));
    d.write(line(50, "request failed"));
    expect(writes).toEqual([line(30, "request") + line(50, "request failed")]);
    d.write(line(40, "warn"));
    d.write(line(60, "fatal"));
    expect(writes).toEqual([line(30, "request") + line(50, "request failed"), line(40, "warn"), line(60, "fatal")]);
    d.write(line(20, "debug"));
    expect(writes).toHaveLength(3);
    d.flush();
    expect(writes.at(-1)).toBe(line(20, "debug"));
  });

  it("writes once 64 KiB are held, flush() writes the rest, and flushMs 0 writes each line", () => {
    vi.useFakeTimers();
    const writes: string[] = [];
    const d = logDestination((t) => writes.push(t), 10_000);
    const big = line(30, "x".repeat(1000));
    for (let i = 0; i < 70; i++) d.write(big);
    expect(writes).toHaveLength(1);
    expect(writes[0]?.length).toBeGreaterThanOrEqual(65_536);
    d.flush();
    expect(writes.join("")).toBe(big.repeat(70));
    d.flush();
    expect(writes).toHaveLength(2);
    const each: string[] = [];
    const at = logDestination((t) => each.push(t), 0);
    at.write(line(30, "a"));
    at.write(line(30, "b"));
    expect(each).toEqual([line(30, "a"), line(30, "b")]);
  });
});

describe("serve: request lines reach stdout (a process)", () => {
  const dir = mkdtempSync(join(tmpdir(), "serve-log-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("within CREDIT_LOG_FLUSH_MS, and at SIGTERM when the interval is far off", async () => {
    const env = { CREDIT_SQLITE_PATH: join(dir, "log.sqlite") };
    const key = (await keys(["create", "--role", "user:lee"], env)).stdout.trim();
    const s = await startServe({ ...env, CREDIT_LOG_FLUSH_MS: "300" });
    try {
      const sent = Date.now();
      expect((await call(s, "GET", "/credits/balance", key, undefined, { "x-request-id": "soon" })).status).toBe(200);
      await expect.poll(() => s.lines.some((l) => l.reqId === "soon"), { timeout: 5000, interval: 20 }).toBe(true);
      // Up to 300 ms held, plus the time to read the pipe on a busy machine.
      expect(Date.now() - sent).toBeLessThan(2000);
    } finally {
      expect(await s.stop()).toBe(0);
    }

    const slow = await startServe({ ...env, CREDIT_LOG_FLUSH_MS: "10000" });
    const sent = Date.now();
    expect((await call(slow, "GET", "/credits/balance", key, undefined, { "x-request-id": "held" })).status).toBe(200);
    expect(await slow.stop()).toBe(0);
    expect(Date.now() - sent).toBeLessThan(10_000); // so only the stop can have written it
    const at = slow.lines.findIndex((l) => l.reqId === "held");
    expect(at).toBeGreaterThanOrEqual(0);
    expect(slow.lines[at]).toMatchObject({ msg: "request", path: "/credits/balance", status: 200 });
    expect(slow.lines.at(-1)?.msg).toBe("stopped");
  }, 60_000);
});
