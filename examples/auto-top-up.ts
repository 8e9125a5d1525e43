/**
 * Auto top-up (docs/promos-and-payments.md, "Auto top-up"): a spend takes the account below its
 * threshold, the outbox dispatcher charges the saved card off-session, the credits land once.
 * Stripe is played by a small fake API on loopback (the first charge declined, then paid).
 *   npx tsx examples/auto-top-up.ts
 */
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createCreditManager, InMemoryNotificationQueue, StripeProvider } from "credit-management";

// The fake Stripe: POST /v1/payment_intents, one answer per Idempotency-Key (as Stripe keeps them).
const answers = new Map<string, { status: number; body: unknown }>();
let charges = 0;
const stripe = createServer((req, res) => {
  let raw = "";
  req.on("data", (c: Buffer) => (raw += c.toString()));
  req.on("end", () => {
    const form = new URLSearchParams(raw);
    const key = String(req.headers["idempotency-key"]);
    let a = answers.get(key);
    if (a === undefined) {
      charges++;
      const pi = {
        id: `pi_${charges}`,
        amount: Number(form.get("amount")),
        amount_received: Number(form.get("amount")),
        currency: form.get("currency"),
        metadata: {
          credit_payment_id: form.get("metadata[credit_payment_id]"),
          user_id: form.get("metadata[user_id]"),
        },
        status: charges === 1 ? "requires_payment_method" : "succeeded",
      };
      a =
        charges === 1
          ? {
              status: 402,
              body: {
                error: {
                  code: "card_declined",
                  decline_code: "insufficient_funds",
                  message: "Your card has insufficient funds.",
                  payment_intent: pi,
                },
              },
            }
          : { status: 200, body: pi };
      answers.set(key, a);
    }
    res.writeHead(a.status, { "content-type": "application/json" }).end(JSON.stringify(a.body));
  });
});
await new Promise<void>((r) => stripe.listen(0, "127.0.0.1", r));
const baseUrl = `http://127.0.0.1:${(stripe.address() as AddressInfo).port}`;

const webhookSecret = "whsec_example";
const queue = new InMemoryNotificationQueue();
const manager = await createCreditManager({
  queue,
  payments: {
    providers: [
      new StripeProvider({
        secretKey: "sk_test_example",
        webhookSecret,
        successUrl: "https://app.example.com/ok",
        cancelUrl: "https://app.example.com/cancel",
        baseUrl,
      }),
    ],
  },
});

await manager.credits.addCredits("user-1", 1_500);
await manager.payments.setAutoTopUp("user-1", {
  below: 1_000,
  amount: 2_000,
  provider: "stripe",
  customer: "cus_example",
  paymentMethod: "pm_card_visa",
  currency: "usd",
  maxFailures: 3,
});
const available = async () => (await manager.credits.getUserCreditsInfo("user-1")).available;

// 1,500 → 900: this spend crosses 1,000 and asks for a top-up in its own unit of work.
await manager.credits.deductCredits("user-1", 600);
await manager.notifications.dispatchPending(); // the worker's dispatch round: charges the card
const failed = (await manager.notifications.list("user-1")).find((n) => n.type === "auto_top_up_failed");
console.log(`first charge: ${String(failed?.payload.code)}, available ${await available()}`);

// The customer fixed the card; the next crossing tries again.
await manager.credits.addCredits("user-1", 200); // 1,100
await manager.credits.deductCredits("user-1", 200); // 900: crosses again
await manager.notifications.dispatchPending();
console.log(`second charge: paid, available ${await available()}`);

// Stripe's payment_intent.succeeded webhook for the same payment, delivered three times: nothing more.
const attempt = (await manager.payments.getPaymentHistory("user-1")).items[0];
const body = JSON.stringify({
  id: "evt_1",
  type: "payment_intent.succeeded",
  data: { object: answers.get(String(attempt?.id))?.body },
});
const t = Math.floor(Date.now() / 1000);
const signature = {
  "stripe-signature": `t=${t},v1=${createHmac("sha256", webhookSecret).update(`${t}.${body}`).digest("hex")}`,
};
for (let i = 0; i < 3; i++) {
  const r = await manager.payments.handleWebhook("stripe", body, signature);
  console.log(`webhook ${i + 1}: ${r.outcome}`);
}
console.log(`charges at Stripe: ${charges}, available ${await available()}`);
console.log(`audit: ${(await manager.credits.audit("user-1")).ok ? "ok" : "FAILED"}`);
await manager.close();
stripe.close();
