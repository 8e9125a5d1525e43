import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createCreditManager, recordUsage, type CreditManager, type MeterOutcome } from "../../src/index.js";
import { creditMetering } from "../../src/http/index.js";
import { meteredHosts, slowRoute } from "./metering-apps.js";
import { waitFor, type Running } from "./servers.js";

describe.each(meteredHosts.map((h) => [h.name, h] as const))("metering on %s", (_name, host) => {
  let m: CreditManager;
  let server: Running;
  const outcomes: MeterOutcome[] = [];

  beforeAll(async () => {
    m = await createCreditManager();
    server = await host.start({
      credits: m.credits,
      authenticate: (userId) => (userId ? { userId } : null),
      pathPrefix: "/api",
      skipPaths: ["/api/health"],
      defaultEstimate: 100,
      maxEstimate: 1000,
      usageKey: "usage.total_tokens",
      ttlSeconds: 60,
      onSettled: (o) => outcomes.push(o),
    });
  });
  afterAll(async () => {
    await server.close();
    await m.close();
  });
  beforeEach(() => {
    outcomes.length = 0;
  });

  const call = (
    method: string,
    path: string,
    user?: string,
    headers: Record<string, string> = {},
    signal?: AbortSignal,
  ) =>
    fetch(server.url + path, {
      method,
      headers: { ...(user ? { authorization: `Bearer ${user}` } : {}), ...headers },
      signal,
    });
  const info = (u: string) => m.credits.getUserCreditsInfo(u);
  const lastTypes = async (u: string, n: number) =>
    (await m.credits.getCreditHistory(u, { limit: n })).items.map((e) => e.type);

  it("holds the estimate, commits the usage the handler recorded, and says so in X-Credits-Deducted", async () => {
    await m.credits.addCredits("u1", 1000);
    const res = await call("POST", "/api/chat", "u1", { "x-estimated-tokens": "200" });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ reply: "hello" });
    if (host.headerOnJson) expect(res.headers.get("x-credits-deducted")).toBe("42");
    const o = await waitFor(() => outcomes[0]);
    expect(o).toMatchObject({ outcome: "committed", charged: 42, estimate: 200, userId: "u1" });
    expect(await info("u1")).toMatchObject({ balance: 958, reserved: 0 });
    const [commit, reserve] = (await m.credits.getCreditHistory("u1", { limit: 2 })).items;
    expect([commit?.type, reserve?.type]).toEqual(["commit_reserved", "reserve"]);
    expect(commit).toMatchObject({ amount: 42, reservedAfter: 0 });
    expect(reserve?.amount).toBe(200);
    expect(commit?.metadata).toMatchObject({ usages: [{ amount: 42, model: "m-1", provider: "acme" }] });
  });

  it("reads the usage from a key of the JSON response when none was recorded", async () => {
    const before = (await info("u1")).balance;
    const res = await call("POST", "/api/json-usage", "u1");
    expect(res.status).toBe(200);
    if (host.headerOnJson) expect(res.headers.get("x-credits-deducted")).toBe("17");
    await waitFor(() => outcomes[0]);
    expect((await info("u1")).balance).toBe(before - 17);
  });

  it("leaves skipped paths and paths outside the prefix alone", async () => {
    const seq = (await m.credits.getCreditHistory("u1", { limit: 1 })).items[0]?.seq;
    expect((await call("GET", "/api/health")).status).toBe(200);
    expect((await call("GET", "/api/health?probe=1")).status).toBe(200); // metered, it would be a 401
    expect((await call("GET", "/public")).status).toBe(200);
    expect((await m.credits.getCreditHistory("u1", { limit: 1 })).items[0]?.seq).toBe(seq);
  });

  it("meters by path alone: a query string neither skips the call nor goes into the hold's reason", async () => {
    const res = await call("POST", "/api/chat?stream=false#x", "u1");
    expect(res.status).toBe(200);
    const o = await waitFor(() => outcomes[0]);
    expect(o).toMatchObject({ outcome: "committed", charged: 42 });
    expect((await m.credits.getReservation(o.reservationId)).reason).toBe("POST /api/chat");
  });

  it("401 without identity, 400 for a malformed estimate, 402 when the hold cannot be placed", async () => {
    const anon = await call("POST", "/api/chat");
    expect(anon.status).toBe(401);
    const bad = await call("POST", "/api/chat", "u1", { "x-estimated-tokens": "12abc" });
    expect(bad.status).toBe(400);
    await m.credits.addCredits("poor", 10);
    const poor = await call("POST", "/api/chat", "poor");
    expect(poor.status).toBe(402);
    const body = (await poor.json()) as { error: { code: string; details: { requested: number; available: number } } };
    expect(body.error).toMatchObject({ code: "INSUFFICIENT_CREDITS", details: { requested: 100, available: 10 } });
    expect(await info("poor")).toMatchObject({ balance: 10, reserved: 0 });
  });

  it("reads the estimate from X-Estimated-Credits, else from its deprecated alias X-Estimated-Tokens", async () => {
    await m.credits.addCredits("est", 5000);
    const held = async (headers: Record<string, string>) => {
      outcomes.length = 0;
      const res = await call("POST", "/api/chat", "est", headers);
      expect(res.status).toBe(200);
      return (await waitFor(() => outcomes[0])).estimate;
    };
    expect(await held({ "x-estimated-credits": "300" })).toBe(300);
    expect(await held({ "x-estimated-tokens": "250" })).toBe(250);
    // Both sent: the new name is read, the alias ignored.
    expect(await held({ "x-estimated-credits": "310", "x-estimated-tokens": "999" })).toBe(310);
    expect(await held({})).toBe(100);
    const bad = await call("POST", "/api/chat", "est", { "x-estimated-credits": "-1", "x-estimated-tokens": "20" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string } }).error.message).toContain("X-Estimated-Credits");
  });

  it("caps the estimate at maxEstimate", async () => {
    await m.credits.addCredits("u1", 5000);
    await call("POST", "/api/chat", "u1", { "x-estimated-tokens": "999999" });
    const o = await waitFor(() => outcomes[0]);
    expect(o.estimate).toBe(1000);
  });

  it("releases the hold when the handler throws or answers >= 500", async () => {
    const before = await info("u1");
    const fail = await call("POST", "/api/fail", "u1");
    expect(fail.status).toBe(500);
    const o = await waitFor(() => outcomes[0]);
    expect(o).toMatchObject({ outcome: "released", charged: 0 });
    const down = await call("POST", "/api/unavailable", "u1");
    expect(down.status).toBe(503);
    if (host.headerOnJson) expect(down.headers.get("x-credits-deducted")).toBe("0");
    await waitFor(() => outcomes[1]);
    expect(await info("u1")).toEqual(before);
    expect(await lastTypes("u1", 4)).toEqual(["release_reserved", "reserve", "release_reserved", "reserve"]);
  });

  it("commits a streamed (SSE) response when the stream ends", async () => {
    const before = (await info("u1")).balance;
    const res = await call("GET", "/api/stream", "u1");
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
    const text = await res.text();
    expect(text.match(/data: \d/g)).toHaveLength(3);
    const o = await waitFor(() => outcomes[0]);
    expect(o).toMatchObject({ outcome: "committed", charged: 30 });
    expect(o.usages).toHaveLength(3);
    expect(await info("u1")).toMatchObject({ balance: before - 30, reserved: 0 });
  });

  it("releases the hold when the client disconnects mid-request", async () => {
    const before = await info("u1");
    const controller = new AbortController();
    const pending = call("GET", "/api/slow", "u1", {}, controller.signal).catch((e: unknown) => e);
    // The hold is in place while the handler runs.
    for (let i = 0; i < 200 && (await info("u1")).reserved !== 100; i++) await sleep(5);
    expect((await info("u1")).reserved).toBe(100);
    await sleep(50);
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    const o = await waitFor(() => outcomes[0]);
    expect(o).toMatchObject({ outcome: "released", releaseReason: "aborted", charged: 0 });
    expect(await info("u1")).toEqual(before);
    // The handler finishing late must not charge anything (nor what the middleware does after it).
    await slowRoute.finish();
    await sleep(100);
    expect(await info("u1")).toEqual(before);
    expect(outcomes).toHaveLength(1);
  });

  it("releases the hold when the client leaves a stream midway", async () => {
    await m.credits.addCredits("s1", 1000);
    const before = await info("s1");
    const controller = new AbortController();
    const res = await call("GET", "/api/slow-stream", "s1", {}, controller.signal);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toContain("data: 0");
    expect((await info("s1")).reserved).toBe(100);
    controller.abort();
    const o = await waitFor(() => outcomes[0]);
    expect(o).toMatchObject({ outcome: "released", releaseReason: "aborted", charged: 0 });
    await sleep(300); // the producer noticing late must not charge anything
    expect(await info("s1")).toEqual(before);
    expect(outcomes.map((x) => [x.userId, x.outcome, x.releaseReason])).toEqual([["s1", "released", "aborted"]]);
  });

  it("concurrent metered requests beyond the balance: 402s, no overspend, audit clean", async () => {
    await m.credits.addCredits("burst", 1000);
    const results = await Promise.all(
      Array.from({ length: 30 }, () => call("POST", "/api/burst", "burst").then((r) => r.status)),
    );
    const ok = results.filter((s) => s === 200).length;
    const refused = results.filter((s) => s === 402).length;
    expect(ok + refused).toBe(30);
    expect(refused).toBeGreaterThan(0);
    expect(ok).toBeGreaterThanOrEqual(10);
    await waitFor(() => (outcomes.length >= ok ? true : undefined));
    const after = await info("burst");
    expect(after).toEqual({
      userId: "burst",
      balance: 1000 - 60 * ok,
      reserved: 0,
      available: 1000 - 60 * ok,
      debt: 0,
    });
    expect(after.balance).toBeGreaterThanOrEqual(0);
    expect((await m.credits.audit("burst")).ok).toBe(true);
    expect((await m.credits.audit("u1")).ok).toBe(true);
  });
});

