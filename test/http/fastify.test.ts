/** The Fastify plugin keeps Fastify in charge: its error handler, hooks and serialisation. @see issue 24, item 11 */
import Fastify from "fastify";
import { describe, expect, it } from "vitest";
import { createCreditManager, recordUsage } from "../../src/index.js";
import { fastifyCreditMetering } from "../../src/http/index.js";

describe("fastifyCreditMetering", () => {
  it("runs inside Fastify's lifecycle: the host's error handler answers, the hold is released, usage is charged", async () => {
    const manager = await createCreditManager();
    await manager.credits.addCredits("u1", 100);
    const app = Fastify();
    const handled: string[] = [];
    app.setErrorHandler((error, _request, reply) => {
      handled.push((error as Error).message);
      void reply.code(418).send({ teapot: true });
    });
    await app.register(
      fastifyCreditMetering({
        credits: manager.credits,
        authenticate: (request) => (request.headers.authorization ? { userId: request.headers.authorization } : null),
        pathPrefix: "/api",
        defaultEstimate: 50,
      }),
    );
    app.post("/api/ok", async () => {
      recordUsage({ amount: 7, model: "m" });
      return { ok: true };
    });
    app.post("/api/boom", async () => {
      throw new Error("model crashed");
    });
    app.get("/free", async () => ({ free: true }));
    const ok = await app.inject({ method: "POST", url: "/api/ok", headers: { authorization: "u1" } });
    expect(ok.statusCode).toBe(200);
    expect(ok.headers["x-credits-deducted"]).toBe("7");
    const boom = await app.inject({ method: "POST", url: "/api/boom", headers: { authorization: "u1" } });
    expect(boom.statusCode).toBe(418);
    expect(boom.json()).toEqual({ teapot: true });
    expect(handled).toEqual(["model crashed"]);
    expect(boom.headers["x-credits-deducted"]).toBe("0");
    const anonymous = await app.inject({ method: "POST", url: "/api/ok" });
    expect(anonymous.statusCode).toBe(401);
    const broke = await app.inject({ method: "POST", url: "/api/ok", headers: { authorization: "nobody" } });
    expect(broke.statusCode).toBe(402);
    expect((await app.inject({ method: "GET", url: "/free" })).headers["x-credits-deducted"]).toBeUndefined();
    expect(await manager.credits.getUserCreditsInfo("u1")).toMatchObject({ balance: 93, reserved: 0 });
    await app.close();
    await manager.close();
  });

  it("names the spender and feature of a hold and of a fixed-price charge: spend limits apply (429), the entries say who spent on what", async () => {
    const manager = await createCreditManager();
    await manager.credits.addCredits("u1", 10_000);
    await manager.credits.setLimits("u1", [{ spender: "bob", amount: 150, period: "day" }]);
    const who = (request: { headers: Record<string, unknown> }) => ({
      userId: "u1",
      spender: (request.headers["x-member"] as string | undefined) ?? undefined,
    });
    const held = Fastify();
    await held.register(
      fastifyCreditMetering({ credits: manager.credits, authenticate: who, feature: "chat", defaultEstimate: 100 }),
    );
    held.post("/run", async () => {
      recordUsage({ amount: 100, model: "m" });
      return { ok: true };
    });
    const fixed = Fastify();
    let ran = 0;
    await fixed.register(
      fastifyCreditMetering({
        credits: manager.credits,
        authenticate: who,
        feature: (r) => (r.url.includes("img") ? "images" : undefined),
        price: 40,
      }),
    );
    fixed.post("/img", async () => {
      ran++;
      return { ok: true };
    });
    const as = (app: typeof held, url: string, member: string) =>
      app.inject({ method: "POST", url, headers: { "x-member": member } });
    expect((await as(held, "/run", "bob")).statusCode).toBe(200);
    // Bob has 50 left of 150: a hold of 100 is past his limit, Alice is under none.
    const refused = await as(held, "/run", "bob");
    expect(refused.statusCode).toBe(429);
    expect(refused.json()).toMatchObject({ error: { code: "SPEND_LIMIT_EXCEEDED" } });
    expect(Number(refused.headers["retry-after"])).toBeGreaterThan(0);
    expect((await as(held, "/run", "alice")).statusCode).toBe(200);
    expect((await as(fixed, "/img", "bob")).statusCode).toBe(200);
    expect((await as(fixed, "/img", "bob")).statusCode).toBe(429);
    expect(ran).toBe(1);
    const entries = (await manager.credits.getCreditHistory("u1", { limit: 50 })).items.filter(
      (e) => e.type === "commit_reserved" || e.type === "deduct",
    );
    expect(entries.map((e) => [e.type, e.spender, e.feature]).sort()).toEqual([
      ["commit_reserved", "alice", "chat"],
      ["commit_reserved", "bob", "chat"],
      ["deduct", "bob", "images"],
    ]);
    expect((await manager.credits.getLimits("u1"))[0]).toMatchObject({ used: 140 });
    await held.close();
    await fixed.close();
    await manager.close();
  });
});
