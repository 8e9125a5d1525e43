import { describe, expect, it } from "vitest";
import {
  ConflictError,
  CreditService,
  InMemoryDbManager,
  NotFoundError,
  PromoNotEligibleError,
  PromoService,
  ValidationError,
} from "../src/index.js";

const T0 = Date.parse("2030-01-01T00:00:00.000Z");
const DAY = 86_400_000;

function setup(overdraftLimit: number | "unlimited" = 0) {
  const db = new InMemoryDbManager();
  const clock = { now: T0 };
  const promos = new PromoService({ db, clock: () => new Date(clock.now) });
  const credits = new CreditService({ db, clock: () => new Date(clock.now), overdraftLimit });
  return { db, clock, promos, credits };
}

describe("PromoService", () => {
  it("codes are case-insensitive and unique", async () => {
    const { promos } = setup();
    const p = await promos.createPromo({ code: "Welcome-10", credits: 10 });
    expect(p).toMatchObject({ code: "WELCOME-10", maxUsesPerUser: 1, maxUses: null, isActive: true, uses: 0 });
    await expect(promos.createPromo({ code: "welcome-10", credits: 5 })).rejects.toBeInstanceOf(ConflictError);
    expect((await promos.getPromo("wElCoMe-10")).credits).toBe(10);
  });

  it("refuses bad input, changing nothing", async () => {
    const { promos } = setup();
    await expect(promos.createPromo({ code: "has space", credits: 1 })).rejects.toBeInstanceOf(ValidationError);
    await expect(promos.createPromo({ code: "X", credits: 0 })).rejects.toBeInstanceOf(ValidationError);
    await expect(promos.createPromo({ code: "X", credits: 1.5 })).rejects.toBeInstanceOf(ValidationError);
    await expect(
      promos.createPromo({ code: "X", credits: 1, validFrom: new Date(T0 + DAY), validUntil: new Date(T0) }),
    ).rejects.toBeInstanceOf(ValidationError);
    expect((await promos.listPromos()).items).toEqual([]);
    await expect(promos.claimPromo("", "X")).rejects.toBeInstanceOf(ValidationError);
  });

  it("says why a user is not eligible, and claimPromo refuses for the same reason", async () => {
    const { promos, clock } = setup();
    await promos.createPromo({ code: "SOON", credits: 1, validFrom: new Date(T0 + DAY) });
    await promos.createPromo({ code: "OVER", credits: 1, validUntil: new Date(T0) });
    await promos.createPromo({ code: "VIP", credits: 1, userIds: ["vip"] });
    await promos.createPromo({ code: "OFF", credits: 1, isActive: false });
    const reason = async (u: string, c: string) => {
      const e = await promos.checkEligibility(u, c);
      return e.eligible ? "eligible" : e.reason;
    };
    expect(await reason("a", "NOPE")).toBe("not_found");
    expect(await reason("a", "SOON")).toBe("not_started");
    expect(await reason("a", "OVER")).toBe("ended");
    expect(await reason("a", "VIP")).toBe("not_targeted");
    expect(await reason("vip", "VIP")).toBe("eligible");
    expect(await reason("a", "OFF")).toBe("inactive");
    await expect(promos.claimPromo("a", "VIP")).rejects.toMatchObject({ reason: "not_targeted", status: 409 });
    await expect(promos.claimPromo("a", "NOPE")).rejects.toMatchObject({ reason: "not_found", status: 404 });
    clock.now = T0 + DAY;
    expect(await reason("a", "SOON")).toBe("eligible");
    await promos.setPromoActive("off", true);
    expect(await reason("a", "OFF")).toBe("eligible");
    await expect(promos.setPromoActive("missing", true)).rejects.toBeInstanceOf(NotFoundError);
  });

  it("claims grant credits with source promo, expiring as configured, within per-user and global limits", async () => {
    const { promos, credits, db, clock } = setup();
    await promos.createPromo({ code: "TRIPLE", credits: 30, maxUsesPerUser: 3, maxUses: 4, creditsExpireInDays: 7 });
    const r = await promos.claimPromo("u1", "triple");
    expect(r.claim).toMatchObject({ code: "TRIPLE", userId: "u1", claimNumber: 1, credits: 30 });
    expect(await db.getGrant(r.claim.grantId as string)).toMatchObject({
      source: "promo",
      sourceRef: "TRIPLE",
      amount: 30,
      expiresAt: new Date(T0 + 7 * DAY),
    });
    await promos.claimPromo("u1", "TRIPLE");
    expect(await promos.checkEligibility("u1", "TRIPLE")).toMatchObject({ eligible: true, claimsLeftForUser: 1 });
    await promos.claimPromo("u1", "TRIPLE");
    await expect(promos.claimPromo("u1", "TRIPLE")).rejects.toMatchObject({ reason: "already_claimed" });
    await promos.claimPromo("u2", "TRIPLE");
    await expect(promos.claimPromo("u3", "TRIPLE")).rejects.toBeInstanceOf(PromoNotEligibleError);
    expect((await promos.listPromos()).items[0]).toMatchObject({ code: "TRIPLE", uses: 4 });
    expect(await credits.getUserCreditsInfo("u1")).toMatchObject({ balance: 90 });
    clock.now = T0 + 8 * DAY;
    expect(await credits.getUserCreditsInfo("u1")).toMatchObject({ balance: 0 });
    expect((await promos.listClaims("u1")).map((c) => c.claimNumber)).toEqual([1, 2, 3]);
  });

  it("a repeated idempotency key returns the first claim", async () => {
    const { promos, credits } = setup();
    await promos.createPromo({ code: "ONCE", credits: 3, maxUsesPerUser: 5 });
    const a = await promos.claimPromo("u", "ONCE", { idempotencyKey: "k" });
    const b = await promos.claimPromo("u", "ONCE", { idempotencyKey: "k" });
    expect(b).toEqual(a);
    expect(await credits.getUserCreditsInfo("u")).toMatchObject({ balance: 3 });
  });

  it("a claim by a user in debt pays the debt first", async () => {
    const { promos, credits } = setup("unlimited");
    await credits.deductCreditsAfterService("u", 4);
    await promos.createPromo({ code: "DEBT", credits: 10 });
    const r = await promos.claimPromo("u", "DEBT");
    expect(await credits.getUserCreditsInfo("u")).toMatchObject({ balance: 6, debt: 0 });
    expect(r.entry.amount).toBe(10);
  });

  it("lists promos newest first with a cursor", async () => {
    const { promos, clock } = setup();
    for (let i = 0; i < 3; i++) {
      clock.now = T0 + i;
      await promos.createPromo({ code: `C${i}`, credits: 1 });
    }
    const first = await promos.listPromos({ limit: 2 });
    expect(first.items.map((p) => p.code)).toEqual(["C2", "C1"]);
    const next = await promos.listPromos({ limit: 2, cursor: first.nextCursor as string });
    expect(next).toMatchObject({ items: [{ code: "C0" }], nextCursor: null });
  });
});
