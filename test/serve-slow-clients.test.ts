import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import { serveSettings } from "../src/serve/settings.js";
import { call, startServe, type Served } from "./serve-process.js";

/**
 * Clients that hold sockets without finishing a request (docs/service.md, "Configure it"): headers
 * that never end are cut at CREDIT_HEADERS_TIMEOUT_MS (checked every second), and connections past
 * CREDIT_MAX_CONNECTIONS are closed at once. Loopback only; every socket is destroyed at the end.
 */

const dir = mkdtempSync(join(tmpdir(), "serve-slow-clients-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * `n` sockets that each send a request line and one header, then another header every 300 ms and
 * never the blank line that ends them; resolves once all are connected. `closedAt` holds when the
 * server closed each (ms after they were all open).
 */
async function slowClients(s: Served, n: number) {
  const { port } = new URL(s.base);
  const sockets: Socket[] = [];
  const closedAt: number[] = [];
  let t0 = 0;
  await Promise.all(
    Array.from({ length: n }, (_, i) => {
      const socket = connect(Number(port), "127.0.0.1");
      sockets.push(socket);
      socket.on("error", () => undefined);
      socket.on("data", () => undefined);
      socket.on("close", () => closedAt.push(performance.now() - t0));
      return new Promise<void>((resolve) =>
        socket.once("connect", () => {
          socket.write(`GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-${i}: 1\r\n`);
          const drip = setInterval(() => {
            if (socket.destroyed) clearInterval(drip);
            else socket.write("X-More: 1\r\n");
          }, 300);
          socket.once("close", () => clearInterval(drip));
          resolve();
        }),
      );
    }),
  );
  t0 = performance.now();
  return {
    closedAt,
    /** Waits until every socket is closed or `ms` passed. */
    async settle(ms: number) {
      const until = performance.now() + ms;
      while (closedAt.length < n && performance.now() < until) await sleep(50);
    },
    destroy: () => sockets.forEach((x) => x.destroy()),
  };
}

describe("serve: slow clients", () => {
  it("checks the settings: headers within the request time-out, a positive cap", () => {
    expect(serveSettings({}, {})).toMatchObject({ CREDIT_MAX_CONNECTIONS: 10_000 });
    expect(() => serveSettings({}, { CREDIT_HEADERS_TIMEOUT_MS: "20000", CREDIT_REQUEST_TIMEOUT_MS: "15000" })).toThrow(
      /CREDIT_HEADERS_TIMEOUT_MS \(20000\) must not exceed CREDIT_REQUEST_TIMEOUT_MS \(15000\)/,
    );
    expect(() => serveSettings({}, { CREDIT_MAX_CONNECTIONS: "0" })).toThrow(/CREDIT_MAX_CONNECTIONS/);
  });

  it("starts with a request time-out under 10 s: the headers' default follows it", async () => {
    const s = await startServe({ CREDIT_SQLITE_PATH: join(dir, "short.sqlite"), CREDIT_REQUEST_TIMEOUT_MS: "5000" });
    try {
      expect((await call(s, "GET", "/health/live")).status).toBe(200);
    } finally {
      await s.stop();
    }
  }, 30_000);

  it("closes 200 sockets whose headers never end within the headers time-out and a second", async () => {
    const s = await startServe({ CREDIT_SQLITE_PATH: join(dir, "headers.sqlite"), CREDIT_HEADERS_TIMEOUT_MS: "2000" });
    const slow = await slowClients(s, 200);
    try {
      // Still answering while they hang on.
      expect((await call(s, "GET", "/health/live")).status).toBe(200);
      // 2 s of time-out, up to 1 s until the next check, and slack for a loaded machine; node's
      // default check every 30 s left them open 30 s and more.
      await slow.settle(6_000);
      expect(slow.closedAt.length).toBe(200);
      expect(Math.max(...slow.closedAt)).toBeLessThan(6_000);
    } finally {
      slow.destroy();
      await s.stop();
    }
  }, 30_000);

  it("closes connections past CREDIT_MAX_CONNECTIONS at once, and serves again when they are gone", async () => {
    const s = await startServe({ CREDIT_SQLITE_PATH: join(dir, "max.sqlite"), CREDIT_MAX_CONNECTIONS: "50" });
    const slow = await slowClients(s, 200);
    try {
      // The 150 past the cap are closed without waiting for a time-out.
      const until = performance.now() + 3_000;
      while (slow.closedAt.length < 150 && performance.now() < until) await sleep(50);
      expect(slow.closedAt.length).toBe(150);
      slow.destroy();
      await sleep(200);
      expect((await call(s, "GET", "/health/live")).status).toBe(200);
    } finally {
      slow.destroy();
      await s.stop();
    }
  }, 30_000);
});
