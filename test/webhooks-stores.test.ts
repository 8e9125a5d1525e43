import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { type DbManager } from "../src/store.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { generateWebhookSecret, retryFailedWebhooks, webhookQueue } from "../src/webhooks/index.js";
import { deliveryUserId } from "../src/modules/webhooks/queue.js";
import { dropSharedStore, openSharedStore } from "./fixtures/child.js";

const pgUrl = process.env.CREDIT_PG_URL;
const mongoUri = process.env.CREDIT_MONGO_URI;
const stores = [
  { kind: "sqlite" as const, url: "file" },
  { kind: "postgres" as const, url: pgUrl },
  { kind: "mongodb" as const, url: mongoUri },
];

describe("webhooks on every store the outbox runs on", () => {
  for (const store of stores) {
    // reason: PostgreSQL and MongoDB need their URL (set by .ci/run); the run's closing block names it when skipped
    it.skipIf(!store.url)(
      `${store.kind}: delivered once per endpoint, in order, retried, failed and retried by hand`,
      async () => {
        const name = `credit_test_webhooks_${process.pid}_${randomUUID().slice(0, 8)}`;
        const dir = mkdtempSync(join(tmpdir(), "cm-webhooks-store-"));
        const db: DbManager =
          store.kind === "sqlite"
            ? new SqliteDbManager({ filename: join(dir, "store.db") })
            : openSharedStore({ kind: store.kind, url: store.url as string }, name);
        const secret = generateWebhookSecret();
        const got: { headers: IncomingHttpHeaders; body: string }[] = [];
        let failing = 3; // the first three requests answer 500
        const server: Server = createServer((req, res) => {
          let body = "";
          req.on("data", (d: Buffer) => (body += d.toString()));
          req.on("end", () => {
            if (failing-- > 0) return void res.writeHead(500).end();
            got.push({ headers: req.headers, body });
            res.writeHead(204).end();
          });
        });
        await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
        const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
        try {
          const queue = webhookQueue({
            db,
            endpoints: [{ id: "ep", url, secret, development: true }],
            allowNetworks: ["127.0.0.0/8"],
            retrySchedule: [10, 10, 10, 10, 10, 10],
          });
          const m = await createCreditManager({ db, queue, domainEvents: true });
          for (const u of ["a", "b"]) {
            await m.credits.addCredits(u, 10);
            await m.credits.deductCredits(u, 4);
          }
          const events = [...(await m.notifications.list("a")), ...(await m.notifications.list("b"))];
          const end = Date.now() + 10_000;
          while (got.length < events.length && Date.now() < end) {
            await m.notifications.dispatchPending();
            await new Promise((r) => setTimeout(r, 15));
          }
          expect(new Set(got.map((r) => r.headers["webhook-id"]))).toEqual(new Set(events.map((e) => e.id)));
          expect(got).toHaveLength(events.length); // once each
          for (const r of got) new Webhook(secret).verify(r.body, r.headers as Record<string, string>);
          const a = got
            .map((r) => JSON.parse(r.body) as { userId: string; id: string })
            .filter((e) => e.userId === "a");
          expect(a.map((e) => e.id)).toEqual(events.slice(0, 2).map((e) => e.id));
          // A redelivered event writes no second delivery row.
          const first = events[0]!;
          await queue.publish({
            id: first.id,
            userId: "a",
            type: first.type,
            payload: first.payload,
            createdAt: first.createdAt.toISOString(),
            attempt: 2,
          });
          expect(await db.listNotifications(deliveryUserId("ep", "a"), { limit: 10 })).toHaveLength(2);

          // A delivery that failed for good, then retried by hand.
          failing = 100;
          await m.credits.addCredits("a", 1);
          for (let i = 0; i < 40; i++) {
            await m.notifications.dispatchPending();
            const rows = await db.listNotifications(deliveryUserId("ep", "a"), { status: "failed", limit: 10 });
            if (rows.length > 0) break;
            await new Promise((r) => setTimeout(r, 15));
          }
          const [failed] = await db.listNotifications(deliveryUserId("ep", "a"), { status: "failed", limit: 10 });
          expect(failed?.attempts).toBe(7);
          failing = 0;
          expect(await retryFailedWebhooks(db, "ep", "a")).toBe(1);
          const before = got.length;
          for (let i = 0; i < 20 && got.length === before; i++) await m.notifications.dispatchPending();
          expect(got[before]?.headers["webhook-id"]).toBe((failed?.payload as { event: { id: string } }).event.id);
          await m.close();
          await queue.close();
        } finally {
          server.closeAllConnections();
          await new Promise((r) => server.close(r));
          if (store.kind !== "sqlite") await dropSharedStore({ kind: store.kind, url: store.url as string }, name);
          rmSync(dir, { recursive: true, force: true });
        }
      },
      30_000,
    );
  }
});
