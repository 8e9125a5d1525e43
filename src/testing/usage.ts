/**
 * Usage reports on any store (the `usage` part of `runDbManagerContract`, also
 * `runUsageContract`; docs/usage.md): for random journals, what `credits.getUsage` answers equals
 * a naive sum over `getCreditHistory`. The journals are made through the public API (deductions,
 * holds captured in part, in full and beyond, releases, metered LLM usage, spend that names a
 * spender, a feature and metadata, lease windows with parts, payment take-backs, usage recorded
 * late, reversals of charges in part or whole) with a clock that
 * moves on by random steps, so entries fall into many windows. A store without its own
 * aggregation (`DbManager.usage`) is read one account at a time, and refuses a report across
 * accounts with `ConfigurationError`.
 */
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it, useTestApi } from "../core/testing/runner.js";
import type { DbManager } from "../core/db/types.js";
import { usageKind, usageParts } from "../core/domain/usage.js";
import { windowStart } from "../core/domain/windows.js";
import { ConfigurationError } from "../core/errors.js";
import type { JournalEntry, UsageDimension, UsageQuery, UsageRow } from "../core/models/index.js";
import { CreditService } from "../credit-service.js";
import type { ModuleContext } from "../core/module.js";
import { PricingService } from "../modules/pricing/service.js";
import { DAY, HOUR, lazy, type PartOptions } from "../core/testing/support.js";

const MIN = 60_000;

/** The price book of the metered calls (`meter`). */
const PRICING = {
  models: [
    { model: "small", input: { credits: 1, per: 10 }, output: { credits: 1, per: 2 } },
    { model: "large", input: { credits: 1 }, output: { credits: 3 }, cachedInput: { credits: 1, per: 4 } },
  ],
};

/** One step of a journal. */
export type UsageOp =
  | { op: "deduct"; amount: number; feature?: string; spender?: string; team?: string | number; reason?: string }
  | { op: "hold"; amount: number; capture: number | null; feature?: string; team?: string; commitTeam?: string }
  | { op: "meter"; estimate: number; calls: { model: string; input: number; output: number; cached: number }[] }
  | { op: "takeBack"; amount: number; dispute: boolean }
  | {
      op: "window";
      amount: number;
      requests: number;
      parts: { model: string | null; feature: string | null; credits: number; requests: number; inputTokens: number }[];
    }
  | { op: "late"; amount: number; agoMs: number; feature?: string; spender?: string }
  | { op: "reverse"; pick: number; percent: number }
  | { op: "step"; ms: number };

