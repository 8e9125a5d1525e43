/**
 * Auto top-up across processes on one PostgreSQL store (docs/promos-and-payments.md, "Auto
 * top-up"), against a fake Stripe API on loopback that keeps Stripe's idempotency (a repeated
 * `Idempotency-Key` gets the first answer back):
 * - three processes crossing the threshold in the same second → exactly one top-up charged, credited once;
 * - the worker SIGKILLed after Stripe charged and before the credit → credited once after a restart;
 * - the `payment_intent.succeeded` webhook replayed 20 times at once → credited once.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { createCreditManager, type CreditManager } from "../src/index.js";
import { StripeProvider } from "../src/modules/billing/provider-stripe.js";
import { runProcess } from "./fixtures/processes.js";

const pgUrl = process.env.CREDIT_PG_URL;
const WHSEC = "whsec_processes";
const FIXTURE = "test/fixtures/auto-top-up-process.ts";

/** The fake Stripe API: PaymentIntents by idempotency key; `hold` keeps answers back (the charge is made). */
const intents = new Map<string, Record<string, unknown>>();
let requests = 0;
let hold = false;
const held: ServerResponse[] = [];
let server: Server;
let stripeUrl = "";

const schemas: string[] = [];
const managers: CreditManager[] = [];

// reason: PostgreSQL only with CREDIT_PG_URL (set by .ci/run)
describe.skipIf(!pgUrl)("auto top-up across processes on PostgreSQL", () => {
  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString("utf8")));
      req.on("end", () => {
        requests++;
        const key = String(req.headers["idempotency-key"]);
        const form = new URLSearchParams(body);
        let pi = intents.get(key);
        if (pi === undefined) {
          pi = {
            id: `pi_${intents.size + 1}`,
            object: "payment_intent",
            amount: Number(form.get("amount")),
            amount_received: Number(form.get("amount")),
            currency: form.get("currency"),
            status: "succeeded",
            metadata: {
              credit_payment_id: form.get("metadata[credit_payment_id]"),
              user_id: form.get("metadata[user_id]"),
              credits: form.get("metadata[credits]"),
            },
          };
          intents.set(key, pi);
        }
        if (hold) {
          held.push(res);
          return;
        }
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(pi));
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    stripeUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    for (const m of managers) await m.close().catch(() => undefined);
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    const c = new pg.Client({ connectionString: pgUrl });
    await c.connect();
    for (const s of schemas) await c.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    await c.end();
  });

  async function store(name: string, user: string, balance: number) {
    const schema = `atu_${name}_${process.pid}_${Date.now()}`;
    schemas.push(schema);
    const m = await createCreditManager({
      db: new PostgresDbManager({ connectionString: pgUrl as string, schema }),
      payments: {
        providers: [
          new StripeProvider({
            secretKey: "sk_test_processes",
            webhookSecret: WHSEC,
            successUrl: "https://app.example/ok",
            cancelUrl: "https://app.example/no",
            baseUrl: stripeUrl,
          }),
        ],
      },
    });
    managers.push(m);
    await m.credits.addCredits(user, balance);
    await m.payments.setAutoTopUp(user, {
      below: 500,
      amount: 1000,
      provider: "stripe",
      customer: "cus_p",
      paymentMethod: "pm_card_visa",
      currency: "usd",
    });
    const env = { CREDIT_PG_URL: pgUrl as string, ATU_SCHEMA: schema, ATU_STRIPE: stripeUrl, ATU_USER: user };
    const paid = async () =>
      (await m.payments.getPaymentHistory(user, { limit: 100 })).items.filter(
        (p) => (p.metadata as { autoTopUp?: boolean } | null)?.autoTopUp === true,
      );
    return { m, schema, env, paid };
  }

  it("three processes crossing the threshold in the same second: one top-up, charged once, credited once", async () => {
    const user = "racer";
    const { m, env, paid } = await store("race", user, 1000);
    const before = intents.size;
    const start = String(Date.now() + 1500);
    // 3 processes × 3 deductions of 100 at once: available 1,000 → 100, crossing 500 once.
    const runs = await Promise.all(
      [0, 1, 2].map(() =>
        runProcess<{ deducted: number; refused: number }>(FIXTURE, {
          ...env,
          ATU_ROLE: "spend",
          ATU_START: start,
          ATU_AMOUNT: "100",
          ATU_TIMES: "3",
        }),
      ),
    );
    expect(runs.reduce((n, r) => n + r.deducted, 0)).toBe(9);
    await m.notifications.dispatchPending({ limit: 10 });
    const requested = (await m.notifications.list(user)).filter((n) => n.type === "auto_top_up_requested");
    expect(requested).toHaveLength(1);
    expect(intents.size - before).toBe(1);
    const attempts = await paid();
    expect(attempts.map((p) => [p.status, p.amount, p.credits])).toEqual([["paid", 1000, 1000]]);
    expect((await m.credits.getUserCreditsInfo(user)).balance).toBe(100 + 1000);
    expect((await m.credits.audit(user)).ok).toBe(true);
  }, 60_000);

  it("a worker SIGKILLed after Stripe charged, before the credit: credited once after a restart", async () => {
    const user = "crashy";
    const { m, env, paid } = await store("kill", user, 600);
    await m.credits.deductCredits(user, 200); // 400: the row asks for a top-up
    const attempt = (await m.payments.getAutoTopUp(user))?.pending?.id as string;
    expect(attempt).toBeTruthy();
    hold = true; // Stripe charges, but its answer never reaches the worker
    const seen = requests;
    const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", FIXTURE], {
      env: { ...process.env, ...env, ATU_ROLE: "worker", ATU_LEASE_MS: "1500" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on("exit", (_c, signal) => r(signal)));
    const end = Date.now() + 20_000;
    while (requests === seen && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(requests).toBeGreaterThan(seen);
    expect(intents.has(attempt)).toBe(true); // charged at the provider
    child.kill("SIGKILL");
    expect(await exited).toBe("SIGKILL");
    hold = false;
    for (const res of held.splice(0)) res.destroy();
    // Nothing credited yet: the charge is at Stripe only.
    expect((await m.credits.getUserCreditsInfo(user)).balance).toBe(400);
    expect((await paid()).map((p) => p.status)).toEqual(["created"]);
    // The restarted worker (this process) picks the row up once its lease lapsed, asks Stripe again
    // under the same key, gets the first charge back and credits it once.
    const until = Date.now() + 10_000;
    while ((await paid())[0]?.status !== "paid" && Date.now() < until) {
      await m.notifications.dispatchPending({ limit: 10 });
      await new Promise((r) => setTimeout(r, 200));
    }
    expect((await paid()).map((p) => [p.status, p.providerPaymentId])).toEqual([
      ["paid", (intents.get(attempt) as { id: string }).id],
    ]);
    expect([...intents.keys()].filter((k) => k === attempt)).toHaveLength(1);
    expect((await m.credits.getUserCreditsInfo(user)).balance).toBe(1400);
    expect((await m.payments.getAutoTopUp(user))?.pending).toBeNull();
    expect((await m.credits.audit(user)).ok).toBe(true);
  }, 60_000);

  it("the payment_intent.succeeded webhook replayed 20 times at once: credited once", async () => {
    const user = "replayed";
    const { m, paid } = await store("replay", user, 600);
    await m.credits.deductCredits(user, 200);
    const attempt = (await m.payments.getAutoTopUp(user))?.pending?.id as string;
    // The worker recorded the attempt and Stripe charged it; the answer was lost (held, then dropped).
    hold = true;
    const charge = m.payments.processAutoTopUp(user).catch(() => "lost");
    const end = Date.now() + 10_000;
    while (!intents.has(attempt) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    hold = false;
    for (const res of held.splice(0)) res.destroy();
    expect(await charge).toBe("lost");
    const pi = intents.get(attempt) as Record<string, unknown>;
    const body = JSON.stringify({ id: "evt_replayed", type: "payment_intent.succeeded", data: { object: pi } });
    const t = Math.floor(Date.now() / 1000);
    const headers = {
      "stripe-signature": `t=${t},v1=${createHmac("sha256", WHSEC).update(`${t}.${body}`).digest("hex")}`,
    };
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, () => m.payments.handleWebhook("stripe", body, headers).then((r) => r.outcome)),
    );
    expect(outcomes.filter((o) => o === "credited")).toHaveLength(1);
    expect((await m.credits.getUserCreditsInfo(user)).balance).toBe(1400);
    expect((await paid()).map((p) => p.status)).toEqual(["paid"]);
    expect((await m.payments.getAutoTopUp(user))?.pending).toBeNull();
    expect((await m.credits.audit(user)).ok).toBe(true);
  }, 60_000);
});
