import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createCreditManager,
  ConfigurationError,
  CreditError,
  RuleViolationError,
  ValidationError,
  type CreditManager,
} from "../src/index.js";
import { contextProbe } from "./fixtures/module-context.js";

const badAmounts: unknown[] = [
  0,
  -1,
  1.5,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  2 ** 53,
  "10",
  null,
  undefined,
  {},
  10n,
];
// Lone UTF-16 surrogates: stores would turn them into U+FFFD and mix up two ids.
const badUserIds: unknown[] = [
  "",
  5,
  "a\u0000b",
  "x".repeat(257),
  null,
  undefined,
  "a\uD800",
  "\uDC00b",
  "a\uDBFF\uDBFF",
  // Dot segments: a URL parser removes them, so `/admin/credits/users/../usage` would be the fleet's.
  ".",
  "..",
];

describe("bad input is a ValidationError and changes nothing", () => {
  let m: CreditManager;
  let file: string;
  let reservationId: string;
  let grantId: string;
  const U = "valid-user";
  const probe = contextProbe();

  beforeAll(async () => {
    file = join(mkdtempSync(join(tmpdir(), "cm-val-")), "ledger.jsonl");
    m = await createCreditManager({ ledger: { filePath: file }, modules: [probe.module] });
    grantId = (await m.credits.addCredits(U, 100)).grants[0]?.grantId ?? "";
    reservationId = (await m.credits.reserveCredits(U, 10)).id;
    await m.ledger.flush();
  });
  afterAll(async () => m.close());

  const expectInvalid = async (call: () => Promise<unknown>, pattern?: RegExp) => {
    const error = await call().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ValidationError);
    expect(error).toBeInstanceOf(CreditError);
    expect((error as ValidationError).code).toBe("VALIDATION_ERROR");
    expect((error as ValidationError).status).toBe(400);
    if (pattern) expect((error as Error).message).toMatch(pattern);
  };

  /** Bad options of the manager (set up once, not one call's input): ConfigurationError, naming the field. */
  const expectMisconfigured = async (call: () => Promise<unknown>, pattern: RegExp) => {
    const error = await call().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as ConfigurationError).code).toBe("CONFIGURATION_ERROR");
    expect((error as Error).message).toMatch(pattern);
    // The field-by-field issues stay on its cause.
    expect((error as Error).cause).toBeInstanceOf(ValidationError);
  };

  /** Well-formed but refused by a rule: RuleViolationError, HTTP 422. */
  const expectRefused = async (call: () => Promise<unknown>, pattern: RegExp) => {
    const error = await call().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(RuleViolationError);
    expect((error as RuleViolationError).code).toBe("RULE_VIOLATION");
    expect((error as RuleViolationError).status).toBe(422);
    expect((error as Error).message).toMatch(pattern);
  };

  it.each(badAmounts.map((a) => [String(a), a]))(
    "amount %s is refused by every amount-taking method",
    async (_label, amount) => {
      const c = m.credits;
      await expectInvalid(() => c.addCredits(U, amount as number), /amount/);
      await expectInvalid(() => c.deductCredits(U, amount as number), /amount/);
      await expectInvalid(() => c.deductCreditsAfterService(U, amount as number), /amount/);
      await expectInvalid(() => c.reserveCredits(U, amount as number), /amount/);
    },
  );

  it.each(badUserIds.map((u) => [JSON.stringify(u) ?? "undefined", u]))(
    "userId %s is refused by every user method",
    async (_label, userId) => {
      const c = m.credits;
      const u = userId as string;
      await expectInvalid(() => c.addCredits(u, 1), /userId/);
      await expectInvalid(() => c.deductCredits(u, 1), /userId/);
      await expectInvalid(() => c.deductCreditsAfterService(u, 1), /userId/);
      await expectInvalid(() => c.reserveCredits(u, 1), /userId/);
      await expectInvalid(() => c.getUserCreditsInfo(u), /userId/);
      await expectInvalid(() => c.getCreditHistory(u), /userId/);
      await expectInvalid(() => c.getExpiringCredits(u, 7), /userId/);
      await expectInvalid(() => c.getGrants(u), /userId/);
      await expectInvalid(() => c.getCustomerState(u), /userId/);
      await expectInvalid(() => c.listCustomerStates({ userIds: [u] }), /userIds/);
      await expectInvalid(() => c.expireCredits(u), /userId/);
      await expectInvalid(() => c.audit(u), /userId/);
    },
  );

  it("refuses bad options with a message naming the field", async () => {
    const c = m.credits;
    await expectInvalid(() => c.addCredits(U, 1, { expiry: new Date() } as never), /options/);
    await expectRefused(() => c.addCredits(U, 1, { expiresAt: new Date(Date.now() - 1000) }), /expiresAt.*future/);
    await expectInvalid(() => c.addCredits(U, 1, { expiresAt: "tomorrow" }), /expiresAt/);
    await expectInvalid(() => c.addCredits(U, 1, { expiresAt: new Date(Number.NaN) }), /expiresAt/);
    await expectInvalid(() => c.addCredits(U, 1, { priority: -1 }), /priority/);
    await expectInvalid(() => c.addCredits(U, 1, { source: "gift" as never }), /source/);
    await expectInvalid(() => c.addCredits(U, 1, { idempotencyKey: "" }), /idempotencyKey/);
    await expectInvalid(() => c.addCredits(U, 1, { metadata: { f: (() => 1) as never } }), /metadata/);
    await expectInvalid(() => c.addCredits(U, 1, { idempotencyKey: "top-up-\uD800" }), /idempotencyKey.*well-formed/);
    await expectInvalid(() => c.addCredits(U, 1, { description: "d\uDFFF" }), /description.*well-formed/);
    await expectInvalid(
      () => c.addCredits(U, 1, { metadata: { a: { b: ["ok", "x\uD800"] } } }),
      /options\.metadata\.a\.b\.1.*well-formed/,
    );
    await expectInvalid(() => c.addCredits(U, 1, { metadata: { "k\uD800": 1 } }), /metadata.*well-formed/);
    await expectInvalid(() => c.deductCredits(U, 1, { correlationId: "\uDC00" }), /correlationId.*well-formed/);
    await expectInvalid(() => c.addCredits(U, 1, { expiresAt: new Date(Date.UTC(10_000, 0, 1)) }), /expiresAt.*9999/);
    await expectInvalid(() => c.deductCredits(U, 1, null as never), /options/);
    await expectInvalid(() => c.reserveCredits(U, 1, { ttlSeconds: 0 }), /ttlSeconds/);
    await expectInvalid(() => c.reserveCredits(U, 1, { ttlSeconds: 1.5 }), /ttlSeconds/);
    await expectInvalid(() => c.reserveCredits(U, 1, { ttlSeconds: 31 * 86400 }), /ttlSeconds/);
    await expectInvalid(() => c.commitReservedCredits(reservationId, { amount: -1 }), /amount/);
    await expectInvalid(() => c.commitReservedCredits(reservationId, { amount: 0.5 }), /amount/);
    await expectInvalid(() => c.commitReservedCredits(""), /reservationId/);
    await expectInvalid(() => c.releaseReservedCredits(42 as never), /reservationId/);
    await expectInvalid(() => c.voidGrant("", {}), /grantId/);
    await expectInvalid(() => c.voidGrant(grantId, { reason: "x" } as never), /options/);
    await expectInvalid(() => c.getCreditHistory(U, { limit: 0 }), /limit/);
    await expectInvalid(() => c.getCreditHistory(U, { cursor: "abc" }), /cursor/);
    // Digits only, but beyond any seq (PostgreSQL answered these with a StorageError).
    await expectInvalid(() => c.getCreditHistory(U, { cursor: "9223372036854775808" }), /cursor/);
    await expectInvalid(() => c.getCreditHistory(U, { cursor: "99999999999999999999999" }), /cursor/);
    await expectInvalid(() => c.getCreditHistory(U, { types: ["bogus" as never] }), /types/);
    await expectInvalid(() => c.listCustomerStates({ limit: 0 }), /limit/);
    await expectInvalid(() => c.listCustomerStates({ limit: 1.5 }), /limit/);
    await expectInvalid(() => c.listCustomerStates({ cursor: "" }), /cursor/);
    await expectInvalid(() => c.listCustomerStates({ users: ["a"] } as never), /query/);
    await expectInvalid(() => c.getExpiringCredits(U, -1), /days/);
    await expectInvalid(() => c.getExpiringCredits(U, Number.NaN), /days/);
    await expectRefused(() => c.expireCredits(U, new Date(Date.now() + 3_600_000)), /asOf.*future/);
    await expectInvalid(() => m.ledger.getEntries({ eventType: "transaction" as never }), /eventType/);
    await expectInvalid(() => m.ledger.getEntries({ limit: 0 }), /limit/);
    await expectInvalid(() => m.ledger.getEntries({ before: "yesterday" as never }), /before/);
    await expectInvalid(() => m.ledger.getEntries({ userId: "" }), /userId/);
    await expectInvalid(() => m.ledger.getEntries({ beforeId: "x" }), /beforeId/);
    await expectInvalid(() => m.ledger.getEntries({ user: "u" } as never), /query/);
    await expectMisconfigured(() => createCreditManager({ bogus: true } as never), /options.*bogus/);
    await expectMisconfigured(() => createCreditManager({ db: {} as never }), /options\.db/);
  });

  it("refuses options that are not plain objects (a Map's entries would be ignored), on every service", async () => {
    const c = m.credits;
    // Before, zod read these as objects without fields: a Map's idempotencyKey was lost, so a retry deducted twice.
    const notPlain: [string, object][] = [
      ["Map", new Map([["idempotencyKey", "k"]])],
      ["Date", new Date()],
      ["Set", new Set(["k"])],
      ["Foo", new (class Foo {})()],
      ["an array", []],
    ];
    for (const [name, o] of notPlain) {
      const bad = o as never;
      const pattern = new RegExp(`options: must be a plain object.*${name}`);
      await expectInvalid(() => c.deductCredits(U, 1, bad), pattern);
      await expectInvalid(() => c.deductCreditsAfterService(U, 1, bad), pattern);
      await expectInvalid(() => probe.ctx().chargeUpToLimit(U, 1, bad), pattern);
      await expectInvalid(() => c.addCredits(U, 1, bad), pattern);
      await expectInvalid(() => c.reserveCredits(U, 1, bad), pattern);
      await expectInvalid(() => c.commitReservedCredits(reservationId, bad), pattern);
      await expectInvalid(() => c.releaseReservedCredits(reservationId, bad), pattern);
      await expectInvalid(() => c.voidGrant(grantId, bad), pattern);
      await expectInvalid(() => c.getGrants(U, bad), pattern);
      await expectInvalid(() => c.getCreditHistory(U, bad), /query: must be a plain object/);
      await expectInvalid(() => m.ledger.getEntries(bad), /query: must be a plain object/);
      await expectInvalid(() => m.subscriptions.subscribe(U, "plan", bad), pattern);
      await expectInvalid(() => m.subscriptions.changePlan(U, "plan", bad), pattern);
      await expectInvalid(() => m.subscriptions.cancel(U, bad), pattern);
      await expectInvalid(() => m.subscriptions.listPlans(bad), pattern);
      await expectInvalid(() => m.promos.claimPromo(U, "CODE", bad), pattern);
      await expectInvalid(() => m.expiration.runAll(undefined, bad), pattern);
      await expectInvalid(() => m.notifications.dispatchPending(bad), pattern);
      await expectMisconfigured(() => createCreditManager(bad), pattern);
    }
    // A plain object without a prototype is a plain object.
    const bare = Object.assign(Object.create(null) as object, { limit: 1 });
    expect((await c.getCreditHistory(U, bare)).items).toHaveLength(1);
  });

  it("refuses cyclic, deep, large or non-JSON metadata and the key __proto__, with the path, and with the call's other errors", async () => {
    const c = m.credits;
    const loop: Record<string, unknown> = { a: 1 };
    loop.self = loop;
    const cyclic = loop as never; // not JSON, so not of the metadata's type
    const nest = (levels: number) => {
      const root: Record<string, unknown> = {};
      let at = root;
      for (let i = 1; i < levels; i++) at = (at.x = {}) as Record<string, unknown>;
      return root as never;
    };
    // A raw RangeError (stack overflow) before: through HTTP, a 500.
    await expectInvalid(() => c.addCredits(U, 1, { metadata: cyclic }), /options\.metadata\.self: .*cycle/);
    await expectInvalid(
      () => c.deductCredits(U, 1, { metadata: { list: [cyclic] } }),
      /options\.metadata\.list\.0\.self: .*cycle/,
    );
    await expectInvalid(
      () => c.deductCredits(U, 1, { metadata: nest(2000) }),
      /options\.metadata\.(x\.){31}x: .*32 levels/,
    );
    await expectInvalid(() => c.deductCredits(U, 1, { metadata: nest(33) }), /32 levels/);
    await expectInvalid(
      () => c.deductCredits(U, 1, { metadata: { s: "x".repeat(70_000) } }),
      /options\.metadata\.s: .*65536 characters/,
    );
    await expectInvalid(
      () => c.deductCredits(U, 1, { metadata: { a: new Array(40_000).fill(0) } }),
      /65536 characters/,
    );
    await expectInvalid(
      () => c.deductCredits(U, 1, { metadata: { at: new Date() as never } }),
      /options\.metadata\.at: .*plain objects/,
    );
    await expectInvalid(
      () => c.deductCredits(U, 1, { metadata: { m: new Map() as never } }),
      /options\.metadata\.m: .*plain objects/,
    );
    // JSON.parse makes "__proto__" an own key; copying would set the prototype instead and drop it.
    const proto = JSON.parse('{"__proto__":{"x":1},"y":2}') as Record<string, never>;
    await expectInvalid(() => c.addCredits(U, 1, { metadata: proto }), /options\.metadata\.__proto__: .*"__proto__"/);
    await expectInvalid(() => c.addCredits(U, 1, { metadata: { a: [proto] } }), /options\.metadata\.a\.0\.__proto__/);
    await expectInvalid(() => m.subscriptions.subscribe(U, "plan", { metadata: cyclic }), /metadata\.self: .*cycle/);
    // The metadata's problem is one issue among the call's others, not the only one reported.
    const error = (await c
      .reserveCredits(U, 1, { metadata: cyclic, ttlSeconds: 0 })
      .catch((e: unknown) => e)) as ValidationError;
    expect(error).toBeInstanceOf(ValidationError);
    expect(error.issues.map((i) => i.path).sort()).toEqual(["metadata.self", "ttlSeconds"]);
  });

  it("refuses a caller's metadata keys `requested` and `shortfall` (the library's, counted by usage and revenue); nothing changes", async () => {
    const c = m.credits;
    const before = (await c.getCreditHistory(U, { limit: 1000 })).items.length;
    await expectInvalid(
      () => c.deductCreditsAfterService(U, 1, { metadata: { shortfall: 1000 } }),
      /options\.metadata\.shortfall: .*library/,
    );
    await expectInvalid(
      () => c.reserveCredits(U, 1, { metadata: { requested: 5 } }),
      /options\.metadata\.requested: .*library/,
    );
    await expectInvalid(() => c.addCredits(U, 1, { metadata: { shortfall: 1 } }), /shortfall/);
    expect((await c.getCreditHistory(U, { limit: 1000 })).items).toHaveLength(before);
  });

  it("refuses the NUL character in free text and in metadata keys and string values at any depth", async () => {
    const c = m.credits;
    const nul = /NUL character/;
    await expectInvalid(() => c.addCredits(U, 1, { description: "a\u0000b" }), /options\.description: .*NUL/);
    await expectInvalid(() => c.addCredits(U, 1, { sourceRef: "\u0000" }), nul);
    await expectInvalid(() => c.deductCredits(U, 1, { correlationId: "c\u0000" }), /options\.correlationId/);
    await expectInvalid(() => c.reserveCredits(U, 1, { reason: "r\u0000" }), /options\.reason: .*NUL/);
    await expectInvalid(() => c.reverseCharge(U, reservationId, { reason: "\u0000why" }), nul);
    await expectInvalid(() => c.addCredits(U, 1, { metadata: { "k\u0000": 1 } }), /options\.metadata\.k.: key .*NUL/);
    await expectInvalid(
      () => c.deductCredits(U, 1, { metadata: { a: [{ b: "x\u0000y" }] } }),
      /options\.metadata\.a\.0\.b: .*NUL/,
    );
    await expectInvalid(() => m.promos.claimPromo(U, "CODE", { correlationId: "\u0000" }), nul);
    await expectInvalid(
      () => m.subscriptions.createPlan({ id: "p", name: "n\u0000", creditsPerPeriod: 1, billingPeriod: "monthly" }),
      nul,
    );
    await expectInvalid(() => c.meter(U, { estimate: 1, description: "\u0000" }, () => 1), nul);
  });

  it("left the account, the journal and the ledger file exactly as they were", async () => {
    const c = m.credits;
    expect(await c.getUserCreditsInfo(U)).toEqual({ userId: U, balance: 100, reserved: 10, available: 90, debt: 0 });
    const history = await c.getCreditHistory(U);
    expect(history.items.map((e) => e.type)).toEqual(["reserve", "add"]);
    expect((await c.getReservation(reservationId)).status).toBe("active");
    await m.ledger.flush();
    const lines = readFileSync(file, "utf8").trim().split("\n");
    expect(lines).toHaveLength(2);
    expect((await c.audit(U)).ok).toBe(true);
  });
});

