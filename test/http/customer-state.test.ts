/**
 * The customer's state over HTTP (docs/customer-state.md, "Over HTTP"): a user's key, a member's
 * key and a customer token read their own account's state without the operator's notes; an admin
 * reads any account's, notes included, one at a time or page by page.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { createCreditHandler, type CreditHandler, type Identity } from "../../src/http/index.js";

const SECRET = "customer-token-secret-of-32-characters!";
const NOTE = "goodwill after outage, ticket 4411";

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "") ?? "";
  if (token === "admin") return { userId: "admin:ops", admin: true };
  const [userId, spender] = token.split("/");
  if (userId === undefined || userId === "" || token.startsWith("ey")) return null;
  return spender === undefined ? { userId } : { userId, spender };
};

describe("the customer's state over HTTP", () => {
  let m: CreditManager;
  let handler: CreditHandler;

  beforeAll(async () => {
    m = await createCreditManager({
      customerTokens: { secret: SECRET },
      features: { images: { minAvailable: 10 }, export: { minAvailable: 0, enabled: false } },
    });
    for (const account of ["alice", "bob"]) {
      await m.credits.addCredits(account, 100, { description: NOTE, metadata: { actor: "ops" }, sourceRef: "T-4411" });
      await m.credits.addCredits(account, 20, { scope: { features: ["images"] }, description: NOTE });
    }
    await m.credits.setLimit("alice", { spender: "member-2", amount: 5, period: "day" });
    await m.credits.setLimit("alice", { spender: "member-1", amount: 7, period: "day" });
    await m.credits.deductCredits("alice", 4, { feature: "images", spender: "member-1" });
    handler = createCreditHandler(m, { authenticate, customerRateLimit: false });
  });
  afterAll(() => m.close());

  const get = async (path: string, token: string) => {
    const r = await handler(new Request(`http://h${path}`, { headers: { authorization: `Bearer ${token}` } }));
    const text = await r.text();
    return { status: r.status, text, json: JSON.parse(text) as Record<string, unknown> };
  };

  it("an admin reads any account's state with the operator's notes", async () => {
    const res = await get("/admin/credits/users/alice/state", "admin");
    expect(res.status, res.text).toBe(200);
    const state = res.json as { userId: string; balance: number; features: { feature: string; grants: object[] }[] };
    expect(state).toMatchObject({ userId: "alice", balance: 116, seq: 5 });
    expect(state.features.map((f) => f.feature)).toEqual(["export", "images"]);
    const images = state.features.find((f) => f.feature === "images")!;
    expect(images).toMatchObject({ allowed: true, reason: "ok", granted: 120, used: 4, left: 116 });
    expect(images.grants[1]).toMatchObject({ description: NOTE, metadata: { actor: "ops" }, sourceRef: "T-4411" });
    const { readAt: _r, ...direct } = JSON.parse(JSON.stringify(await m.credits.getCustomerState("alice"))) as Record<
      string,
      unknown
    >;
    const { readAt: _h, ...viaHttp } = res.json;
    expect(viaHttp).toEqual(direct);
  });

  for (const [who, token, account] of [
    ["a user's key", () => "bob", "bob"],
    ["a member's key", () => "alice/member-1", "alice"],
    ["a customer token", async () => (await m.credits.customerToken("alice", { ttlSeconds: 600 })).token, "alice"],
  ] as const) {
    it(`${who} reads its own account's state without the operator's notes`, async () => {
      const res = await get("/credits/state", await token());
      expect(res.status, res.text).toBe(200);
      expect(res.json).toMatchObject({ userId: account });
      expect(res.text).not.toContain(NOTE);
      expect(res.text).not.toContain("T-4411");
      expect(res.text).not.toContain('"metadata"');
      const features = res.json.features as { feature: string; grants: { id: string; amount: number }[] }[];
      expect(features.find((f) => f.feature === "images")?.grants.map((g) => g.amount)).toEqual([20, 100]);
    });
  }

  it("a member sees the limits that can apply to its spends; nobody but an admin reads another account", async () => {
    const member = await get("/credits/state", "alice/member-1");
    expect((member.json.limits as { spender: string }[]).map((l) => l.spender)).toEqual(["member-1"]);
    const owner = await get("/credits/state", "alice");
    expect((owner.json.limits as { spender: string }[]).map((l) => l.spender).sort()).toEqual(["member-1", "member-2"]);
    // A customer token bound to a spender sees what that member's key sees; one bound to none, all.
    const bound = (await m.credits.customerToken("alice", { ttlSeconds: 600, spender: "member-1" })).token;
    expect(((await get("/credits/state", bound)).json.limits as { spender: string }[]).map((l) => l.spender)).toEqual([
      "member-1",
    ]);
    const whole = (await m.credits.customerToken("alice", { ttlSeconds: 600 })).token;
    expect(
      ((await get("/credits/state", whole)).json.limits as { spender: string }[]).map((l) => l.spender).sort(),
    ).toEqual(["member-1", "member-2"]);
    const { token } = await m.credits.customerToken("bob", { ttlSeconds: 600 });
    for (const caller of ["bob", "bob/member-1", token]) {
      const res = await get("/admin/credits/users/alice/state", caller);
      expect(res.status, res.text).toBe(403);
      expect((await get("/admin/credits/states?userIds=alice", caller)).status).toBe(403);
    }
  });

  it("a member sees the alerts about the whole account and its own spend, never another member's spend", async () => {
    const manager = await createCreditManager({ notifications: {} });
    try {
      await manager.credits.addCredits("acme", 2_000);
      await manager.notifications.setAlerts("acme", [
        { id: "low", kind: "available", atOrBelow: 100 },
        { id: "alice-month", kind: "period_spend", atOrAbove: 500, window: "month", spender: "alice" },
        { id: "bob-month", kind: "period_spend", atOrAbove: 800, window: "month", spender: "bob" },
        { id: "team-month", kind: "period_spend", atOrAbove: 5_000, window: "month" },
      ]);
      await manager.credits.deductCredits("acme", 900, { spender: "bob" });
      const h = createCreditHandler(manager, { authenticate, customerRateLimit: false });
      const read = async (token: string) => {
        const r = await h(new Request("http://h/credits/state", { headers: { authorization: `Bearer ${token}` } }));
        const text = await r.text();
        expect(r.status, text).toBe(200);
        return {
          text,
          ids: (JSON.parse(text) as { alerts: { threshold: { id: string } }[] }).alerts.map((a) => a.threshold.id),
        };
      };
      const alice = await read("acme/alice");
      expect(alice.ids).toEqual(["credits_exhausted", "low", "alice-month", "team-month"]);
      expect(alice.text).not.toContain("bob");
      expect((await read("acme/bob")).ids).toEqual(["credits_exhausted", "low", "bob-month", "team-month"]);
      // The account's own key (no spender) and an admin see every one.
      expect((await read("acme")).ids).toEqual(["credits_exhausted", "low", "alice-month", "bob-month", "team-month"]);
    } finally {
      await manager.close();
    }
  });

  it("an admin pages through the accounts' states, or those of a list of ids", async () => {
    const first = await get("/admin/credits/states?limit=1", "admin");
    expect(first.status, first.text).toBe(200);
    expect((first.json.items as { userId: string }[]).map((s) => s.userId)).toEqual(["alice"]);
    expect(first.json.nextCursor).toBe("alice");
    const rest = await get("/admin/credits/states?limit=5&cursor=alice", "admin");
    expect((rest.json.items as { userId: string }[]).map((s) => s.userId)).toEqual(["bob"]);
    expect(rest.json.nextCursor).toBeNull();
    const some = await get("/admin/credits/states?userIds=carol,bob", "admin");
    expect((some.json.items as { userId: string; seq: number }[]).map((s) => [s.userId, s.seq])).toEqual([
      ["bob", 2],
      ["carol", 0],
    ]);
    expect(some.text).toContain(NOTE);
    expect((await get("/admin/credits/states?limit=0", "admin")).status).toBe(400);
  });
});
