import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import {
  ConfigurationError,
  createCreditManager,
  InsufficientCreditsError,
  ValidationError,
  type CreditManager,
} from "../src/index.js";
import { type DbManager } from "../src/store.js";
import { type LeaseChargeOptions } from "../src/models-public.js";
import { blockServes, leaseBlock } from "../src/modules/leases/rules.js";
import { creditMeteringMiddleware } from "../src/http/index.js";
import { runAudit } from "../src/cli/audit.js";
import { testStores, type TestStore } from "./fixtures/stores.js";
import { runProcess } from "./fixtures/processes.js";
import { settleLease, type LeaseSettle } from "../src/modules/leases/service-settle.js";
import type { ModuleContext } from "../src/core/module.js";
import { contextProbe } from "./fixtures/module-context.js";

/** A lease window's settle through a module context, as a lease sends it. */
const settle = (ctx: ModuleContext, userId: string, s: LeaseSettle) => settleLease(ctx, userId, s);

const dir = mkdtempSync(join(tmpdir(), "cm-leases-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const stores: TestStore[] = [
  ...testStores("leases"),
  {
    name: "sqlite",
    open: async () => {
      const filename = join(dir, `s-${Math.random().toString(36).slice(2)}.db`);
      const db = new SqliteDbManager({ filename });
      return { db, another: () => new SqliteDbManager({ filename }), drop: async () => undefined };
    },
  },
];

const info = (m: CreditManager, u: string) => m.credits.getUserCreditsInfo(u);
const settles = async (m: CreditManager, u: string) =>
  (await m.credits.getCreditHistory(u, { limit: 100 })).items.filter((e) => e.metadata?.leaseWindow !== undefined);

describe("leaseBlock (domain)", () => {
  it("is the size, at most a share of what is available, and nothing below the exact threshold", () => {
    const s = { size: 100, exactBelow: 4, share: 0.5 };
    expect(leaseBlock(10_000, s)).toBe(100);
    expect(leaseBlock(400, s)).toBe(100);
    expect(leaseBlock(399, s)).toBe(0);
    expect(leaseBlock(150, { ...s, exactBelow: 1 })).toBe(75);
  });

  it("blockServes: only what the block holds beyond what it used and set aside, while open and before serveUntil", () => {
    const b = { open: true, held: 100, used: 60, pending: 30, serveUntil: 1_000 };
    expect(blockServes(b, 10, 999)).toBe(true);
    expect(blockServes(b, 11, 999)).toBe(false); // 60 used + 30 set aside + 11 > 100
    expect(blockServes(b, 10, 1_000)).toBe(false); // its hold is near its end
    expect(blockServes({ ...b, open: false }, 1, 0)).toBe(false); // settling, failed or ended
    expect(blockServes({ ...b, pending: 0 }, 40, 0)).toBe(true);
  });
});

for (const store of stores) {
  describe(`credit leases on ${store.name}`, () => {
    it("serves charges from a block in memory and settles one window in one keyed entry", async () => {
      const opened = await store.open();
      const file = join(dir, `ledger-${store.name}-1.jsonl`);
      const m = await createCreditManager({ db: opened.db, ledger: { filePath: file } });
      try {
        await m.credits.addCredits("u", 10_000);
        const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000 });
        const first = await lease.charge("u", 5, { reason: "GET /a" });
        expect(first.via).toBe("lease");
        // Covered: the answer is there at once, not a promise.
        const second = lease.charge("u", 7);
        expect(second).not.toBeInstanceOf(Promise);
        expect(lease.tryCharge("u", 3)).toBe(true);
        // The store only holds the block until the window settles.
        expect(await info(m, "u")).toMatchObject({ balance: 10_000, reserved: 1000, available: 9000 });
        await lease.flush();
        expect(await info(m, "u")).toMatchObject({ balance: 9985, reserved: 1000 });
        const [entry] = await settles(m, "u");
        expect(entry?.type).toBe("commit_reserved");
        expect(entry?.amount).toBe(15);
        expect(entry?.metadata?.leaseWindow).toMatchObject({ window: 1, requests: 3, total: 15 });
        await lease.close();
        expect(await info(m, "u")).toMatchObject({ balance: 9985, reserved: 0, available: 9985 });
        await expect(lease.charge("u", 1)).rejects.toBeInstanceOf(ConfigurationError);
        await m.ledger.flush();
        // The per-request lines add up to the window's entry: the audit says so.
        const out: string[] = [];
        const code = await runAudit(
          { users: ["u"], all: false, json: false, ledgerFiles: [file] },
          { stdout: (t) => out.push(t), stderr: (t) => out.push(t) },
          { db: opened.db },
        );
        expect(out.join("")).toContain("ok ");
        expect(code).toBe(0);
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    it("rolls the rest into the next block when the block runs out, never spending beyond it", async () => {
      const opened = await store.open();
      const m = await createCreditManager({ db: opened.db });
      try {
        await m.credits.addCredits("u", 1000);
        const lease = m.credits.leases({ size: 100, settleEveryMs: 30_000, exactBelow: 1 });
        let charged = 0;
        for (let i = 0; i < 40; i++) charged += (await lease.charge("u", 9)).amount;
        expect(charged).toBe(360);
        await lease.close();
        expect(await info(m, "u")).toMatchObject({ balance: 640, reserved: 0 });
        // Each settle names its window; their totals add up to what was charged.
        const windows = await settles(m, "u");
        expect(windows.reduce((s, e) => s + e.amount, 0)).toBe(360);
        expect(new Set(windows.map((e) => (e.metadata?.leaseWindow as { window: number }).window)).size).toBe(
          windows.length,
        );
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    it("keeps small balances, keyed charges and big amounts on the exact path; refuses what is not there", async () => {
      const opened = await store.open();
      const m = await createCreditManager({ db: opened.db });
      try {
        await m.credits.addCredits("small", 300);
        await m.credits.addCredits("big", 100_000);
        const lease = m.credits.leases({ size: 100, exactBelow: 4, settleEveryMs: 30_000 });
        const small = await lease.charge("small", 10);
        expect(small.via).toBe("exact");
        expect(small.entry?.type).toBe("deduct");
        const keyed = await lease.charge("big", 10, { idempotencyKey: "k-1" });
        const again = await lease.charge("big", 10, { idempotencyKey: "k-1" });
        expect(keyed.via).toBe("exact");
        expect(again.entry?.id).toBe(keyed.entry?.id);
        expect((await lease.charge("big", 500)).via).toBe("exact");
        await expect(lease.charge("small", 1000)).rejects.toBeInstanceOf(InsufficientCreditsError);
        await expect(lease.charge("big", -1)).rejects.toBeInstanceOf(ValidationError);
        await expect(lease.charge("", 1)).rejects.toBeInstanceOf(ValidationError);
        expect(() => m.credits.leases({ size: 0 })).toThrow(ConfigurationError);
        expect(() => m.credits.leases({ settleEveryMs: 5000, ttlSeconds: 2 })).toThrow(ConfigurationError);
        await lease.close();
        expect(await info(m, "small")).toMatchObject({ balance: 290 });
        expect(await info(m, "big")).toMatchObject({ balance: 100_000 - 510, reserved: 0 });
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    /** @see issue 60 (item 15): with a block open, the fast path accepted options the slow path refuses. */
    it("refuses on the fast path what the slow path refuses, and counts none of it", async () => {
      const opened = await store.open();
      const m = await createCreditManager({ db: opened.db });
      try {
        await m.credits.addCredits("u", 100_000);
        const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000 });
        const bad: unknown[] = [
          new Map(),
          new Date(),
          null,
          "GET /a",
          { reason: "\uD800 lone" },
          { reason: "x".repeat(1001) },
          { spender: "k\uDC00" },
          { feature: "not a name" },
          { unknown: 1 },
        ];
        // Before a block opens (the slow path) and after (the fast path): the same answer.
        for (const open of [false, true]) {
          if (open) expect((await lease.charge("u", 2)).via).toBe("lease");
          for (const options of bad) {
            const refused = await Promise.resolve()
              .then(() => lease.charge("u", 2, options as LeaseChargeOptions))
              .then(
                () => null,
                (error: unknown) => error,
              );
            expect(refused, `${String(options)} (block open: ${open})`).toBeInstanceOf(ValidationError);
          }
        }
        expect(lease.tryCharge("u", 2, "\uD800")).toBe(false);
        expect(lease.tryCharge("u", 2, undefined, { spender: "k\uDC00" })).toBe(false);
        expect(lease.tryCharge("u", 2, undefined, new Map() as { spender?: string })).toBe(false);
        await lease.close();
        const [entry] = await settles(m, "u");
        expect(entry?.metadata?.leaseWindow).toMatchObject({ requests: 1, total: 2 });
        expect(await info(m, "u")).toMatchObject({ balance: 100_000 - 2, reserved: 0 });
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    /** @see issue 60 (item 13): leases compared the manager's clock's times with Date.now(). */
    it("reads the manager's clock: a block past its hold's TTL by that clock serves nothing", async () => {
      const opened = await store.open();
      const clock = { now: Date.now() };
      const m = await createCreditManager({ db: opened.db, clock: () => new Date(clock.now) });
      try {
        await m.credits.addCredits("u", 100_000);
        const lease = m.credits.leases({ size: 1000, ttlSeconds: 60, settleEveryMs: 30_000 });
        expect((await lease.charge("u", 3)).via).toBe("lease");
        expect(lease.covers("u", 1)).toBe(true);
        clock.now += 10 * 60_000; // ten minutes on: the block's hold lapsed by the manager's clock
        expect(lease.covers("u", 1)).toBe(false);
        expect(lease.tryCharge("u", 1)).toBe(false);
        // The charge settles the old window (its hold lapsed: after service) and opens a new block.
        expect((await lease.charge("u", 2)).via).toBe("lease");
        await lease.close();
        const entries = (await m.credits.getCreditHistory("u", { types: ["deduct", "commit_reserved"] })).items;
        expect(entries.map((e) => [e.type, e.amount]).reverse()).toEqual([
          ["deduct", 3],
          ["commit_reserved", 2],
        ]);
        expect(await info(m, "u")).toMatchObject({ balance: 100_000 - 5, reserved: 0 });
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    /** @see issue 60 (item 13): a charge just past midnight by the manager's clock counted in the previous day. */
    it("reads the manager's clock: a charge after a limit window's end by that clock counts in the new window", async () => {
      const opened = await store.open();
      const DAY = 86_400_000;
      const midnight = Math.ceil((Date.now() + DAY) / DAY) * DAY; // a UTC midnight ahead
      const clock = { now: midnight - 2000 }; // 23:59:58
      const m = await createCreditManager({ db: opened.db, clock: () => new Date(clock.now) });
      try {
        await m.credits.addCredits("u", 100_000);
        await m.credits.setLimits("u", [{ amount: 50_000, period: "day" }]);
        const lease = m.credits.leases({ size: 1000, ttlSeconds: 60, settleEveryMs: 30_000 });
        expect((await lease.charge("u", 5)).via).toBe("lease");
        clock.now = midnight + 512;
        await lease.charge("u", 7);
        await lease.close();
        const [limit] = await m.credits.getLimits("u");
        expect(limit).toMatchObject({ used: 7, remaining: 50_000 - 7 });
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    /** @see issue 60 (item 11): a leased charge's metadata was dropped, so usage by metadata lost it. */
    it("takes a charge with metadata on the exact path, so usage by metadata counts it", async () => {
      const opened = await store.open();
      const m = await createCreditManager({ db: opened.db });
      try {
        await m.credits.addCredits("u", 100_000);
        const from = new Date(Date.now() - 1000);
        const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000 });
        expect((await lease.charge("u", 3)).via).toBe("lease"); // a block is open
        const tagged = await lease.charge("u", 4, { metadata: { tenant: "t1" } });
        expect(tagged.via).toBe("exact");
        expect(tagged.entry?.metadata).toEqual({ tenant: "t1" });
        expect((await lease.charge("u", 5, { metadata: {} })).via).toBe("lease"); // nothing to record
        expect(lease.openMeter("u", { estimate: 10, metadata: { tenant: "t2" } })).toBeNull();
        await lease.close();
        const { rows } = await m.credits.getUsage({
          account: "u",
          from,
          to: new Date(Date.now() + 60_000),
          interval: null,
          groupBy: ["metadata.tenant"],
        });
        expect(rows.map((r) => [r["metadata.tenant"], r.credits, r.requests])).toEqual([
          [null, 8, 2],
          ["t1", 4, 1],
        ]);
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    it("fixed-price HTTP metering through each of two managers' leases: no overspend across both, every charge in the books", async () => {
      const opened = await store.open();
      const a = await createCreditManager({ db: opened.db, overdraftLimit: 0 });
      const b = await createCreditManager({ db: opened.another(), overdraftLimit: 0 });
      const servers: Server[] = [];
      const leases = [a, b].map((m) => m.credits.leases({ size: 200, share: 0.5, exactBelow: 1, settleEveryMs: 50 }));
      try {
        await a.credits.addCredits("u", 1000);
        // Each manager behind its own server; a handler that takes 2 ms, so many requests are in
        // flight at once with their prices set aside in the blocks.
        const urls = await Promise.all(
          [a, b].map(async (m, i) => {
            const meter = creditMeteringMiddleware({
              credits: m.credits,
              price: 10,
              lease: leases[i],
              authenticate: () => ({ userId: "u" }),
            });
            const server = createServer((req, res) => meter(req, res, () => void setTimeout(() => res.end("{}"), 2)));
            servers.push(server);
            await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
            return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
          }),
        );
        let charged = 0;
        let answered = 0;
        let refused = 0;
        const client = async (url: string) => {
          for (let i = 0; i < 40; i++) {
            const res = await fetch(url);
            await res.text();
            if (res.status === 402) refused++;
            else {
              expect(res.status).toBe(200);
              answered++;
              charged += Number(res.headers.get("x-credits-deducted") ?? 0);
            }
          }
        };
        // 8 clients on each manager: 640 requests of 10 credits against the 1000 there are.
        await Promise.all(urls.flatMap((url) => Array.from({ length: 8 }, () => client(url))));
        for (const l of leases) await l.close();
        const after = await info(a, "u");
        expect(answered + refused).toBe(640);
        expect(refused).toBeGreaterThan(0);
        expect(after.reserved).toBe(0);
        expect(after.balance).toBeGreaterThanOrEqual(0);
        // Every charge a response announced is in the books, and nothing else was taken.
        expect(after.balance).toBe(1000 - charged);
        expect((await a.credits.audit("u")).ok).toBe(true);
      } finally {
        for (const l of leases) await l.close();
        for (const server of servers) server.close();
        await a.close();
        await b.close();
        await opened.drop();
      }
    });

    it("two managers over one store: no overspend across both, and an idle lease goes back", async () => {
      const opened = await store.open();
      const a = await createCreditManager({ db: opened.db });
      const b = await createCreditManager({ db: opened.another() });
      try {
        await a.credits.addCredits("u", 1000);
        const la = a.credits.leases({ size: 400, share: 0.5, exactBelow: 1, settleEveryMs: 50 });
        const lb = b.credits.leases({ size: 400, share: 0.5, exactBelow: 1, settleEveryMs: 50 });
        // Both spend as fast as they can: together never more than the 1000 there are.
        let spent = 0;
        const spend = async (l: typeof la) => {
          for (let i = 0; i < 300; i++) {
            try {
              const c = await l.charge("u", 10);
              spent += c.amount;
            } catch (error) {
              if (!(error instanceof InsufficientCreditsError)) throw error;
            }
          }
        };
        await Promise.all([spend(la), spend(lb)]);
        await la.flush();
        await lb.flush();
        const after = await info(a, "u");
        expect(spent).toBeLessThanOrEqual(1000);
        expect(after.balance).toBe(1000 - spent);
        expect(after.balance).toBeGreaterThanOrEqual(0);
        await la.close();
        await lb.close();

        // An idle lease goes back at its next settle, so the other manager can serve.
        await a.credits.addCredits("v", 1000);
        // (Windows of a second: the refusal below comes before A's lease can go idle, even on a busy machine.)
        const la2 = a.credits.leases({ size: 400, share: 0.5, exactBelow: 1, settleEveryMs: 1000 });
        const lb2 = b.credits.leases({ size: 1000, share: 1, exactBelow: 0, settleEveryMs: 1000 });
        await la2.charge("v", 10);
        expect((await info(a, "v")).reserved).toBe(400);
        await expect(lb2.charge("v", 900)).rejects.toBeInstanceOf(InsufficientCreditsError);
        await waitFor(async () => (await info(a, "v")).reserved === 0, 15_000);
        expect(la2.size).toBe(0);
        expect((await lb2.charge("v", 900)).amount).toBe(900);
        await la2.close();
        await lb2.close();
        expect(await info(a, "v")).toMatchObject({ balance: 90, reserved: 0 });
      } finally {
        await a.close();
        await b.close();
        await opened.drop();
      }
    });

    it("a retried settle charges once", async () => {
      const opened = await store.open();
      const probe = contextProbe();
      const m = await createCreditManager({ db: opened.db, modules: [probe.module] });
      try {
        await m.credits.addCredits("u", 10_000);
        const placed = await settle(probe.ctx(), "u", {
          lease: "L",
          window: 0,
          holdId: null,
          used: 0,
          requests: 0,
          roll: { sizing: { size: 500, exactBelow: 1, share: 0.5 }, ttlSeconds: 60 },
        });
        const hold = placed.next?.id ?? null;
        expect(hold).not.toBeNull();
        const s = { lease: "L", window: 1, holdId: hold, used: 42, requests: 3, roll: null };
        const first = await settle(probe.ctx(), "u", s);
        const retried = await settle(probe.ctx(), "u", s);
        expect(first.replayed).toBe(false);
        expect(retried.replayed).toBe(true);
        expect(retried.entry?.id).toBe(first.entry?.id);
        expect(await info(m, "u")).toMatchObject({ balance: 10_000 - 42, reserved: 0 });
      } finally {
        await m.close();
        await opened.drop();
      }
    });
  });
}

describe("credit leases: a process killed between charge and settle", () => {
  it("is settled exactly once by its successor on the same ledger file, before the hold lapses and after", async () => {
    const dbFile = join(dir, "crash.db");
    const ledger = join(dir, "crash.jsonl");
    const child = join(import.meta.dirname, "fixtures", "lease-crash.ts");
    const env = { LEASE_DB: dbFile, LEASE_LEDGER: ledger };
    // The child charges 25 × 4 credits from a lease, waits for its lines to be written, and dies
    // (process.kill SIGKILL on itself) before any settle.
    const died = await runProcess<{ charged: number }>(child, { ...env, LEASE_MODE: "crash" }).catch((e: Error) => e);
    expect(died).toBeInstanceOf(Error);
    expect(String(died)).toMatch(/SIGKILL|null/);
    const lines = readFileSync(ledger, "utf8")
      .split("\n")
      .filter((l) => l.includes('"action":"charge"'));
    expect(lines.length).toBe(25);
    // Before the recovery the audit finds the charges that were never settled.
    const auditNow = async () => {
      const db: DbManager = new SqliteDbManager({ filename: dbFile });
      await db.init();
      const out: string[] = [];
      const code = await runAudit(
        { users: ["crash-user"], all: false, json: false, ledgerFiles: [ledger] },
        { stdout: (t) => out.push(t), stderr: (t) => out.push(t) },
        { db },
      );
      await db.close();
      return { code, out: out.join("") };
    };
    const unsettled = await auditNow();
    expect(unsettled.code).toBe(1);
    expect(unsettled.out).toContain("25 charges for 100 credits in the ledger file were never settled");
    // The successor recovers twice (a second recovery, or a crash during the first, charges nothing more).
    const first = await runProcess<{ recovered: number; again: number; balance: number; reserved: number }>(child, {
      ...env,
      LEASE_MODE: "recover",
    });
    expect(first).toEqual({ recovered: 100, again: 0, balance: 10_000 - 100, reserved: 0 });

    // After the hold lapsed: a keyed after-service deduction, once.
    const later = await runProcess<{ charged: number }>(child, { ...env, LEASE_MODE: "crash", LEASE_TTL: "1" }).catch(
      (e: Error) => e,
    );
    expect(later).toBeInstanceOf(Error);
    await sleep(1200);
    const second = await runProcess<{ recovered: number; again: number; balance: number; reserved: number }>(child, {
      ...env,
      LEASE_MODE: "recover",
    });
    expect(second).toEqual({ recovered: 100, again: 0, balance: 10_000 - 200, reserved: 0 });

    const settled = await auditNow();
    expect(settled.out).toContain("0 problems in the ledger files");
    expect(settled.code).toBe(0);
  }, 60_000);
});

async function waitFor(check: () => Promise<boolean>, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error("timed out");
    await sleep(20);
  }
}
