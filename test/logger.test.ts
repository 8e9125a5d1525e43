import { Writable } from "node:stream";
import { pino } from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  createCreditManager,
  ConfigurationError,
  type Cache,
  type CreditManagerOptions,
  type Logger,
} from "../src/index.js";
import { silentLogger } from "../src/core/logger.js";

/** A cache that fails every read: the library logs a warning and reads the store. */
const failingCache: Cache = {
  get: () => Promise.reject(new Error("cache down")),
  set: () => Promise.resolve(),
  delete: () => undefined,
};

/** A winston logger's method shape (winston is not installed: its LeveledLogMethod, as declared). */
interface WinstonLike {
  error(message: string, ...meta: unknown[]): WinstonLike;
  error(message: unknown): WinstonLike;
  warn(message: string, ...meta: unknown[]): WinstonLike;
  warn(message: unknown): WinstonLike;
  info(message: string, ...meta: unknown[]): WinstonLike;
  info(message: unknown): WinstonLike;
  debug(message: string, ...meta: unknown[]): WinstonLike;
  debug(message: unknown): WinstonLike;
}

afterEach(() => vi.restoreAllMocks());

describe("the logger option", () => {
  it("takes pino, a child logger, console and a winston-shaped logger (types and values)", async () => {
    const lines: string[] = [];
    const root = pino(
      { level: "warn" },
      new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }),
    );
    const winstonCalls: unknown[][] = [];
    const winston: WinstonLike = {
      error: (...a: unknown[]) => (winstonCalls.push(a), winston),
      warn: (...a: unknown[]) => (winstonCalls.push(a), winston),
      info: (...a: unknown[]) => (winstonCalls.push(a), winston),
      debug: (...a: unknown[]) => (winstonCalls.push(a), winston),
    };
    const loggers: Logger[] = [root, root.child({ service: "billing" }), console, winston];
    vi.spyOn(console, "warn").mockImplementation(() => undefined);
    for (const logger of loggers) {
      const options: CreditManagerOptions = { logger, cache: failingCache };
      const m = await createCreditManager(options);
      await m.credits.addCredits("u", 5);
      expect((await m.credits.getUserCreditsInfo("u")).available).toBe(5);
      await m.close();
    }
    // Each got the cache warning, in pino's shape (obj, msg).
    const parsed = lines.map((l) => JSON.parse(l) as { msg: string; service?: string; err?: { message: string } });
    expect(
      parsed.some(
        (l) =>
          l.msg === "credit-management: cache read failed; reading the store" &&
          l.service === undefined &&
          l.err?.message === "cache down",
      ),
    ).toBe(true);
    expect(parsed.some((l) => l.service === "billing")).toBe(true);
    expect(console.warn).toHaveBeenCalledWith(
      expect.objectContaining({ key: expect.any(String) }),
      "credit-management: cache read failed; reading the store",
    );
    expect(winstonCalls.some((c) => c[1] === "credit-management: cache read failed; reading the store")).toBe(true);
  });

  it("refuses an object without the four methods, saying what it needs", async () => {
    const half = { warn: () => undefined, error: () => undefined } as unknown as Logger;
    const refused = createCreditManager({ logger: half });
    await expect(refused).rejects.toBeInstanceOf(ConfigurationError);
    await expect(refused).rejects.toThrow(/logger must have error, warn, info and debug methods/);
  });

  it("writes nothing by default", async () => {
    const out = vi.spyOn(process.stdout, "write");
    const err = vi.spyOn(process.stderr, "write");
    const warn = vi.spyOn(console, "warn");
    const m = await createCreditManager({ cache: failingCache });
    await m.credits.addCredits("u", 5);
    expect((await m.credits.getUserCreditsInfo("u")).available).toBe(5);
    await m.close();
    expect(out).not.toHaveBeenCalled();
    expect(err).not.toHaveBeenCalled();
    expect(warn).not.toHaveBeenCalled();
    for (const level of ["error", "warn", "info", "debug"] as const)
      expect(silentLogger[level]({ a: 1 }, "x")).toBeUndefined();
    expect(Object.isFrozen(silentLogger)).toBe(true);
  });
});
