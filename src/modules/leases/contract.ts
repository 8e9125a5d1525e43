/**
 * Credit leases through two managers over one store (the `leases` part of `runDbManagerContract`,
 * also `runLeasesContract`; docs/metering.md, "Leases", docs/testing.md#several-managers): each
 * manager opens its own lease on the same user and charges from it in a seeded random order, with
 * flushes, concurrent settles and closes; a lease dropped without `close()` stands for a process
 * that died between charge and settle. Checked: never overspent, nothing charged twice nor lost
 * (beyond one window without a ledger file), one journal entry per window matching its charges,
 * and a clean audit.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it, useTestApi, type TestApi } from "../../core/testing/runner.js";
import type { DbManager } from "../../core/db/types.js";
import { addLeaseLine, compareWindow, leaseLineOf, leaseWindowOf, type FileWindow } from "./rules.js";
import { InsufficientCreditsError } from "../../core/errors.js";
import type { LedgerLogger } from "../../core/ledger/index.js";
import type { LeaseOptions } from "../../models-entry.js";
import type { CoreCreditService } from "../../core/services/credit-service.js";
import type { ModuleContext } from "../../core/module.js";
import { CreditLeases, leaseCore } from "./service.js";
import { sessionDeps } from "../metering/service.js";
import { managerServices, T0 } from "../../core/testing/support.js";

/** The context each credit service of the contract gave its one module (`withContext`). */
const contexts = new WeakMap<CoreCreditService, ModuleContext>();

/** `managerServices` whose credit service carries a module that keeps its context, as the leases module does. */
function withContext(db: DbManager, clock: { now: number }, options: { ledgerFile?: string } = {}) {
  let ctx: ModuleContext | undefined;
  const modules = [{ id: "leases-contract", init: (c: ModuleContext) => void (ctx = c) }];
  const services = managerServices(db, clock, { ...options, modules });
  if (ctx !== undefined) contexts.set(services.credits, ctx);
  return services;
}

/** The lease part of `credits`' module context, with no price book, as `credits.leases()` builds it. */
const settlesOf = (credits: CoreCreditService) => {
  const ctx = contexts.get(credits);
  if (ctx === undefined) throw new Error("leases contract: a credit service made without withContext");
  return leaseCore(ctx, sessionDeps(ctx, undefined));
};

/** `credits.leases(options)` of a `CoreCreditService` over its module context. */
const leasesOf = (credits: CoreCreditService, options: LeaseOptions = {}) =>
  new CreditLeases(settlesOf(credits), options);

/** A PRNG in [0, 1) seeded with `seed` (mulberry32): the same seed, the same sequence. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A process that dies: its lease stops (no tick settles anything any more) and is never closed.
 * What it served and did not settle is in the ledger file (when there is one) and nowhere else:
 * `ledger`'s lines are written, then the process dies.
 */
async function kill(lease: CreditLeases, ledger?: LedgerLogger): Promise<void> {
  await ledger?.flush();
  // The lease's private timer: stopping it is what a process that dies does, and no API should offer it.
  const timer = (lease as unknown as { timer?: NodeJS.Timeout }).timer;
  if (timer === undefined) throw new Error("runLeasesContract: CreditLeases has no timer to stop any more");
  clearInterval(timer);
  await ledger?.close();
}

