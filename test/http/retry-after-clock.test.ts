// Retry-After of a spend-limit refusal (429, docs/teams-and-limits.md "Over HTTP") counts on the
// manager's clock (docs/api.md: `clock` is "now, for tests and jobs"), not the host's: a manager
// whose clock is 400 days behind at 18:00 UTC, with a daily limit, answers 6 hours — the host's
// clock would put the reset 400 days in the past and answer 1.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { createCreditHandler, creditMetering } from "../../src/http/index.js";

const DAY = 86_400_000;
const SIX_HOURS_S = 6 * 3600;

describe("Retry-After on the manager's clock", () => {
  let m: CreditManager;
  // 18:00 UTC of a day 400 days ago, and the clock stands there: the daily window ends in 6 hours.
  const now = Math.floor((Date.now() - 400 * DAY) / DAY) * DAY + 18 * 3_600_000;

  beforeEach(async () => {
    m = await createCreditManager({ clock: () => new Date(now) });
    await m.credits.addCredits("acme", 10_000);
    await m.credits.setLimits("acme", [{ spender: "alice", amount: 100, period: "day" }]);
  });
  afterEach(async () => {
    await m.close();
  });

  it("createCreditHandler: a spend past the limit", async () => {
    const handler = createCreditHandler(m, { authenticate: () => ({ userId: "acme", spender: "alice" }) });
    const post = (amount: number) =>
      handler(
        new Request("http://test/credits/reservations", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ amount }),
        }),
      );
    expect((await post(80)).status).toBe(201);
    const over = await post(30);
    expect(over.status).toBe(429);
    const body = (await over.json()) as { error: { details: { resetsAt: string } } };
    expect(Date.parse(body.error.details.resetsAt)).toBe(now + 6 * 3_600_000);
    expect(over.headers.get("retry-after")).toBe(String(SIX_HOURS_S));
  });

  it("creditMetering: a fixed-price request and a held estimate past the limit", async () => {
    const authenticate = () => ({ userId: "acme", spender: "alice" });
    const ok = () => new Response("{}", { headers: { "content-type": "application/json" } });
    const fixed = creditMetering({ credits: m.credits, authenticate, price: 60 })(ok);
    const run = () => fixed(new Request("http://test/api", { method: "POST" }));
    expect((await run()).status).toBe(200);
    const refused = await run(); // read from getLimits before the handler runs
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe(String(SIX_HOURS_S));

    const held = creditMetering({ credits: m.credits, authenticate, defaultEstimate: 50, usageKey: "usage" })(ok);
    const heldOver = await held(new Request("http://test/api", { method: "POST" })); // the hold is refused
    expect(heldOver.status).toBe(429);
    expect(heldOver.headers.get("retry-after")).toBe(String(SIX_HOURS_S));
  });
});
