import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { createCreditHandler, type CreditHandler, type Identity } from "../../src/http/index.js";

/**
 * The admin routes that give a charge back (docs/corrections.md, "Over HTTP"): the reversal, its
 * key, what it refuses and with which status, and the charge's reversals.
 */
const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};
const ADMIN = "admin:ops";

describe("giving a charge back over HTTP", () => {
  let m: CreditManager;
  let handler: CreditHandler;
  let charge: string;

  const call = async (
    method: string,
    path: string,
    who: string | null,
    body?: unknown,
    headers: Record<string, string> = {},
  ) => {
    const res = await handler(
      new Request(`http://test${path}`, {
        method,
        headers: {
          ...(who === null ? {} : { authorization: `Bearer ${who}` }),
          ...(method === "GET" ? {} : { "content-type": "application/json" }),
          ...headers,
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      }),
    );
    const text = await res.text();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON answers, read field by field
    return { status: res.status, body: (text === "" ? null : JSON.parse(text)) as Record<string, any> };
  };
  const reverse = (entryId: string, body: unknown, headers: Record<string, string> = {}, user = "acme") =>
    call("POST", `/admin/credits/users/${user}/entries/${entryId}/reverse`, ADMIN, body, headers);

  beforeEach(async () => {
    m = await createCreditManager();
    handler = createCreditHandler(m, { authenticate });
    await m.credits.addCredits("acme", 1_000);
    charge = (await m.credits.deductCredits("acme", 120, { feature: "render", spender: "key-ci" })).id;
  });
  afterEach(async () => {
    await m.close();
  });

  it("gives back part of a charge once per key, then the rest, and lists the reversals", async () => {
    const first = await reverse(charge, { amount: 50, reason: "job failed" }, { "idempotency-key": "ticket-1" });
    expect(first.status).toBe(201);
    expect(first.body).toMatchObject({
      type: "reverse",
      amount: 50,
      reverses: charge,
      description: "job failed",
      feature: "render",
      spender: "key-ci",
      idempotencyKey: "ticket-1",
    });
    // The same key, in the header or the body: the first reversal again, nothing more given back.
    const again = await reverse(charge, { amount: 50, reason: "job failed", idempotencyKey: "ticket-1" });
    expect(again.status).toBe(201);
    expect(again.body.id).toBe(first.body.id);
    expect((await m.credits.getUserCreditsInfo("acme")).balance).toBe(930);

    // No amount: all that is left.
    const rest = await reverse(charge, { reason: "the rest too" });
    expect(rest.status).toBe(201);
    expect(rest.body.amount).toBe(70);

    const listed = await call("GET", `/admin/credits/users/acme/entries/${charge}/reversals`, ADMIN);
    expect(listed.status).toBe(200);
    expect(listed.body).toMatchObject({ reversed: 120, remaining: 0, charge: { id: charge, amount: 120 } });
    expect(listed.body.reversals.map((e: { id: string }) => e.id)).toEqual([first.body.id, rest.body.id]);
    expect((await m.credits.getUserCreditsInfo("acme")).balance).toBe(1_000);
    expect((await m.credits.audit("acme")).ok).toBe(true);
  });

  it("answers 422 past what is left or for no charge, 404 for another account's or no entry, 400 without a reason, 409 for a reused key", async () => {
    const before = await m.db.listJournal("acme", { order: "desc", limit: 100 });
    const over = await reverse(charge, { amount: 121, reason: "too much" });
    expect(over.status).toBe(422);
    expect(over.body.error.code).toBe("RULE_VIOLATION");
    const [grant] = await m.db.listJournal("acme", { order: "asc", limit: 1 });
    const notACharge = await reverse(grant!.id, { reason: "an addition" });
    expect(notACharge.status).toBe(422);

    await m.credits.addCredits("other", 10);
    expect((await reverse(charge, { reason: "wrong account" }, {}, "other")).status).toBe(404);
    expect((await reverse("no-such-entry", { reason: "nothing" })).status).toBe(404);
    expect((await call("GET", `/admin/credits/users/other/entries/${charge}/reversals`, ADMIN)).status).toBe(404);

    const noReason = await reverse(charge, { amount: 5 });
    expect(noReason.status).toBe(400);
    expect(noReason.body.error.code).toBe("VALIDATION_ERROR");
    expect((await reverse(charge, { amount: 0, reason: "zero" })).status).toBe(400);
    expect((await reverse(charge, { amount: 5, reason: "x", surprise: true })).status).toBe(400);
    // Nothing above changed the journal.
    expect(await m.db.listJournal("acme", { order: "desc", limit: 100 })).toEqual(before);

    expect((await reverse(charge, { amount: 5, reason: "first" }, { "idempotency-key": "k-1" })).status).toBe(201);
    const conflict = await reverse(charge, { amount: 6, reason: "first" }, { "idempotency-key": "k-1" });
    expect(conflict.status).toBe(409);
  });

  it("is for admins only", async () => {
    expect(
      (await call("POST", `/admin/credits/users/acme/entries/${charge}/reverse`, "acme", { reason: "x" })).status,
    ).toBe(403);
    expect((await call("GET", `/admin/credits/users/acme/entries/${charge}/reversals`, "acme")).status).toBe(403);
    expect(
      (await call("POST", `/admin/credits/users/acme/entries/${charge}/reverse`, null, { reason: "x" })).status,
    ).toBe(401);
    expect((await m.credits.getReversals("acme", charge)).reversed).toBe(0);
  });

  it("is in the OpenAPI document: the body requires a reason, 201 answers the entry, the refusals are listed", async () => {
    const doc = (await call("GET", "/credits/openapi.json", null)).body;
    const post = doc.paths["/admin/credits/users/{userId}/entries/{entryId}/reverse"].post;
    expect(post.operationId).toBe("adminReverseCharge");
    expect(post.requestBody.content["application/json"].schema.required).toEqual(["reason"]);
    expect(Object.keys(post.responses)).toEqual(expect.arrayContaining(["201", "400", "403", "404", "409", "422"]));
    expect(post.parameters.map((p: { name: string }) => p.name)).toContain("Idempotency-Key");
    const get = doc.paths["/admin/credits/users/{userId}/entries/{entryId}/reversals"].get;
    expect(get.operationId).toBe("adminGetReversals");
    expect(Object.keys(get.responses["200"].content["application/json"].schema.properties).sort()).toEqual([
      "charge",
      "remaining",
      "reversals",
      "reversed",
    ]);
  });
});
