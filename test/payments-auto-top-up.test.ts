/**
 * Auto top-up end to end against a fake Stripe API on loopback (docs/promos-and-payments.md, "Auto
 * top-up"): a spend crosses the threshold, the outbox dispatcher charges the saved card with an
 * off-session PaymentIntent, and the credits land once — with scripted outcomes: success, declines,
 * requires_action, a time-out whose charge went through, 500 then success, 429, and the
 * `payment_intent.succeeded` webhook before and after the synchronous answer, replayed 20 times.
 * The fake keeps Stripe's idempotency: a repeated `Idempotency-Key` gets the first answer back.
 * And `credit-management worker --once` when it does not deliver (CREDIT_NOTIFICATIONS=record or
 * off) on SQLite, PostgreSQL and MongoDB: it charges the top-ups asked for itself, two workers at
 * once charge once, a decline and a 5xx take their paths, no Stripe key is said at start.
 */
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import pg from "pg";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { runCli } from "../src/cli/run.js";
import { createDbManagerFromEnv } from "../src/from-env.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import { createCreditManager, InMemoryNotificationQueue, StripeProvider, type CreditManager } from "../src/index.js";
import { cli as serveCli, startServe } from "./serve-process.js";

const WHSEC = "whsec_auto_top_up";
const T0 = Date.now();

type Outcome =
  | "succeeded"
  | "processing"
  | "requires_action"
  | "authentication_required"
  | "500"
  | "429"
  | "slow"
  | "held"
  | `decline:${string}`;

interface Seen {
  idem: string | undefined;
  auth: string | undefined;
  version: string | undefined;
  type: string | undefined;
  form: URLSearchParams;
}

const seen: Seen[] = [];
let script: Outcome[] = [];
/** `held`: the charge is made (and kept under its key) and its answer waits for this gate. */
let gate: Promise<void> = Promise.resolve();
/** Stripe's idempotency: the answer stored per key. */
const saved = new Map<string, { status: number; json: unknown }>();
/** PaymentIntents created (one per key that reached a final answer). */
let created = 0;
let server: Server;
let baseUrl: string;

const read = (req: IncomingMessage) =>
  new Promise<string>((resolve) => {
    let b = "";
    req.on("data", (c: Buffer) => (b += c.toString("utf8")));
    req.on("end", () => resolve(b));
  });

function intent(form: URLSearchParams, status: string, extra: Record<string, unknown> = {}) {
  created++;
  return {
    id: `pi_${created}`,
    object: "payment_intent",
    amount: Number(form.get("amount")),
    amount_received: status === "succeeded" ? Number(form.get("amount")) : 0,
    currency: form.get("currency"),
    customer: form.get("customer"),
    payment_method: form.get("payment_method"),
    metadata: {
      credit_payment_id: form.get("metadata[credit_payment_id]"),
      user_id: form.get("metadata[user_id]"),
      credits: form.get("metadata[credits]"),
    },
    status,
    ...extra,
  };
}

function answer(outcome: Outcome, form: URLSearchParams): { status: number; json: unknown; store: boolean } {
  if (outcome === "500") return { status: 500, json: { error: { message: "boom", type: "api_error" } }, store: false };
  if (outcome === "429") return { status: 429, json: { error: { message: "rate", type: "rate_limit" } }, store: false };
  if (outcome === "succeeded" || outcome === "slow" || outcome === "held" || outcome === "processing")
    return { status: 200, json: intent(form, outcome === "processing" ? "processing" : "succeeded"), store: true };
  if (outcome === "requires_action") {
    const next = { type: "use_stripe_sdk", use_stripe_sdk: { type: "three_d_secure_redirect" } };
    return { status: 200, json: intent(form, "requires_action", { next_action: next }), store: true };
  }
  const code = outcome === "authentication_required" ? "authentication_required" : outcome.slice("decline:".length);
  const pi = intent(form, "requires_payment_method", { last_payment_error: { code: "card_declined" } });
  return {
    status: 402,
    json: {
      error: {
        type: "card_error",
        code: code === "authentication_required" ? code : "card_declined",
        ...(code === "authentication_required" ? {} : { decline_code: code }),
        message: `Your card was declined (${code}).`,
        payment_intent: pi,
      },
    },
    store: true,
  };
}

