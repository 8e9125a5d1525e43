import { describe, expect, it } from "vitest";
import {
  ConfigurationError,
  CoreCreditService,
  createCreditManager,
  CreditService,
  InMemoryDbManager,
  InsufficientCreditsError,
  recordUsage,
  type MeterOutcome,
} from "../src/index.js";
import { creditMetering } from "../src/http/index.js";

/**
 * `overdraftLimit` (docs/concepts.md, "Overdraft and debt"): 0 unless the operator writes a figure
 * or "unlimited". Every path that takes usage already delivered respects it: after-service and late
 * deductions, commits beyond a hold, metered calls, fixed-price requests.
 */
describe("the overdraft limit by default", () => {
  it("an after-service deduction, late usage and an over-commit never make debt; each is refused and changes nothing", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("u", 10);
    const refused = (p: Promise<unknown>) => expect(p).rejects.toBeInstanceOf(InsufficientCreditsError);
    await refused(m.credits.deductCreditsAfterService("u", 1e9));
    const yesterday = new Date(Date.now() - 86_400_000);
    await refused(m.credits.deductCreditsAfterService("u", 11, { occurredAt: yesterday }));
    const hold = await m.credits.reserveCredits("u", 10);
    await refused(m.credits.commitReservedCredits(hold.id, { amount: 15 }));
    expect((await m.credits.getReservation(hold.id)).status).toBe("active");
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 10, reserved: 10, debt: 0 });
    // What is there may be taken whole.
    await m.credits.commitReservedCredits(hold.id, { amount: 10 });
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 0, available: 0, debt: 0 });
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });

  it("a metered call is charged what there is and reports the rest as its shortfall", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("u", 100);
    const outcomes: MeterOutcome[] = [];
    await m.credits.meter("u", { estimate: 60, onSettled: (o) => outcomes.push(o) }, () => {
      recordUsage({ amount: 150 });
    });
    expect(outcomes[0]).toMatchObject({ outcome: "committed", charged: 100, shortfall: 50 });
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 0, debt: 0 });
    await m.close();
  });

  it("a fixed-price request whose credits went meanwhile is charged what there is, the rest its shortfall", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("u", 10);
    const outcomes: MeterOutcome[] = [];
    const app = creditMetering({
      credits: m.credits,
      trustUserIdHeader: true,
      price: 7,
      onSettled: (o) => outcomes.push(o),
    })(async () => {
      await m.credits.deductCredits("u", 5); // spent while the request ran: 5 left for its 7
      return Response.json({ ok: true });
    });
    const res = await app(new Request("http://x/api/run", { method: "POST", headers: { "x-user-id": "u" } }));
    expect(res.status).toBe(200);
    expect(res.headers.get("x-credits-deducted")).toBe("5");
    expect(outcomes).toEqual([expect.objectContaining({ outcome: "committed", charged: 5, shortfall: 2 })]);
    expect(outcomes[0]?.entry).toMatchObject({ shortfall: 2, metadata: { requested: 7 } });
    expect(outcomes[0]?.entry?.metadata).not.toHaveProperty("shortfall");
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 0, debt: 0 });
    const [error] = await m.ledger.getEntries({ eventType: "error" });
    expect(error?.details).toMatchObject({ requested: 7, charged: 5, shortfall: 2 });
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });

  it('unbounded only when written out: "unlimited"', async () => {
    const m = await createCreditManager({ overdraftLimit: "unlimited" });
    await m.credits.addCredits("u", 10);
    await m.credits.deductCreditsAfterService("u", 1e9);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 10 - 1e9, debt: 1e9 - 10 });
    await m.close();
    const credits = new CoreCreditService({ db: new InMemoryDbManager(), overdraftLimit: "unlimited" });
    await credits.addCredits("v", 1);
    await credits.deductCreditsAfterService("v", 5);
    expect((await credits.getUserCreditsInfo("v")).debt).toBe(4);
  });

  it.each([null, -1, 1.5, Infinity, "infinite", "0"])("refuses overdraftLimit %s", async (bad) => {
    await expect(createCreditManager({ overdraftLimit: bad as never })).rejects.toBeInstanceOf(ConfigurationError);
    expect(() => new CreditService({ db: new InMemoryDbManager(), overdraftLimit: bad as never })).toThrow(
      ConfigurationError,
    );
  });
});