const opArb: fc.Arbitrary<UsageOp> = fc.oneof(
  fc.record(
    {
      op: fc.constant("deduct" as const),
      amount: fc.integer({ min: 1, max: 50 }),
      feature: fc.constantFrom("chat", "search", "img"),
      spender: fc.constantFrom("k1", "k2"),
      team: fc.oneof(fc.constantFrom("red", "blue"), fc.integer({ min: 1, max: 3 })),
      reason: fc.constantFrom("POST /chat", "GET /search"),
    },
    { requiredKeys: ["op", "amount"] },
  ),
  fc.record(
    {
      op: fc.constant("hold" as const),
      amount: fc.integer({ min: 1, max: 40 }),
      capture: fc.option(fc.integer({ min: 0, max: 60 })),
      feature: fc.constantFrom("chat", "img"),
      // Metadata given with the hold, with the commit, or both: the capture and its excess carry both.
      team: fc.constantFrom("red", "blue"),
      commitTeam: fc.constantFrom("red", "green"),
    },
    { requiredKeys: ["op", "amount", "capture"] },
  ),
  fc.record({
    op: fc.constant("meter" as const),
    estimate: fc.integer({ min: 1, max: 80 }),
    calls: fc.array(
      fc.record({
        model: fc.constantFrom("small", "large"),
        input: fc.integer({ min: 0, max: 60 }),
        output: fc.integer({ min: 0, max: 20 }),
        cached: fc.integer({ min: 0, max: 8 }),
      }),
      { maxLength: 3 },
    ),
  }),
  fc.record({ op: fc.constant("takeBack" as const), amount: fc.integer({ min: 1, max: 30 }), dispute: fc.boolean() }),
  fc.record({
    op: fc.constant("window" as const),
    amount: fc.integer({ min: 1, max: 90 }),
    requests: fc.integer({ min: 0, max: 30 }),
    parts: fc.array(
      fc.record({
        model: fc.constantFrom("small", "large", null),
        feature: fc.constantFrom("chat", null),
        credits: fc.integer({ min: 0, max: 40 }),
        requests: fc.integer({ min: 0, max: 10 }),
        inputTokens: fc.integer({ min: 0, max: 500 }),
      }),
      { maxLength: 3 },
    ),
  }),
  fc.record({ op: fc.constant("step" as const), ms: fc.integer({ min: 1, max: 30 * HOUR }) }),
  // Usage recorded late (docs/usage.md, "Late usage"): placed up to 34 days back.
  fc.record(
    {
      op: fc.constant("late" as const),
      amount: fc.integer({ min: 1, max: 50 }),
      agoMs: fc.integer({ min: 1, max: 34 * DAY }),
      feature: fc.constantFrom("chat", "search"),
      spender: fc.constantFrom("k1", "k2"),
    },
    { requiredKeys: ["op", "amount", "agoMs"] },
  ),
  // A reversal of one of the charges so far, of a share of what is left of it (docs/usage.md, "Corrections").
  fc.record({
    op: fc.constant("reverse" as const),
    pick: fc.nat(),
    percent: fc.integer({ min: 1, max: 100 }),
  }),
);

/** The context each `usageService` gave its module (the take-backs run their units of work through it). */
const contexts = new WeakMap<CreditService, ModuleContext>();

/** Credits over `db` on `clock`, with the price book of the metered calls. */
export function usageService(db: DbManager, clock: { now: number }): CreditService {
  let ctx: ModuleContext | undefined;
  const credits = new CreditService({
    db,
    clock: () => new Date(clock.now),
    pricing: new PricingService({ book: PRICING }),
    // A module of the test's own: its context runs the take-backs, as the payments module's does.
    modules: [{ id: "usage-contract", capabilities: ["overdraftLimit", "takeBack"], init: (c) => void (ctx = c) }],
  });
  if (ctx !== undefined) contexts.set(credits, ctx);
  return credits;
}

