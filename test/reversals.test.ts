/**
 * Giving charges back (docs/concepts.md, "Giving a charge back") beyond the contract suite's part
 * (src/core/testing/reversals.ts, run on every store): every kind of charge the library writes — a
 * metered call, a lease window, an AI SDK call — can be given back through the entry it reports;
 * the domain event `credits_reversed` and the `balance_restored` notification follow the reversal;
 * the shares add up exactly whatever the amounts; the audit refuses a reversal that names no charge
 * of the account or goes beyond it.
 */
import { generateText, wrapLanguageModel } from "ai";
import { MockLanguageModelV4 } from "ai/test";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { creditMiddleware, type AiCallOutcome } from "../src/ai/index.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import { hashEntry } from "../src/core/domain/hash.js";
import { replayJournal } from "../src/core/domain/replay.js";
import { chargeDraw, reversalShares, reversedOf, type ChargeDraw } from "../src/core/domain/reversal.js";
import { createCreditManager, CreditService, type CreditManager } from "../src/index.js";
import { type Grant, type JournalEntry } from "../src/models-public.js";
import { DomainEvent } from "../src/core/models/index.js";
import { deliveryUserId } from "../src/modules/webhooks/queue.js";
import { generateWebhookSecret, webhookQueue } from "../src/webhooks/index.js";
import type { MeterOutcome } from "../src/modules/metering/service.js";

const managers: CreditManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
});
async function manager(options: Parameters<typeof createCreditManager>[0] = {}): Promise<CreditManager> {
  const m = await createCreditManager(options);
  managers.push(m);
  return m;
}

describe("reverseCharge: every kind of charge", () => {
  it("a metered call's capture (the entry its outcome reports)", async () => {
    const m = await manager();
    await m.credits.addCredits("u", 1000);
    const outcomes: MeterOutcome[] = [];
    await m.credits.meter("u", { estimate: 100, onSettled: (o) => outcomes.push(o) }, () => 70);
    const entry = outcomes[0]?.entry as JournalEntry;
    expect(entry.type).toBe("commit_reserved");
    const r = await m.credits.reverseCharge("u", entry.id, { reason: "request failed" });
    expect(r.amount).toBe(70);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1000);
    expect((await m.credits.audit("u")).problems).toEqual([]);
  });

  it("a lease window's settled charge", async () => {
    let now = Date.parse("2030-01-01T00:00:00.000Z");
    const m = await manager({ clock: () => new Date(now) });
    await m.credits.addCredits("u", 1000);
    const lease = m.credits.leases({ size: 100, settleEveryMs: 30_000 });
    for (let i = 0; i < 7; i++) await lease.charge("u", 3);
    now += 1000;
    await lease.close();
    const window = (await m.credits.getCreditHistory("u")).items.find(
      (e) => e.metadata?.leaseWindow !== undefined && e.amount > 0,
    ) as JournalEntry;
    expect(window.amount).toBe(21);
    await m.credits.reverseCharge("u", window.id, { amount: 6, reason: "two calls failed" });
    expect(await m.credits.getReversals("u", window.id)).toMatchObject({ reversed: 6, remaining: 15 });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1000 - 21 + 6);
    expect((await m.credits.audit("u")).problems).toEqual([]);
  });

  it("an AI SDK call (the entry its outcome reports)", async () => {
    const m = await manager({
      pricing: {
        version: "b1",
        models: [{ model: "m-1", input: { credits: 1, per: 10 }, output: { credits: 4, per: 10 } }],
      },
    });
    await m.credits.addCredits("u", 10_000);
    const settled: AiCallOutcome[] = [];
    const middleware = creditMiddleware({ manager: m, userId: "u", onSettled: (o) => settled.push(o) });
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "m-1",
      doGenerate: {
        content: [{ type: "text", text: "ok" }],
        finishReason: { unified: "stop", raw: "stop" },
        usage: {
          inputTokens: { total: 100, noCache: 100, cacheRead: undefined, cacheWrite: undefined },
          outputTokens: { total: 50, text: 50, reasoning: undefined },
        },
        warnings: [],
      },
    });
    await generateText({ model: wrapLanguageModel({ model, middleware }), prompt: "hi" });
    const entry = settled[0]?.entry as JournalEntry;
    expect(entry.amount).toBe(30);
    const r = await m.credits.reverseCharge("u", entry.id, { reason: "bad answer" });
    expect(r).toMatchObject({ amount: 30, reverses: entry.id });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(10_000);
    expect((await m.credits.audit("u")).problems).toEqual([]);
  });
});

