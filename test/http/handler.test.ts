import { Validator } from "@seriousme/openapi-schema-validator";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ConfigurationError, createCreditManager, CreditError, type CreditManager } from "../../src/index.js";
import {
  createCreditManager as createCoreManager,
  expirationPart,
  notificationsPart,
  subscriptionsPart,
} from "../../src/core/index.js";
import { createCreditHandler, HttpError, type Identity, type RouteDefinition } from "../../src/http/index.js";
import { createServer } from "node:http";
import express from "express";
import { toNodeHandler } from "../../src/http/index.js";
import { hosts, listen, type Running } from "./servers.js";

/** `Authorization: Bearer <userId>`; `Bearer admin:<id>` is an admin. */
const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};

const ADMIN = "admin:ops";

describe.each(Object.keys(hosts))("credit handler on %s", (host) => {
  let m: CreditManager;
  let server: Running;
  let trusting: Running;
  let now = Date.parse("2026-01-10T00:00:00Z");
  const errors: unknown[] = [];

  const boom: RouteDefinition = {
    method: "GET",
    base: "user",
    path: "/boom",
    access: "user",
    operationId: "boom",
    summary: "throws",
    handle: () => {
      throw new Error("secret database password in this message");
    },
  };
  const raw: RouteDefinition = {
    method: "POST",
    base: "user",
    path: "/echo-raw",
    access: "public",
    operationId: "echoRaw",
    summary: "answers with the raw body bytes it received (as webhooks will need)",
    rawBody: true,
    handle: async (ctx) =>
      new Response(await ctx.rawBody(), { headers: { "content-type": "application/octet-stream" } }),
  };

  beforeAll(async () => {
    // Debt bounded at 10 credits: "expiring credits, after-service deduction, …" goes into it.
    m = await createCreditManager({
      clock: () => new Date(now),
      features: { export: { minAvailable: 1000 } },
      overdraftLimit: 10,
    });
    const handler = createCreditHandler(m, { authenticate, routes: [boom, raw], onError: (e) => errors.push(e) });
    server = await hosts[host]!(handler);
    trusting = await hosts[host]!(
      createCreditHandler(m, { trustUserIdHeader: true, basePath: "/t", adminBasePath: "/t-admin" }),
    );
  });
  afterAll(async () => {
    await server.close();
    await trusting.close();
    await m.close();
  });

  const call = async (
    method: string,
    path: string,
    who?: string | null,
    body?: unknown,
    headers: Record<string, string> = {},
    base = server.url,
  ) => {
    const res = await fetch(base + path, {
      method,
      headers: {
        ...(who ? { authorization: `Bearer ${who}` } : {}),
        // A JSON client types every mutation, body or not (csrfProtection refuses untyped ones).
        ...(body !== undefined || (method !== "GET" && method !== "HEAD")
          ? { "content-type": "application/json" }
          : {}),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked field by field
    let json: any = null;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    return { status: res.status, json, headers: res.headers, text };
  };

  it("admin adds credits; the user reads their balance, grants and history", async () => {
    const add = await call("POST", "/admin/credits/users/alice/add", ADMIN, { amount: 500, description: "welcome" });
    expect(add.status).toBe(201);
    expect(add.json).toMatchObject({ type: "add", amount: 500, balanceAfter: 500, userId: "alice" });
    const balance = await call("GET", "/credits/balance", "alice");
    expect(balance.status).toBe(200);
    expect(balance.json).toEqual({ userId: "alice", balance: 500, reserved: 0, available: 500, debt: 0 });
    expect(balance.headers.get("cache-control")).toBe("no-store");
    const grants = await call("GET", "/credits/grants", "alice");
    expect(grants.json.items).toHaveLength(1);
    expect(grants.json.items[0]).toMatchObject({ amount: 500, remaining: 500, source: "manual" });
    expect(typeof grants.json.items[0].createdAt).toBe("string");
    const admin = await call("GET", "/admin/credits/users/alice/balance", ADMIN);
    expect(admin.json.balance).toBe(500);
  });

  it("a grant that starts later: effectiveAt on the add body, upcoming in the grants and state until its start", async () => {
    const start = new Date(now + 3_600_000).toISOString();
    const add = await call("POST", "/admin/credits/users/lena/add", ADMIN, { amount: 40, effectiveAt: start });
    expect(add.status).toBe(201);
    expect(add.json).toMatchObject({ type: "add", amount: 40, balanceAfter: 0, effectiveAt: start });
    expect((await call("GET", "/credits/balance", "lena")).json).toMatchObject({ balance: 0, available: 0 });
    const grants = (await call("GET", "/credits/grants", "lena")).json.items;
    expect(grants[0]).toMatchObject({ amount: 40, remaining: 40, upcoming: true, effectiveAt: start });
    const state = (await call("GET", "/credits/state", "lena")).json;
    expect(state.upcoming).toMatchObject([{ amount: 40, effectiveAt: start }]);
    // An expiry not after the start: 400, nothing added.
    const bad = await call("POST", "/admin/credits/users/lena/add", ADMIN, {
      amount: 5,
      effectiveAt: start,
      expiresAt: start,
    });
    expect(bad.status).toBe(400);
    expect((await call("GET", "/credits/grants", "lena")).json.items).toHaveLength(1);
    const before = now;
    now += 3_600_000;
    try {
      expect((await call("GET", "/credits/balance", "lena")).json).toMatchObject({ balance: 40, available: 40 });
      expect((await call("GET", "/credits/state", "lena")).json.upcoming).toEqual([]);
      const history = (await call("GET", "/credits/history?types=start", "lena")).json.items;
      expect(history).toMatchObject([{ type: "start", amount: 40, balanceAfter: 40 }]);
    } finally {
      now = before;
    }
  });

  it("GET /credits/check and the admin check answer credits.check(); bad query 400, no peeking at others", async () => {
    const own = await call("GET", "/credits/check?feature=export", "alice");
    expect(own.status).toBe(200);
    expect(own.json).toEqual({ allowed: false, available: 500, required: 1000, reason: "insufficient_credits" });
    expect((await call("GET", "/credits/check?amount=200", "alice")).json).toMatchObject({
      allowed: true,
      required: 200,
    });
    expect((await call("GET", "/admin/credits/users/alice/check?feature=export&amount=10", ADMIN)).json).toMatchObject({
      allowed: false,
      available: 500,
    });
    // A feature with no rule is paid from the pool (docs/trial-and-checks.md); a name that is none is a 400.
    expect((await call("GET", "/credits/check?feature=nope", "alice")).json).toMatchObject({
      allowed: true,
      required: 1,
      reason: "ok",
    });
    expect((await call("GET", "/credits/check?feature=no%20spaces", "alice")).status).toBe(400);
    expect((await call("GET", "/credits/check?amount=0", "alice")).status).toBe(400);
    expect((await call("GET", "/admin/credits/users/alice/check", "mallory")).status).toBe(403);
  });

  it("refuses: no identity 401, a non-admin on admin routes 403, another user's data never shown", async () => {
    expect((await call("GET", "/credits/balance")).status).toBe(401);
    const add = await call("POST", "/admin/credits/users/mallory/add", "mallory", { amount: 1_000_000 });
    expect(add.status).toBe(403);
    expect(add.json.error.code).toBe("FORBIDDEN");
    expect((await call("GET", "/credits/balance", "mallory")).json.balance).toBe(0);
    const peek = await call("GET", "/admin/credits/users/alice/balance", "mallory");
    expect(peek.status).toBe(403);
    expect(peek.text).not.toContain("500");
    expect(peek.text).not.toContain("alice");
    expect((await call("POST", "/admin/credits/users/alice/deduct", "mallory", { amount: 1 })).status).toBe(403);
    expect((await call("GET", "/admin/credits/users/alice/audit", null)).status).toBe(401);
  });

  it("ignores a forged X-User-Id unless the host opts in, and the header never makes an admin", async () => {
    const forged = await call("GET", "/credits/balance", null, undefined, { "x-user-id": "alice" });
    expect(forged.status).toBe(401);
    expect(forged.text).not.toContain("500");
    const opted = await call("GET", "/t/balance", null, undefined, { "x-user-id": "alice" }, trusting.url);
    expect(opted.status).toBe(200);
    expect(opted.json.balance).toBe(500);
    const escalate = await call(
      "POST",
      "/t-admin/users/alice/add",
      null,
      { amount: 5 },
      { "x-user-id": "admin:ops" },
      trusting.url,
    );
    expect(escalate.status).toBe(403);
  });

  it("validates bodies and queries with field-level issues (400), JSON only (415), bounded size (413)", async () => {
    const bad = await call("POST", "/admin/credits/users/alice/add", ADMIN, { amount: 1.5, priority: -1 });
    expect(bad.status).toBe(400);
    expect(bad.json.error.code).toBe("VALIDATION_ERROR");
    expect(bad.json.error.details.issues.map((i: { path: string }) => i.path).sort()).toEqual(["amount", "priority"]);
    const unknown = await call("POST", "/credits/reservations", "alice", { amount: 5, expiry: "never" });
    expect(unknown.status).toBe(400);
    expect(unknown.json.error.details.issues[0].message).toMatch(/expiry/);
    expect((await call("POST", "/credits/reservations", "alice", "{not json")).status).toBe(400);
    expect(
      (await call("POST", "/credits/reservations", "alice", "amount=5", { "content-type": "text/plain" })).status,
    ).toBe(415);
    const big = await call("POST", "/credits/reservations", "alice", { amount: 5, description: "x".repeat(70_000) });
    expect(big.status).toBe(413);
    const q = await call("GET", "/credits/history?limit=abc&types=bogus", "alice");
    expect(q.status).toBe(400);
    expect(q.json.error.details.issues.map((i: { path: string }) => i.path)).toEqual(expect.arrayContaining(["limit"]));
    expect((await call("GET", "/credits/history?nope=1", "alice")).status).toBe(400);
    expect((await call("GET", "/credits/balance", "alice")).json.balance).toBe(500);
  });

  it("reservations: create, read, commit with the actual amount, and refuse a second settle", async () => {
    const r = await call("POST", "/credits/reservations", "alice", { amount: 200, ttlSeconds: 60, reason: "chat" });
    expect(r.status).toBe(201);
    expect(r.json).toMatchObject({ amount: 200, status: "active", userId: "alice" });
    expect((await call("GET", `/credits/reservations/${r.json.id}`, "alice")).json.status).toBe("active");
    expect((await call("GET", "/credits/balance", "alice")).json).toMatchObject({ reserved: 200, available: 300 });
    const commit = await call("POST", `/credits/reservations/${r.json.id}/commit`, "alice", { amount: 73 });
    expect(commit.status).toBe(200);
    expect(commit.json.reservation).toMatchObject({ status: "committed", committedAmount: 73 });
    expect(commit.json.entry).toMatchObject({ type: "commit_reserved", amount: 73 });
    expect((await call("GET", "/credits/balance", "alice")).json).toMatchObject({ balance: 427, reserved: 0 });
    const again = await call("POST", `/credits/reservations/${r.json.id}/commit`, "alice", {});
    expect(again.status).toBe(409);
    expect(again.json.error.code).toBe("RESERVATION_NOT_ACTIVE");
    expect((await call("POST", `/credits/reservations/${r.json.id}/release`, "alice")).status).toBe(409);

    const r2 = await call("POST", "/credits/reservations", "alice", { amount: 10 });
    const rel = await call("POST", `/credits/reservations/${r2.json.id}/release`, "alice");
    expect(rel.status).toBe(200);
    expect(rel.json.reservation.status).toBe("released");
  });

  it("another user's reservation is a 404 indistinguishable from a missing one", async () => {
    const r = await call("POST", "/credits/reservations", "alice", { amount: 5 });
    const theirs = await call("GET", `/credits/reservations/${r.json.id}`, "mallory");
    const missing = await call("GET", `/credits/reservations/no-such-id`, "mallory");
    expect(theirs.status).toBe(404);
    expect(missing.status).toBe(404);
    expect(theirs.json.error.code).toBe(missing.json.error.code);
    expect(theirs.text.replaceAll(r.json.id, "ID")).toBe(missing.text.replaceAll("no-such-id", "ID"));
    expect(theirs.text).not.toContain("alice");
    expect((await call("POST", `/credits/reservations/${r.json.id}/commit`, "mallory", { amount: 0 })).status).toBe(
      404,
    );
    expect((await call("POST", `/credits/reservations/${r.json.id}/release`, "mallory")).status).toBe(404);
    expect((await call("GET", `/credits/reservations/${r.json.id}`, "alice")).json.status).toBe("active");
    // Admins reach every reservation.
    expect((await call("POST", `/credits/reservations/${r.json.id}/release`, ADMIN)).status).toBe(200);
  });

  it("commit, release and void pass the owner's userId, so the store routes them to one account", async () => {
    const commit = vi.spyOn(m.credits, "commitReservedCredits");
    const release = vi.spyOn(m.credits, "releaseReservedCredits");
    const voidGrant = vi.spyOn(m.credits, "voidGrant");
    try {
      await call("POST", "/admin/credits/users/erin/add", ADMIN, { amount: 50 });
      const a = await call("POST", "/credits/reservations", "erin", { amount: 5 });
      const b = await call("POST", "/credits/reservations", "erin", { amount: 5 });
      // Another user: the settle itself, routed to that user, finds no such hold (404), nothing changed.
      expect((await call("POST", `/credits/reservations/${a.json.id}/commit`, "mallory-2", {})).status).toBe(404);
      expect(commit).toHaveBeenLastCalledWith(a.json.id, expect.objectContaining({ userId: "mallory-2" }));
      expect((await call("GET", `/credits/reservations/${a.json.id}`, "erin")).json.status).toBe("active");
      expect(await m.db.getAccount("mallory-2")).toBeNull();
      expect((await call("POST", `/credits/reservations/${a.json.id}/commit`, "erin", { amount: 2 })).status).toBe(200);
      expect(commit).toHaveBeenLastCalledWith(a.json.id, expect.objectContaining({ userId: "erin", amount: 2 }));
      // An admin settles anyone's hold: its owner is read first and passed on.
      expect((await call("POST", `/credits/reservations/${b.json.id}/release`, ADMIN)).status).toBe(200);
      expect(release).toHaveBeenLastCalledWith(b.json.id, expect.objectContaining({ userId: "erin" }));
      // A user's body cannot name another owner.
      expect((await call("POST", `/credits/reservations/${b.json.id}/commit`, "erin", { userId: "x" })).status).toBe(
        400,
      );
      // The admin void takes the grant's owner, when known, in its body: another user's grant is a 404.
      const grantId = (await call("GET", "/admin/credits/users/erin/grants", ADMIN)).json.items[0].id;
      expect(grantId).toEqual(expect.any(String));
      expect((await call("POST", `/admin/credits/grants/${grantId}/void`, ADMIN, { userId: "frank" })).status).toBe(
        404,
      );
      expect((await call("GET", "/credits/balance", "erin")).json.balance).toBe(48);
      expect((await call("POST", `/admin/credits/grants/${grantId}/void`, ADMIN, { userId: "erin" })).status).toBe(200);
      expect(voidGrant).toHaveBeenLastCalledWith(grantId, expect.objectContaining({ userId: "erin" }));
      expect((await call("GET", "/credits/balance", "erin")).json.balance).toBe(0);
    } finally {
      vi.restoreAllMocks();
    }
  });

  it("402 when the hold cannot be placed, with the caller's own figures", async () => {
    const r = await call("POST", "/credits/reservations", "alice", { amount: 100_000 });
    expect(r.status).toBe(402);
    expect(r.json.error).toMatchObject({
      code: "INSUFFICIENT_CREDITS",
      details: { requested: 100_000, available: 427 },
    });
    const d = await call("POST", "/admin/credits/users/alice/deduct", ADMIN, { amount: 100_000 });
    expect(d.status).toBe(402);
  });

  it("Idempotency-Key: a retry returns the first result; other arguments are a 409", async () => {
    const key = { "idempotency-key": `hold-${host}` };
    const a = await call("POST", "/credits/reservations", "alice", { amount: 7 }, key);
    const b = await call("POST", "/credits/reservations", "alice", { amount: 7 }, key);
    expect(a.status).toBe(201);
    expect(b.json.id).toBe(a.json.id);
    expect((await call("GET", "/credits/balance", "alice")).json.reserved).toBe(7);
    const c = await call("POST", "/credits/reservations", "alice", { amount: 8 }, key);
    expect(c.status).toBe(409);
    expect(c.json.error.code).toBe("IDEMPOTENCY_CONFLICT");
    const mismatch = await call("POST", "/credits/reservations", "alice", { amount: 7, idempotencyKey: "other" }, key);
    expect(mismatch.status).toBe(400);
    const addKey = { "idempotency-key": `add-${host}` };
    await call("POST", "/admin/credits/users/bob/add", ADMIN, { amount: 50 }, addKey);
    await call("POST", "/admin/credits/users/bob/add", ADMIN, { amount: 50 }, addKey);
    expect((await call("GET", "/credits/balance", "bob")).json.balance).toBe(50);
    await call("POST", `/credits/reservations/${a.json.id}/release`, "alice");
  });

  it("410 for a hold past its TTL, 422 for an expiry not in the future", async () => {
    const r = await call("POST", "/credits/reservations", "alice", { amount: 20, ttlSeconds: 30 });
    now += 31_000;
    const late = await call("POST", `/credits/reservations/${r.json.id}/commit`, "alice", {});
    expect(late.status).toBe(410);
    expect(late.json.error.code).toBe("RESERVATION_EXPIRED");
    const past = await call("POST", "/admin/credits/users/alice/add", ADMIN, {
      amount: 5,
      expiresAt: new Date(now - 1000).toISOString(),
    });
    expect(past.status).toBe(422);
    expect(past.json.error.code).toBe("RULE_VIOLATION");
  });

  it("history pages with a cursor and filters by type and date", async () => {
    const first = await call("GET", "/credits/history?limit=2", "alice");
    expect(first.status).toBe(200);
    expect(first.json.items).toHaveLength(2);
    expect(first.json.nextCursor).toEqual(expect.any(String));
    const second = await call("GET", `/credits/history?limit=2&cursor=${first.json.nextCursor}`, "alice");
    expect(second.json.items[0].seq).toBeLessThan(first.json.items[1].seq);
    const adds = await call("GET", "/credits/history?types=add", "alice");
    expect(adds.json.items.every((e: { type: string }) => e.type === "add")).toBe(true);
    const both = await call("GET", "/credits/history?types=add&types=commit_reserved", "alice");
    expect(new Set(both.json.items.map((e: { type: string }) => e.type))).toEqual(new Set(["add", "commit_reserved"]));
    const none = await call("GET", `/credits/history?to=${encodeURIComponent("2020-01-01T00:00:00Z")}`, "alice");
    expect(none.json.items).toEqual([]);
    const admin = await call("GET", "/admin/credits/users/alice/history?limit=1", ADMIN);
    expect(admin.json.items).toHaveLength(1);
  });

  it("expiring credits, after-service deduction, voids and the audit", async () => {
    const soon = new Date(now + 3 * 86_400_000).toISOString();
    const add = await call("POST", "/admin/credits/users/carol/add", ADMIN, { amount: 40, expiresAt: soon });
    await call("POST", "/admin/credits/users/carol/add", ADMIN, { amount: 10 });
    const exp = await call("GET", "/credits/expiring?days=7", "carol");
    expect(exp.json).toMatchObject({ userId: "carol", total: 40 });
    expect((await call("GET", "/credits/expiring?days=1", "carol")).json.total).toBe(0);
    // Beyond the overdraft limit (10): 402, nothing taken.
    const past = await call("POST", "/admin/credits/users/carol/deduct", ADMIN, { amount: 61, afterService: true });
    expect(past.status).toBe(402);
    const d = await call("POST", "/admin/credits/users/carol/deduct", ADMIN, { amount: 60, afterService: true });
    expect(d.status).toBe(200);
    expect((await call("GET", "/credits/balance", "carol")).json).toMatchObject({ balance: -10, debt: 10 });
    expect(add.json.grants[0].amount).toBe(40);
  });

  it('records usage late with occurredAt (docs/usage.md, "Late usage"); beyond the window a 422', async () => {
    await call("POST", "/admin/credits/users/late-user/add", ADMIN, { amount: 50 });
    const yesterday = new Date(now - 86_400_000).toISOString();
    const d = await call("POST", "/admin/credits/users/late-user/deduct", ADMIN, { amount: 5, occurredAt: yesterday });
    expect(d.status).toBe(200);
    expect(d.json.occurredAt).toBe(yesterday);
    const old = new Date(now - 40 * 86_400_000).toISOString();
    const refused = await call("POST", "/admin/credits/users/late-user/deduct", ADMIN, { amount: 5, occurredAt: old });
    expect(refused.status).toBe(422);
    expect(refused.json.error).toMatchObject({ code: "RULE_VIOLATION", details: { issues: [{ path: "occurredAt" }] } });
    expect((await call("GET", "/credits/balance", "late-user")).json.balance).toBe(45);
  });

  it("voids a grant once (then 409), unknown grants 404, and the audit is clean", async () => {
    const add = await call("POST", "/admin/credits/users/dave/add", ADMIN, { amount: 30 });
    const grantId = add.json.grants[0].grantId;
    expect((await call("POST", `/admin/credits/grants/${grantId}/void`, ADMIN)).status).toBe(200);
    expect((await call("POST", `/admin/credits/grants/${grantId}/void`, ADMIN)).status).toBe(409);
    expect((await call("POST", `/admin/credits/grants/nope/void`, ADMIN)).status).toBe(404);
    expect((await call("GET", "/credits/balance", "dave")).json.balance).toBe(0);
    for (const u of ["alice", "bob", "carol", "dave"]) {
      const audit = await call("GET", `/admin/credits/users/${u}/audit`, ADMIN);
      expect(audit.status).toBe(200);
      expect(audit.json).toMatchObject({ ok: true, problems: [], from: "genesis" }); // no checkpoint yet
    }
    // From the first entry on request, past a checkpoint; a bad value is a 400.
    await m.credits.checkpoint("alice");
    const fromCheckpoint = await call("GET", "/admin/credits/users/alice/audit", ADMIN);
    expect(fromCheckpoint.json).toMatchObject({ ok: true, from: "checkpoint" });
    expect(fromCheckpoint.json.fromSeq).toBeGreaterThan(1);
    const fromGenesis = await call("GET", "/admin/credits/users/alice/audit?from=genesis", ADMIN);
    expect(fromGenesis.json).toMatchObject({ ok: true, from: "genesis", fromSeq: 1 });
    expect(fromGenesis.json.balance).toBe(fromCheckpoint.json.balance);
    expect((await call("GET", "/admin/credits/users/alice/audit?from=yesterday", ADMIN)).status).toBe(400);
  });

  it("unknown routes 404, wrong methods 405 with Allow, other paths fall through to the app", async () => {
    expect((await call("GET", "/credits/nope", "alice")).status).toBe(404);
    const wrong = await call("DELETE", "/credits/balance", "alice");
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get("allow")).toBe("GET");
    if (host !== "node:http") {
      const other = await call("GET", "/elsewhere");
      expect(other.json).toEqual({ app: true });
    }
  });

  it("a throwing route is a bare 500 (the host's onError gets the error)", async () => {
    const before = errors.length;
    const r = await call("GET", "/credits/boom", "alice");
    expect(r.status).toBe(500);
    expect(r.json.error.code).toBe("INTERNAL_ERROR");
    expect(r.text).not.toContain("password");
    expect(errors.length).toBe(before + 1);
  });

  it("hands route groups the raw body bytes untouched", async () => {
    const bytes = '{"b": 1,  "a":"\\u00e9"}\n';
    const r = await call("POST", "/credits/echo-raw", null, bytes);
    expect(r.text).toBe(bytes);
  });

  it("serves an OpenAPI 3.1 document that validates, generated from the zod models", async () => {
    const r = await call("GET", "/credits/openapi.json");
    expect(r.status).toBe(200);
    const doc = r.json;
    expect(doc.openapi).toBe("3.1.0");
    const validator = new Validator();
    const result = await validator.validate(structuredClone(doc));
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    expect(validator.version).toBe("3.1");
    // The validator does refuse a broken document (so the check above means something).
    const broken = structuredClone(doc);
    broken.paths["/credits/balance"].get.parameters = [{ name: "x", schema: { type: "string" } }]; // no "in"
    expect((await new Validator().validate(broken)).valid).toBe(false);
    // Every $ref points at something that exists.
    const refs = [...JSON.stringify(doc).matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map((x) => x[1]);
    for (const ref of refs) expect(doc.components.schemas).toHaveProperty(ref as string);
    // The models' rules are in it.
    const add = doc.paths["/admin/credits/users/{userId}/add"].post;
    const body = add.requestBody.content["application/json"].schema;
    expect(body.properties.amount).toMatchObject({ type: "integer", minimum: 1 });
    expect(body.required).toContain("amount");
    expect(body.properties.effectiveAt).toBeDefined();
    expect(body.additionalProperties).toBe(false);
    expect(add.responses["403"]).toBeDefined();
    const reservation = doc.paths["/credits/reservations/{id}"].get.responses["200"].content["application/json"].schema;
    expect(reservation.properties.expiresAt).toMatchObject({ type: "string", format: "date-time" });
    const history = doc.paths["/credits/history"].get.parameters.map((p: { name: string }) => p.name);
    expect(history).toEqual(expect.arrayContaining(["limit", "cursor", "types", "from", "to"]));
    expect(doc.paths["/credits/openapi.json"].get.security).toEqual([]);
  });

  it("states a user id's two patterns as one string pattern (a generator reads it as a plain string)", async () => {
    const doc = (await call("GET", "/credits/openapi.json")).json;
    const balance = doc.paths["/credits/balance"].get.responses["200"].content["application/json"].schema;
    const userId = balance.properties.userId;
    expect(userId.type).toBe("string");
    expect(userId.allOf).toBeUndefined();
    // The one pattern keeps both rules: printable, and not "." nor "..".
    const pattern = new RegExp(userId.pattern as string, "u");
    expect(["alice", "a.b", "..."].map((id) => pattern.test(id))).toEqual([true, true, true]);
    expect([".", "..", "a\u0000b", ""].map((id) => pattern.test(id))).toEqual([false, false, false, false]);
    expect(JSON.stringify(doc)).not.toContain('"allOf":[{"pattern"');
  });
});

describe("createCreditHandler setup", () => {
  it("refuses to run without an identity source", async () => {
    const m = await createCreditManager();
    expect(() => createCreditHandler(m)).toThrow(/authenticate/);
    expect(() =>
      createCreditHandler(m, { authenticate: () => null, routes: [{ ...dup(), path: "/balance" }] }),
    ).toThrow(/two routes/);
    await m.close();
  });
  it("refuses the core's manager (credit-management/core), as JavaScript would pass it, naming what it lacks", async () => {
    // With every part of the core, it still lacks the modules.
    const core = await createCoreManager({
      parts: { subscriptions: subscriptionsPart(), notifications: notificationsPart(), expiration: expirationPart() },
    });
    try {
      // From JavaScript nothing stops it: the cast stands for that.
      const build = () => createCreditHandler(core as never, { trustUserIdHeader: true });
      expect(build).toThrow(ConfigurationError);
      expect(build).toThrow(
        /lacks credits\.getCustomerState, credits\.listCustomerStates, credits\.getUsage, credits\.getRevenue, promos, payments\.$/,
      );
      // The health routes need manager.health too.
      const m = await createCreditManager();
      const noHealth = { ...m, health: undefined };
      expect(() => createCreditHandler(noHealth as never, { trustUserIdHeader: true, health: {} })).toThrow(
        /lacks health\.$/,
      );
      expect(() => createCreditHandler(m, { trustUserIdHeader: true, health: {} })).not.toThrow();
      await m.close();
    } finally {
      await core.close();
    }
  });
  it("works behind express.json() too (the parsed body is re-serialised)", async () => {
    const m = await createCreditManager();
    const app = express();
    app.use(express.json());
    app.use(toNodeHandler(createCreditHandler(m, { authenticate })));
    const server = await listen(createServer(app));
    const res = await fetch(`${server.url}/admin/credits/users/zoe/add`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: JSON.stringify({ amount: 12 }),
    });
    expect(res.status).toBe(201);
    expect((await m.credits.getUserCreditsInfo("zoe")).balance).toBe(12);
    await server.close();
    await m.close();
  });

  it("HttpError carries its own status, and is a CreditError with its code", () => {
    const error = new HttpError(418, "FORBIDDEN", "short and stout", { pot: "tea" });
    expect(error.status).toBe(418);
    expect(error).toBeInstanceOf(CreditError);
    expect(error.toJSON()).toEqual({ code: "FORBIDDEN", message: "short and stout", details: { pot: "tea" } });
    expect(error.name).toBe("HttpError");
  });
});

function dup(): RouteDefinition {
  return {
    method: "GET",
    base: "user",
    path: "/x",
    access: "user",
    operationId: "x",
    summary: "x",
    handle: () => ({}),
  };
}
