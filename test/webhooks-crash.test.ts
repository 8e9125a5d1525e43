import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { generateWebhookSecret } from "../src/webhooks/index.js";
import { deliveryUserId } from "../src/modules/webhooks/queue.js";
import { killHard, startChildUntil } from "./fixtures/child.js";

const here = dirname(fileURLToPath(import.meta.url));

/** A receiver that verifies every request with the official `standardwebhooks` package and records the ids. */
function receiver(secret: string) {
  const ids = new Set<string>();
  const users = new Map<string, string[]>();
  let requests = 0;
  let bad = 0;
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      requests++;
      try {
        const event = new Webhook(secret).verify(body, req.headers as IncomingHttpHeaders & Record<string, string>) as {
          id: string;
          userId: string;
        };
        if (event.id !== req.headers["webhook-id"]) throw new Error("id mismatch");
        if (!ids.has(event.id)) users.set(event.userId, [...(users.get(event.userId) ?? []), event.id]);
        ids.add(event.id);
        res.writeHead(204).end();
      } catch {
        bad++;
        res.writeHead(400).end();
      }
    });
  });
  return { server, ids, users, stats: () => ({ requests, bad }) };
}

const listen = (server: Server, port = 0) =>
  new Promise<number>((resolve) =>
    server.listen(port, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)),
  );
const close = (server: Server) => {
  server.closeAllConnections();
  return new Promise((r) => server.close(r));
};
async function until(done: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!done() && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
}

describe("webhooks across a worker killed with SIGKILL", () => {
  it("one endpoint down while the worker is killed and restarted: every event reaches both, the healthy one never waits", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cm-webhooks-"));
    const file = join(dir, "store.db");
    const secret = generateWebhookSecret();
    const healthy = receiver(secret);
    const down = receiver(secret);
    const healthyPort = await listen(healthy.server);
    const downPort = await listen(down.server); // reserve a port, then close it: connections are refused
    await close(down.server);
    const endpoints = JSON.stringify([
      { id: "healthy", url: `http://127.0.0.1:${healthyPort}/hook`, secret, development: true },
      { id: "down", url: `http://127.0.0.1:${downPort}/hook`, secret, development: true },
    ]);
    const events = 60;
    const users = 4;
    try {
      const first = await startChildUntil(
        join(here, "fixtures/webhook-worker.ts"),
        [file, endpoints, String(events), String(users)],
        "committed 25\n",
      );
      await until(() => healthy.ids.size >= 10, 10_000);
      expect(healthy.ids.size).toBeGreaterThanOrEqual(10); // delivered while the other endpoint refuses
      expect(await killHard(first.child)).toBe("SIGKILL");
      const committed = Number(/committed (\d+)\n(?![\s\S]*committed)/.exec(first.output())?.[1]);
      expect(committed).toBeGreaterThanOrEqual(25);
      expect(committed).toBeLessThan(events); // killed in the middle

      // What the killed process committed is what must arrive: the outbox's event rows.
      const db = new SqliteDbManager({ filename: file });
      await db.init();
      const expected = new Map<string, string[]>();
      for (let u = 0; u < users; u++) {
        const rows = await db.listNotifications(`user-${u}`, { limit: 1000 });
        expected.set(
          `user-${u}`,
          rows.map((r) => r.id),
        );
      }
      const all = [...expected.values()].flat();
      expect(all).toHaveLength(committed);

      const second = await startChildUntil(
        join(here, "fixtures/webhook-worker.ts"),
        [file, endpoints, "0", String(users)],
        "started",
      );
      try {
        await until(() => all.every((id) => healthy.ids.has(id)), 15_000);
        expect(all.filter((id) => !healthy.ids.has(id))).toEqual([]); // all there while "down" is still down
        expect(down.ids.size).toBe(0);
        await listen(down.server, downPort); // the endpoint comes back
        await until(() => all.every((id) => down.ids.has(id)), 15_000);
        expect(all.filter((id) => !down.ids.has(id))).toEqual([]);
        // The receiver counts a request when its body ends, before the worker has read the 204 and
        // marked the row sent: wait for the marks before the worker is killed, or a row killed
        // between the two would (rightly) be delivered again by the next worker, not read as sent.
        const downRows = async () =>
          (
            await Promise.all(
              [...expected.keys()].map((user) => db.listNotifications(deliveryUserId("down", user), { limit: 1000 })),
            )
          ).flat();
        const deadline = Date.now() + 15_000;
        while (Date.now() < deadline && !(await downRows()).every((r) => r.status === "sent"))
          await new Promise((r) => setTimeout(r, 25));
      } finally {
        await killHard(second.child);
      }
      for (const r of [healthy, down]) {
        expect(r.stats().bad).toBe(0); // every request verified
        expect(r.ids.size).toBe(committed); // nothing else arrived
        // In order per account and endpoint (first deliveries).
        for (const [user, ids] of expected) expect(r.users.get(user)).toEqual(ids);
      }
      const rows = await db.listNotifications(deliveryUserId("down", "user-0"), { limit: 1000 });
      expect(rows.every((r) => r.status === "sent")).toBe(true);
      expect(rows[0]?.attempts).toBeGreaterThan(1);
      await db.close();
    } finally {
      await close(healthy.server);
      if (down.server.listening) await close(down.server);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
