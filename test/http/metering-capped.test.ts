/**
 * The metering middlewares' `minEstimate` (docs/metering.md, "A hold for what is there"): a request
 * holds what the user may spend when that is less than its estimate, down to `minEstimate`, and the
 * handler reads what is held from `currentMeter().estimate`.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createServer } from "node:http";
import {
  ConfigurationError,
  createCreditManager,
  currentMeter,
  recordUsage,
  type CreditManager,
  type MeterOutcome,
} from "../../src/index.js";
import { creditMetering, creditMeteringMiddleware } from "../../src/http/index.js";
import { listen, type Running } from "./servers.js";

describe("metering: minEstimate", () => {
  let m: CreditManager;
  const outcomes: MeterOutcome[] = [];
  /** What the handler saw as held, per request. */
  const seen: number[] = [];
  let handle: (request: Request) => Promise<Response>;

  beforeAll(async () => {
    m = await createCreditManager();
    handle = creditMetering({
      credits: m.credits,
      authenticate: (req) => {
        const u = req.headers.get("authorization");
        return u === null ? null : { userId: u };
      },
      feature: (req) => req.headers.get("x-feature") ?? undefined,
      minEstimate: 50,
      onSettled: (o) => outcomes.push(o),
    })(async () => {
      const held = currentMeter()?.estimate ?? 0;
      seen.push(held);
      // The handler spends what it was given room for, less a little (as a capped LLM call would).
      recordUsage({ amount: held - 5 });
      return Response.json({ held });
    });
  });
  afterAll(() => m.close());
  beforeEach(() => {
    outcomes.length = 0;
    seen.length = 0;
  });

  const call = (user: string, estimate: number, headers: Record<string, string> = {}) =>
    handle(
      new Request("http://localhost/chat", {
        method: "POST",
        headers: { authorization: user, "x-estimated-credits": String(estimate), ...headers },
      }),
    );

  it("holds the estimate whole when the user has it", async () => {
    await m.credits.addCredits("whole", 1_000);
    const res = await call("whole", 400);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ held: 400 });
    expect(outcomes[0]).toMatchObject({ outcome: "committed", estimate: 400, charged: 395 });
  });

  it("holds what the user has when that is less than the estimate, and the handler sees it", async () => {
    await m.credits.addCredits("short", 150);
    const res = await call("short", 400);
    expect(res.status).toBe(200);
    expect(seen).toEqual([150]);
    expect(outcomes[0]).toMatchObject({ outcome: "committed", estimate: 150, charged: 145 });
    const [, reserve] = (await m.credits.getCreditHistory("short", { limit: 2 })).items;
    expect(reserve).toMatchObject({ type: "reserve", amount: 150, metadata: { requested: 400 } });
    expect(await m.credits.getUserCreditsInfo("short")).toMatchObject({ balance: 5, reserved: 0 });
  });

  it("holds within the feature's spend limit", async () => {
    await m.credits.addCredits("limited", 1_000);
    await m.credits.setLimit("limited", { feature: "images", amount: 120, period: "day" });
    const res = await call("limited", 400, { "x-feature": "images" });
    expect(res.status).toBe(200);
    expect(seen).toEqual([120]);
    // The limit is spent but for 5: a request for the feature is refused (429), another feature is not.
    const refused = await call("limited", 400, { "x-feature": "images" });
    expect(refused.status).toBe(429);
    expect((await call("limited", 400, { "x-feature": "text" })).status).toBe(200);
    expect(seen).toEqual([120, 400]);
  });

  it("refuses with 402 below minEstimate, and the handler does not run", async () => {
    await m.credits.addCredits("poor", 30);
    const res = await call("poor", 400);
    expect(res.status).toBe(402);
    expect(seen).toEqual([]);
    expect(await m.credits.getUserCreditsInfo("poor")).toMatchObject({ balance: 30, reserved: 0 });
  });

  it("holds an estimate below minEstimate whole, as without the option", async () => {
    await m.credits.addCredits("small", 30);
    const res = await call("small", 20);
    expect(res.status).toBe(200);
    expect(seen).toEqual([20]);
  });

  it("gives the node middleware's handler what is held in res.locals.creditEstimate", async () => {
    await m.credits.addCredits("node", 70);
    const meter = creditMeteringMiddleware({
      credits: m.credits,
      authenticate: (req) => ({ userId: String(req.headers.authorization) }),
      minEstimate: 10,
    });
    const server: Running = await listen(
      createServer((req, res) => {
        const locals: Record<string, unknown> = {};
        Object.assign(res, { locals });
        meter(req, res, () => {
          recordUsage({ amount: 1 });
          res.setHeader("content-type", "application/json");
          res.end(JSON.stringify({ held: locals.creditEstimate, meter: currentMeter()?.estimate }));
        });
      }),
    );
    try {
      const res = await fetch(`${server.url}/chat`, {
        method: "POST",
        headers: { authorization: "node", "x-estimated-credits": "500" },
      });
      expect(await res.json()).toEqual({ held: 70, meter: 70 });
    } finally {
      await server.close();
    }
  });

  it("refuses a minEstimate that is not a positive integer", () => {
    for (const minEstimate of [0, -1, 2.5, Number.NaN])
      expect(() => creditMetering({ credits: m.credits, trustUserIdHeader: true, minEstimate })).toThrow(
        ConfigurationError,
      );
  });
});
