/**
 * The usage routes (docs/usage.md, "Over HTTP"): the caller's own, an admin's view of any account and
 * of the fleet, CSV, and customer tokens (a spender's token reads that spender's usage only).
 */
import { Validator } from "@seriousme/openapi-schema-validator";
import { beforeAll, describe, expect, it } from "vitest";
import { caller } from "./call.js";
import { windowStart } from "../../src/core/domain/windows.js";
import { createCreditHandler, type Identity } from "../../src/http/index.js";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { HOSTILE_MODEL, HOSTILE_SPENDER, seedUsage } from "../usage-fixture.js";

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};

describe("usage over HTTP", () => {
  let m: CreditManager;
  let handler: ReturnType<typeof createCreditHandler>;
  let seeded: number;
  const clock = { t: Date.now() };
  const range = () =>
    `from=${new Date(clock.t - 30 * 86_400_000).toISOString()}&to=${new Date(clock.t + 60_000).toISOString()}`;
  const call = (path: string, token?: string) => caller(handler)(path, token);

  beforeAll(async () => {
    m = await createCreditManager({
      clock: () => new Date(clock.t),
      customerTokens: { secret: "usage-routes-secret-of-32-characters!!" },
    });
    seeded = (await seedUsage(m, clock, "alice")).credits;
    await seedUsage(m, clock, "bob", 3);
    handler = createCreditHandler(m, { authenticate });
  });

  it("a user reads their own usage by day and model; an admin any account's and the fleet's", async () => {
    const mine = await call(`/credits/usage?${range()}&groupBy=model`, "alice");
    expect(mine.status).toBe(200);
    const rows = mine.body.rows as { credits: number; model: string | null; start: string; kind: string }[];
    expect(rows.reduce((s, r) => s + r.credits, 0)).toBe(seeded);
    expect(new Set(rows.map((r) => r.model))).toEqual(new Set(["gpt-4o", "claude-sonnet", HOSTILE_MODEL]));
    expect(mine.body.timeZone).toBe("UTC");
    // The same through the admin route.
    const theirs = await call(`/admin/credits/users/alice/usage?${range()}&groupBy=model`, "admin:ops");
    expect(theirs.body).toEqual(mine.body);
    // Only admins: a user gets 403 on another account's and on the fleet.
    expect((await call(`/admin/credits/users/bob/usage?${range()}`, "alice")).status).toBe(403);
    expect((await call(`/admin/credits/usage?${range()}`, "alice")).status).toBe(403);
    // The fleet's top accounts.
    const top = await call(
      `/admin/credits/usage?${range()}&interval=none&groupBy=account&orderBy=credits&limit=1`,
      "admin:ops",
    );
    expect(top.status).toBe(200);
    expect(top.body.rows).toHaveLength(1);
    expect(top.body.rows[0]).toMatchObject({ account: "alice", credits: seeded });
    expect(top.body.truncated).toBe(true);
  });

  it("without from and to reads this month so far, in the query's time zone", async () => {
    // Usage now (the seed's is spread over the last days: some of it may be last month's).
    await m.credits.addCredits("dora", 100);
    await m.credits.deductCredits("dora", 7);
    const now = Date.now();
    for (const timeZone of ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"]) {
      const monthStart = windowStart(now, "month", timeZone);
      const expected = await m.credits.getUsage({
        account: "dora",
        from: new Date(monthStart),
        to: new Date(now + 60_000),
        interval: null,
      });
      const zone = timeZone === "UTC" ? "" : `&timeZone=${encodeURIComponent(timeZone)}`;
      for (const [path, token] of [
        [`/credits/usage?interval=none${zone}`, "dora"],
        [`/admin/credits/users/dora/usage?interval=none${zone}`, "admin:ops"],
        [`/admin/credits/usage?account=dora&interval=none${zone}`, "admin:ops"],
      ] as const) {
        const r = await call(path, token);
        expect(r.status, path).toBe(200);
        expect(r.body.rows, path).toHaveLength(1);
        // The window starts at this month's first midnight in the zone and ends about now.
        expect(r.body.rows[0].start, path).toBe(new Date(monthStart).toISOString());
        expect(Date.parse(r.body.rows[0].end)).toBeGreaterThanOrEqual(now);
        expect(Date.parse(r.body.rows[0].end)).toBeLessThan(Date.now() + 1);
        expect(r.body.rows[0].credits).toBe(expected.rows[0]?.credits);
      }
    }
    // docs/http.md's top 100 accounts, as written there.
    const top = await call("/admin/credits/usage?groupBy=account&orderBy=credits&limit=100&interval=none", "admin:ops");
    expect(top.status).toBe(200);
    expect(top.body.rows.some((r: { account: string }) => r.account === "dora")).toBe(true);
    // `from` alone reads to now; `to` alone from this month's start.
    const from = new Date(now - 3_600_000).toISOString();
    const since = await call(`/credits/usage?interval=none&from=${from}`, "dora");
    expect(since.body.rows[0]).toMatchObject({ start: from, credits: 7 });
  });

  it("refuses a bad or too large query with 400, naming the field", async () => {
    const week = (n: number) => new Date(clock.t - n * 86_400_000).toISOString();
    for (const q of [
      `from=${week(1)}&to=${week(2)}`,
      `to=${week(62)}`,
      `from=${week(200)}&to=${week(0)}&interval=hour`,
      `${range()}&groupBy=colour`,
      `${range()}&interval=fortnight`,
      `${range()}&timeZone=Mars/Base`,
      `${range()}&userId=bob`,
    ]) {
      const r = await call(`/credits/usage?${q}`, "alice");
      expect(r.status, q).toBe(400);
      expect(r.body.error.code).toBe("VALIDATION_ERROR");
    }
  });

  it("exports CSV: RFC 4180, formulas made inert, markup left as text", async () => {
    const r = await call(`/credits/usage.csv?${range()}&groupBy=model,spender`, "alice");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe("text/csv; charset=utf-8; header=present");
    expect(r.headers.get("content-disposition")).toBe('attachment; filename="usage.csv"');
    const lines = r.text.split("\r\n");
    expect(lines[0]).toBe(
      "start,end,model,spender,kind,credits,requests,inputTokens,outputTokens,cachedTokens,shortfall",
    );
    expect(lines.at(-1)).toBe("");
    // The spender that began with `"` is quoted, its quotes doubled; `=` inside is not at the start.
    expect(r.text).toContain(`"""><script>window.__xss=2</script>=1+1"`);
    expect(r.text).toContain(`"<img src=x onerror=""window.__xss=1"">"`);
    const total = lines
      .slice(1, -1)
      .map((l) => Number(/,spend,(\d+),/.exec(l)?.[1]))
      .reduce((a, b) => a + b, 0);
    expect(total).toBe(seeded);
    // The admin and fleet exports too.
    expect((await call(`/admin/credits/users/alice/usage.csv?${range()}`, "admin:ops")).status).toBe(200);
    const fleet = await call(`/admin/credits/usage.csv?${range()}&groupBy=account&interval=none`, "admin:ops");
    expect(fleet.text.split("\r\n")[0]).toBe(
      "start,end,account,kind,credits,requests,inputTokens,outputTokens,cachedTokens,shortfall",
    );
    await m.credits.deductCredits("carol", 1, { spender: "=cmd|' /C calc'!A0" }).catch(() => undefined);
    await m.credits.addCredits("carol", 10);
    await m.credits.deductCredits("carol", 3, { spender: "=cmd|' /C calc'!A0" });
    const carol = await call(`/credits/usage.csv?${range()}&groupBy=spender`, "carol");
    expect(carol.text).toContain(",'=cmd|' /C calc'!A0,spend,3,");
  });

  it("a customer token reads its account's usage; a spender's token that spender's only", async () => {
    const whole = await m.credits.customerToken("alice", { ttlSeconds: 60 });
    const all = await call(`/credits/usage?${range()}`, whole.token);
    expect(all.status).toBe(200);
    expect(all.body.rows.reduce((s: number, r: { credits: number }) => s + r.credits, 0)).toBe(seeded);
    const mine = await call(`/credits/usage?${range()}&groupBy=model`, "alice");
    const byModel = await call(`/credits/usage?${range()}&groupBy=model`, whole.token);
    expect(byModel.body).toEqual(mine.body);

    const one = await m.credits.customerToken("alice", { ttlSeconds: 60, spender: "key-ci" });
    const spender = await call(`/credits/usage?${range()}&groupBy=model`, one.token);
    expect(spender.status).toBe(200);
    const expected = await m.credits.getUsage({
      account: "alice",
      from: new Date(clock.t - 30 * 86_400_000),
      to: new Date(clock.t + 60_000),
      interval: "day",
      groupBy: ["model", "spender"],
    });
    const keyCi = expected.rows.filter((r) => r.spender === "key-ci");
    expect(keyCi.length).toBeGreaterThan(0);
    expect(spender.body.rows).toEqual(
      keyCi.map(({ spender: _, ...r }) => ({ ...r, start: r.start.toISOString(), end: r.end.toISOString() })),
    );
    // Asking for every spender's split still shows this one only.
    const split = await call(`/credits/usage?${range()}&groupBy=spender`, one.token);
    expect(new Set(split.body.rows.map((r: { spender: string }) => r.spender))).toEqual(new Set(["key-ci"]));
    const csv = await call(`/credits/usage.csv?${range()}&groupBy=spender`, one.token);
    expect(csv.text).not.toContain(HOSTILE_SPENDER.slice(3, 10));
    expect(csv.text).not.toContain("key-web");
    // The token cannot reach the admin routes of its own account.
    expect((await call(`/admin/credits/users/alice/usage?${range()}`, one.token)).status).toBe(403);
  });

  it("the OpenAPI document describes the routes, CSV included, and stays valid", async () => {
    const doc = (await call("/credits/openapi.json", "alice")).body;
    expect((await new Validator().validate(doc)).valid).toBe(true);
    expect(doc.paths["/credits/usage"].get.operationId).toBe("getUsage");
    expect(Object.keys(doc.paths["/credits/usage.csv"].get.responses["200"].content)).toEqual(["text/csv"]);
    expect(doc.paths["/admin/credits/usage"].get.parameters.map((p: { name: string }) => p.name)).toContain("account");
  });
});

