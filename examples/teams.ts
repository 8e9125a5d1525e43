/**
 * A team account (docs/teams-and-limits.md): an organisation's pool of credits — its plan's monthly
 * credits, the plan's allowance that pays for one feature only, and a top-up — spent by three
 * members, each through their own API key and under their own monthly cap, with the organisation's
 * cap over them all. Over HTTP, as a member's client sees
 * it; each key is bound to the account and a spender, as `credit-management serve` binds them
 * (`keys create --role user:acme --spender alice`).
 *   npx tsx examples/teams.ts
 */
import { createCreditManager } from "credit-management";
import { createCreditHandler, type Identity } from "credit-management/http";

const manager = await createCreditManager();
const { credits, subscriptions } = manager;

// The pool: the team plan's 10,000 credits a month, and 5,000 bought on top. The plan also
// allocates an allowance every month: 5,000 credits that pay for image generation only, spent
// before the pool (docs/subscriptions.md, "Allowances"); what is left of it rolls over, up to 2,000.
await subscriptions.createPlan({
  id: "team",
  name: "Team",
  creditsPerPeriod: 10_000,
  billingPeriod: "monthly",
  price: 99,
  currency: "USD",
  allowances: [{ scope: { features: ["images"] }, credits: 5_000, rollover: { cap: 2_000 } }],
});
await subscriptions.subscribe("acme", "team");
await credits.addCredits("acme", 5_000, { source: "payment", description: "top-up" });

// The caps: 9,000 a month for the organisation, and one per member.
await credits.setLimits("acme", [
  { amount: 9_000, period: "month" },
  { spender: "alice", amount: 5_000, period: "month" },
  { spender: "bob", amount: 6_000, period: "month" },
  { spender: "carol", amount: 1_000, period: "month" },
]);

// Your authentication: each member's API key names the account and the member (the spender); the
// admin key is the organisation's owner's.
const keys: Record<string, Identity> = {
  "key-alice": { userId: "acme", spender: "alice" },
  "key-bob": { userId: "acme", spender: "bob" },
  "key-carol": { userId: "acme", spender: "carol" },
  "key-owner": { userId: "owner", admin: true },
};
const handler = createCreditHandler(manager, {
  authenticate: (request) => keys[request.headers.get("authorization")?.replace(/^Bearer /, "") ?? ""] ?? null,
});
/** What the example reads of the answers (see the OpenAPI document for all of it). */
interface Limit {
  spender: string | null;
  used: number;
  amount: number;
}
interface Answer {
  id?: string;
  available?: number;
  items?: Limit[];
  error?: { code: string; details: { remaining: number; resetsAt: string; limit: Limit } };
}
const api = async (key: string, method: string, path: string, body?: unknown) => {
  const res = await handler(
    new Request(`http://localhost${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(method === "GET" ? {} : { "content-type": "application/json" }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    }),
  );
  return { status: res.status, body: (await res.json()) as Answer };
};
/** A member's metered call: hold an estimate, then commit what it used. */
const call = async (key: string, estimate: number, used: number, feature?: string) => {
  const hold = await api(key, "POST", "/credits/reservations", { amount: estimate, ...(feature ? { feature } : {}) });
  if (hold.status !== 201) return hold;
  return api(key, "POST", `/credits/reservations/${hold.body.id as string}/commit`, { amount: used });
};

for (let i = 0; i < 4; i++) await call("key-alice", 1_000, 900, "chat");
for (let i = 0; i < 3; i++) await call("key-bob", 1_000, 1_000, "images");
await call("key-carol", 500, 400, "chat");

// Carol's next call would pass her cap: refused, nothing held, with when her cap resets.
const refused = await call("key-carol", 700, 700, "chat");
const error = refused.body.error!;
console.log(
  `carol over her cap: ${refused.status} ${error.code}, ${error.details.remaining} left until ${error.details.resetsAt.slice(0, 10)}`,
);
// Nor can she spend under Bob's cap.
console.log(
  `carol as bob: ${(await api("key-carol", "POST", "/credits/reservations", { amount: 10, spender: "bob" })).status}`,
);
// Nor raise her own.
console.log(
  `carol sets limits: ${(await api("key-carol", "PUT", "/admin/credits/users/acme/limits", { limits: [] })).status}`,
);

// Bob's next 2,500 would fit his cap (3,000 left) but not the organisation's (2,000 left): every
// limit that applies must hold, and the one with the least left is the one the error names.
const org = await call("key-bob", 2_500, 2_500);
const tightest = org.body.error!.details;
console.log(
  `bob past the organisation's cap: ${org.status}, ${tightest.remaining} left under ${tightest.limit.spender ?? "the organisation's"} limit`,
);

// What each member sees of the limits, and what the owner sees.
const show = (l: Limit) => `${l.spender ?? "organisation"} ${l.used}/${l.amount}`;
const mine = await api("key-carol", "GET", "/credits/limits");
console.log(`carol's limits: ${mine.body.items!.map(show).join(", ")}`);
const all = await api("key-owner", "GET", "/admin/credits/users/acme/limits");
console.log(`the owner's view: ${all.body.items!.map(show).join(", ")}`);

// What Bob may still spend on images (the allowance's rest and the pool), and on anything else.
const images = await api("key-bob", "GET", "/credits/balance?feature=images");
const other = await api("key-bob", "GET", "/credits/balance");
console.log(`bob may use: ${images.body.available} on images, ${other.body.available} on other features`);

// The pool they all drew from, and who spent what.
const info = await credits.getUserCreditsInfo("acme");
const spent = new Map<string, number>();
for (const e of (await credits.getCreditHistory("acme", { types: ["commit_reserved"], limit: 100 })).items)
  spent.set(e.spender ?? "-", (spent.get(e.spender ?? "-") ?? 0) + e.amount);
console.log(
  `pool: ${info.balance} of 20000 left (${info.scoped?.[0]?.remaining} of the images allowance); spent by ${[...spent].map(([s, n]) => `${s} ${n}`).join(", ")}`,
);
console.log(`audit: ${(await credits.audit("acme")).ok ? "ok" : "PROBLEMS"}`);
await manager.close();
