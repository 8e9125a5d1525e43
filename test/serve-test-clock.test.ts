// `serve` on a test clock (docs/service.md, "A test clock in staging"): CREDIT_TEST_CLOCK builds the
// manager on a clock that moves only by POST /admin/test-clock/advance, admins only; without it the
// routes do not exist; with a production marker it is refused before anything opens.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { pino } from "pino";
import { runCli } from "../src/cli/run.js";
import { createCreditHandler } from "../src/http/index.js";
import { ConfigurationError, createCreditManager } from "../src/index.js";
import { serveSettings } from "../src/serve/settings.js";
import { serveTestClock } from "../src/serve/test-clock.js";
import type { CreditWorker } from "../src/worker/index.js";
import { call, keys, startServe } from "./serve-process.js";

const DAY = 86_400_000;
/** The clock's start: now, to the minute (every date here is relative to it). */
const START = Math.floor(Date.now() / 60_000) * 60_000;
const iso = (ms: number) => new Date(ms).toISOString();
const dir = mkdtempSync(join(tmpdir(), "cm-serve-test-clock-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("CREDIT_TEST_CLOCK's setting", () => {
  it("takes now or an ISO 8601 date-time; refuses anything else, and production markers, with a ConfigurationError", () => {
    expect(serveSettings({}, {}).CREDIT_TEST_CLOCK).toBeUndefined();
    expect(serveSettings({}, { CREDIT_TEST_CLOCK: "now" }).CREDIT_TEST_CLOCK).toBe("now");
    expect(serveSettings({}, { CREDIT_TEST_CLOCK: iso(START), NODE_ENV: "staging" }).CREDIT_TEST_CLOCK).toBe(
      iso(START),
    );
    for (const bad of ["tomorrow", "2030-01-01", "2030-01-01T00:00:00"])
      expect(() => serveSettings({}, { CREDIT_TEST_CLOCK: bad })).toThrow(/CREDIT_TEST_CLOCK must be now or an ISO/);
    const refused = (env: Record<string, string>) => () => serveSettings({}, { CREDIT_TEST_CLOCK: "now", ...env });
    expect(refused({ NODE_ENV: "production" })).toThrow(ConfigurationError);
    expect(refused({ NODE_ENV: "production" })).toThrow(/refused with NODE_ENV=production/);
    expect(refused({ STRIPE_SECRET_KEY: "sk_live_abc" })).toThrow(/a live STRIPE_SECRET_KEY/);
    expect(refused({ RAZORPAY_KEY_ID: "rzp_live_abc" })).toThrow(/a live RAZORPAY_KEY_ID/);
    // Test keys are no production marker; NODE_ENV=production without the test clock changes nothing.
    expect(serveSettings({}, { CREDIT_TEST_CLOCK: "now", STRIPE_SECRET_KEY: "sk_test_abc" }).CREDIT_TEST_CLOCK).toBe(
      "now",
    );
    expect(serveSettings({}, { NODE_ENV: "production" }).CREDIT_TEST_CLOCK).toBeUndefined();
  });

  it("serve exits 2, opening nothing, for a production marker, a bad or a blank value", async () => {
    const serve = async (env: Record<string, string>) => {
      let stderr = "";
      const code = await runCli(
        ["serve", "--port", "0"],
        { stdout: () => {}, stderr: (t) => (stderr += t) },
        { env: { CREDIT_SQLITE_PATH: join(dir, "refused.sqlite"), ...env } },
      );
      return { code, stderr };
    };
    const production = await serve({ CREDIT_TEST_CLOCK: "now", NODE_ENV: "production" });
    expect(production.code).toBe(2);
    expect(production.stderr).toMatch(/CREDIT_TEST_CLOCK simulates time, for tests and staging only/);
    expect((await serve({ CREDIT_TEST_CLOCK: "soon" })).code).toBe(2);
    const blank = await serve({ CREDIT_TEST_CLOCK: " " });
    expect(blank.code).toBe(2);
    expect(blank.stderr).toMatch(/CREDIT_TEST_CLOCK is set but blank/);
  });
});