describe('usage of a closed month over HTTP (docs/usage.md, "Closed months")', () => {
  it("answers catch-up rows with catchUpThrough, in JSON and as the CSV's last column", async () => {
    const DAY = 86_400_000;
    const through = Math.floor(Date.now() / DAY) * DAY;
    const clock = { t: through - DAY / 2 };
    const m = await createCreditManager({ clock: () => new Date(clock.t) });
    const handler = createCreditHandler(m, { authenticate });
    await m.credits.addCredits("dora", 100);
    await m.credits.deductCredits("dora", 5);
    clock.t = Date.now();
    await m.credits.closePeriod(new Date(through));
    await m.credits.deductCreditsAfterService("dora", 8, { occurredAt: new Date(through - DAY / 4) });
    const q = `from=${new Date(through - DAY).toISOString()}&to=${new Date(through + DAY).toISOString()}`;
    const json = await caller(handler)(`/admin/credits/users/dora/usage?${q}`, "admin:ops");
    expect(json.status).toBe(200);
    const day = (ms: number) => new Date(ms).toISOString();
    expect(
      (json.body.rows as { start: string; credits: number; catchUpThrough?: string }[]).map((r) => [
        r.start,
        r.credits,
        r.catchUpThrough ?? null,
      ]),
    ).toEqual([
      [day(through - DAY), 5, null],
      [day(through), 8, day(through)],
    ]);
    const csv = (await caller(handler)(`/credits/usage.csv?${q}`, "dora")).text.split("\r\n");
    expect(csv.slice(0, 3)).toEqual([
      "start,end,kind,credits,requests,inputTokens,outputTokens,cachedTokens,shortfall,catchUpThrough",
      `${day(through - DAY)},${day(through)},spend,5,1,0,0,0,0,`,
      `${day(through)},${day(through + DAY)},spend,8,1,0,0,0,0,${day(through)}`,
    ]);
    await m.close();
  });
});
