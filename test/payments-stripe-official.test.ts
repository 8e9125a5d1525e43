/**
 * The off-session charge our StripeProvider sends (docs/promos-and-payments.md, "Auto top-up")
 * against what the official `stripe` package sends for the same call — `paymentIntents.create` with
 * `off_session` and `confirm` under an idempotency key — both pointed at one recording host on
 * loopback: the same method, path, form fields and values, idempotency key, API version and
 * credentials. Only the client's own identification (User-Agent, telemetry headers) may differ.
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Stripe from "stripe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StripeProvider, STRIPE_API_VERSION } from "../src/modules/billing/provider-stripe.js";

interface Recorded {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  form: [string, string][];
}

const KEY = "sk_test_official_compare";
const recorded: Recorded[] = [];
let server: Server;
let port = 0;

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString("utf8")));
    req.on("end", () => {
      const form = [...new URLSearchParams(body)].sort(([a], [b]) => a.localeCompare(b));
      recorded.push({ method: req.method ?? "", path: req.url ?? "", headers: req.headers, form });
      const f = new URLSearchParams(body);
      res.writeHead(200, { "content-type": "application/json", "request-id": "req_1" }).end(
        JSON.stringify({
          id: "pi_1",
          object: "payment_intent",
          amount: Number(f.get("amount")),
          currency: f.get("currency"),
          status: "succeeded",
        }),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

describe("StripeProvider.chargeSaved against the official stripe package", () => {
  it("sends the request stripe.paymentIntents.create sends for the same off-session charge", async () => {
    const request = {
      paymentId: "0193abcd-auto-1",
      userId: "user é&=1",
      amount: 1999,
      currency: "EUR",
      credits: 2000,
      description: "Auto top-up: 2000 credits & more",
      customer: "cus_Q1",
      paymentMethod: "pm_card_visa",
      idempotencyKey: "0193abcd-auto-1",
    };
    const ours = new StripeProvider({
      secretKey: KEY,
      baseUrl: `http://127.0.0.1:${port}`,
      successUrl: "https://app.example/ok",
      cancelUrl: "https://app.example/no",
    });
    expect(await ours.chargeSaved(request)).toEqual({ status: "succeeded", providerPaymentId: "pi_1" });

    const official = new Stripe(KEY, {
      host: "127.0.0.1",
      port,
      protocol: "http",
      apiVersion: STRIPE_API_VERSION as Stripe.LatestApiVersion,
      maxNetworkRetries: 0,
      telemetry: false,
    });
    const pi = await official.paymentIntents.create(
      {
        amount: request.amount,
        currency: request.currency.toLowerCase(),
        customer: request.customer,
        payment_method: request.paymentMethod,
        off_session: true,
        confirm: true,
        description: request.description,
        metadata: {
          credit_payment_id: request.paymentId,
          user_id: request.userId,
          credits: String(request.credits),
          auto_top_up: "true",
        },
      },
      { idempotencyKey: request.idempotencyKey },
    );
    expect(pi.id).toBe("pi_1");

    expect(recorded).toHaveLength(2);
    const [a, b] = recorded as [Recorded, Recorded];
    expect(a.method).toBe(b.method);
    expect(a.path).toBe(b.path);
    expect(a.path).toBe("/v1/payment_intents");
    expect(a.form).toEqual(b.form);
    for (const h of ["authorization", "idempotency-key", "stripe-version"]) expect(a.headers[h], h).toBe(b.headers[h]);
    expect(a.headers["content-type"]).toBe(b.headers["content-type"]);
    expect(a.headers["idempotency-key"]).toBe(request.idempotencyKey);
  });
});