describe("a metered request whose settle failed", () => {
  it("is reported to the manager's logger and to onSettled with the error; its hold is returned", async () => {
    const errors: unknown[][] = [];
    const logger = { error: (...a: unknown[]) => errors.push(a), warn: () => {}, info: () => {}, debug: () => {} };
    const m = await createCreditManager({ logger });
    await m.credits.addCredits("h", 100);
    const outcomes: MeterOutcome[] = [];
    const app = creditMetering({ credits: m.credits, trustUserIdHeader: true, onSettled: (o) => outcomes.push(o) })(
      async () => {
        // Two usages whose sum is past Number.MAX_SAFE_INTEGER: the commit is refused.
        recordUsage({ amount: Number.MAX_SAFE_INTEGER });
        recordUsage({ amount: Number.MAX_SAFE_INTEGER });
        return Response.json({ ok: true });
      },
    );
    const headers = { "x-user-id": "h", "x-estimated-credits": "10" };
    const res = await app(new Request("http://x/api/run", { method: "POST", headers }));
    expect(res.status).toBe(200);
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]).toMatchObject({ userId: "h", estimate: 10, outcome: "released", charged: 0 });
    expect(outcomes[0]?.releaseReason).toBe("settle-failed");
    expect((outcomes[0]?.error as { code?: string }).code).toBe("VALIDATION_ERROR");
    expect(errors).toHaveLength(1);
    expect(await m.credits.getUserCreditsInfo("h")).toMatchObject({ balance: 100, reserved: 0 });
    await m.close();
  });
});