beforeAll(async () => {
  server = createServer((req, res) => {
    void read(req).then(async (body) => {
      const form = new URLSearchParams(body);
      const h = (n: string) => req.headers[n] as string | undefined;
      seen.push({
        idem: h("idempotency-key"),
        auth: h("authorization"),
        version: h("stripe-version"),
        type: h("content-type"),
        form,
      });
      const key = h("idempotency-key");
      const first = key === undefined ? undefined : saved.get(key);
      let a: { status: number; json: unknown; store: boolean };
      if (req.method !== "POST" || req.url !== "/v1/payment_intents") {
        a = { status: 404, json: { error: { message: "no route" } }, store: false };
      } else if (first !== undefined) {
        a = { ...first, store: false };
      } else {
        const outcome = (script.length > 1 ? script.shift() : script[0]) ?? "succeeded";
        a = answer(outcome, form);
        if (a.store && key !== undefined) saved.set(key, { status: a.status, json: a.json });
        // The charge is made (and kept under its key), but the answer comes after the client gave up.
        if (outcome === "slow") await new Promise((r) => setTimeout(r, 600));
        if (outcome === "held") await gate;
      }
      if (!res.destroyed) {
        res.writeHead(a.status, { "content-type": "application/json" });
        res.end(JSON.stringify(a.json));
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // Warm the HTTP client, so the first test's charge is not the one that pays for it.
  await (await fetch(`${baseUrl}/warm`, { method: "POST" })).text();
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));
beforeEach(() => {
  seen.length = 0;
  saved.clear();
});

function sign(body: string, at: number) {
  const t = Math.floor(at / 1000);
  return { "stripe-signature": `t=${t},v1=${createHmac("sha256", WHSEC).update(`${t}.${body}`).digest("hex")}` };
}

async function setup(outcomes: Outcome[], rule: Record<string, unknown> = {}) {
  script = [...outcomes];
  const clock = { now: T0 };
  const queue = new InMemoryNotificationQueue();
  const m = await createCreditManager({
    db: new InMemoryDbManager(),
    clock: () => new Date(clock.now),
    queue,
    notifications: { backoffBaseMs: 1000, backoffMaxMs: 60_000 },
    payments: {
      providers: [
        new StripeProvider({
          secretKey: "sk_test_auto",
          webhookSecret: WHSEC,
          successUrl: "https://app.example.com/ok",
          cancelUrl: "https://app.example.com/cancel",
          baseUrl,
          timeoutMs: 300,
        }),
      ],
    },
  });
  await m.credits.addCredits("ada", 150);
  await m.payments.setAutoTopUp("ada", {
    below: 100,
    amount: 2000,
    provider: "stripe",
    customer: "cus_ada",
    paymentMethod: "pm_card_visa",
    currency: "usd",
    ...rule,
  });
  await m.credits.deductCredits("ada", 100); // 50: crosses
  const attempt = (await m.payments.getAutoTopUp("ada"))?.pending?.id as string;
  const available = async () => (await m.credits.getUserCreditsInfo("ada")).available;
  /** One dispatch round, then the clock past any backoff. */
  const dispatch = async () => {
    const r = await m.notifications.dispatchPending();
    clock.now += 120_000;
    return r;
  };
  const types = async () => (await m.notifications.list("ada")).map((n) => n.type);
  const webhook = async (type: string, pi: Record<string, unknown>) => {
    const body = JSON.stringify({ id: `evt_${Math.random()}`, type, data: { object: pi } });
    return m.payments.handleWebhook("stripe", body, sign(body, clock.now));
  };
  return { m, clock, queue, attempt, available, dispatch, types, webhook };
}

describe("auto top-up against a fake Stripe API", () => {
  it("sends an off-session, confirmed PaymentIntent for the saved card under the attempt's idempotency key", async () => {
    const { attempt, dispatch, available, queue, m } = await setup(["succeeded"]);
    expect(await available()).toBe(50);
    const r = await dispatch();
    expect(r.sent).toBeGreaterThanOrEqual(1);
    expect(await available()).toBe(2050);
    expect(seen).toHaveLength(1);
    const s = seen[0] as Seen;
    expect(s.idem).toBe(attempt);
    expect(s.auth).toBe("Bearer sk_test_auto");
    expect(s.type).toBe("application/x-www-form-urlencoded");
    expect(s.version).toMatch(/^\d{4}-\d{2}-\d{2}/);
    expect(Object.fromEntries(s.form)).toEqual({
      amount: "2000",
      currency: "usd",
      customer: "cus_ada",
      payment_method: "pm_card_visa",
      off_session: "true",
      confirm: "true",
      description: "Auto top-up: 2000 credits",
      "metadata[credit_payment_id]": attempt,
      "metadata[user_id]": "ada",
      "metadata[credits]": "2000",
      "metadata[auto_top_up]": "true",
    });
    // The request event reached the queue too (after the charge).
    expect(queue.messages.map((x) => x.type)).toContain("auto_top_up_requested");
    expect(await m.payments.getPayment("ada", attempt)).toMatchObject({
      status: "paid",
      providerPaymentId: "pi_" + String(created),
    });
  });

  it("the webhook replayed 20 times after the synchronous answer: credited once", async () => {
    const { attempt, dispatch, available, webhook, m } = await setup(["succeeded"]);
    await dispatch();
    const p = await m.payments.getPayment("ada", attempt);
    const pi = {
      id: p.providerPaymentId,
      object: "payment_intent",
      amount: 2000,
      amount_received: 2000,
      currency: "usd",
      status: "succeeded",
      metadata: { credit_payment_id: attempt, user_id: "ada" },
    };
    for (let i = 0; i < 20; i++) expect((await webhook("payment_intent.succeeded", pi)).outcome).toBe("duplicate");
    expect(await available()).toBe(2050);
  });

  it("the webhook before the synchronous answer (the answer lost to a time-out): credited once, the retry finds it", async () => {
    const { attempt, dispatch, available, webhook, m } = await setup(["slow"]);
    const r = await dispatch(); // the client gives up after 300 ms; Stripe charged
    expect(r.retried).toBe(1);
    expect(await available()).toBe(50);
    const stored = saved.get(attempt)?.json as Record<string, unknown>;
    expect((await webhook("payment_intent.succeeded", stored)).outcome).toBe("credited");
    expect(await available()).toBe(2050);
    expect((await m.payments.getAutoTopUp("ada"))?.pending).toBeNull();
    // The retried row finds nothing in flight: no second charge.
    await dispatch();
    expect(seen.map((x) => x.idem)).toEqual([attempt]);
    expect(await available()).toBe(2050);
  });

  it("a time-out whose charge went through (no webhook): the retry under the same key credits it once", async () => {
    const { attempt, dispatch, available } = await setup(["slow"]);
    await dispatch();
    await new Promise((r) => setTimeout(r, 700)); // the fake finished its answer
    expect(await available()).toBe(50);
    await dispatch();
    expect(seen.map((x) => x.idem)).toEqual([attempt, attempt]);
    expect(created).toBeGreaterThan(0);
    expect(await available()).toBe(2050);
  });

  it.each([["500"], ["429"]] as const)("%s then success: retried with backoff under the same key", async (first) => {
    const { attempt, dispatch, available } = await setup([first, "succeeded"]);
    expect((await dispatch()).retried).toBe(1);
    expect(await available()).toBe(50);
    await dispatch();
    expect(seen.map((x) => x.idem)).toEqual([attempt, attempt]);
    expect(await available()).toBe(2050);
  });

  it.each([["insufficient_funds"], ["card_declined"], ["expired_card"], ["do_not_honor"], ["lost_card"]])(
    "declined (%s): auto_top_up_failed with the code, nothing credited",
    async (code) => {
      const { attempt, dispatch, available, types, m } = await setup([`decline:${code}`]);
      await dispatch();
      expect(await available()).toBe(50);
      const failed = (await m.notifications.list("ada")).find((n) => n.type === "auto_top_up_failed");
      expect(failed?.payload).toMatchObject({ attemptId: attempt, code, failures: 1 });
      expect(await types()).not.toContain("auto_top_up_disabled");
      expect(await m.payments.getAutoTopUp("ada")).toMatchObject({ pending: null, lastError: code, enabled: true });
      expect(await m.payments.getPayment("ada", attempt)).toMatchObject({ status: "failed" });
    },
  );

  it("three declines in a row disable the rule, and it says so", async () => {
    const { dispatch, available, types, m } = await setup(["decline:card_declined"]);
    await dispatch();
    for (let i = 0; i < 2; i++) {
      await m.credits.addCredits("ada", 100);
      await m.credits.deductCredits("ada", 100);
      await dispatch();
    }
    expect((await types()).filter((t) => t === "auto_top_up_failed")).toHaveLength(3);
    expect(await types()).toContain("auto_top_up_disabled");
    expect(await m.payments.getAutoTopUp("ada")).toMatchObject({ enabled: false, disabledReason: "max_failures" });
    await m.credits.addCredits("ada", 100);
    await m.credits.deductCredits("ada", 100);
    await dispatch();
    expect(seen).toHaveLength(3);
    expect(await available()).toBe(50);
  });

  it.each([["requires_action"], ["authentication_required"]] as const)(
    "%s: auto_top_up_action_required; the customer's confirmation (webhook) credits it",
    async (outcome) => {
      const { attempt, dispatch, available, webhook, m } = await setup([outcome]);
      await dispatch();
      const row = (await m.notifications.list("ada")).find((n) => n.type === "auto_top_up_action_required");
      expect(row?.payload).toMatchObject({ attemptId: attempt });
      expect(await available()).toBe(50);
      expect((await m.payments.getAutoTopUp("ada"))?.failures).toBe(0);
      const pi = {
        id: row?.payload.providerPaymentId,
        object: "payment_intent",
        amount: 2000,
        amount_received: 2000,
        currency: "usd",
        status: "succeeded",
        metadata: { credit_payment_id: attempt, user_id: "ada" },
      };
      expect((await webhook("payment_intent.succeeded", pi)).outcome).toBe("credited");
      expect(await available()).toBe(2050);
    },
  );

  it("processing: left in flight, the webhook credits it", async () => {
    const { attempt, dispatch, available, webhook, m } = await setup(["processing"]);
    await dispatch();
    expect(await available()).toBe(50);
    expect((await m.payments.getAutoTopUp("ada"))?.pending?.id).toBe(attempt);
    const stored = saved.get(attempt)?.json as Record<string, unknown>;
    const succeeded = { ...stored, status: "succeeded", amount_received: 2000 };
    expect((await webhook("payment_intent.succeeded", succeeded)).outcome).toBe("credited");
    expect(await available()).toBe(2050);
    expect((await m.payments.getAutoTopUp("ada"))?.pending).toBeNull();
  });
});

// ---- The worker when it does not deliver (docs/promos-and-payments.md, "Auto top-up"; docs/cli.md) ----

const pgUrl = process.env.CREDIT_PG_URL;
const mongoUri = process.env.CREDIT_MONGO_URI;
const dir = mkdtempSync(join(tmpdir(), "cm-atu-worker-"));
const schemas: string[] = [];
const mongoDbs: string[] = [];
const opened: CreditManager[] = [];
afterAll(async () => {
  for (const m of opened) await m.close().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
  if (pgUrl && schemas.length > 0) {
    const c = new pg.Client({ connectionString: pgUrl });
    await c.connect();
    for (const schema of schemas) await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await c.end();
  }
  if (mongoUri && mongoDbs.length > 0) {
    const c = new MongoClient(mongoUri);
    for (const name of mongoDbs) await c.db(name).dropDatabase();
    await c.close();
  }
});

const tag = () => randomUUID().replace(/-/g, "").slice(0, 10);
const workerStores: { name: string; skip: boolean; env: () => Record<string, string> }[] = [
  { name: "SQLite", skip: false, env: () => ({ CREDIT_SQLITE_PATH: join(dir, `${tag()}.db`) }) },
  {
    name: "PostgreSQL",
    skip: !pgUrl,
    env: () => {
      const schema = `cm_atu_worker_${tag()}`;
      schemas.push(schema);
      return { CREDIT_PG_URL: pgUrl as string, CREDIT_PG_SCHEMA: schema };
    },
  },
  {
    name: "MongoDB",
    skip: !mongoUri,
    env: () => {
      const name = `cm_atu_worker_${tag()}`;
      mongoDbs.push(name);
      return { CREDIT_MONGO_URI: mongoUri as string, CREDIT_MONGO_DB: name };
    },
  },
];

interface LogLine {
  level: number;
  msg: string;
  task?: string;
  [field: string]: unknown;
}

for (const store of workerStores) {
  // reason: PostgreSQL and MongoDB only with CREDIT_PG_URL / CREDIT_MONGO_URI (set by .ci/run)
  describe.skipIf(store.skip)(
    `credit-management worker charges auto top-ups without delivering (${store.name})`,
    () => {
      /** A store; your service's manager on it, which records events (record mode) and spends across `below`. */
      async function crossed(outcomes: Outcome[]) {
        script = [...outcomes];
        const env = store.env();
        const m = await createCreditManager({
          db: await createDbManagerFromEnv(env),
          notifications: { lowCredits: 500 },
          payments: {
            providers: [
              new StripeProvider({
                secretKey: "sk_test_auto",
                webhookSecret: WHSEC,
                successUrl: "https://app.example.com/ok",
                cancelUrl: "https://app.example.com/cancel",
                baseUrl,
              }),
            ],
          },
        });
        opened.push(m);
        await m.credits.addCredits("ada", 1000);
        await m.payments.setAutoTopUp("ada", {
          below: 100,
          amount: 2000,
          provider: "stripe",
          customer: "cus_ada",
          paymentMethod: "pm_card_visa",
          currency: "usd",
        });
        // 50: crosses low_credits (500) and the rule's 100 in one unit of work, low_credits first.
        await m.credits.deductCredits("ada", 950);
        const attempt = (await m.payments.getAutoTopUp("ada"))?.pending?.id as string;
        expect(attempt).toMatch(/^atu_/);
        const rows = async () => m.notifications.list("ada");
        expect((await rows()).map((r) => [r.type, r.status])).toEqual([
          ["low_credits", "pending"],
          ["auto_top_up_requested", "pending"],
        ]);
        const available = async () => (await m.credits.getUserCreditsInfo("ada")).available;
        return { m, env, attempt, rows, available };
      }

      /** `credit-management worker --once`, in this process, its log lines parsed. */
      async function worker(env: Record<string, string>, mode: "record" | "off", extra: Record<string, string> = {}) {
        let stdout = "";
        let stderr = "";
        const code = await runCli(
          ["worker", "--once"],
          { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) },
          {
            env: {
              ...env,
              CREDIT_NOTIFICATIONS: mode,
              STRIPE_SECRET_KEY: "sk_test_auto",
              APP_BASE_URL: "https://app.example.com",
              STRIPE_API_BASE_URL: baseUrl,
              ...extra,
            },
          },
        );
        const lines = stdout
          .split("\n")
          .filter((l) => l.trim() !== "")
          .map((l) => JSON.parse(l) as LogLine);
        return { code, lines, stderr, round: lines.find((l) => l.task === "top-ups") };
      }

      const charges = (attempt: string) => seen.filter((x) => x.idem === attempt);

      it("record: one --once run charges the top-up once (the attempt's Idempotency-Key) and credits it once; the row is settled, other rows left to your deliverer", async () => {
        const { env, attempt, rows, available, m } = await crossed(["succeeded"]);
        const w = await worker(env, "record");
        expect(w.code, w.stderr + JSON.stringify(w.lines)).toBe(0);
        expect(w.round).toMatchObject({ ok: true, claimed: 1, sent: 1, retried: 0, failed: 0 });
        expect(charges(attempt)).toHaveLength(1);
        expect(seen[0]?.auth).toBe("Bearer sk_test_auto");
        expect(await available()).toBe(2050);
        expect(await m.payments.getPayment("ada", attempt)).toMatchObject({ status: "paid", credits: 2000 });
        expect((await m.payments.getAutoTopUp("ada"))?.pending).toBeNull();
        const after = await rows();
        expect(after.find((r) => r.type === "auto_top_up_requested")).toMatchObject({ status: "sent", attempts: 1 });
        // Not delivered anywhere: the worker in record mode delivers nothing; your services deliver the rest.
        expect(after.find((r) => r.type === "low_credits")?.status).toBe("pending");
        // A second run finds nothing to charge.
        const again = await worker(env, "record");
        expect(again.code).toBe(0);
        expect(again.round).toMatchObject({ claimed: 0 });
        expect(charges(attempt)).toHaveLength(1);
        expect(await available()).toBe(2050);
        expect((await m.credits.audit("ada")).ok).toBe(true);
      });

      it("off: two workers at once charge once, credited once: the second runs whole while the first's charge is in flight, and leaves the claimed row alone", async () => {
        const { env, attempt, available, rows } = await crossed(["held"]);
        let open = () => {};
        gate = new Promise<void>((r) => (open = r));
        const first = worker(env, "off");
        for (let i = 0; i < 400 && charges(attempt).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
        expect(charges(attempt)).toHaveLength(1); // Stripe charged; the first worker waits for the answer
        const second = await worker(env, "off");
        expect(second.code).toBe(0);
        expect(second.round).toMatchObject({ ok: true, claimed: 0 });
        open();
        const done = await first;
        expect(done.code).toBe(0);
        expect(done.round).toMatchObject({ claimed: 1, sent: 1 });
        expect(charges(attempt)).toHaveLength(1);
        expect(await available()).toBe(2050);
        expect((await rows()).find((r) => r.type === "auto_top_up_requested")?.status).toBe("sent");
      });

      it("a declined card: the payment failed, auto_top_up_failed with the provider's code, the rule's failures; the request row settled", async () => {
        const { env, attempt, rows, available, m } = await crossed(["decline:insufficient_funds"]);
        const w = await worker(env, "record");
        expect(w.code).toBe(0);
        expect(w.round).toMatchObject({ claimed: 1, sent: 1 });
        expect(charges(attempt)).toHaveLength(1);
        expect(await available()).toBe(50);
        expect((await m.payments.getPayment("ada", attempt)).status).toBe("failed");
        expect(await m.payments.getAutoTopUp("ada")).toMatchObject({
          pending: null,
          failures: 1,
          lastError: "insufficient_funds",
        });
        const after = await rows();
        expect(after.find((r) => r.type === "auto_top_up_failed")).toMatchObject({
          status: "pending",
          payload: { attemptId: attempt, code: "insufficient_funds", failures: 1 },
        });
        expect(after.find((r) => r.type === "auto_top_up_requested")?.status).toBe("sent");
      });

      it("Stripe 500: the round fails (exit 1), the row waits out the outbox's backoff; the next run charges under the same key, once", async () => {
        const { env, attempt, rows, available } = await crossed(["500", "succeeded"]);
        const first = await worker(env, "record");
        expect(first.code).toBe(1);
        expect(first.round).toMatchObject({ ok: false, claimed: 1, retried: 1 });
        const row = (await rows()).find((r) => r.type === "auto_top_up_requested");
        expect(row).toMatchObject({ status: "pending", attempts: 1 });
        expect(row?.lastError).toMatch(/500|boom/);
        // The backoff: 1 s (±20%) after the failure.
        const due = (row?.nextAttemptAt as Date).getTime();
        expect(due - Date.now()).toBeGreaterThan(0);
        expect(due - Date.now()).toBeLessThan(1300);
        await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now()) + 50));
        const second = await worker(env, "record");
        expect(second.code).toBe(0);
        expect(second.round).toMatchObject({ claimed: 1, sent: 1 });
        expect(charges(attempt)).toHaveLength(2);
        expect(await available()).toBe(2050);
      });

      it("no STRIPE_SECRET_KEY: a warning at start naming the fix; no top-ups task; the row waits untouched", async () => {
        const { env, attempt, rows, available } = await crossed(["succeeded"]);
        const w = await worker(env, "record", { STRIPE_SECRET_KEY: "" });
        expect(w.code).toBe(0);
        expect(w.round).toBeUndefined();
        expect(w.lines.find((l) => l.msg === "worker started")).toMatchObject({ topUps: "nobody" });
        const warning = w.lines.find((l) => l.level === 40 && /auto top-ups are waiting/.test(l.msg));
        expect(warning?.msg).toMatch(/no payment provider can charge a saved card/);
        expect(String(warning?.fix)).toMatch(/STRIPE_SECRET_KEY/);
        expect(charges(attempt)).toHaveLength(0);
        expect(await available()).toBe(50);
        expect((await rows()).find((r) => r.type === "auto_top_up_requested")).toMatchObject({
          status: "pending",
          attempts: 0,
        });
        // With the key, the next run charges it.
        const fixed = await worker(env, "record");
        expect(fixed.round).toMatchObject({ claimed: 1, sent: 1 });
        expect(await available()).toBe(2050);
      });
    },
  );
}

// ---- The rate: the worker and serve charge and credit as the application does --------------------

/**
 * @see issue 60 (item 1): `credit-management worker` credited one credit per cent whatever the
 * application's `creditsPerUnit` ({ USD: 2 } and a 500-cent rule: 500 credits instead of 1,000).
 */
describe("the application's rate: its own call, the worker and serve --worker credit the same (SQLite)", () => {
  const RULE = {
    below: 100,
    provider: "stripe",
    customer: "cus_ada",
    paymentMethod: "pm_card_visa",
    currency: "usd",
  };

  /** Your service on a fresh SQLite store, with `creditsPerUnit: { USD: 2 }`: ada set up and crossed. */
  async function crossed(rule: Record<string, unknown>) {
    script = ["succeeded"];
    const env = { CREDIT_SQLITE_PATH: join(dir, `rate-${tag()}.db`) };
    const m = await createCreditManager({
      db: await createDbManagerFromEnv(env),
      payments: {
        creditsPerUnit: { USD: 2 },
        providers: [
          new StripeProvider({
            secretKey: "sk_test_auto",
            webhookSecret: WHSEC,
            successUrl: "https://app.example.com/ok",
            cancelUrl: "https://app.example.com/cancel",
            baseUrl,
          }),
        ],
      },
    });
    opened.push(m);
    await m.credits.addCredits("ada", 1000);
    await m.payments.setAutoTopUp("ada", { ...RULE, ...rule });
    await m.credits.deductCredits("ada", 950); // 50: crosses 100
    const attempt = (await m.payments.getAutoTopUp("ada"))?.pending?.id as string;
    expect(attempt).toMatch(/^atu_/);
    const available = async () => (await m.credits.getUserCreditsInfo("ada")).available;
    const charged = () => seen.filter((x) => x.idem === attempt).map((x) => Number(x.form.get("amount")));
    return { m, env, attempt, available, charged };
  }

  async function worker(env: Record<string, string>, extra: Record<string, string>, args: string[] = []) {
    let stdout = "";
    let stderr = "";
    const code = await runCli(
      ["worker", "--once", ...args],
      { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) },
      {
        env: {
          ...env,
          CREDIT_NOTIFICATIONS: "off",
          STRIPE_SECRET_KEY: "sk_test_auto",
          APP_BASE_URL: "https://app.example.com",
          STRIPE_API_BASE_URL: baseUrl,
          ...extra,
        },
      },
    );
    const lines = stdout
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l) as LogLine);
    return { code, stderr, lines, round: lines.find((l) => l.task === "top-ups") };
  }

  it("a 500-cent rule at { USD: 2 }: 1,000 credits from the application's processAutoTopUp, the worker and serve --worker", async () => {
    // The application's own call.
    const app = await crossed({ amount: 500 });
    expect(await app.m.payments.processAutoTopUp("ada")).toMatchObject({ outcome: "credited" });
    expect(app.charged()).toEqual([500]);
    expect(await app.available()).toBe(1050);
    expect(await app.m.payments.getPayment("ada", app.attempt)).toMatchObject({
      amount: 500,
      credits: 1000,
      description: "Auto top-up: 1000 credits",
    });

    // The worker, given the rate as a variable, then as the flag (which wins over the variable).
    for (const [extra, args] of [
      [{ CREDIT_CREDITS_PER_UNIT: "USD=2" }, []],
      [{ CREDIT_CREDITS_PER_UNIT: "USD=85" }, ["--credits-per-unit", "usd=2,INR=1"]],
    ] as const) {
      const w = await crossed({ amount: 500 });
      const r = await worker(w.env, extra, [...args]);
      expect(r.code, r.stderr + JSON.stringify(r.lines)).toBe(0);
      expect(r.round).toMatchObject({ ok: true, claimed: 1, sent: 1 });
      expect(w.charged()).toEqual([500]);
      expect(await w.available()).toBe(1050);
      expect(await w.m.payments.getPayment("ada", w.attempt)).toMatchObject({ amount: 500, credits: 1000 });
      expect((await w.m.credits.audit("ada")).ok).toBe(true);
    }

    // serve --worker, its top-ups task charging on its interval.
    const s = await crossed({ amount: 500 });
    const served = await startServe(
      {
        ...s.env,
        CREDIT_CREDITS_PER_UNIT: "USD=2",
        CREDIT_WORKER_JOBS_EVERY: "off",
        CREDIT_WORKER_TOP_UP_EVERY: "100ms",
        STRIPE_SECRET_KEY: "sk_test_auto",
        APP_BASE_URL: "https://app.example.com",
        STRIPE_API_BASE_URL: baseUrl,
      },
      ["--worker"],
    );
    try {
      await expect.poll(() => s.available(), { timeout: 30_000 }).toBe(1050);
    } finally {
      expect(await served.stop()).toBe(0);
    }
    expect(s.charged()).toEqual([500]);
    expect(await s.m.payments.getPayment("ada", s.attempt)).toMatchObject({ amount: 500, credits: 1000 });
  }, 90_000);

  it("toBalance: the worker charges what buys the credits back to the balance at the application's rate", async () => {
    const w = await crossed({ toBalance: 1000 });
    const r = await worker(w.env, { CREDIT_CREDITS_PER_UNIT: "USD=2" });
    expect(r.code, r.stderr).toBe(0);
    // 950 credits to bring 50 back to 1,000: 475 cents at 2 credits a cent (950 cents at the default rate).
    expect(w.charged()).toEqual([475]);
    expect(await w.available()).toBe(1000);
    expect(await w.m.payments.getPayment("ada", w.attempt)).toMatchObject({ amount: 475, credits: 950 });
  });

  it("a worker whose rates do not price the rule's currency charges nothing: the round fails, the top-up waits", async () => {
    const w = await crossed({ amount: 500 });
    const r = await worker(w.env, { CREDIT_CREDITS_PER_UNIT: "INR=1" });
    expect(r.code).toBe(1);
    expect(r.round).toMatchObject({ ok: false, claimed: 1, retried: 1 });
    expect(w.charged()).toEqual([]);
    expect(await w.available()).toBe(50);
    const row = (await w.m.notifications.list("ada")).find((n) => n.type === "auto_top_up_requested");
    expect(row).toMatchObject({ status: "pending", attempts: 1 });
    expect(row?.lastError).toMatch(/USD.*does not price.*CREDIT_CREDITS_PER_UNIT/);
    expect((await w.m.payments.getAutoTopUp("ada"))?.pending?.id).toBe(w.attempt);
    expect(await w.m.payments.getPaymentHistory("ada")).toMatchObject({ items: [] });
  });

  it("refuses a bad rate with exit 2, naming the flag or variable, in the worker and in serve", async () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [[], { CREDIT_CREDITS_PER_UNIT: "two" }, /CREDIT_CREDITS_PER_UNIT must be a rate/],
      [[], { CREDIT_CREDITS_PER_UNIT: "0" }, /CREDIT_CREDITS_PER_UNIT must be a rate .*positive/],
      [[], { CREDIT_CREDITS_PER_UNIT: "USD=2,usd=3" }, /CREDIT_CREDITS_PER_UNIT names USD twice/],
      [["--credits-per-unit", "USD:2"], {}, /--credits-per-unit must be a rate/],
      [[], { CREDIT_CREDITS_PER_UNIT: "2e12" }, /CREDIT_CREDITS_PER_UNIT must be a rate/],
      [[], { CREDIT_PAYMENT_KEY_NAMESPACE: "x".repeat(65) }, /CREDIT_PAYMENT_KEY_NAMESPACE must be 1 to 64/],
    ];
    for (const [args, env, message] of cases) {
      const w = await worker({ CREDIT_SQLITE_PATH: join(dir, "never.db") }, env, args);
      expect(w.code, JSON.stringify([args, env])).toBe(2);
      expect(w.stderr).toMatch(message);
      const s = serveCli(["serve", ...args], { CREDIT_SQLITE_PATH: join(dir, "never.db"), ...env });
      expect(s.code, JSON.stringify([args, env])).toBe(2);
      expect(s.stderr).toMatch(message);
    }
  }, 60_000);
});