/** Runs `ops` on `user` through the public API, moving `clock` on between them. */
export async function playUsage(
  credits: CreditService,
  clock: { now: number },
  user: string,
  ops: readonly UsageOp[],
): Promise<void> {
  await credits.addCredits(user, 100_000);
  for (const o of ops) {
    clock.now += 7 * MIN;
    switch (o.op) {
      case "step":
        clock.now += o.ms;
        break;
      case "deduct":
        await credits.deductCredits(user, o.amount, {
          feature: o.feature,
          spender: o.spender,
          description: o.reason,
          metadata: o.team === undefined ? undefined : { team: o.team },
        });
        break;
      case "hold": {
        const h = await credits.reserveCredits(user, o.amount, {
          feature: o.feature,
          metadata: o.team === undefined ? undefined : { team: o.team },
        });
        if (o.capture === null) await credits.releaseReservedCredits(h.id);
        else
          await credits.commitReservedCredits(h.id, {
            amount: o.capture,
            metadata: o.commitTeam === undefined ? undefined : { team: o.commitTeam },
          });
        break;
      }
      case "meter": {
        const s = await credits.openMeter(user, { estimate: o.estimate, noUsage: "estimate" });
        for (const c of o.calls)
          s.recordUsage({ model: c.model, inputTokens: c.input, outputTokens: c.output, cachedTokens: c.cached });
        await s.commit();
        break;
      }
      case "window":
        // A lease window's settle as the journal keeps it (docs/usage.md, "Leases"); its parts may
        // not add up to the entry (a capture cut short): the rest is a part of its own.
        await credits.deductCredits(user, o.amount, {
          feature: "chat",
          metadata: {
            leaseWindow: {
              lease: `l-${user}`,
              window: 1,
              requests: o.requests,
              total: o.amount,
              parts: o.parts.map((p) => ({ ...p, spender: null, outputTokens: 1, cachedTokens: 0 })),
            },
          },
        });
        break;
      case "late":
        await credits.deductCreditsAfterService(user, o.amount, {
          feature: o.feature,
          spender: o.spender,
          occurredAt: new Date(clock.now - o.agoMs),
        });
        break;
      case "reverse": {
        const charges = (
          await credits.getCreditHistory(user, { limit: 1000, types: ["deduct", "commit_reserved"] })
        ).items.filter((e) => usageKind(e) === "spend" && e.amount > 0);
        const charge = charges[o.pick % Math.max(charges.length, 1)];
        if (charge === undefined) break;
        const { remaining } = await credits.getReversals(user, charge.id);
        if (remaining === 0) break;
        await credits.reverseCharge(user, charge.id, {
          amount: Math.max(1, Math.floor((remaining * o.percent) / 100)),
          reason: "a correction (test)",
        });
        break;
      }
      case "takeBack": {
        // What a payment's reversal writes (docs/promos-and-payments.md): a deduction the library
        // records as a take-back (`takeBack`), in a unit of work of its own, as the payments module does.
        const meta = {
          description: `${o.dispute ? "Lost dispute" : "Refund"} of payment p-${user} (test)`,
          metadata: { paymentId: `p-${user}`, provider: "test", refundedAmount: o.amount * 10 },
          takeBack: o.dispute ? ("clawback" as const) : ("refund" as const),
        };
        const ctx = contexts.get(credits);
        if (ctx === undefined) throw new ConfigurationError("usage contract: credits not made by usageService");
        await ctx.runUnitOfWork(
          user,
          meta,
          async (work) => work.deduct(o.amount, meta, { allowDebt: true, overdraftLimit: null }),
          undefined,
          { periods: false },
        );
        break;
      }
    }
  }
}

/** Every entry of `user`, through getCreditHistory's pages. */
async function history(credits: CreditService, user: string): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await credits.getCreditHistory(user, { limit: 1000, cursor });
    out.push(...page.items);
    if (page.nextCursor === null) return out;
    cursor = page.nextCursor;
  }
}

/** The naive report: each entry's parts summed under its window's start and groups. */
function naive(entries: Map<string, JournalEntry[]>, q: UsageQuery & { from: Date; to: Date }): Map<string, UsageRow> {
  const tz = q.timeZone ?? "UTC";
  const out = new Map<string, UsageRow>();
  for (const [user, list] of entries) {
    if (q.account !== undefined && q.account !== user) continue;
    for (const e of list) {
      // Where the usage happened: late usage and reversals at their occurredAt.
      const t = (e.occurredAt ?? e.createdAt).getTime();
      if (t < q.from.getTime() || t >= q.to.getTime()) continue;
      const start = q.interval === null ? q.from.getTime() : Math.max(windowStart(t, q.interval, tz), q.from.getTime());
      for (const p of usageParts(e)) {
        if (q.kinds !== undefined && !q.kinds.includes(p.kind)) continue;
        const groups: Record<string, string | null> = {};
        for (const d of q.groupBy ?? []) {
          const meta = e.metadata?.[d.slice("metadata.".length)];
          groups[d] =
            d === "account"
              ? user
              : d === "model"
                ? p.model
                : d === "feature"
                  ? p.feature !== undefined
                    ? p.feature
                    : (e.feature ?? null)
                  : d === "spender"
                    ? p.spender !== undefined
                      ? p.spender
                      : (e.spender ?? null)
                    : d === "reason"
                      ? e.description
                      : typeof meta === "string" || typeof meta === "number" || typeof meta === "boolean"
                        ? String(meta)
                        : null;
        }
        const key = JSON.stringify([start, p.kind, groups]);
        // Without `end`: the naive report is compared by start, kind, groups and figures (`comparable`).
        const row =
          out.get(key) ??
          ({
            start: new Date(start),
            ...groups,
            kind: p.kind,
            credits: 0,
            requests: 0,
            inputTokens: 0,
            outputTokens: 0,
            cachedTokens: 0,
            shortfall: 0,
          } as unknown as UsageRow);
        row.credits += p.credits;
        row.requests += p.requests;
        row.inputTokens += p.inputTokens;
        row.outputTokens += p.outputTokens;
        row.cachedTokens += p.cachedTokens;
        row.shortfall += p.shortfall;
        out.set(key, row);
      }
    }
  }
  return out;
}

