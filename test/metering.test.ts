import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  ConfigurationError,
  createCreditManager,
  currentMeter,
  InsufficientCreditsError,
  recordUsage,
  ValidationError,
  type CreditManager,
  type MeterOutcome,
} from "../src/index.js";

describe("credits.meter()", () => {
  let m: CreditManager;
  let now = Date.parse("2026-03-01T00:00:00Z");
  beforeEach(async () => {
    m = await createCreditManager({ clock: () => new Date(now) });
    await m.credits.addCredits("u", 1000);
  });
  afterEach(async () => m.close());

  const types = async () => (await m.credits.getCreditHistory("u")).items.map((e) => e.type).reverse();

  it("commits the usage recorded anywhere below, with the usages in the commit's metadata", async () => {
    const deep = async () => {
      await sleep(1);
      recordUsage({ amount: 30, model: "m-1", provider: "acme", metadata: { prompt: 10 } });
    };
    const value = await m.credits.meter("u", { estimate: 100 }, async (ctx) => {
      expect(currentMeter()).toBe(ctx);
      expect(ctx.estimate).toBe(100);
      await Promise.all([deep(), deep()]);
      expect(ctx.used).toBe(60);
      return "done";
    });
    expect(value).toBe("done");
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 940, reserved: 0 });
    const commit = (await m.credits.getCreditHistory("u", { types: ["commit_reserved"] })).items[0];
    expect(commit?.amount).toBe(60);
    expect(commit?.metadata?.usages).toEqual([
      { amount: 30, model: "m-1", provider: "acme", metadata: { prompt: 10 } },
      { amount: 30, model: "m-1", provider: "acme", metadata: { prompt: 10 } },
    ]);
    // A partial capture is one entry: what was spent, and the rest back to its grant.
    expect(commit?.grants).toEqual([
      { grantId: expect.any(String), amount: 60 },
      { grantId: expect.any(String), amount: 40, kind: "returned" },
    ]);
    expect(commit).toMatchObject({ reservedAfter: 0, balanceAfter: 940 });
    expect(await types()).toEqual(["add", "reserve", "commit_reserved"]);
    expect(currentMeter()).toBeUndefined();
  });

  it("commits the number fn returns (over the estimate: the excess is taken as usage)", async () => {
    const outcomes: MeterOutcome[] = [];
    expect(await m.credits.meter("u", { estimate: 50, onSettled: (o) => outcomes.push(o) }, () => 80)).toBe(80);
    expect(outcomes[0]).toMatchObject({ outcome: "committed", charged: 80, estimate: 50 });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(920);
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("releases when nothing was measured, or charges the estimate with noUsage: 'estimate'", async () => {
    await m.credits.meter("u", { estimate: 50 }, () => undefined);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1000);
    await m.credits.meter("u", { estimate: 50, noUsage: "estimate" }, () => "x");
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(950);
  });

  it("releases on throw and rethrows; exactly one settle", async () => {
    const error = new Error("provider down");
    await expect(
      m.credits.meter("u", { estimate: 100 }, () => {
        recordUsage({ amount: 5 });
        throw error;
      }),
    ).rejects.toBe(error);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 1000, reserved: 0 });
    expect(await types()).toEqual(["add", "reserve", "release_reserved"]);
  });

  it("refuses to start when the hold cannot be placed (fn never runs)", async () => {
    let ran = false;
    await expect(m.credits.meter("u", { estimate: 5000 }, () => (ran = true))).rejects.toBeInstanceOf(
      InsufficientCreditsError,
    );
    expect(ran).toBe(false);
  });

  it("recordUsage outside a metered call throws; after settlement it reports false", async () => {
    expect(() => recordUsage({ amount: 1 })).toThrow(ConfigurationError);
    let late: Promise<boolean> | undefined;
    await m.credits.meter("u", { estimate: 10 }, () => {
      late = sleep(20).then(() => recordUsage({ amount: 3 }));
      return 1;
    });
    expect(await late).toBe(false);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(999);
    await expect(
      m.credits.meter("u", { estimate: 10 }, () => void recordUsage({ amount: -1 } as never)),
    ).rejects.toBeInstanceOf(ValidationError);
    expect((await m.credits.getUserCreditsInfo("u")).reserved).toBe(0);
  });

  it("a call that outlives its hold is charged after service", async () => {
    const outcomes: MeterOutcome[] = [];
    await m.credits.meter("u", { estimate: 10, ttlSeconds: 5, onSettled: (o) => outcomes.push(o) }, () => {
      now += 6000;
      recordUsage({ amount: 7 });
    });
    expect(outcomes[0]).toMatchObject({ outcome: "committed", charged: 7, chargedAfterService: true });
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 993, reserved: 0 });
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("an invalid returned amount releases the hold and is a ValidationError", async () => {
    await expect(m.credits.meter("u", { estimate: 10 }, () => 1.5)).rejects.toBeInstanceOf(ValidationError);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 1000, reserved: 0 });
  });

  it("usage beyond the overdraft limit charges the hold and what the limit allows beyond it, and reports the shortfall", async () => {
    // Limit 0: the hold (60) and the 40 still available are charged; the rest (50) is the shortfall.
    const strict = await createCreditManager({ overdraftLimit: 0 });
    await strict.credits.addCredits("s", 100);
    const outcomes: MeterOutcome[] = [];
    await strict.credits.meter("s", { estimate: 60, onSettled: (o) => outcomes.push(o) }, () => 150);
    expect(outcomes[0]).toMatchObject({ outcome: "committed", charged: 100, shortfall: 50 });
    expect(outcomes[0]?.chargedAfterService).toBeUndefined();
    expect(outcomes[0]?.entry).toMatchObject({ shortfall: 50, metadata: { requested: 150 } });
    expect(await strict.credits.getUserCreditsInfo("s")).toMatchObject({ balance: 0, reserved: 0, debt: 0 });
    const [error] = await strict.ledger.getEntries({ eventType: "error" });
    expect(error?.message).toMatch(/overdraft/);
    expect(error?.details).toMatchObject({ requested: 150, charged: 100, shortfall: 50 });
    expect((await strict.credits.audit("s")).ok).toBe(true);
    await strict.close();

    // Limit 30: the charge may go 30 into debt, as an after-service deduction may.
    const owing = await createCreditManager({ overdraftLimit: 30 });
    await owing.credits.addCredits("o", 100);
    await owing.credits.meter("o", { estimate: 60, onSettled: (o) => outcomes.push(o) }, () => 150);
    expect(outcomes[1]).toMatchObject({ charged: 130, shortfall: 20 });
    expect(await owing.credits.getUserCreditsInfo("o")).toMatchObject({ balance: -30, reserved: 0, debt: 30 });
    // Within the limit nothing is cut.
    await owing.credits.addCredits("o", 130);
    await owing.credits.meter("o", { estimate: 10, onSettled: (o) => outcomes.push(o) }, () => 110);
    expect(outcomes[2]).toMatchObject({ charged: 110 });
    expect(outcomes[2]?.shortfall).toBeUndefined();
    expect(outcomes[2]?.entry?.shortfall ?? null).toBeNull();
    expect(outcomes[2]?.entry?.metadata).not.toHaveProperty("requested");
    expect((await owing.credits.audit("o")).ok).toBe(true);
    await owing.close();
  });

  it("a keyed call cut by the overdraft limit answers its retry with the same charge and shortfall", async () => {
    const strict = await createCreditManager({ overdraftLimit: 0 });
    await strict.credits.addCredits("k", 100);
    const outcomes: MeterOutcome[] = [];
    for (let i = 0; i < 2; i++) {
      await strict.credits.meter(
        "k",
        { estimate: 60, idempotencyKey: "call-1", onSettled: (o) => outcomes.push(o) },
        () => 150,
      );
    }
    expect(outcomes.map((o) => [o.charged, o.shortfall])).toEqual([
      [100, 50],
      [100, 50],
    ]);
    expect(outcomes[1]?.entry?.id).toBe(outcomes[0]?.entry?.id);
    expect(await strict.credits.getUserCreditsInfo("k")).toMatchObject({ balance: 0, reserved: 0 });
    await strict.close();
  });

  it("validates every usage record, the plain { amount } ones too, and stores exactly what was given", async () => {
    const bad = [
      { amount: 1.5 },
      { amount: -1 },
      { amount: Number.MAX_SAFE_INTEGER + 1 },
      { amount: "3" },
      { amount: 3, bogus: 1 },
      null,
    ];
    for (const usage of bad) {
      const outcomes: MeterOutcome[] = [];
      await expect(
        m.credits.meter(
          "u",
          { estimate: 10, onSettled: (o) => outcomes.push(o) },
          () => void recordUsage(usage as never),
        ),
      ).rejects.toBeInstanceOf(ValidationError);
      expect(outcomes[0]).toMatchObject({ outcome: "released", releaseReason: "error", usages: [] });
    }
    await m.credits.meter("u", { estimate: 10 }, (ctx) => {
      recordUsage({ amount: 0 });
      recordUsage({ amount: 4, model: undefined });
      expect(ctx.used).toBe(4);
    });
    const commit = (await m.credits.getCreditHistory("u", { types: ["commit_reserved"] })).items[0];
    expect(commit?.amount).toBe(4);
    expect(commit?.metadata?.usages).toEqual([{ amount: 0 }, { amount: 4 }]);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(996);
  });

  it("an idempotency key leaves room for every suffix it derives (up to :reserve and :release)", async () => {
    const history = async () => (await m.credits.getCreditHistory("u")).items.length;
    const before = await history();
    await expect(m.credits.meter("u", { estimate: 10, idempotencyKey: "k".repeat(248) }, () => 1)).rejects.toThrow(
      /at most 247/,
    );
    expect(await history()).toBe(before); // refused before the hold
    // The longest key allowed: the hold lapses, the usage is charged after service under the charge key.
    const key = "k".repeat(247);
    const outcomes: MeterOutcome[] = [];
    await m.credits.meter(
      "u",
      { estimate: 10, ttlSeconds: 5, idempotencyKey: key, onSettled: (o) => outcomes.push(o) },
      () => {
        now += 6000;
        recordUsage({ amount: 7 });
      },
    );
    expect(outcomes[0]).toMatchObject({ charged: 7, chargedAfterService: true });
    expect(outcomes[0]?.entry?.idempotencyKey).toBe(`${key}:charge`);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(993);
    // A release of the longest key (fn throws).
    await expect(
      m.credits.meter("u", { estimate: 10, idempotencyKey: key.replace(/k$/, "j") }, () => {
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    const release = (await m.credits.getCreditHistory("u", { types: ["release_reserved"] })).items[0];
    expect(release?.idempotencyKey).toBe(`${key.replace(/k$/, "j")}:release`);
    expect(release?.idempotencyKey?.length).toBe(255);
  });

  it("a call that outlives its hold, beyond the overdraft limit, is charged what the limit allows and reports the shortfall", async () => {
    const limited = await createCreditManager({ overdraftLimit: 10, clock: () => new Date(now) });
    await limited.credits.addCredits("l", 100);
    const outcomes: MeterOutcome[] = [];
    const value = await limited.credits.meter(
      "l",
      { estimate: 100, ttlSeconds: 5, onSettled: (o) => outcomes.push(o) },
      () => {
        now += 6000;
        recordUsage({ amount: 150 });
        return "answer";
      },
    );
    expect(value).toBe("answer");
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]).toMatchObject({ outcome: "committed", charged: 110, shortfall: 40, chargedAfterService: true });
    expect(outcomes[0]?.entry).toMatchObject({ type: "deduct", amount: 110 });
    expect(outcomes[0]?.entry).toMatchObject({ shortfall: 40, metadata: { requested: 150, holdExpired: true } });
    expect(await limited.credits.getUserCreditsInfo("l")).toMatchObject({
      balance: -10,
      reserved: 0,
      available: -10,
      debt: 10,
    });
    const deducts = (await limited.credits.getCreditHistory("l", { types: ["deduct"] })).items;
    expect(deducts.map((e) => e.amount)).toEqual([110]); // exactly one charge
    expect((await limited.ledger.getEntries({ eventType: "error" }))[0]?.message).toMatch(/overdraft/);
    expect((await limited.credits.audit("l")).ok).toBe(true);

    // Nothing left under the limit: nothing charged, the whole usage is the shortfall.
    const strict = await createCreditManager({ overdraftLimit: 0, clock: () => new Date(now) });
    await strict.credits.addCredits("s", 100);
    outcomes.length = 0;
    const v2 = await strict.credits.meter(
      "s",
      { estimate: 50, ttlSeconds: 5, onSettled: (o) => outcomes.push(o) },
      async () => {
        now += 6000;
        await strict.credits.deductCredits("s", 100); // the lapsed hold's credits were spent meanwhile
        recordUsage({ amount: 30 });
        return "late";
      },
    );
    expect(v2).toBe("late");
    expect(outcomes[0]).toMatchObject({
      outcome: "committed",
      charged: 0,
      shortfall: 30,
      chargedAfterService: true,
    });
    // The call was served: its entry is a deduction of 0 credits, the whole usage its shortfall.
    expect(outcomes[0]?.entry).toMatchObject({ type: "deduct", amount: 0 });
    expect(outcomes[0]?.entry).toMatchObject({ shortfall: 30, metadata: { requested: 30, holdExpired: true } });
    expect(await strict.credits.getUserCreditsInfo("s")).toMatchObject({ balance: 0, reserved: 0, debt: 0 });
    expect((await strict.credits.audit("s")).ok).toBe(true);
    await limited.close();
    await strict.close();
  });

  it("a keyed call retried after a failed attempt holds again under a derived key and charges once under the call's charge key", async () => {
    await expect(
      m.credits.meter("u", { estimate: 10, idempotencyKey: "m1" }, () => {
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    let ran = 0;
    const outcomes: MeterOutcome[] = [];
    const retry = () =>
      m.credits.meter("u", { estimate: 10, idempotencyKey: "m1", onSettled: (o) => outcomes.push(o) }, async () => {
        ran++;
        await sleep(1);
        recordUsage({ amount: 7 });
        return "ok";
      });
    // Two concurrent retries meet on the same derived hold and commit key: one charge.
    expect(await Promise.all([retry(), retry()])).toEqual(["ok", "ok"]);
    expect(ran).toBe(2);
    expect(outcomes.map((o) => [o.outcome, o.charged, o.entry?.idempotencyKey])).toEqual([
      ["committed", 7, "m1:charge"],
      ["committed", 7, "m1:charge"],
    ]);
    expect(outcomes[0]?.entry?.id).toBe(outcomes[1]?.entry?.id);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 993, reserved: 0 });
    // A retry of the completed call replays its commit: not charged again.
    expect(await retry()).toBe("ok");
    expect(outcomes[2]?.entry?.id).toBe(outcomes[0]?.entry?.id);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 993, reserved: 0 });
    expect(await types()).toEqual(["add", "reserve", "release_reserved", "reserve", "commit_reserved"]);
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("each failed attempt of a keyed call moves the next to a new derived key; the longest key too", async () => {
    const key = "k".repeat(247);
    for (let i = 0; i < 2; i++) {
      await expect(
        m.credits.meter("u", { estimate: 10, ttlSeconds: 5, idempotencyKey: key }, () => {
          throw new Error(`fail ${i}`);
        }),
      ).rejects.toThrow(`fail ${i}`);
    }
    const outcomes: MeterOutcome[] = [];
    await m.credits.meter(
      "u",
      { estimate: 10, ttlSeconds: 5, idempotencyKey: key, onSettled: (o) => outcomes.push(o) },
      () => {
        now += 6000;
        recordUsage({ amount: 4 });
      },
    );
    expect(outcomes[0]).toMatchObject({ charged: 4, chargedAfterService: true });
    expect(outcomes[0]?.entry?.idempotencyKey).toBe(`${key}:charge`);
    const reserves = (await m.credits.getCreditHistory("u", { types: ["reserve"] })).items.map(
      (e) => e.idempotencyKey ?? "",
    );
    expect(new Set(reserves).size).toBe(3);
    expect(reserves[0]).toMatch(/~[0-9a-f]{16}:attempt-3:reserve$/);
    expect(reserves[0]?.length).toBe(255);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 996, reserved: 0 });
  });

  it("usages that add up beyond Number.MAX_SAFE_INTEGER release the hold with a ValidationError", async () => {
    const outcomes: MeterOutcome[] = [];
    await expect(
      m.credits.meter("u", { estimate: 10, onSettled: (o) => outcomes.push(o) }, () => {
        recordUsage({ amount: Number.MAX_SAFE_INTEGER });
        recordUsage({ amount: 2 });
      }),
    ).rejects.toBeInstanceOf(ValidationError);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 1000, reserved: 0 });
    expect(await types()).toEqual(["add", "reserve", "release_reserved"]);
  });

  it("validates its options", async () => {
    await expect(m.credits.meter("u", { estimate: 0 }, () => 1)).rejects.toBeInstanceOf(ValidationError);
    await expect(m.credits.meter("u", { estimate: 5, bogus: 1 } as never, () => 1)).rejects.toBeInstanceOf(
      ValidationError,
    );
    await expect(m.credits.meter("", { estimate: 5 }, () => 1)).rejects.toBeInstanceOf(ValidationError);
  });
});