describe("reverseCharge: what follows it", () => {
  it("records credits_reversed in the outbox (a DomainEvent), and balance_restored when it lifts the account over its threshold", async () => {
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, domainEvents: true, alerts: { lowCredits: 50 } });
    await credits.addCredits("u", 100);
    const charge = await credits.deductCredits("u", 80, { feature: "f", spender: "s" });
    const r = await credits.reverseCharge("u", charge.id, { amount: 40, reason: "given back" });
    const rows = await db.listNotifications("u", { limit: 50 });
    const types = rows.map((n) => n.type);
    expect(types).toContain("low_credits");
    expect(types.slice(-2)).toEqual(["credits_reversed", "balance_restored"]);
    const reversed = rows.find((n) => n.type === "credits_reversed");
    const event = DomainEvent.parse({
      type: reversed?.type,
      version: 1,
      id: reversed?.id,
      userId: "u",
      occurredAt: reversed?.createdAt.toISOString(),
      payload: reversed?.payload,
    });
    expect(event.payload).toMatchObject({
      entryId: r.id,
      amount: 40,
      reverses: charge.id,
      chargedAt: charge.createdAt.toISOString(),
      spender: "s",
      feature: "f",
      balanceAfter: 60,
    });
  });
});

describe("reverseCharge: the webhook", () => {
  it("an endpoint subscribed to credits_reversed gets the reversal's event, and only it", async () => {
    const db = new InMemoryDbManager();
    const endpoint = { id: "rev", url: "http://127.0.0.1:9/hook", secret: generateWebhookSecret(), development: true };
    const queue = webhookQueue({
      db,
      allowNetworks: ["127.0.0.0/8"],
      endpoints: [{ ...endpoint, types: ["credits_reversed"] }],
    });
    const m = await manager({ db, queue, domainEvents: true });
    await m.credits.addCredits("u", 100);
    const charge = await m.credits.deductCredits("u", 30);
    const r = await m.credits.reverseCharge("u", charge.id, { reason: "failed job" });
    await m.notifications.dispatchPending({ limit: 100 });
    // What the queue accepted for the endpoint (its delivery rows): the reversal's event alone.
    const deliveries = await db.listNotifications(deliveryUserId("rev", "u"), { limit: 10 });
    expect(deliveries.map((d) => d.type)).toEqual(["credits_reversed"]);
    expect(JSON.stringify(deliveries[0]?.payload)).toContain(r.id);
    await queue.close();
  });
});

describe("reversalShares", () => {
  it("adds up exactly, gives no grant more than its draw, and the charge back whole over any sequence of reversals", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 1_000_000 }), { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 0, max: 1_000 }),
        fc.array(fc.integer({ min: 1, max: 100 }), { minLength: 1, maxLength: 10 }),
        (draws, debt, cuts) => {
          const draw: ChargeDraw = {
            amount: draws.reduce((s, x) => s + x, 0) + debt,
            draws: draws.map((amount, i) => ({ grantId: `g${i}`, amount })),
            debt,
          };
          const reversals: JournalEntry[] = [];
          const total = cuts.reduce((s, x) => s + x, 0);
          let done = 0;
          cuts.forEach((cut, i) => {
            const so = reversedOf(draw, reversals);
            // The last cut gives back the rest; the others their share of the charge.
            const amount = i === cuts.length - 1 ? draw.amount - so.total : Math.floor((draw.amount * cut) / total / 2);
            if (amount === 0) return;
            const shares = reversalShares(draw, so, amount);
            expect(shares.debt + shares.grants.reduce((s, p) => s + p.amount, 0)).toBe(amount);
            expect(shares.debt).toBe(Math.min(amount, debt - so.debt));
            done += amount;
            reversals.push({ amount, grants: shares.grants } as JournalEntry);
          });
          const all = reversedOf(draw, reversals);
          expect(done).toBe(draw.amount);
          expect(all.debt).toBe(debt);
          for (const d of draw.draws) expect(all.toGrants.get(d.grantId) ?? 0).toBe(d.amount);
        },
      ),
    );
  });

  it("a take-back, an addition or a hold is no charge", () => {
    const base = { id: "e", amount: 5, grants: [], metadata: null, description: null, reservationId: null };
    expect(chargeDraw({ ...base, type: "add" } as unknown as JournalEntry)).toMatch(/not a charge/);
    expect(chargeDraw({ ...base, type: "deduct", takeBack: "refund" } as unknown as JournalEntry)).toMatch(
      /refunded payment/,
    );
    // A take-back's metadata on a caller's deduction makes no take-back: it is a charge.
    expect(
      chargeDraw({
        ...base,
        type: "deduct",
        description: "Lost dispute of payment p",
        metadata: { paymentId: "p", refundedAmount: 5 },
      } as unknown as JournalEntry),
    ).toEqual({ amount: 5, draws: [], debt: 5 });
    expect(chargeDraw({ ...base, type: "deduct" } as unknown as JournalEntry)).toEqual({
      amount: 5,
      draws: [],
      debt: 5,
    });
  });
});