describe("text with characters outside the Basic Multilingual Plane", () => {
  it("is accepted when well-formed (surrogate pairs), and reads back as written", async () => {
    const m = await createCreditManager();
    const u = "user-\u{1F600}";
    const entry = await m.credits.addCredits(u, 5, {
      description: "gift \u{1F381}",
      idempotencyKey: "key-\u{1F511}",
      metadata: { "\u{1F4E6}": ["\u{1D11E}"] },
      expiresAt: new Date(Date.UTC(9999, 11, 31)),
    });
    expect(entry).toMatchObject({ userId: u, description: "gift \u{1F381}", metadata: { "\u{1F4E6}": ["\u{1D11E}"] } });
    expect((await m.credits.getUserCreditsInfo(u)).balance).toBe(5);
    expect((await m.credits.audit(u)).ok).toBe(true);
    await m.close();
  });
});

describe("metadata within the limits", () => {
  let m: CreditManager;
  beforeAll(async () => {
    m = await createCreditManager();
  });
  afterAll(async () => m.close());

  it("keeps metadata at the limits, shared (not cyclic) values, and the keys constructor and prototype as data", async () => {
    const shared = { s: 1 };
    const nest = (levels: number) => {
      const root: Record<string, unknown> = {};
      let at = root;
      for (let i = 1; i < levels; i++) at = (at.x = {}) as Record<string, unknown>;
      return root as never;
    };
    const u = "metadata-limits";
    await m.credits.addCredits(u, 10, { metadata: nest(32) });
    await m.credits.addCredits(u, 10, {
      metadata: { a: shared, b: [shared], constructor: 1, prototype: { toString: 2 } },
    });
    await m.credits.addCredits(u, 10, { metadata: { s: "x".repeat(60_000) } });
    const items = (await m.credits.getCreditHistory(u)).items;
    expect(items[1]?.metadata).toEqual({ a: { s: 1 }, b: [{ s: 1 }], constructor: 1, prototype: { toString: 2 } });
    expect(JSON.stringify(items[2]?.metadata).split("x").length - 1).toBe(31);
    expect((await m.credits.audit(u)).ok).toBe(true);
  });
});
