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
});
