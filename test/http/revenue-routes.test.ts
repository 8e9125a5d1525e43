/**
 * The revenue routes (docs/revenue.md, "Where finance reads it"): admins only, the query validated
 * (400, nothing changed), JSON and CSV with formulas made inert, in the OpenAPI document.
 */
import { Validator } from "@seriousme/openapi-schema-validator";
import { beforeAll, describe, expect, it } from "vitest";
import { caller } from "./call.js";
import { windowStart } from "../../src/core/domain/windows.js";
import { createCreditHandler, type Identity } from "../../src/http/index.js";
import { createCreditManager, type CreditManager } from "../../src/index.js";

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};

/** An account id and a spender that a spreadsheet would run as formulas. */
const FORMULA_ACCOUNT = '=HYPERLINK("http://evil.example","x")';
const FORMULA_SPENDER = "+cmd|' /C calc'!A0";

describe("revenue over HTTP", () => {
  let m: CreditManager;
  let handler: ReturnType<typeof createCreditHandler>;
  const clock = { t: Date.now() };
  const from = () => new Date(clock.t - 86_400_000).toISOString();
  const to = () => new Date(clock.t + 60_000).toISOString();
  const range = () => `from=${encodeURIComponent(from())}&to=${encodeURIComponent(to())}`;
  const call = (path: string, token?: string) => caller(handler)(path, token);

  beforeAll(async () => {
    m = await createCreditManager({
      clock: () => new Date(clock.t),
      customerTokens: { secret: "revenue-routes-secret-of-32-characters!" },
    });
    // 5,997 credits for 1,999 cents (1/3 cent each), 1,000 free ones; 1,600 used: 200 cents recognized.
    await m.credits.addCredits("alice", 5_997, { costBasis: { perCredit: "1/3", currency: "USD" } });
    // The promo credits expire first, so they are used first (docs/concepts.md, burn-down order).
    await m.credits.addCredits("alice", 1_000, {
      source: "promo",
      expiresAt: new Date(clock.t + 10 * 86_400_000),
    });
    await m.credits.deductCredits("alice", 1_600, { spender: "key-ci" });
    // An account whose id and spender are formulas: 100 credits at 2 euro cents, 10 used.
    await m.credits.addCredits(FORMULA_ACCOUNT, 100, { costBasis: { perCredit: "2", currency: "eur" } });
    await m.credits.deductCredits(FORMULA_ACCOUNT, 10, { spender: FORMULA_SPENDER });
    clock.t += 1000;
    handler = createCreditHandler(m, { authenticate });
  });

  it("answers an admin the whole book or one account, as credits.getRevenue does", async () => {
    const book = await call(`/admin/credits/revenue?${range()}&interval=none&groupBy=account`, "admin:ops");
    expect(book.status).toBe(200);
    expect(book.body.timeZone).toBe("UTC");
    const expected = await m.credits.getRevenue({
      from: from(),
      to: to(),
      interval: null,
      groupBy: ["account"],
    });
    expect(book.body.rows).toEqual(
      expected.rows.map((r) => ({ ...r, start: r.start.toISOString(), end: r.end.toISOString() })),
    );
    expect(book.body.rows).toContainEqual(
      expect.objectContaining({ account: "alice", currency: "USD", paid: 1_999, recognized: 200, deferredEnd: 1_799 }),
    );
    expect(book.body.rows).toContainEqual(
      expect.objectContaining({ account: FORMULA_ACCOUNT, currency: "EUR", paid: 200, recognized: 20 }),
    );
    // One account; the interval's default is the month.
    const one = await call(`/admin/credits/revenue?${range()}&account=alice`, "admin:ops");
    expect(one.status).toBe(200);
    expect(one.body.rows.every((r: { currency: string }) => r.currency === "USD")).toBe(true);
    expect(one.body.rows.reduce((s: number, r: { recognized: number }) => s + r.recognized, 0)).toBe(200);
    const monthly = await m.credits.getRevenue({ account: "alice", from: from(), to: to(), interval: "month" });
    expect(one.body.rows).toHaveLength(monthly.rows.length);
  });

  it("without from and to reads this month so far", async () => {
    const monthStart = new Date(windowStart(Date.now(), "month", "UTC")).toISOString();
    for (const path of ["/admin/credits/revenue", "/admin/credits/revenue.csv"]) {
      const r = await call(`${path}?account=alice&interval=none`, "admin:ops");
      expect(r.status, path).toBe(200);
    }
    const r = await call("/admin/credits/revenue?account=alice&interval=none", "admin:ops");
    expect(r.body.rows.length).toBeGreaterThan(0);
    const end: string = r.body.rows[0].end;
    expect(
      r.body.rows.every((row: { start: string; end: string }) => row.start === monthStart && row.end === end),
    ).toBe(true);
    expect(Date.parse(end)).toBeLessThanOrEqual(Date.now());
    const expected = await m.credits.getRevenue({ account: "alice", from: monthStart, to: end, interval: null });
    expect(r.body.rows).toEqual(
      expected.rows.map((row) => ({ ...row, start: row.start.toISOString(), end: row.end.toISOString() })),
    );
  });

  it("is for admins only: 401 without identity, 403 for a user and a customer token", async () => {
    expect((await call(`/admin/credits/revenue?${range()}`)).status).toBe(401);
    expect((await call(`/admin/credits/revenue.csv?${range()}`)).status).toBe(401);
    expect((await call(`/admin/credits/revenue?${range()}&account=alice`, "alice")).status).toBe(403);
    expect((await call(`/admin/credits/revenue.csv?${range()}&account=alice`, "alice")).status).toBe(403);
    const token = (await m.credits.customerToken("alice", { ttlSeconds: 60 })).token;
    expect((await call(`/admin/credits/revenue?${range()}&account=alice`, token)).status).toBe(403);
    // No user route answers it.
    expect((await call(`/credits/revenue?${range()}`, "alice")).status).toBe(404);
  });

  it("refuses a bad or too large query with 400 naming the field, and changes nothing", async () => {
    const before = await m.db.getAccount("alice");
    const day = (n: number) => encodeURIComponent(new Date(clock.t - n * 86_400_000).toISOString());
    for (const [q, field] of [
      [`to=${day(62)}`, "to"],
      [`from=${day(1)}&to=${day(2)}`, "to"],
      [`from=${day(200)}&to=${day(0)}&interval=hour`, "to"],
      [`from=${day(4000)}&to=${day(0)}&interval=none`, "to"],
      [`${range()}&groupBy=colour`, "groupBy"],
      [`${range()}&groupBy=account,account`, "groupBy"],
      [`${range()}&interval=fortnight`, "interval"],
      [`${range()}&timeZone=Mars/Base`, "timeZone"],
      [`${range()}&kinds=spend`, "kinds"],
      [`from=yesterday&to=${day(0)}`, "from"],
    ] as const) {
      for (const path of ["/admin/credits/revenue", "/admin/credits/revenue.csv"]) {
        const r = await call(`${path}?${q}`, "admin:ops");
        expect(r.status, `${path}?${q}`).toBe(400);
        expect(r.body.error.code).toBe("VALIDATION_ERROR");
        expect(r.body.error.message, q).toContain(field);
      }
    }
    expect(await m.db.getAccount("alice")).toEqual(before);
  });

  it("exports CSV: RFC 4180, the figures per currency, formulas made inert", async () => {
    const r = await call(`/admin/credits/revenue.csv?${range()}&interval=none&groupBy=account,spender`, "admin:ops");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe("text/csv; charset=utf-8; header=present");
    expect(r.headers.get("content-disposition")).toBe('attachment; filename="revenue.csv"');
    expect(r.headers.get("cache-control")).toBe("no-store");
    const lines = r.text.split("\r\n");
    expect(lines[0]).toBe(
      "start,end,currency,account,spender,catchUpThrough,deferredStartMinor,paidMinor,recognizedMinor,breakageMinor,refundsMinor,deferredEndMinor,unbilledCredits",
    );
    expect(lines.at(-1)).toBe("");
    // The account id begins with `=`: prefixed with ', quoted (it holds quotes and a comma).
    expect(r.text).toContain(`,EUR,"'=HYPERLINK(""http://evil.example"",""x"")",`);
    expect(r.text).not.toMatch(/(^|,)"?=HYPERLINK/m);
    // The spender begins with `+`: prefixed with '.
    expect(r.text).toContain(`,'+cmd|' /C calc'!A0,,0,0,20,0,0,0,0\r\n`);
    expect(r.text).not.toMatch(/(^|,)\+cmd/m);
    expect(r.text).toMatch(/,USD,alice,key-ci,,0,0,200,0,0,0,0\r\n/);
  });

  it("groups by plan, in JSON and CSV: a subscription's credits under its plan, others under none", async () => {
    await m.subscriptions.createPlan({
      id: "team",
      name: "Team",
      creditsPerPeriod: 1000,
      price: 4900,
      currency: "USD",
      billingPeriod: "monthly",
    });
    await m.subscriptions.subscribe("bob", "team");
    const r = await call(`/admin/credits/revenue?${range()}&interval=none&groupBy=account,plan`, "admin:ops");
    expect(r.status).toBe(200);
    expect(r.body.rows).toContainEqual(
      expect.objectContaining({ account: "bob", plan: "team", currency: "USD", paid: 4900, deferredEnd: 4900 }),
    );
    expect(r.body.rows).toContainEqual(
      expect.objectContaining({ account: "alice", plan: null, currency: "USD", paid: 1_999 }),
    );
    const csv = await call(`/admin/credits/revenue.csv?${range()}&interval=none&groupBy=plan`, "admin:ops");
    expect(csv.status).toBe(200);
    const lines = csv.text.split("\r\n");
    expect(lines[0]).toBe(
      "start,end,currency,plan,catchUpThrough,deferredStartMinor,paidMinor,recognizedMinor,breakageMinor,refundsMinor,deferredEndMinor,unbilledCredits",
    );
    expect(csv.text).toMatch(/,USD,team,,0,4900,0,0,0,4900,0\r\n/);
    expect(csv.text).toMatch(/,USD,,,0,1999,200,0,0,1799,0\r\n/);
  });

  it("groups by unit: each row names its unit, each unit's unbilled credits on its own row, in JSON and CSV", async () => {
    // 5 images at 10 cents, 8 used: 5 paid, 3 past the balance (images may go 3 into debt).
    const u = await createCreditManager({ clock: () => new Date(clock.t), overdraftLimits: { images: 3 } });
    try {
      await u.credits.addCredits("carol", 5, { unit: "images", costBasis: { perCredit: "10", currency: "USD" } });
      await u.credits.deductCreditsAfterService("carol", 8, { unit: "images" });
      const h = createCreditHandler(u, { authenticate });
      const r = await caller(h)(`/admin/credits/revenue?${range()}&interval=none&groupBy=unit`, "admin:ops");
      expect(r.status).toBe(200);
      expect(
        r.body.rows.map((x: Record<string, unknown>) => [x.currency, x.unit, x.paid, x.recognized, x.unbilledCredits]),
      ).toEqual([
        ["USD", "images", 50, 50, 0],
        [null, "images", 0, 0, 3],
      ]);
      const csv = await caller(h)(
        `/admin/credits/revenue.csv?${range()}&interval=none&groupBy=account,unit`,
        "admin:ops",
      );
      expect(csv.status).toBe(200);
      const lines = csv.text.split("\r\n");
      expect(lines[0]).toBe(
        "start,end,currency,account,unit,catchUpThrough,deferredStartMinor,paidMinor,recognizedMinor,breakageMinor,refundsMinor,deferredEndMinor,unbilledCredits",
      );
      expect(lines.slice(1, -1).map((l) => l.split(",").slice(2).join(","))).toEqual([
        "USD,carol,images,,0,50,50,0,0,0,0",
        ",carol,images,,0,0,0,0,0,0,3",
      ]);
    } finally {
      await u.close();
    }
  });

  it("answers at most `limit` rows, says when it left rows off, and reads no window after now's", async () => {
    const q = `${range()}&interval=day&groupBy=account`;
    const all = await call(`/admin/credits/revenue?${q}`, "admin:ops");
    expect(all.body.truncated).toBe(false);
    expect(all.body.rows.length).toBeGreaterThan(1);
    const one = await call(`/admin/credits/revenue?${q}&limit=1`, "admin:ops");
    expect(one.body).toEqual({ ...all.body, rows: all.body.rows.slice(0, 1), truncated: true });
    const csv = await call(`/admin/credits/revenue.csv?${q}&limit=1`, "admin:ops");
    expect(csv.headers.get("x-revenue-truncated")).toBe("true");
    expect(csv.text.split("\r\n")).toHaveLength(3); // the header, a row, and the last CRLF's empty rest
    expect((await call(`/admin/credits/revenue.csv?${q}`, "admin:ops")).headers.get("x-revenue-truncated")).toBe(null);
    for (const limit of ["0", "100001", "x"])
      expect((await call(`/admin/credits/revenue?${q}&limit=${limit}`, "admin:ops")).status, limit).toBe(400);
    // This month and years ahead, by month: one window, this month's.
    const monthStart = new Date(windowStart(clock.t, "month", "UTC")).toISOString();
    const ahead = await call(
      `/admin/credits/revenue?from=${encodeURIComponent(monthStart)}&to=2136-01-01T00:00:00Z&groupBy=account`,
      "admin:ops",
    );
    expect(ahead.status).toBe(200);
    const now = new Date(clock.t);
    const monthEnd = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString();
    expect(new Set(ahead.body.rows.map((r: { end: string }) => r.end))).toEqual(new Set([monthEnd]));
  });

  it("closes a period: POST /admin/credits/revenue/closes, then catch-up rows; the list; a close going back is a 400", async () => {
    const DAY = 86_400_000;
    const through = Math.floor(clock.t / DAY) * DAY;
    const c = await createCreditManager({ clock: () => new Date(clock.t) });
    const h = createCreditHandler(c, { authenticate });
    const post = (body: unknown, token = "admin:ops") =>
      h(
        new Request("http://localhost/admin/credits/revenue/closes", {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify(body),
        }),
      );
    try {
      await c.credits.addCredits("dana", 10, { costBasis: { perCredit: "1", currency: "USD" } });
      expect((await post({ through: new Date(through).toISOString() }, "dana")).status).toBe(403);
      const made = await post({ through: new Date(through).toISOString() });
      expect(made.status).toBe(201);
      expect(await made.json()).toEqual({
        through: new Date(through).toISOString(),
        closedAt: new Date(clock.t).toISOString(),
        accounts: 1,
      });
      const again = await post({ through: new Date(through - DAY).toISOString() });
      expect(again.status).toBe(400);
      expect(await again.text()).toContain("after the latest close");
      expect((await post({ through: "yesterday" })).status).toBe(400);
      const listed = await caller(h)("/admin/credits/revenue/closes", "admin:ops");
      expect(listed.body).toEqual({
        closes: [{ through: new Date(through).toISOString(), closedAt: new Date(clock.t).toISOString(), accounts: 1 }],
      });
      // Usage of an hour before the close, recorded after it: a catch-up row of the open day.
      await c.credits.deductCreditsAfterService("dana", 4, { occurredAt: new Date(through - 3_600_000) });
      const day = `from=${new Date(through).toISOString()}&to=${new Date(through + DAY).toISOString()}&interval=none`;
      const r = await caller(h)(`/admin/credits/revenue?${day}`, "admin:ops");
      expect(r.body.rows.map((x: Record<string, unknown>) => [x.catchUpThrough, x.recognized])).toEqual([
        [null, 0],
        [new Date(through).toISOString(), 4],
      ]);
      const csv = await caller(h)(`/admin/credits/revenue.csv?${day}`, "admin:ops");
      expect(csv.text.split("\r\n")[2]).toBe(
        `${new Date(through).toISOString()},${new Date(through + DAY).toISOString()},USD,${new Date(through).toISOString()},0,0,4,0,0,0,0`,
      );
    } finally {
      await c.close();
    }
  });

  it("is in the OpenAPI document, CSV included, and the document stays valid", async () => {
    const doc = (await call("/credits/openapi.json")).body;
    expect((await new Validator().validate(doc)).valid).toBe(true);
    expect(doc.paths["/admin/credits/revenue"].get.operationId).toBe("adminGetRevenue");
    expect(doc.paths["/admin/credits/revenue/closes"].post.operationId).toBe("adminClosePeriod");
    expect(doc.paths["/admin/credits/revenue/closes"].get.operationId).toBe("adminListPeriodCloses");
    expect(Object.keys(doc.paths["/admin/credits/revenue.csv"].get.responses["200"].content)).toEqual(["text/csv"]);
    expect(doc.paths["/admin/credits/revenue"].get.parameters.map((p: { name: string }) => p.name)).toEqual([
      "from",
      "to",
      "interval",
      "timeZone",
      "groupBy",
      "account",
      "limit",
    ]);
  });
});