const comparable = (rows: Iterable<UsageRow>) =>
  [...rows]
    .map((r) => {
      const { end: _end, ...rest } = r;
      return JSON.stringify({ ...rest, start: r.start.getTime() });
    })
    .sort();

const queryArb = fc.record({
  interval: fc.constantFrom("hour", "day", "week", "month", null),
  groupBy: fc.subarray(["account", "feature", "spender", "model", "reason", "metadata.team"] as const, {
    maxLength: 3,
  }),
  timeZone: fc.constantFrom("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"),
  kinds: fc.option(fc.subarray(["spend", "refund", "clawback"] as const, { minLength: 1 }), { nil: undefined }),
  fleet: fc.boolean(),
  cutFrom: fc.integer({ min: 0, max: 20 }),
  cutTo: fc.integer({ min: 0, max: 20 }),
  // From and to at UTC midnights: a store with a daily rollup (PostgreSQL) then answers a report
  // across accounts by account or by nothing from it for every day; otherwise for all but the edges.
  wholeDays: fc.boolean(),
});

/** Usage reports: random journals against a naive sum, metadata of holds, top accounts. @beta */
export function runUsageContract(getDb: () => DbManager, options: PartOptions & { runs?: number } = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  const runs = options.runs ?? 12;
  const db = lazy(getDb);
  describe("usage", () => {
    // Years before now: no other part of the suite writes there, so a report across accounts
    // reads this part's accounts alone.
    const clock = { now: Date.now() - 5 * 365 * DAY };
    const journals = new Map<string, JournalEntry[]>();
    const run = randomUUID().slice(0, 8);
    let n = 0;
    /** Whether the store aggregates itself, and so answers a report across accounts. */
    const fleet = () => db.usage !== undefined;

    it(`equals a naive sum over getCreditHistory, for random journals and queries (${runs} runs)`, async () => {
      const credits = usageService(db, clock);
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.array(opArb, { minLength: 1, maxLength: 14 }), { minLength: 1, maxLength: 3 }),
          fc.array(queryArb, { minLength: 1, maxLength: 4 }),
          async (accounts, queries) => {
            const first = clock.now;
            const users: string[] = [];
            for (const ops of accounts) {
              const user = `usage-${run}-${++n}`;
              users.push(user);
              await playUsage(credits, clock, user, ops);
              journals.set(user, await history(credits, user));
            }
            const span = clock.now + MIN - first;
            for (const q of queries) {
              let from = new Date(first + Math.floor((span * q.cutFrom) / 100));
              let to = new Date(clock.now + MIN - Math.floor((span * q.cutTo) / 100));
              if (q.wholeDays) {
                from = new Date(Math.floor(from.getTime() / DAY) * DAY);
                to = new Date(Math.ceil(to.getTime() / DAY) * DAY);
              }
              const query = {
                ...(q.fleet && fleet() ? {} : { account: users[0] }),
                from,
                to,
                interval: q.interval,
                groupBy: [...q.groupBy],
                timeZone: q.timeZone,
                ...(q.kinds === undefined ? {} : { kinds: [...q.kinds] }),
              };
              // A report across accounts reads every account of the store: compared over this part's range only.
              const report = await credits.getUsage(query);
              expect(report.truncated).toBe(false);
              for (const r of report.rows)
                expect(r.end.getTime() > r.start.getTime(), "a window ends after it starts").toBe(true);
              expect(comparable(report.rows)).toEqual(comparable(naive(journals, query).values()));
            }
            // The audit compares the daily rollup (where the store keeps one) with the journal.
            for (const user of users) expect((await credits.audit(user)).problems).toEqual([]);
          },
        ),
        { numRuns: runs, seed: 5202, endOnFailure: true },
      );
    }, 240_000);

    it("a capture carries its hold's metadata under the commit's, and so does an over-capture's excess", async () => {
      const credits = usageService(db, clock);
      clock.now += HOUR;
      const from = new Date(clock.now);
      const user = `usage-${run}-held`;
      await credits.addCredits(user, 1_000);
      // Metadata given when the hold is placed: the capture of 5 is t2's.
      const a = await credits.reserveCredits(user, 10, { metadata: { tenant: "t2" } });
      const captured = await credits.commitReservedCredits(a.id, { amount: 5 });
      expect(captured.metadata).toEqual({ tenant: "t2" });
      // Both: the commit's keys win, the hold's others stay; the excess of 15 carries them too.
      const b = await credits.reserveCredits(user, 10, { metadata: { tenant: "t0", region: "eu" } });
      await credits.commitReservedCredits(b.id, { amount: 25, metadata: { tenant: "t1" } });
      // A metered call over its estimate with recorded LLM usages: the usages stay on the capture.
      const s = await credits.openMeter(user, { estimate: 4, metadata: { tenant: "t3" } });
      s.recordUsage({ model: "large", inputTokens: 6, outputTokens: 1 }); // 9 credits
      await s.commit();
      const entries = (await credits.getCreditHistory(user, { from, types: ["commit_reserved", "deduct"] })).items;
      expect(
        entries
          .sort((x, y) => x.seq - y.seq)
          .map((e) => [e.type, e.amount, e.metadata?.tenant, e.metadata?.region, e.metadata?.usages !== undefined]),
      ).toEqual([
        ["commit_reserved", 5, "t2", undefined, false],
        ["commit_reserved", 10, "t1", "eu", false],
        ["deduct", 15, "t1", "eu", false],
        ["commit_reserved", 4, "t3", undefined, true],
        ["deduct", 5, "t3", undefined, false],
      ]);
      const q = { account: user, from, to: new Date(clock.now + MIN), interval: null };
      const rows = (groupBy: UsageQuery["groupBy"]) =>
        credits.getUsage({ ...q, groupBy }).then((r) =>
          r.rows
            .map((row) =>
              JSON.stringify([
                ...(groupBy ?? []).map((d) => row[d as UsageDimension]),
                row.credits,
                row.requests,
                row.inputTokens,
              ]),
            )
            .sort()
            .map((row) => JSON.parse(row) as unknown),
        );
      expect(await rows(["metadata.tenant"])).toEqual([
        ["t1", 25, 1, 0],
        ["t2", 5, 1, 0],
        ["t3", 9, 1, 6],
      ]);
      expect(await rows(["metadata.region"])).toEqual([
        ["eu", 25, 1, 0],
        [null, 14, 2, 6],
      ]);
      // By model: the usages' credits under their model, and what the capture was short of them
      // (negative) and its excess (positive) under null, the tenant's either way: they net to 0.
      expect(await rows(["metadata.tenant", "model"])).toEqual([
        ["t1", null, 25, 1, 0],
        ["t2", null, 5, 1, 0],
        ["t3", "large", 9, 1, 6],
        ["t3", null, 0, 0, 0],
      ]);
      expect((await credits.audit(user)).problems).toEqual([]);
    });

    it("every request served leaves an entry: one the overdraft limit left unpaid counts as a request and its shortfall (docs/metering.md)", async () => {
      const credits = usageService(db, clock);
      const ctx = contexts.get(credits)!;
      clock.now += HOUR;
      const from = new Date(clock.now);
      const user = `usage-${run}-unpaid`;
      // One credit, the default overdraft limit of 0: three fixed-price requests of 1 served at once
      // (as a fixed-price route charges them), one paid, two not; then a metered call of 9 on a hold of 4.
      await credits.addCredits(user, 1);
      const charges = [];
      for (let i = 0; i < 3; i++)
        charges.push(await ctx.chargeUpToLimit(user, 1, { description: "GET /img", feature: "img" }));
      await credits.addCredits(user, 4);
      const s = await credits.openMeter(user, { estimate: 4, feature: "chat" });
      s.recordUsage({ model: "large", inputTokens: 6, outputTokens: 1 }); // 9 credits
      expect((await s.commit()).shortfall).toBe(5);
      expect(charges.map((e) => [e.type, e.amount, e.shortfall ?? null])).toEqual([
        ["deduct", 1, null],
        ["deduct", 0, 1],
        ["deduct", 0, 1],
      ]);
      const entries = (await credits.getCreditHistory(user, { from, types: ["deduct", "commit_reserved"] })).items;
      // The entry's own field as the store gives it back; what was asked stays in the metadata.
      expect(entries.map((e) => [e.type, e.amount, e.shortfall ?? null, e.metadata?.requested ?? null]).sort()).toEqual(
        [
          ["commit_reserved", 4, 5, 9],
          ["deduct", 0, 1, 1],
          ["deduct", 0, 1, 1],
          ["deduct", 1, null, null],
        ],
      );
      expect(entries.some((e) => e.metadata?.shortfall !== undefined)).toBe(false);
      const report = async (groupBy: UsageQuery["groupBy"], wholeDays: boolean) => {
        const q = wholeDays
          ? {
              from: new Date(Math.floor(from.getTime() / DAY) * DAY),
              to: new Date((Math.floor(clock.now / DAY) + 1) * DAY),
            }
          : { from, to: new Date(clock.now + MIN) };
        const r = await credits.getUsage({ account: user, ...q, interval: null, groupBy });
        return r.rows.map((row) => [
          ...(groupBy ?? []).map((d) => row[d as UsageDimension]),
          row.credits,
          row.requests,
          row.shortfall,
        ]);
      };
      // From the journal, and over whole UTC days (where a store's rollup answers).
      for (const wholeDays of [false, true]) {
        expect(await report([], wholeDays)).toEqual([[5, 4, 7]]);
        expect(await report(["feature"], wholeDays)).toEqual([
          ["chat", 4, 1, 5],
          ["img", 1, 3, 2],
        ]);
        expect(await report(["model"], wholeDays)).toEqual([
          [null, -4, 3, 2],
          ["large", 9, 1, 5],
        ]);
      }
      expect((await credits.audit(user)).problems).toEqual([]);
    });

    it("what was served and not paid is the entry's shortfall, which only the library sets: a module's metadata saying one changes no usage or revenue figure (docs/metering.md)", async () => {
      const credits = usageService(db, clock);
      const ctx = contexts.get(credits)!;
      clock.now += HOUR;
      const from = new Date(clock.now);
      const user = `usage-${run}-lookalike`;
      // The library's cut: 5 asked of 2 there are (the default overdraft limit of 0), 3 not paid.
      await credits.addCredits(user, 2);
      const cut = await ctx.chargeUpToLimit(user, 5, { feature: "img" });
      expect([cut.amount, cut.shortfall, cut.metadata]).toEqual([2, 3, { requested: 5 }]);
      // A module's entries whose metadata says what a cut's used to (`requested`, `shortfall`), and
      // a lease window whose part claims a shortfall: paid in full, none of it is one.
      await credits.addCredits(user, 10);
      const window = { requests: 1, parts: [{ model: "m", feature: "chat", credits: 2, requests: 1, shortfall: 7 }] };
      const written = await ctx.runUnitOfWork(
        user,
        {},
        (work) => [
          work.deduct(
            1,
            { feature: "img", metadata: { requested: 41, shortfall: 40 } },
            { allowDebt: false, overdraftLimit: null },
          ),
          work.deduct(
            2,
            { feature: "chat", metadata: { leaseWindow: window } },
            { allowDebt: false, overdraftLimit: null },
          ),
        ],
        undefined,
        { periods: false },
      );
      expect(written.map((e) => e.shortfall ?? null)).toEqual([null, null]);
      const q = { account: user, interval: null };
      for (const wholeDays of [false, true]) {
        const range = wholeDays
          ? {
              from: new Date(Math.floor(from.getTime() / DAY) * DAY),
              to: new Date((Math.floor(clock.now / DAY) + 1) * DAY),
            }
          : { from, to: new Date(clock.now + MIN) };
        const rows = async (groupBy: UsageDimension[]) =>
          (await credits.getUsage({ ...q, ...range, groupBy })).rows.map((r) => [
            ...groupBy.map((d) => r[d]),
            r.credits,
            r.requests,
            r.shortfall,
          ]);
        expect(await rows([])).toEqual([[5, 3, 3]]);
        expect(await rows(["feature"])).toEqual([
          ["chat", 2, 1, 0],
          ["img", 3, 2, 3],
        ]);
        expect(await rows(["model"])).toEqual([
          [null, 3, 2, 3],
          ["m", 2, 1, 0],
        ]);
      }
      const revenue = await credits.getRevenue({ ...q, from, to: new Date(clock.now + MIN) });
      expect(revenue.rows.reduce((n, r) => n + r.unbilledCredits, 0)).toBe(3);
      expect((await credits.audit(user)).problems).toEqual([]);
    });

    it("an entry's parts that are no objects (metadata a caller wrote) count as parts without fields", async () => {
      const credits = usageService(db, clock);
      clock.now += HOUR;
      const from = new Date(clock.now);
      const user = `usage-${run}-odd`;
      await credits.addCredits(user, 100);
      await credits.deductCredits(user, 5, { metadata: { usages: ["a", 3, null] } });
      await credits.deductCredits(user, 7, { metadata: { leaseWindow: { requests: 2, parts: ["x"] } } });
      const q = { account: user, from, to: new Date(clock.now + MIN), interval: null };
      for (const groupBy of [[], ["model"], ["feature"]] as const) {
        const report = await credits.getUsage({ ...q, groupBy: [...groupBy] });
        expect(comparable(report.rows)).toEqual(
          comparable(naive(new Map([[user, await history(credits, user)]]), { ...q, groupBy: [...groupBy] }).values()),
        );
        expect(report.rows.map((r) => [r.credits, r.requests])).toEqual([[12, 2]]);
      }
    });

    it("a scan as of an earlier seq (throughSeq, what a period_spend recount asks) counts only the entries up to it", async () => {
      if (db.usage === undefined) return;
      const credits = usageService(db, clock);
      clock.now = Math.ceil(clock.now / DAY) * DAY + HOUR;
      const user = `usage-${run}-through`;
      await credits.addCredits(user, 1_000);
      const a = await credits.deductCredits(user, 10, { feature: "chat", spender: "bob" });
      clock.now += DAY;
      await credits.deductCredits(user, 20, { feature: "chat" });
      await credits.reverseCharge(user, a.id, { amount: 4, reason: "goodwill" }); // placed on the first day
      clock.now += HOUR;
      await credits.deductCredits(user, 30, { feature: "search", spender: "bob" });
      const start = Math.floor(clock.now / DAY) * DAY - DAY;
      const boundaries = [start - DAY, start, start + DAY, start + 3 * DAY];
      const spend = async (throughSeq: number) => {
        const buckets = await db.usage!({
          account: user,
          from: new Date(boundaries[0]!),
          to: new Date(boundaries[3]!),
          interval: null,
          timeZone: "UTC",
          groupBy: ["spender"],
          kinds: ["spend"],
          orderBy: "start",
          limit: 1000,
          boundaries,
          throughSeq,
        });
        // By window and spender, groups that sum to zero left out (docs: a rollup may answer them).
        return buckets
          .filter((b) => b.credits !== 0)
          .map((b) => `${b.window}:${String(b.groups.spender)}=${b.credits}`)
          .sort();
      };
      // Seq 1 the grant, 2 the first charge, 3 the second, 4 the reversal, 5 the third.
      expect(await spend(1)).toEqual([]);
      expect(await spend(2)).toEqual(["1:bob=10"]);
      expect(await spend(3)).toEqual(["1:bob=10", "2:null=20"]);
      expect(await spend(4)).toEqual(["1:bob=6", "2:null=20"]);
      expect(await spend(5)).toEqual(["1:bob=6", "2:bob=30", "2:null=20"]);
    });

    it("each unit's usage is a row of its own, never added to another's, from the journal and the rollup (docs/units.md)", async () => {
      const credits = usageService(db, clock);
      // A day of its own, then whole UTC days: a store's rollup answers them.
      const day0 = (Math.floor(clock.now / DAY) + 2) * DAY;
      clock.now = day0 + HOUR;
      const u = `usage-${run}-units`;
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 10, { unit: "images" });
      await credits.deductCredits(u, 7, { feature: "chat" });
      await credits.deductCredits(u, 3, { unit: "images", feature: "render" });
      const hold = await credits.reserveCredits(u, 4, { unit: "images" });
      await credits.commitReservedCredits(hold.id, { amount: 2 });
      clock.now += DAY;
      await credits.deductCredits(u, 5);
      clock.now += DAY;
      const rows = async (groupBy: UsageDimension[], fleetWide: boolean) =>
        (
          await credits.getUsage({
            ...(fleetWide ? {} : { account: u }),
            from: new Date(day0),
            to: new Date(day0 + 2 * DAY),
            interval: "day",
            groupBy: fleetWide ? ["account", ...groupBy] : groupBy,
          })
        ).rows
          .filter((r) => !fleetWide || r.account === u)
          .map((r) => [
            (r.start.getTime() - day0) / DAY,
            r.unit ?? null,
            ...groupBy.map((g) => r[g]),
            r.credits,
            r.requests,
          ]);
      for (const fleetWide of fleet() ? [false, true] : [false]) {
        expect(await rows([], fleetWide)).toEqual([
          [0, null, 7, 1],
          [0, "images", 5, 2],
          [1, null, 5, 1],
        ]);
        expect(await rows(["feature"], fleetWide)).toEqual([
          [0, null, "chat", 7, 1],
          [0, "images", null, 2, 1],
          [0, "images", "render", 3, 1],
          [1, null, null, 5, 1],
        ]);
      }
      expect((await credits.audit(u)).problems).toEqual([]);
    });

    it("top accounts: orderBy credits with a limit, truncated says so (a store without usage() refuses the report across accounts)", async () => {
      const credits = usageService(db, clock);
      clock.now += HOUR;
      const base = clock.now;
      for (const [i, amount] of [30, 50, 10, 40].entries()) {
        clock.now += MIN;
        await credits.addCredits(`usage-${run}-top-${i}`, 1000);
        await credits.deductCredits(`usage-${run}-top-${i}`, amount);
      }
      const top = credits.getUsage({
        from: new Date(base),
        to: new Date(clock.now + MIN),
        interval: null,
        groupBy: ["account"],
        kinds: ["spend"],
        orderBy: "credits",
        limit: 2,
      });
      if (!fleet()) {
        await expect(top).rejects.toBeInstanceOf(ConfigurationError);
        return;
      }
      const report = await top;
      expect(report.rows.map((r) => [r.account, r.credits])).toEqual([
        [`usage-${run}-top-1`, 50],
        [`usage-${run}-top-3`, 40],
      ]);
      expect(report.truncated).toBe(true);
    });
  });
}