describe("serve with CREDIT_TEST_CLOCK", () => {
  it("answers the clock and moves it forward for admins only, each stop reported; backwards and too far are 422 and move nothing", async () => {
    const env = { CREDIT_SQLITE_PATH: join(dir, "on.sqlite"), CREDIT_KEY_CACHE_MS: "0" };
    const admin = (await keys(["create", "--role", "admin"], env)).stdout.trim();
    const user = (await keys(["create", "--role", "user:bob"], env)).stdout.trim();
    const s = await startServe({ ...env, CREDIT_TEST_CLOCK: iso(START) });
    try {
      // Said loudly at the start, and in the serving line.
      expect(s.lines.find((l) => l.msg === "serving")?.testClock).toBe(iso(START));
      const warning = s.lines.find((l) => l.msg.startsWith("TIME IS SIMULATED"));
      expect(warning).toMatchObject({ level: 40, testClock: iso(START) });

      expect((await call(s, "GET", "/admin/test-clock")).status).toBe(401);
      expect((await call(s, "GET", "/admin/test-clock", user)).status).toBe(403);
      expect((await call(s, "POST", "/admin/test-clock/advance", undefined, { to: iso(START + DAY) })).status).toBe(
        401,
      );
      const byUser = await call(s, "POST", "/admin/test-clock/advance", user, { to: iso(START + DAY) });
      expect(byUser.status).toBe(403);
      expect(byUser.body.error?.code).toBe("FORBIDDEN");
      const clock = await call(s, "GET", "/admin/test-clock", admin);
      expect(clock.status).toBe(200);
      expect(clock.body).toEqual({ now: iso(START), start: iso(START), status: "ready" });

      // What the API writes is dated on the clock.
      const added = await call(s, "POST", "/admin/credits/users/bob/add", admin, {
        amount: 50,
        expiresAt: iso(START + 10 * DAY),
      });
      expect(added.status, JSON.stringify(added.body)).toBe(201);
      expect(added.body.createdAt).toBe(iso(START));

      const moved = await call(s, "POST", "/admin/test-clock/advance", admin, { to: iso(START + 20 * DAY) });
      expect(moved.status, JSON.stringify(moved.body)).toBe(200);
      const body = moved.body as unknown as {
        from: string;
        now: string;
        steps: {
          at: string;
          accounts: string[];
          entries: { type: string; amount: number; createdAt: string }[];
          rounds: { ok: boolean }[];
        }[];
      };
      expect(body.from).toBe(iso(START));
      expect(body.now).toBe(iso(START + 20 * DAY));
      expect(body.steps.map((x) => x.at)).toEqual([iso(START + 10 * DAY), iso(START + 20 * DAY)]);
      expect(body.steps[0]!.accounts).toEqual(["bob"]);
      expect(body.steps[0]!.entries.map((e) => [e.type, e.amount, e.createdAt])).toEqual([
        ["expire", 50, iso(START + 10 * DAY)],
      ]);
      expect(body.steps[0]!.rounds.length).toBeGreaterThan(0);
      expect(body.steps[0]!.rounds.every((r) => r.ok)).toBe(true);
      expect(body.steps[1]!.entries).toEqual([]);
      expect((await call(s, "GET", "/admin/credits/users/bob/balance", admin)).body).toMatchObject({ balance: 0 });
      expect((await call(s, "GET", "/admin/test-clock", admin)).body).toMatchObject({ now: iso(START + 20 * DAY) });
      expect(s.lines.find((l) => l.msg.startsWith("test clock advanced"))).toMatchObject({
        level: 40,
        from: iso(START),
        to: iso(START + 20 * DAY),
        steps: 2,
      });

      // Forward only, at most 731 days at once: a 422 that moves nothing.
      const back = await call(s, "POST", "/admin/test-clock/advance", admin, { to: iso(START + 19 * DAY) });
      expect(back.status).toBe(422);
      expect(back.body.error?.code).toBe("RULE_VIOLATION");
      expect(JSON.stringify(back.body)).toContain("only moves forward");
      const far = await call(s, "POST", "/admin/test-clock/advance", admin, { to: iso(START + 752 * DAY) });
      expect(far.status).toBe(422);
      expect(far.body.error?.code).toBe("RULE_VIOLATION");
      expect(JSON.stringify(far.body)).toContain("at most 731 days");
      const notDate = await call(s, "POST", "/admin/test-clock/advance", admin, { to: "next week" });
      expect(notDate.status).toBe(400);
      expect(notDate.body.error?.code).toBe("VALIDATION_ERROR");
      expect((await call(s, "GET", "/admin/test-clock", admin)).body).toMatchObject({ now: iso(START + 20 * DAY) });

      const paths = Object.keys(
        ((await call(s, "GET", "/credits/openapi.json")).body as { paths: Record<string, unknown> }).paths,
      );
      expect(paths).toEqual(expect.arrayContaining(["/admin/test-clock", "/admin/test-clock/advance"]));
    } finally {
      await s.stop();
    }
  }, 120_000);

  it("with --worker: the worker's settings at each stop, every stop's expiry reported, its rounds running again after", async () => {
    const env = { CREDIT_SQLITE_PATH: join(dir, "worker.sqlite"), CREDIT_KEY_CACHE_MS: "0" };
    const admin = (await keys(["create", "--role", "admin"], env)).stdout.trim();
    const s = await startServe({ ...env, CREDIT_TEST_CLOCK: iso(START), CREDIT_WORKER_JOBS_EVERY: "10ms" }, [
      "--worker",
    ]);
    try {
      for (let h = 1; h <= 10; h++) {
        const added = await call(s, "POST", "/admin/credits/users/carol/add", admin, {
          amount: 1,
          expiresAt: iso(START + h * 3_600_000),
        });
        expect(added.status).toBe(201);
      }
      const moved = await call(s, "POST", "/admin/test-clock/advance", admin, { to: iso(START + DAY) });
      expect(moved.status, JSON.stringify(moved.body).slice(0, 500)).toBe(200);
      const steps = (moved.body as unknown as { steps: { accounts: string[]; entries: { type: string }[] }[] }).steps;
      expect(steps).toHaveLength(11);
      for (const step of steps.slice(0, 10)) {
        expect(step.accounts).toEqual(["carol"]);
        expect(step.entries.map((e) => e.type)).toEqual(["expire"]);
      }
      // --worker's own rounds run again after the advance (their log lines go on).
      await new Promise((r) => setTimeout(r, 200));
      const rounds = s.lines.filter((l) => l.msg.includes("round")).length;
      const end = Date.now() + 10_000;
      while (s.lines.filter((l) => l.msg.includes("round")).length === rounds && Date.now() < end)
        await new Promise((r) => setTimeout(r, 20));
      expect(s.lines.filter((l) => l.msg.includes("round")).length).toBeGreaterThan(rounds);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  }, 120_000);

  it("without CREDIT_TEST_CLOCK the routes do not exist: 404, and none in the OpenAPI document", async () => {
    const env = { CREDIT_SQLITE_PATH: join(dir, "off.sqlite") };
    const admin = (await keys(["create", "--role", "admin"], env)).stdout.trim();
    const s = await startServe(env);
    try {
      expect(s.lines.find((l) => l.msg === "serving")?.testClock).toBeNull();
      expect(s.lines.some((l) => l.msg.startsWith("TIME IS SIMULATED"))).toBe(false);
      const get = await call(s, "GET", "/admin/test-clock", admin);
      expect(get.status).toBe(404);
      expect(get.body.error?.code).toBe("NOT_FOUND");
      expect((await call(s, "POST", "/admin/test-clock/advance", admin, { to: iso(START + DAY) })).status).toBe(404);
      const paths = Object.keys(
        ((await call(s, "GET", "/credits/openapi.json")).body as { paths: Record<string, unknown> }).paths,
      );
      expect(paths.filter((p) => p.startsWith("/admin/test-clock"))).toEqual([]);
    } finally {
      await s.stop();
    }
  }, 120_000);
});

describe("serve's test clock routes", () => {
  it("pause --worker's rounds while the clock moves and start them again after, not once the service stops; a second advance meanwhile is a 409", async () => {
    const tc = serveTestClock(new Date(START), pino({ level: "silent" }), undefined);
    const m = await createCreditManager({ clock: tc.clock.now });
    tc.clock.attach(m);
    const calls: string[] = [];
    tc.rounds = {
      stop: async () => {
        calls.push(`stop ${tc.clock.status}`);
      },
      start: () => calls.push(`start ${tc.clock.status}`),
    } as unknown as CreditWorker;
    const handler = createCreditHandler(m, { authenticate: () => ({ userId: "ops", admin: true }), routes: tc.routes });
    const advance = (to: number) =>
      handler(
        new Request("http://x/admin/test-clock/advance", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ to: iso(to) }),
        }),
      );
    try {
      await m.credits.addCredits("erin", 3, { expiresAt: new Date(START + 3_600_000) });
      const [a, b] = await Promise.all([advance(START + DAY), advance(START + 2 * DAY)]);
      expect([a.status, b.status].sort()).toEqual([200, 409]);
      const conflict = (await (a.status === 409 ? a : b).json()) as { error: { code: string } };
      expect(conflict.error.code).toBe("CONFLICT");
      const done = (await (a.status === 200 ? a : b).json()) as { steps: { entries: { type: string }[] }[] };
      expect(done.steps.map((x) => x.entries.map((e) => e.type))).toEqual([["expire"], []]);
      // Stopped before the clock moved, started once it stood again; the 409 touched neither.
      expect(calls).toEqual(["stop ready", "start ready"]);
      expect(tc.clock.now().getTime()).toBe(START + (a.status === 200 ? DAY : 2 * DAY));
      // A stopping service sets rounds to null: an advance then starts nothing.
      const rounds = tc.rounds;
      tc.rounds = null;
      expect((await advance(START + 3 * DAY)).status).toBe(200);
      expect(calls).toHaveLength(2);
      tc.rounds = rounds;
      // A refused advance (backwards) starts the rounds again too.
      expect((await advance(START)).status).toBe(422);
      expect(calls.slice(2)).toEqual(["stop ready", "start ready"]);
    } finally {
      await m.close();
    }
  });
});
