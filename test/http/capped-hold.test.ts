/**
 * A hold for what is there over HTTP (docs/http.md): `POST /credits/reservations` and the admin
 * route take `minimum` as `reserveCredits` does, and answer what the hold holds.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { createCreditHandler, type CreditHandler, type Identity } from "../../src/http/index.js";

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};

/** A reservation, or an error body. */
interface Answer {
  id?: string;
  amount?: number;
  error?: { code: string };
}

describe("HTTP: a hold for what is there", () => {
  let m: CreditManager;
  let handler: CreditHandler;
  beforeAll(async () => {
    m = await createCreditManager();
    handler = createCreditHandler(m, { authenticate });
  });
  afterAll(() => m.close());

  const post = async (path: string, who: string, body: unknown, headers: Record<string, string> = {}) => {
    const res = await handler(
      new Request(`http://localhost${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${who}`, "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      }),
    );
    return { status: res.status, json: (await res.json()) as Answer };
  };

  it("holds what the caller may spend, down to minimum; refuses below it (402) and a minimum above the amount (400)", async () => {
    await m.credits.addCredits("carol", 150);
    const capped = await post("/credits/reservations", "carol", { amount: 400, minimum: 50, reason: "chat" });
    expect(capped.status).toBe(201);
    expect(capped.json).toMatchObject({ amount: 150, status: "active", userId: "carol" });
    const short = await post("/credits/reservations", "carol", { amount: 400, minimum: 1 });
    expect(short.status).toBe(402);
    expect(short.json.error?.code).toBe("INSUFFICIENT_CREDITS");
    const bad = await post("/credits/reservations", "carol", { amount: 10, minimum: 20 });
    expect(bad.status).toBe(400);
    expect(bad.json.error?.code).toBe("VALIDATION_ERROR");
    expect(await m.credits.getUserCreditsInfo("carol")).toMatchObject({ balance: 150, reserved: 150 });
  });

  it("answers a retry with the same Idempotency-Key with the same hold", async () => {
    await m.credits.addCredits("dave", 80);
    const key = { "idempotency-key": "capped-1" };
    const first = await post("/credits/reservations", "dave", { amount: 300, minimum: 10 }, key);
    expect(first.json).toMatchObject({ amount: 80 });
    await m.credits.addCredits("dave", 500);
    const again = await post("/credits/reservations", "dave", { amount: 300, minimum: 10 }, key);
    expect(again.json.id).toBe(first.json.id);
    expect(again.json.amount).toBe(80);
  });

  it("the admin route takes minimum for any user, within the spender's limit", async () => {
    await m.credits.addCredits("erin", 1_000);
    await m.credits.setLimit("erin", { spender: "bot", amount: 90, period: "day" });
    const r = await post("/admin/credits/users/erin/reservations", "admin:ops", {
      amount: 500,
      minimum: 10,
      spender: "bot",
    });
    expect(r.status).toBe(201);
    expect(r.json).toMatchObject({ amount: 90, spender: "bot" });
  });
});