describe("audit of reversals", () => {
  /** The account's journal with its last entry changed by `edit` and hashed again (as a forger would). */
  async function forged(edit: (e: JournalEntry, charge: JournalEntry) => Partial<JournalEntry>) {
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db });
    await credits.addCredits("u", 100);
    const charge = await credits.deductCredits("u", 40);
    await credits.reverseCharge("u", charge.id, { amount: 10, reason: "r" });
    const entries = (await db.listJournal("u", { order: "asc", limit: 10 })).slice();
    const last = entries[entries.length - 1] as JournalEntry;
    const changed = { ...last, ...edit(last, charge) };
    const { hash: _h, ...rest } = changed;
    entries[entries.length - 1] = { ...changed, hash: hashEntry(rest) };
    return replayJournal("u", entries, null).problems;
  }

  it("passes a reversal of a charge of the account within it", async () => {
    expect(await forged(() => ({}))).toEqual([]);
  });

  it("reports a reversal that names no charge of the account, or something that is no charge", async () => {
    expect(await forged(() => ({ reverses: "no-such-entry" }))).toContainEqual(
      expect.stringMatching(/reverses no-such-entry, which is no earlier entry of this account/),
    );
    expect(await forged(() => ({ reverses: null }))).toContainEqual(expect.stringMatching(/names no charge/));
  });

  it("reports reversals that give back more than the charge, or more to a grant than it drew", async () => {
    const more = await forged((e) => ({
      amount: 50,
      balanceAfter: e.balanceAfter + 40,
      grants: [{ grantId: e.grants[0]!.grantId, amount: 50, kind: "returned" as const }],
    }));
    expect(more).toContainEqual(expect.stringMatching(/give back 50, more than its 40/));
    expect(more).toContainEqual(expect.stringMatching(/give 50 back to grant .*, which it drew 40 from/));
  });
});

describe("audit from a checkpoint of credits given back to a grant closed before it", () => {
  /**
   * A grant that expired 30 before a checkpoint gets 10 back by a reversal after it (removed again
   * at once, docs/concepts.md, "Giving a charge back"); the replay from the checkpoint against the
   * stored state, that grant changed by `edit`.
   */
  async function audited(edit: (g: Grant) => Grant = (g) => g) {
    let now = Date.now();
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, clock: () => new Date(now) });
    const short = await credits.addCredits("u", 50, { expiresAt: new Date(now + 60_000) });
    const charge = await credits.deductCredits("u", 20);
    now += 120_000;
    await credits.addCredits("u", 10); // settles first: `short` expires its 30 left
    const cp = (await credits.checkpoint("u")) as JournalEntry;
    await credits.reverseCharge("u", charge.id, { amount: 10, reason: "r" });
    const id = short.grants[0]!.grantId;
    const entries = await db.listJournal("u", { order: "asc", afterSeq: cp.seq - 1, limit: 100 });
    const grants = (await db.listGrants("u", { includeInactive: true })).map((g) => (g.id === id ? edit(g) : g));
    return replayJournal("u", entries, {
      account: await db.getAccount("u"),
      grants,
      reservations: await db.listReservations("u"),
    }).problems;
  }

  it("accepts the stored expiredAmount (30 before the checkpoint, 10 after)", async () => {
    expect(await audited()).toEqual([]);
  });

  it("reports an expiredAmount below what came back after it, and a grant stored voided that the entries expire again", async () => {
    expect(await audited((g) => ({ ...g, expiredAmount: 5 }))).toContainEqual(
      expect.stringMatching(/stored expiredAmount 5, of which -5 before the checkpoint/),
    );
    expect(await audited((g) => ({ ...g, closedReason: "voided" }))).toContainEqual(
      expect.stringMatching(/\(voided before the checkpoint\): 10 came back, 10 expired again; expected 0/),
    );
  });

  it("accepts a grant that expired more than its amount: debt its addition paid, given back by reversals", async () => {
    // An addition of 50 pays 30 of debt first: its grant gets 20 and expires them. Two reversals
    // of the charge that made the debt give the 30 back to that grant (`debt_returned`), which
    // expires them again: 50 expired in all, 30 of it before the checkpoint between the two.
    let now = Date.now();
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, clock: () => new Date(now), overdraftLimit: 100 });
    const charge = await credits.deductCreditsAfterService("u", 30);
    const paid = await credits.addCredits("u", 50, { expiresAt: new Date(now + 60_000) });
    const id = paid.grants[0]!.grantId;
    now += 120_000;
    await credits.reverseCharge("u", charge.id, { amount: 10, reason: "first" });
    const cp = (await credits.checkpoint("u")) as JournalEntry;
    const last = await credits.reverseCharge("u", charge.id, { amount: 20, reason: "second" });
    expect(last.grants).toEqual([{ grantId: id, amount: 20, kind: "debt_returned" }]);
    const grant = (await db.listGrants("u", { includeInactive: true })).find((g) => g.id === id);
    expect([grant?.amount, grant?.expiredAmount]).toEqual([20, 50]);
    const entries = await db.listJournal("u", { order: "asc", afterSeq: cp.seq - 1, limit: 100 });
    const stored = { account: await db.getAccount("u"), reservations: await db.listReservations("u") };
    expect(
      replayJournal("u", entries, { ...stored, grants: await db.listGrants("u", { includeInactive: true }) }).problems,
    ).toEqual([]);
    expect((await credits.audit("u")).problems).toEqual([]);
    expect((await credits.audit("u", { from: "genesis" })).problems).toEqual([]);
  });
});