/** `getDb`, `getPeer`: two initialised managers over one store (the same one twice is allowed). @beta */
export function runLeasesContract(
  getDb: () => DbManager,
  getPeer: () => DbManager,
  options: { test?: TestApi; seed?: number } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const seed = options.seed ?? 39;
  const user = () => `ls-${randomUUID()}`;
  const pair = () => {
    const clock = { now: T0 };
    return { clock, a: withContext(getDb(), clock), b: withContext(getPeer(), clock) };
  };
  /** Charges, counting what was answered; a refusal (no credits) is answered with 0. */
  const charged = async (lease: CreditLeases, u: string, amount: number): Promise<number> => {
    try {
      return (await lease.charge(u, amount, { reason: "contract" })).amount;
    } catch (error) {
      if (error instanceof InsufficientCreditsError) return 0;
      throw error;
    }
  };
  /** The journal's settle entries of `u`: exactly one per window, each committing what its window says. */
  const windows = async (credits: CoreCreditService, u: string) => {
    const items = (await credits.getCreditHistory(u, { limit: 1000 })).items;
    const seen = new Set<string>();
    let requests = 0;
    let total = 0;
    for (const e of items) {
      const w = leaseWindowOf(e.metadata);
      if (w === null) continue;
      const key = `${w.lease}:${w.window}`;
      expect(seen.has(key), `window ${key} settled twice`).toBe(false);
      seen.add(key);
      if (e.type === "commit_reserved") expect(e.amount).toBe(w.total);
      requests += w.requests;
      total += w.total;
    }
    return { count: seen.size, requests, total, items };
  };
  const clean = async (credits: CoreCreditService, u: string, balance: number) => {
    const info = await credits.getUserCreditsInfo(u);
    expect(info).toMatchObject({ balance, reserved: 0, debt: 0 });
    expect((await credits.audit(u)).ok).toBe(true);
  };

  describe("leases, two managers over one store", () => {
    /** A ledger file in a folder of its own, removed after `run`. */
    const withFile = async (run: (file: string) => Promise<void>) => {
      const dir = await mkdtemp(join(tmpdir(), "cm-lease-contract-"));
      try {
        await run(join(dir, "ledger.jsonl"));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    };

    it(`random interleavings of charge, flush and close on both (seed ${seed}): never overspent, charged once`, async () => {
      const { a, b } = pair();
      const u = user();
      const start = 3000;
      await a.credits.addCredits(u, start);
      const opts: LeaseOptions = { size: 200, exactBelow: 2, share: 0.5, settleEveryMs: 25, ttlSeconds: 60 };
      const leases = [leasesOf(a.credits, opts), leasesOf(b.credits, opts)] as const;
      const random = mulberry32(seed);
      let answered = 0;
      let leased = { requests: 0, total: 0 };
      const one = async (l: CreditLeases, amount: number) => {
        try {
          const c = await l.charge(u, amount, { reason: "contract" });
          answered += c.amount;
          if (c.via === "lease") leased = { requests: leased.requests + 1, total: leased.total + c.amount };
        } catch (error) {
          if (!(error instanceof InsufficientCreditsError)) throw error;
        }
      };
      for (let step = 0; step < 160; step++) {
        const r = random();
        const l = leases[random() < 0.5 ? 0 : 1];
        if (r < 0.6) await one(l, 1 + Math.floor(random() * 40));
        else if (r < 0.85) {
          // A burst on both at once: their settles and rolls race in the store.
          const burst: Promise<void>[] = [];
          for (let i = 0; i < 6; i++) burst.push(one(leases[i % 2] as CreditLeases, 1 + Math.floor(random() * 60)));
          await Promise.all(burst);
        } else if (r < 0.95)
          await Promise.all([l.flush(), l.flush()]); // a settle asked for twice at once
        else await Promise.all([leases[0].flush(), leases[1].flush()]);
        expect(answered).toBeLessThanOrEqual(start);
      }
      await Promise.all([leases[0].close(), leases[1].close()]);
      await leases[0].close(); // idempotent
      expect(answered).toBeLessThanOrEqual(start);
      expect(answered).toBeGreaterThanOrEqual(start / 2);
      await clean(b.credits, u, start - answered);
      const w = await windows(a.credits, u);
      expect({ requests: w.requests, total: w.total }).toEqual(leased);
    });

    it('leases under a spender limit: leased charges from A and B at once never pass it, and count as on the exact path (docs/teams-and-limits.md, "Leases")', async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 10_000);
      await b.credits.setLimits(u, [{ spender: "alice", amount: 200, period: "month" }]);
      const la = leasesOf(a.credits, { size: 10, settleEveryMs: 30_000 });
      const lb = leasesOf(b.credits, { size: 10, settleEveryMs: 30_000 });
      let charged = 0;
      let leased = 0;
      const run = async (lease: typeof la) => {
        for (let i = 0; i < 150; i++) {
          try {
            const r = await lease.charge(u, 1, { spender: "alice" });
            charged += r.amount;
            if (r.via === "lease") leased++;
          } catch (error) {
            expect((error as { code?: string }).code).toBe("SPEND_LIMIT_EXCEEDED");
          }
        }
      };
      await Promise.all([run(la), run(lb)]);
      await Promise.all([la.close(), lb.close()]);
      expect(leased).toBeGreaterThanOrEqual(1);
      expect(charged).toBeLessThanOrEqual(200);
      expect(charged).toBeGreaterThanOrEqual(100);
      // Every leased charge counted toward alice's window; nothing held is left counted.
      expect((await a.credits.getLimits(u)).map((l) => l.used)).toEqual([charged]);
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(10_000 - charged);
      // Bob is under no limit.
      expect((await a.credits.deductCredits(u, 5, { spender: "bob" })).amount).toBe(5);
      expect((await a.credits.audit(u)).ok).toBe(true);
    });

    it("leases for a scoped feature: leased charges from A and B draw from the scoped grant first (docs/teams-and-limits.md)", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 500);
      await b.credits.addCredits(u, 300, { scope: { features: ["images"] } });
      const la = leasesOf(a.credits, { size: 10, settleEveryMs: 30_000 });
      const lb = leasesOf(b.credits, { size: 10, settleEveryMs: 30_000 });
      let leased = 0;
      const run = async (lease: typeof la) => {
        for (let i = 0; i < 100; i++) if ((await lease.charge(u, 1, { feature: "images" })).via === "lease") leased++;
      };
      await Promise.all([run(la), run(lb)]);
      await Promise.all([la.close(), lb.close()]);
      expect(leased).toBeGreaterThanOrEqual(100);
      expect((await a.credits.getUserCreditsInfo(u, { feature: "images" })).available).toBe(600);
      // The unscoped grant paid nothing: the scoped one paid all 200.
      expect((await b.credits.getUserCreditsInfo(u)).available).toBe(500);
      expect((await a.credits.audit(u)).ok).toBe(true);
    });

    it("a settle sent twice at once, through both managers, charges once", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 10_000);
      const sizing = { size: 500, exactBelow: 1, share: 0.5 };
      const placed = await settlesOf(a.credits).settleLease(u, {
        lease: "L",
        window: 0,
        holdId: null,
        used: 0,
        requests: 0,
        roll: { sizing, ttlSeconds: 60 },
      });
      expect(placed.next).not.toBeNull();
      const s = { lease: "L", window: 1, holdId: placed.next?.id ?? null, used: 42, requests: 3, roll: null };
      const [x, y] = await Promise.all([
        settlesOf(a.credits).settleLease(u, s),
        settlesOf(b.credits).settleLease(u, s),
      ]);
      expect([x.replayed, y.replayed].sort()).toEqual([false, true]);
      expect(x.entry?.id).toBe(y.entry?.id);
      const again = await settlesOf(a.credits).settleLease(u, s);
      expect(again.replayed).toBe(true);
      await clean(b.credits, u, 10_000 - 42);
      expect((await windows(a.credits, u)).count).toBe(1);
    });

    it("an idle lease goes back, so the other manager serves a charge that needs the rest", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 1000);
      // Windows of half a second: B's refusal comes before A's lease can go idle (two ticks).
      const la = leasesOf(a.credits, { size: 400, share: 0.5, exactBelow: 1, settleEveryMs: 500 });
      const lb = leasesOf(b.credits, { size: 1000, share: 1, exactBelow: 0, settleEveryMs: 500 });
      expect((await la.charge(u, 10)).via).toBe("lease");
      expect((await b.credits.getUserCreditsInfo(u)).reserved).toBe(400);
      await expect(lb.charge(u, 900)).rejects.toBeInstanceOf(InsufficientCreditsError);
      const until = Date.now() + 5000;
      while ((await b.credits.getUserCreditsInfo(u)).reserved > 0 || la.size > 0) {
        expect(Date.now(), "A's idle lease was not returned within 5 s").toBeLessThanOrEqual(until);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      expect((await lb.charge(u, 900)).amount).toBe(900);
      await Promise.all([la.close(), lb.close()]);
      await clean(a.credits, u, 90);
      expect(await windows(b.credits, u)).toMatchObject({ requests: 2, total: 910 });
    });

    it("a small balance stays on the exact path on both managers", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 399);
      const opts: LeaseOptions = { size: 100, exactBelow: 4, settleEveryMs: 30_000 };
      const la = leasesOf(a.credits, opts);
      const lb = leasesOf(b.credits, opts);
      const answers = await Promise.all([la.charge(u, 10), lb.charge(u, 20), la.charge(u, 30), lb.charge(u, 40)]);
      expect(answers.map((c) => c.via)).toEqual(["exact", "exact", "exact", "exact"]);
      expect(answers.every((c) => c.entry?.type === "deduct")).toBe(true);
      expect((await a.credits.getUserCreditsInfo(u)).reserved).toBe(0);
      expect(await charged(lb, u, 300)).toBe(0); // 299 left: refused, nothing changed
      expect(la.size + lb.size).toBe(0);
      await Promise.all([la.close(), lb.close()]);
      await clean(b.credits, u, 299);
      expect((await windows(a.credits, u)).count).toBe(0);
    });

    it("a crash between charge and settle, with a ledger file: the successor settles exactly once", () =>
      withFile(async (file) => {
        const clock = { now: T0 };
        const dead = withContext(getDb(), clock, { ledgerFile: file });
        const b = withContext(getPeer(), clock);
        const u = user();
        await b.credits.addCredits(u, 10_000);
        const opts: LeaseOptions = { size: 1000, exactBelow: 1, settleEveryMs: 30_000, ttlSeconds: 60 };
        const la = leasesOf(dead.credits, opts);
        const lb = leasesOf(b.credits, opts);
        let settled = 0;
        for (let i = 0; i < 10; i++) settled += await charged(la, u, 7);
        await la.flush(); // window 1 settled (70)
        let unsettled = 0;
        let other = 0;
        for (let i = 0; i < 12; i++) {
          unsettled += await charged(la, u, 5);
          other += await charged(lb, u, 3);
        }
        await kill(la, dead.ledger);
        expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(10_000 - settled);

        // The successor on the same file: two recoveries at once, then a third, charge the window once.
        const next = withContext(getDb(), clock, { ledgerFile: file });
        const [r1, r2] = await Promise.all([
          leasesOf(next.credits, opts).recover(),
          leasesOf(next.credits, opts).recover(),
        ]);
        expect(r1.credits + r2.credits).toBe(unsettled);
        expect((await leasesOf(next.credits, opts).recover()).credits).toBe(0);
        await lb.close();
        await next.ledger.flush();
        await clean(b.credits, u, 10_000 - settled - unsettled - other);
        const w = await windows(next.credits, u);
        expect({ requests: w.requests, total: w.total }).toEqual({ requests: 34, total: settled + unsettled + other });

        // The file's lines add up to each window the journal settled for the dead lease.
        const lines = new Map<string, FileWindow>();
        for (const text of (await readFile(file, "utf8")).split("\n")) {
          if (!text.includes('"eventType":"lease"')) continue;
          const line = leaseLineOf(JSON.parse(text));
          if (line !== null) addLeaseLine(lines, line);
        }
        let checked = 0;
        for (const e of w.items) {
          const lw = leaseWindowOf(e.metadata);
          if (lw === null || ![...lines.values()].some((f) => f.lease === lw.lease)) continue;
          expect(compareWindow(lw, lines.get(`${lw.lease}:${lw.window}`))).toBeNull();
          checked++;
        }
        expect(checked).toBe(2);
        await next.ledger.close();
      }));

    it("a crash with a ledger file, recovered after the hold lapsed: one keyed deduction", () =>
      withFile(async (file) => {
        const clock = { now: T0 };
        const dead = withContext(getDb(), clock, { ledgerFile: file });
        const u = user();
        await dead.credits.addCredits(u, 5000);
        const opts: LeaseOptions = { size: 500, exactBelow: 1, settleEveryMs: 30_000, ttlSeconds: 60 };
        const la = leasesOf(dead.credits, opts);
        let unsettled = 0;
        for (let i = 0; i < 9; i++) unsettled += await charged(la, u, 11);
        await kill(la, dead.ledger);
        clock.now += 120_000; // past the hold's TTL: its credits went back
        const b = withContext(getPeer(), clock);
        await b.expiration.releaseExpiredHolds();
        expect((await b.credits.getUserCreditsInfo(u)).reserved).toBe(0);
        const next = withContext(getDb(), clock, { ledgerFile: file });
        const [r1, r2] = await Promise.all([
          leasesOf(next.credits, opts).recover(),
          leasesOf(next.credits, opts).recover(),
        ]);
        expect(r1.credits + r2.credits).toBe(unsettled);
        await clean(b.credits, u, 5000 - unsettled);
        await next.ledger.close();
      }));

    it("a crash without a ledger file loses at most one window's charges, and the rest goes back", async () => {
      const { a, b, clock } = pair();
      const u = user();
      await a.credits.addCredits(u, 2000);
      const opts: LeaseOptions = { size: 300, exactBelow: 1, settleEveryMs: 30_000, ttlSeconds: 60 };
      const la = leasesOf(a.credits, opts);
      const lb = leasesOf(b.credits, opts);
      let settled = 0;
      for (let i = 0; i < 20; i++) settled += await charged(la, u, 6);
      await la.flush();
      let lost = 0;
      for (let i = 0; i < 8; i++) {
        const c = await la.charge(u, 9);
        expect(c.via).toBe("lease");
        lost += c.amount;
        settled += await charged(lb, u, 4);
      }
      await kill(la); // dies: the window's 72 credits were served and are never settled
      await lb.close();
      expect((await b.credits.getUserCreditsInfo(u)).reserved).toBeGreaterThanOrEqual(1); // the dead block, until its TTL
      clock.now += 120_000;
      await b.expiration.releaseExpiredHolds();
      await clean(b.credits, u, 2000 - settled);
      expect(lost).toBeLessThanOrEqual(300);
      // The credits the dead lease held serve the other manager again.
      const lb2 = leasesOf(b.credits, opts);
      expect(await charged(lb2, u, 2000 - settled)).toBe(2000 - settled);
      await lb2.close();
      await clean(a.credits, u, 0);
    });
  });
}
