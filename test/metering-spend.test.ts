// The metering middleware's `spender` and `feature` (docs/metering.md, "Spenders and features"):
// the hold, its commit and the fixed-price charge name them, so spend limits apply (429 with
// Retry-After) and scoped grants pay.
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import { creditMetering } from "../src/http/index.js";

const ok = () => new Response(JSON.stringify({ ok: true }), { headers: { "content-type": "application/json" } });
const req = (user: string, extra: Record<string, string> = {}) =>
  new Request("http://x/api/run", { method: "POST", headers: { "x-user": user, ...extra } });

describe("creditMetering with spender and feature", () => {
  it("estimate then usage: the hold counts against the spender's limit; past it a 429 with Retry-After", async () => {
    const m = await createCreditManager({ db: new InMemoryDbManager() });
    try {
      await m.credits.addCredits("u", 10_000);
      await m.credits.setLimits("u", [{ spender: "bob", amount: 250, period: "day" }]);
      const app = creditMetering({
        credits: m.credits,
        authenticate: (r) => ({
          userId: r.headers.get("x-user") ?? "",
          spender: r.headers.get("x-member") ?? undefined,
        }),
        feature: () => "chat",
        defaultEstimate: 100,
      })(() => {
        return new Response(JSON.stringify({ usage: 100 }), { headers: { "content-type": "application/json" } });
      });
      const first = await app(req("u", { "x-member": "bob" }));
      expect(first.status).toBe(200);
      expect((await m.credits.getLimits("u"))[0]).toMatchObject({ used: 0 }); // no usage key: released
      const withUsage = creditMetering({
        credits: m.credits,
        authenticate: (r) => ({
          userId: r.headers.get("x-user") ?? "",
          spender: r.headers.get("x-member") ?? undefined,
        }),
        feature: "chat",
        usageKey: "usage",
        defaultEstimate: 100,
      })(() => new Response(JSON.stringify({ usage: 100 }), { headers: { "content-type": "application/json" } }));
      expect((await withUsage(req("u", { "x-member": "bob" }))).status).toBe(200);
      expect((await withUsage(req("u", { "x-member": "bob" }))).status).toBe(200);
      const refused = await withUsage(req("u", { "x-member": "bob" }));
      expect(refused.status).toBe(429);
      const body = (await refused.json()) as { error: { code: string; details: { resetsAt: string } } };
      expect(body.error.code).toBe("SPEND_LIMIT_EXCEEDED");
      const retry = Number(refused.headers.get("retry-after"));
      expect(retry).toBeGreaterThan(0);
      expect(retry).toBeLessThanOrEqual(86_400);
      // Alice is under no limit; the entries name who spent on what.
      expect((await withUsage(req("u", { "x-member": "alice" }))).status).toBe(200);
      const commits = (await m.credits.getCreditHistory("u", { limit: 50 })).items.filter(
        (e) => e.type === "commit_reserved",
      );
      expect(commits.map((e) => [e.spender, e.feature])).toContainEqual(["bob", "chat"]);
      expect((await m.credits.getLimits("u"))[0]).toMatchObject({ used: 200 });
    } finally {
      await m.close();
    }
  });

  it("fixed price: a named request past a limit is a 429 before the handler runs; a scoped feature's grant pays", async () => {
    const m = await createCreditManager({ db: new InMemoryDbManager() });
    try {
      await m.credits.addCredits("u", 1000);
      await m.credits.addCredits("u", 100, { scope: { features: ["images"] } });
      await m.credits.setLimits("u", [{ spender: "bob", amount: 30, period: "month" }]);
      let ran = 0;
      const app = creditMetering({
        credits: m.credits,
        authenticate: (r) => ({ userId: r.headers.get("x-user") ?? "" }),
        spender: (r) => r.headers.get("x-member") ?? undefined,
        feature: "images",
        price: 20,
      })(() => {
        ran++;
        return ok();
      });
      expect((await app(req("u", { "x-member": "bob" }))).status).toBe(200);
      const refused = await app(req("u", { "x-member": "bob" }));
      expect(refused.status).toBe(429);
      expect(refused.headers.get("retry-after")).not.toBeNull();
      expect(ran).toBe(1);
      expect((await app(req("u", { "x-member": "carol" }))).status).toBe(200);
      // Both charges were paid by the images grant.
      expect((await m.credits.getUserCreditsInfo("u", { feature: "images" })).available).toBe(1060);
      expect((await m.credits.getUserCreditsInfo("u")).available).toBe(1000);
      // An invalid spender from the function: a 400, nothing charged.
      const bad = await creditMetering({
        credits: m.credits,
        authenticate: () => ({ userId: "u" }),
        spender: () => "",
        price: 20,
      })(ok)(req("u"));
      expect(bad.status).toBe(400);
    } finally {
      await m.close();
    }
  });
});
