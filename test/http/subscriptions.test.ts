import { Validator } from "@seriousme/openapi-schema-validator";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { createCreditHandler, type Identity } from "../../src/http/index.js";
import { hosts, type Running } from "./servers.js";

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};

describe("HTTP: plans and subscriptions (node:http on loopback)", () => {
  let m: CreditManager;
  let server: Running;
  let open: Running;
  const now = Date.parse("2030-03-10T00:00:00Z");

  beforeAll(async () => {
    m = await createCreditManager({ clock: () => new Date(now) });
    server = await hosts["node:http"]!(createCreditHandler(m, { authenticate }));
    open = await hosts["node:http"]!(
      createCreditHandler(m, {
        authenticate,
        selfServiceSubscriptions: "all",
        basePath: "/all",
        adminBasePath: "/all-admin",
      }),
    );
  });
  afterAll(async () => {
    await server.close();
    await open.close();
    await m.close();
  });

  const call = async (
    method: string,
    path: string,
    o: { user?: string; body?: unknown; headers?: Record<string, string>; base?: Running } = {},
  ) => {
    const headers: Record<string, string> = { ...o.headers };
    if (o.user) headers.authorization = `Bearer ${o.user}`;
    // A JSON client types every mutation, body or not (csrfProtection refuses untyped ones).
    if (o.body !== undefined || (method !== "GET" && method !== "HEAD")) headers["content-type"] ??= "application/json";
    const r = await fetch(`${(o.base ?? server).url}${path}`, {
      method,
      headers,
      body: o.body === undefined ? undefined : JSON.stringify(o.body),
    });
    const text = await r.text();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    return { status: r.status, json: (text === "" ? null : JSON.parse(text)) as any };
  };
  const admin = "admin:ops";

  it("admins create, update, deactivate and delete plans; users cannot (403) and get 400s on bad input", async () => {
    const free = { id: "free", name: "Free", creditsPerPeriod: 100, billingPeriod: "monthly" };
    expect((await call("POST", "/admin/credits/plans", { user: "alice", body: free })).status).toBe(403);
    expect((await call("POST", "/admin/credits/plans", { body: free })).status).toBe(401);
    expect(await m.subscriptions.listPlans({ includeInactive: true })).toEqual([]);

    const created = await call("POST", "/admin/credits/plans", { user: admin, body: free });
    expect(created.status).toBe(201);
    expect(created.json).toMatchObject({ id: "free", price: 0, creditsPerPeriod: 100, isActive: true });
    expect((await call("POST", "/admin/credits/plans", { user: admin, body: free })).status).toBe(409);
    const pro = {
      id: "pro",
      name: "Pro",
      creditsPerPeriod: 1000,
      price: 2000,
      currency: "usd",
      billingPeriod: "monthly",
    };
    expect((await call("POST", "/admin/credits/plans", { user: admin, body: pro })).status).toBe(201);

    const bad = await call("POST", "/admin/credits/plans", {
      user: admin,
      body: { name: "x", creditsPerPeriod: -1, billingPeriod: "hourly" },
    });
    expect(bad.status).toBe(400);
    expect(bad.json.error.code).toBe("VALIDATION_ERROR");
    expect(JSON.stringify(bad.json.error.details)).toMatch(/creditsPerPeriod/);
    expect(JSON.stringify(bad.json.error.details)).toMatch(/billingPeriod/);

    const patched = await call("PATCH", "/admin/credits/plans/pro", { user: admin, body: { name: "Pro+" } });
    expect(patched.status).toBe(200);
    expect(patched.json.name).toBe("Pro+");
    expect((await call("PATCH", "/admin/credits/plans/pro", { user: "alice", body: { name: "mine" } })).status).toBe(
      403,
    );
    expect((await call("PATCH", "/admin/credits/plans/nope", { user: admin, body: { name: "n" } })).status).toBe(404);

    await call("POST", "/admin/credits/plans", {
      user: admin,
      body: { id: "old", name: "Old", creditsPerPeriod: 1, billingPeriod: "daily" },
    });
    expect((await call("POST", "/admin/credits/plans/old/deactivate", { user: "alice" })).status).toBe(403);
    const off = await call("POST", "/admin/credits/plans/old/deactivate", { user: admin });
    expect(off.json.isActive).toBe(false);

    // Users list active plans; admins may include inactive ones.
    const listed = await call("GET", "/credits/plans", { user: "alice" });
    expect(listed.json.items.map((p: { id: string }) => p.id).sort()).toEqual(["free", "pro"]);
    const all = await call("GET", "/admin/credits/plans?includeInactive=true", { user: admin });
    expect(all.json.items.map((p: { id: string }) => p.id).sort()).toEqual(["free", "old", "pro"]);
    expect((await call("GET", "/admin/credits/plans?includeInactive=maybe", { user: admin })).status).toBe(400);
    expect((await call("GET", "/credits/plans/pro", { user: "alice" })).json.name).toBe("Pro+");
    expect((await call("GET", "/credits/plans/missing", { user: "alice" })).status).toBe(404);
    expect((await call("GET", "/credits/plans/bad%20id", { user: "alice" })).status).toBe(400);

    expect((await call("DELETE", "/admin/credits/plans/old", { user: "alice" })).status).toBe(403);
    expect((await call("DELETE", "/admin/credits/plans/old", { user: admin })).status).toBe(204);
    expect((await call("GET", "/credits/plans/old", { user: "alice" })).status).toBe(404);
  });

  it("plans take and return allowances (scoped credits per period); a subscriber's balance for the feature counts them; bad allowances are 400s", async () => {
    const body = {
      id: "images-plan",
      name: "Images",
      creditsPerPeriod: 10,
      billingPeriod: "monthly",
      allowances: [{ scope: { features: ["images"] }, credits: 50, rollover: { cap: 20 } }],
    };
    const created = await call("POST", "/admin/credits/plans", { user: admin, body });
    expect(created.status).toBe(201);
    expect(created.json.allowances).toEqual(body.allowances);
    expect((await call("GET", "/credits/plans/images-plan", { user: "alice" })).json.allowances).toEqual(
      body.allowances,
    );
    for (const allowances of [
      [{ scope: {}, credits: 5 }],
      [{ scope: { features: ["images"] }, credits: 0 }],
      [{ scope: { features: ["images"] }, credits: 5, extra: true }],
      [
        { scope: { features: ["a", "b"] }, credits: 5 },
        { scope: { features: ["b", "a"] }, credits: 6 },
      ],
    ]) {
      const bad = await call("PATCH", "/admin/credits/plans/images-plan", { user: admin, body: { allowances } });
      expect(bad.status).toBe(400);
    }
    const patched = await call("PATCH", "/admin/credits/plans/images-plan", {
      user: admin,
      body: { allowances: [{ scope: { features: ["images"] }, credits: 60 }] },
    });
    expect(patched.json.allowances).toEqual([{ scope: { features: ["images"] }, credits: 60 }]);
    const sub = await call("POST", "/all/subscription", { user: "dora", base: open, body: { planId: "images-plan" } });
    expect(sub.status).toBe(201);
    expect(sub.json.periodAllowances).toEqual([{ scope: { features: ["images"] }, credits: 60 }]);
    expect((await call("GET", "/credits/balance?feature=images", { user: "dora" })).json.available).toBe(70);
    expect((await call("GET", "/credits/balance?feature=chat", { user: "dora" })).json.available).toBe(10);
  });

  it("a user subscribes to a free plan, idempotently; paid plans need an admin (or selfServiceSubscriptions: all)", async () => {
    expect((await call("GET", "/credits/subscription", { user: "alice" })).status).toBe(404);
    const paid = await call("POST", "/credits/subscription", { user: "alice", body: { planId: "pro" } });
    expect(paid.status).toBe(403);
    expect(await m.subscriptions.getUserSubscription("alice")).toBeNull();
    // Backdating is for admins: the self-service body refuses startAt.
    const backdated = await call("POST", "/credits/subscription", {
      user: "alice",
      body: { planId: "free", startAt: "2030-01-01T00:00:00Z" },
    });
    expect(backdated.status).toBe(400);
    expect((await call("POST", "/credits/subscription", { user: "alice", body: {} })).status).toBe(400);
    expect((await call("POST", "/credits/subscription", { user: "alice", body: { planId: "missing" } })).status).toBe(
      404,
    );

    const headers = { "idempotency-key": "sub-alice-1" };
    const first = await call("POST", "/credits/subscription", { user: "alice", body: { planId: "free" }, headers });
    expect(first.status).toBe(201);
    expect(first.json).toMatchObject({ userId: "alice", planId: "free", status: "active" });
    const again = await call("POST", "/credits/subscription", { user: "alice", body: { planId: "free" }, headers });
    expect(again.status).toBe(201);
    expect(again.json.id).toBe(first.json.id);
    expect((await m.credits.getUserCreditsInfo("alice")).available).toBe(100); // allocated once
    // Without the key, a second subscription is a conflict.
    expect((await call("POST", "/credits/subscription", { user: "alice", body: { planId: "free" } })).status).toBe(409);

    const mine = await call("GET", "/credits/subscription", { user: "alice" });
    expect(mine.json.id).toBe(first.json.id);
    // Another user sees only their own (none), never alice's.
    const bob = await call("GET", "/credits/subscription", { user: "bob" });
    expect(bob.status).toBe(404);
    expect(JSON.stringify(bob.json)).not.toContain(first.json.id);
    expect((await call("GET", "/admin/credits/users/alice/subscription", { user: "bob" })).status).toBe(403);
    expect((await call("GET", "/admin/credits/users/alice/subscription", { user: admin })).json.id).toBe(first.json.id);

    // A user may not change to a paid plan on the default handler; on the "all" handler they may.
    expect(
      (await call("POST", "/credits/subscription/change", { user: "alice", body: { planId: "pro" } })).status,
    ).toBe(403);
    expect(
      (await call("POST", "/credits/subscription/change", { user: "alice", body: { planId: "pro", when: "later" } }))
        .status,
    ).toBe(400);
    const changed = await call("POST", "/all/subscription/change", {
      user: "alice",
      base: open,
      body: { planId: "pro", credits: "keep" },
    });
    expect(changed.status).toBe(200);
    expect(changed.json.planId).toBe("pro");
    expect((await m.credits.getUserCreditsInfo("alice")).available).toBe(1100);
  });

  it("a user cannot farm a free plan: no cancelling now and subscribing again, no changing now to a free plan", async () => {
    await call("POST", "/admin/credits/plans", {
      user: admin,
      body: { id: "free-b", name: "Free B", creditsPerPeriod: 100, billingPeriod: "monthly" },
    });
    for (const base of [server, open]) {
      const user = `mallory-${base === server ? "free" : "all"}`;
      const prefix = base === server ? "/credits" : "/all";
      expect((await call("POST", `${prefix}/subscription`, { user, base, body: { planId: "free" } })).status).toBe(201);
      await m.credits.deductCredits(user, 100); // spent: "expire" would not take it back
      const now = await call("POST", `${prefix}/subscription/cancel`, {
        user,
        base,
        body: { atPeriodEnd: false, credits: "expire" },
      });
      expect(now.status).toBe(403);
      expect(now.json.error.message).toMatch(/period's end/);
      for (const credits of ["keep", "expire", "prorate"]) {
        const change = await call("POST", `${prefix}/subscription/change`, {
          user,
          base,
          body: { planId: "free-b", credits },
        });
        expect(change.status).toBe(403);
      }
      // At the period's end is allowed, and allocates nothing now.
      const later = await call("POST", `${prefix}/subscription/change`, {
        user,
        base,
        body: { planId: "free-b", when: "period_end" },
      });
      expect(later.status).toBe(200);
      expect(
        (await call("POST", `${prefix}/subscription/cancel`, { user, base, body: {} })).json.cancelAtPeriodEnd,
      ).toBe(true);
      expect((await call("POST", `${prefix}/subscription`, { user, base, body: { planId: "free" } })).status).toBe(409);
      expect((await m.credits.getUserCreditsInfo(user)).balance).toBe(0);
      expect((await m.subscriptions.getUserSubscription(user))?.planId).toBe("free");
    }
    // An admin may still end it now.
    const ended = await call("POST", "/admin/credits/users/mallory-free/subscription/cancel", {
      user: admin,
      body: { atPeriodEnd: false },
    });
    expect(ended.json.status).toBe("canceled");
  });

  it("cancel and resume: the caller's own; admins act on any user's under the admin base path", async () => {
    expect((await call("POST", "/credits/subscription/cancel", { user: "carol" })).status).toBe(404);
    const bad = await call("POST", "/credits/subscription/cancel", { user: "alice", body: { atPeriodEnd: "yes" } });
    expect(bad.status).toBe(400);
    const cancelled = await call("POST", "/credits/subscription/cancel", { user: "alice", body: {} });
    expect(cancelled.status).toBe(200);
    expect(cancelled.json.cancelAtPeriodEnd).toBe(true);
    // alice is on the paid plan now: resuming (renewal allocates again) is for admins on the default handler.
    expect((await call("POST", "/credits/subscription/resume", { user: "alice" })).status).toBe(403);
    expect((await m.subscriptions.getUserSubscription("alice"))?.cancelAtPeriodEnd).toBe(true);
    expect((await call("POST", "/admin/credits/users/alice/subscription/resume", { user: "alice" })).status).toBe(403);
    const resumed = await call("POST", "/admin/credits/users/alice/subscription/resume", { user: admin });
    expect(resumed.json.cancelAtPeriodEnd).toBe(false);

    // An admin subscribes dave to the paid plan, changes it and cancels it now.
    const sub = await call("POST", "/admin/credits/users/dave/subscription", {
      user: admin,
      body: { planId: "pro", idempotencyKey: "d1" },
    });
    expect(sub.status).toBe(201);
    expect(
      (await call("POST", "/admin/credits/users/dave/subscription", { user: "dave", body: { planId: "pro" } })).status,
    ).toBe(403);
    const down = await call("POST", "/admin/credits/users/dave/subscription/change", {
      user: admin,
      body: { planId: "free", credits: "expire" },
    });
    expect(down.json.planId).toBe("free");
    expect((await m.credits.getUserCreditsInfo("dave")).available).toBe(100);
    // dave, on a free plan now, may resume his own cancellation.
    await call("POST", "/credits/subscription/cancel", { user: "dave", body: {} });
    expect((await call("POST", "/credits/subscription/resume", { user: "dave" })).json.cancelAtPeriodEnd).toBe(false);
    const ended = await call("POST", "/admin/credits/users/dave/subscription/cancel", {
      user: admin,
      body: { atPeriodEnd: false },
    });
    expect(ended.json.status).toBe("canceled");
    expect((await call("GET", "/credits/subscription", { user: "dave" })).status).toBe(404);
    // A plan with a subscriber (alice on pro) cannot be deleted.
    expect((await call("DELETE", "/admin/credits/plans/pro", { user: admin })).status).toBe(409);
  });

  it("cancel, resume and change take an Idempotency-Key: a retry returns the first result, other arguments are a 409", async () => {
    await m.subscriptions.createPlan({ id: "keyed", name: "Keyed", creditsPerPeriod: 10, billingPeriod: "monthly" });
    await m.subscriptions.subscribe("kate", "keyed");
    const state = async () => ({
      subs: await m.subscriptions.listUserSubscriptions("kate"),
      entries: (await m.credits.getCreditHistory("kate", { limit: 100 })).items.length,
    });
    const key = (k: string) => ({ "idempotency-key": k });
    const first = await call("POST", "/admin/credits/users/kate/subscription/cancel", {
      user: admin,
      body: {},
      headers: key("c-1"),
    });
    expect(first.status).toBe(200);
    const before = await state();
    const again = await call("POST", "/admin/credits/users/kate/subscription/cancel", {
      user: admin,
      body: {},
      headers: key("c-1"),
    });
    expect(again.json).toEqual(first.json);
    expect(await state()).toEqual(before);
    const other = await call("POST", "/admin/credits/users/kate/subscription/cancel", {
      user: admin,
      body: { atPeriodEnd: false },
      headers: key("c-1"),
    });
    expect(other.status).toBe(409);
    expect(other.json.error.code).toBe("IDEMPOTENCY_CONFLICT");
    // The key in the body works too (resume takes only that body field).
    const resumed = await call("POST", "/admin/credits/users/kate/subscription/resume", {
      user: admin,
      body: { idempotencyKey: "r-1" },
    });
    expect(resumed.json.cancelAtPeriodEnd).toBe(false);
    const resumedAgain = await call("POST", "/admin/credits/users/kate/subscription/resume", {
      user: admin,
      headers: key("r-1"),
    });
    expect(resumedAgain.json).toEqual(resumed.json);
    const changed = await call("POST", "/admin/credits/users/kate/subscription/change", {
      user: admin,
      body: { planId: "pro", idempotencyKey: "ch-1" },
    });
    expect(changed.json.planId).toBe("pro");
    const mid = await state();
    expect(
      (
        await call("POST", "/admin/credits/users/kate/subscription/change", {
          user: admin,
          body: { planId: "pro", idempotencyKey: "ch-1" },
        })
      ).json,
    ).toEqual(changed.json);
    expect(await state()).toEqual(mid);
    expect(
      (
        await call("POST", "/admin/credits/users/kate/subscription/change", {
          user: admin,
          body: { planId: "keyed", idempotencyKey: "ch-1" },
        })
      ).status,
    ).toBe(409);
    expect(
      (await call("POST", "/admin/credits/users/kate/subscription/resume", { user: admin, body: { other: 1 } })).status,
    ).toBe(400);
    // The OpenAPI document says so.
    const doc = (await call("GET", "/credits/openapi.json")).json;
    for (const path of [
      "/credits/subscription/cancel",
      "/credits/subscription/resume",
      "/credits/subscription/change",
    ]) {
      const params = (doc.paths[path].post.parameters ?? []) as { name: string }[];
      expect(params.map((p) => p.name)).toContain("Idempotency-Key");
    }
  });

  it("lists the routes in a valid OpenAPI 3.1 document", async () => {
    const doc = (await call("GET", "/credits/openapi.json")).json;
    const result = await new Validator().validate(structuredClone(doc));
    expect(result.errors ?? []).toEqual([]);
    expect(doc.paths["/credits/subscription"].post.requestBody.content["application/json"].schema.required).toContain(
      "planId",
    );
    expect(doc.paths["/admin/credits/plans/{planId}"].delete).toBeDefined();
    expect(doc.paths["/admin/credits/users/{userId}/subscription/cancel"].post.responses["403"]).toBeDefined();
  });
});
