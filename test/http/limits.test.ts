import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { type SpendLimitInput } from "../../src/models-public.js";
import { createCreditHandler, type CreditHandler, type Identity } from "../../src/http/index.js";

/**
 * `Authorization: Bearer <userId>[/<spender>]`; `Bearer admin:<id>` is an admin. A member's key of
 * the account "acme" is `acme/alice`: its spends are Alice's.
 */
const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  if (token.startsWith("admin:")) return { userId: token, admin: true };
  const [userId, spender] = token.split("/");
  return spender === undefined ? { userId: userId as string } : { userId: userId as string, spender };
};
const ADMIN = "admin:ops";

describe("limit routes and the spender of a spend over HTTP", () => {
  let m: CreditManager;
  let handler: CreditHandler;
  // Middle of a month: the monthly windows below neither start nor end during the test.
  let now = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 15, 12);

  const call = async (method: string, path: string, who: string | null, body?: unknown) => {
    const res = await handler(
      new Request(`http://test${path}`, {
        method,
        headers: {
          ...(who === null ? {} : { authorization: `Bearer ${who}` }),
          ...(method === "GET" ? {} : { "content-type": "application/json" }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      }),
    );
    const text = await res.text();
    return { status: res.status, body: text === "" ? null : JSON.parse(text) };
  };

  beforeEach(async () => {
    m = await createCreditManager({ clock: () => new Date(now) });
    handler = createCreditHandler(m, { authenticate });
    await m.credits.addCredits("acme", 10_000);
  });
  afterEach(async () => {
    await m.close();
  });

  const limits: SpendLimitInput[] = [
    { amount: 5_000, period: "month" },
    { spender: "alice", amount: 1_000, period: "month" },
    { spender: "bob", amount: 2_000, period: "month" },
  ];

  it("an admin sets, reads and removes a user's limits", async () => {
    const set = await call("PUT", "/admin/credits/users/acme/limits", ADMIN, { limits });
    expect(set.status).toBe(200);
    expect(set.body.items).toHaveLength(3);
    expect(set.body.items[1]).toMatchObject({ spender: "alice", amount: 1000, used: 0, remaining: 1000 });
    expect(new Date(set.body.items[1].resetsAt).getUTCDate()).toBe(1); // the first of next month

    await m.credits.deductCredits("acme", 300, { spender: "alice" });
    const read = await call("GET", "/admin/credits/users/acme/limits", ADMIN);
    expect(read.body.items.map((l: { used: number }) => l.used)).toEqual([300, 300, 0]);

    const removed = await call("POST", "/admin/credits/users/acme/limits/remove", ADMIN, { spender: "bob" });
    expect(removed.status).toBe(200);
    expect(removed.body.items.map((l: { spender: string | null }) => l.spender)).toEqual([null, "alice"]);
    expect((await m.credits.getLimits("acme")).map((l) => l.spender)).toEqual([null, "alice"]);

    // Validated by the library's models: nothing changes on bad input.
    const bad = await call("PUT", "/admin/credits/users/acme/limits", ADMIN, {
      limits: [{ spender: "carol", amount: 10 }],
    });
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe("VALIDATION_ERROR");
    expect(await m.credits.getLimits("acme")).toHaveLength(2);

    // One limit at a time: alice's changed in place (its count kept), carol's added, the rest kept.
    const changed = await call("POST", "/admin/credits/users/acme/limits/set", ADMIN, {
      limit: { spender: "alice", amount: 900, period: "month" },
    });
    expect(changed.status).toBe(200);
    const added = await call("POST", "/admin/credits/users/acme/limits/set", ADMIN, {
      limit: { spender: "carol", amount: 50, period: "day" },
    });
    expect(
      added.body.items.map((l: { spender: string | null; amount: number; used: number }) => [
        l.spender,
        l.amount,
        l.used,
      ]),
    ).toEqual([
      [null, 5000, 300],
      ["alice", 900, 300],
      ["carol", 50, 0],
    ]);
    const badOne = await call("POST", "/admin/credits/users/acme/limits/set", ADMIN, {
      limit: { spender: "dave", amount: 10 },
    });
    expect(badOne.status).toBe(400);
    expect(badOne.body.error.code).toBe("VALIDATION_ERROR");
    expect(await m.credits.getLimits("acme")).toHaveLength(3);
    expect(
      (await call("POST", "/admin/credits/users/acme/limits/set", "acme", { limit: { amount: 1, period: "day" } }))
        .status,
    ).toBe(403);
  });

  it('a member disabled with a limit of 0 in unit "*" is refused in every unit, holds included', async () => {
    await m.credits.addCredits("acme", 5, { unit: "images" });
    const set = await call("POST", "/admin/credits/users/acme/limits/set", ADMIN, {
      limit: { spender: "former", unit: "*", amount: 0, period: "year" },
    });
    expect(set.status).toBe(200);
    expect(set.body.items).toMatchObject([{ spender: "former", unit: "*", amount: 0 }]);
    for (const unit of [undefined, "images"]) {
      const held = await call("POST", "/credits/reservations", "acme/former", { amount: 1, unit });
      expect(held.status).toBe(429);
      expect(held.body.error.code).toBe("SPEND_LIMIT_EXCEEDED");
      const some = await call("POST", "/credits/reservations", "acme/former", { amount: 5, minimum: 1, unit });
      expect(some.status).toBe(429);
      const q = unit === undefined ? "" : `&unit=${unit}`;
      expect((await call("GET", `/credits/check?amount=1${q}`, "acme/former")).body).toMatchObject({
        allowed: false,
        reason: "limit",
      });
    }
    expect((await call("POST", "/credits/reservations", "acme/alice", { amount: 5, unit: "images" })).status).toBe(201);
  });

  it("a user reads its own limits but cannot set or remove them", async () => {
    await m.credits.setLimits("acme", limits);
    const own = await call("GET", "/credits/limits", "acme");
    expect(own.status).toBe(200);
    expect(own.body.items).toHaveLength(3);
    // A member's key sees the limits that apply to it, not the other members' caps.
    const alice = await call("GET", "/credits/limits", "acme/alice");
    expect(alice.body.items.map((l: { spender: string | null }) => l.spender)).toEqual([null, "alice"]);

    expect((await call("PUT", "/admin/credits/users/acme/limits", "acme", { limits: [] })).status).toBe(403);
    expect((await call("POST", "/admin/credits/users/acme/limits/remove", "acme/alice", {})).status).toBe(403);
    expect((await call("PUT", "/credits/limits", "acme", { limits: [] })).status).toBe(405);
    expect((await call("GET", "/credits/limits", null)).status).toBe(401);
    expect(await m.credits.getLimits("acme")).toHaveLength(3);
    // Another account's limits are not reachable: there is no user id in the user routes.
    expect((await call("GET", "/credits/limits", "globex")).body.items).toEqual([]);
  });

  it("a member's spends are recorded under its identity's spender and capped by its limit", async () => {
    await m.credits.setLimits("acme", limits);
    const held = await call("POST", "/credits/reservations", "acme/alice", { amount: 800, feature: "images" });
    expect(held.status).toBe(201);
    expect(held.body).toMatchObject({ spender: "alice", feature: "images" });

    const over = await call("POST", "/credits/reservations", "acme/alice", { amount: 300 });
    expect(over.status).toBe(429);
    expect(over.body.error.code).toBe("SPEND_LIMIT_EXCEEDED");
    expect(over.body.error.details).toMatchObject({ requested: 300, remaining: 200, limit: { spender: "alice" } });

    const check = await call("GET", "/credits/check?amount=300", "acme/alice");
    expect(check.body).toMatchObject({ allowed: false, reason: "limit", limitRemaining: 200 });
    expect(typeof check.body.resetsAt).toBe("string");
    // Bob's key is under Bob's cap, not Alice's.
    expect((await call("GET", "/credits/check?amount=300", "acme/bob")).body.allowed).toBe(true);

    const commit = await call("POST", `/credits/reservations/${held.body.id}/commit`, "acme/alice", { amount: 500 });
    expect(commit.status).toBe(200);
    expect(commit.body.entry).toMatchObject({ spender: "alice", feature: "images", amount: 500 });
  });

  it("a user cannot spend as another spender, nor choose one when its credentials name none", async () => {
    await m.credits.setLimits("acme", limits);
    const before = await m.credits.getUserCreditsInfo("acme");
    for (const [who, spender] of [
      ["acme/alice", "bob"],
      ["acme", "bob"],
    ] as const) {
      const r = await call("POST", "/credits/reservations", who, { amount: 10, spender });
      expect(r.status).toBe(403);
      expect(r.body.error.code).toBe("FORBIDDEN");
      expect((await call("GET", `/credits/check?amount=1&spender=${spender}`, who)).status).toBe(403);
    }
    expect(await m.credits.getUserCreditsInfo("acme")).toEqual(before);
    // Naming its own spender is fine.
    expect((await call("POST", "/credits/reservations", "acme/alice", { amount: 10, spender: "alice" })).status).toBe(
      201,
    );
    // A key without a spender spends under none (the account's limits only).
    const plain = await call("POST", "/credits/reservations", "acme", { amount: 10 });
    expect(plain.body.spender ?? null).toBeNull();
  });

  it("a member's key reaches only its own spender's holds", async () => {
    const bobs = await m.credits.reserveCredits("acme", 100, { spender: "bob" });
    expect((await call("GET", `/credits/reservations/${bobs.id}`, "acme/alice")).status).toBe(404);
    expect((await call("POST", `/credits/reservations/${bobs.id}/release`, "acme/alice", {})).status).toBe(404);
    expect((await call("POST", `/credits/reservations/${bobs.id}/commit`, "acme/alice", {})).status).toBe(404);
    expect((await m.credits.getReservation(bobs.id)).status).toBe("active");
    expect((await call("GET", `/credits/reservations/${bobs.id}`, "acme/bob")).status).toBe(200);
    expect((await call("POST", `/credits/reservations/${bobs.id}/release`, "acme/bob", {})).status).toBe(200);
    // The account's own key (no spender) still reaches every hold of the account.
    const alices = await m.credits.reserveCredits("acme", 100, { spender: "alice" });
    expect((await call("POST", `/credits/reservations/${alices.id}/release`, "acme", {})).status).toBe(200);
  });

  it("an admin names the spender and feature of a spend", async () => {
    await m.credits.setLimits("acme", limits);
    const r = await call("POST", "/admin/credits/users/acme/deduct", ADMIN, {
      amount: 900,
      spender: "alice",
      feature: "chat",
    });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ spender: "alice", feature: "chat" });
    const over = await call("POST", "/admin/credits/users/acme/deduct", ADMIN, { amount: 200, spender: "alice" });
    expect(over.status).toBe(429);
    // After-service usage is recorded past the limit (debt semantics).
    const after = await call("POST", "/admin/credits/users/acme/deduct", ADMIN, {
      amount: 200,
      spender: "alice",
      afterService: true,
    });
    expect(after.status).toBe(200);
    expect(after.body.metadata).toMatchObject({ overLimit: true });
    now += 31 * 86_400_000; // the next month: Alice's window starts from 0
    expect((await call("GET", "/credits/check?amount=1000", "acme/alice")).body.allowed).toBe(true);
  });

  it("a balance answers for the caller's spender and a feature (scoped grants)", async () => {
    await m.credits.addCredits("acme", 300, { scope: { features: ["images"] } });
    await m.credits.addCredits("acme", 200, { scope: { spenders: ["alice"] } });
    const plain = await call("GET", "/credits/balance", "acme");
    expect(plain.body).toMatchObject({ balance: 10_500, available: 10_000 });
    expect(plain.body.scoped).toHaveLength(2);
    expect((await call("GET", "/credits/balance?feature=images", "acme")).body.available).toBe(10_300);
    // Alice's key answers for Alice: her own scoped grant counts, without naming her.
    expect((await call("GET", "/credits/balance", "acme/alice")).body.available).toBe(10_200);
    expect((await call("GET", "/credits/balance?feature=images", "acme/alice")).body.available).toBe(10_500);
    // Bob's key cannot ask as Alice; a key without a spender cannot name one.
    expect((await call("GET", "/credits/balance?spender=alice", "acme/bob")).status).toBe(403);
    expect((await call("GET", "/credits/balance?spender=alice", "acme")).status).toBe(403);
    // Admins name any.
    const admin = await call("GET", "/admin/credits/users/acme/balance?spender=alice&feature=images", ADMIN);
    expect(admin.body.available).toBe(10_500);
    // Scoped grants are added over the admin route too.
    const added = await call("POST", "/admin/credits/users/acme/add", ADMIN, {
      amount: 50,
      scope: { spenders: ["bob"] },
    });
    expect(added.status).toBe(201);
    expect((await call("GET", "/credits/balance", "acme/bob")).body.available).toBe(10_050);
  });

  it("a limit in a unit: set, read, refused naming the unit and removed by unit over HTTP (docs/units.md)", async () => {
    await m.credits.addCredits("acme", 10, { unit: "images" });
    const set = await call("POST", "/admin/credits/users/acme/limits/set", ADMIN, {
      limit: { amount: 2, period: "day", unit: "images" },
    });
    expect(set.status).toBe(200);
    expect(set.body.items).toEqual([expect.objectContaining({ unit: "images", amount: 2, remaining: 2 })]);
    const over = await call("POST", "/admin/credits/users/acme/deduct", ADMIN, { amount: 3, unit: "images" });
    expect(over.status).toBe(429);
    expect(over.body.error.details).toMatchObject({ unit: "images", requested: 3, remaining: 2 });
    // A spend in the default unit is not counted by it.
    expect((await call("POST", "/admin/credits/users/acme/deduct", ADMIN, { amount: 3 })).status).toBe(200);
    expect((await call("GET", "/credits/limits", "acme")).body.items).toMatchObject([{ unit: "images", used: 0 }]);
    const kept = await call("POST", "/admin/credits/users/acme/limits/remove", ADMIN, { period: "day" });
    expect(kept.body.items).toHaveLength(1);
    const removed = await call("POST", "/admin/credits/users/acme/limits/remove", ADMIN, {
      period: "day",
      unit: "images",
    });
    expect(removed.body.items).toEqual([]);
  });

  it("the OpenAPI document lists the limit routes with their bodies", async () => {
    const doc = handler.openapi() as { paths: Record<string, Record<string, { requestBody?: unknown }>> };
    expect(Object.keys(doc.paths["/admin/credits/users/{userId}/limits"] ?? {}).sort()).toEqual(["get", "put"]);
    expect(doc.paths["/admin/credits/users/{userId}/limits"]?.put?.requestBody).toBeDefined();
    expect(doc.paths["/credits/limits"]?.get).toBeDefined();
    expect(doc.paths["/admin/credits/users/{userId}/limits/remove"]?.post).toBeDefined();
    expect(doc.paths["/admin/credits/users/{userId}/limits/set"]?.post?.requestBody).toBeDefined();
    // A limit's credit unit, beside its window's calendar unit.
    expect(JSON.stringify(doc.paths["/admin/credits/users/{userId}/limits/set"]?.post)).toMatch(
      /"unit":\{[^}]*"pattern"/,
    );
  });
});
