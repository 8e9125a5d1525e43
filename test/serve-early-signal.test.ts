import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { runCli } from "../src/cli/run.js";
import { holdStopSignals, releaseStopSignals } from "../src/serve/signals.js";

/**
 * A SIGTERM or SIGINT that reaches `serve` or `worker` while its modules still load — before the
 * command installs its own handlers — stops it cleanly once it has started (exit 0), instead of
 * killing it (exit 143): the bin holds the signal from its first line (docs/service.md, "Exit codes").
 * Real signals at start-up, under Bun through bunx, are sent by .ci/runtimes/check.sh bun.
 */

const dir = mkdtempSync(join(tmpdir(), "serve-early-signal-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => {
  releaseStopSignals();
  vi.restoreAllMocks();
});

const emit = (signal: NodeJS.Signals) => (process.emit as (event: string) => boolean)(signal);
const messages = (out: string) =>
  out
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { msg: string }).msg);

describe("a stop signal held while the CLI loads", () => {
  it("serve: started, then stopped at once with exit 0; the signal handlers are all taken off", async () => {
    const before = [process.listenerCount("SIGTERM"), process.listenerCount("SIGINT")];
    holdStopSignals();
    emit("SIGTERM"); // as the kernel would deliver it while run.js is still loading
    let out = "";
    const env = { CREDIT_SQLITE_PATH: join(dir, "serve.db"), CREDIT_LOG_FLUSH_MS: "0" };
    const code = await runCli(
      ["serve", "--port", "0", "--host", "127.0.0.1"],
      { stdout: (t) => (out += t), stderr: (t) => (out += t) },
      { env },
    );
    expect(code).toBe(0);
    const msgs = messages(out);
    expect(msgs.indexOf("serving")).toBeGreaterThanOrEqual(0);
    expect(msgs.findIndex((m) => m.startsWith("stopping"))).toBeGreaterThan(msgs.indexOf("serving"));
    expect(msgs.at(-1)).toBe("stopped");
    expect([process.listenerCount("SIGTERM"), process.listenerCount("SIGINT")]).toEqual(before);
  });

  it("worker: the same with SIGINT", async () => {
    holdStopSignals();
    emit("SIGINT");
    let out = "";
    const env = { CREDIT_SQLITE_PATH: join(dir, "worker.db") };
    const code = await runCli(
      ["worker", "--jitter", "0"],
      { stdout: (t) => (out += t), stderr: (t) => (out += t) },
      { env },
    );
    expect(code).toBe(0);
    const msgs = messages(out);
    expect(msgs).toContain("worker started");
    expect(msgs.at(-1)).toBe("worker stopped");
  });

  it("a second signal while one is held exits at once (128 + the signal), as it does once the command runs", () => {
    const exit = vi.spyOn(process, "exit").mockImplementation((() => undefined) as never);
    holdStopSignals();
    emit("SIGTERM");
    expect(exit).not.toHaveBeenCalled();
    emit("SIGINT");
    expect(exit).toHaveBeenCalledWith(130);
    expect(releaseStopSignals()).toBe("SIGTERM");
    expect(releaseStopSignals()).toBeNull();
  });
});
