// The rules of usage are one table (USAGE_RULES in src/core/domain/usage.ts, docs/usage.md); the
// PostgreSQL and SQLite queries, the MongoDB pipeline and PostgreSQL's daily rollup trigger are
// generated from it. For every entry kind the rules tell apart (and the edges between them), one
// journal entry through each generated piece equals the domain's answer. The entries are written
// straight into journal tables of the stores' shape, so metadata the public API never writes (a
// take-back described in lower case, a lease window with an empty breakdown) is covered too.
import { randomUUID } from "node:crypto";
import Database from "better-sqlite3";
import { MongoClient } from "mongodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { usageBucketOf, usagePipeline } from "../src/db/mongodb/usage.js";
import { usageSql } from "../src/db/postgres/usage.js";
import { SQLITE_QUERY, usageBucket, usageQuery } from "../src/db/usage-query.js";
import {
  USAGE_MEASURES,
  USAGE_RULES,
  UsageAccumulator,
  isNegated,
  orderBuckets,
  reversalMetadata,
  usageKind,
  usageParts,
  type UsageBucket,
  type UsageRules,
  type UsageScan,
} from "../src/core/domain/usage.js";
import type { JournalEntry, UsageDimension } from "../src/models-public.js";
import { rollupCatchUpSql, rollupDdl } from "../src/schema/rollup.js";
import { withPgClient } from "./fixtures/pg-admin.js";

type Entry = Pick<
  JournalEntry,
  | "type"
  | "amount"
  | "metadata"
  | "description"
  | "reservationId"
  | "feature"
  | "spender"
  | "occurredAt"
  | "takeBack"
  | "shortfall"
>;
const base: Entry = { type: "deduct", amount: 10, metadata: null, description: null, reservationId: null };
const window = (lw: NonNullable<JournalEntry["metadata"]>) => ({ leaseWindow: lw });
const part = { model: "m1", feature: "f1", spender: "s1", credits: 4, requests: 2, inputTokens: 7, outputTokens: 3 };

/** One entry a case, by name. */
const CASES: Record<string, Entry> = {
  deduct: { ...base, feature: "chat", spender: "k1" },
  "deduct with a hold's id (excess of a capture)": { ...base, reservationId: "h1" },
  capture: { ...base, type: "commit_reserved", reservationId: "h2", amount: 7 },
  "lease window with parts and a rest": {
    ...base,
    type: "commit_reserved",
    reservationId: "h3",
    amount: 30,
    metadata: window({
      requests: 9,
      parts: [part, { ...part, model: null, feature: 3, credits: "x", cachedTokens: 5 }],
    }),
  },
  "lease window whose parts add up": {
    ...base,
    type: "commit_reserved",
    reservationId: "h4",
    amount: 4,
    metadata: window({ requests: 2, parts: [part] }),
  },
  "lease window with no parts": {
    ...base,
    type: "commit_reserved",
    reservationId: "h5",
    feature: "img",
    metadata: window({ requests: 3, parts: [] }),
  },
  "lease window with requests not a number": {
    ...base,
    type: "commit_reserved",
    reservationId: "h6",
    metadata: window({ requests: "3" }),
  },
  "metered, one usage": {
    ...base,
    amount: 5,
    feature: "chat",
    metadata: { usages: [{ model: "small", amount: 5, inputTokens: 40, outputTokens: 6, cachedTokens: 1 }] },
  },
  "metered, usages short of the amount": {
    ...base,
    amount: 12,
    metadata: {
      usages: [
        { model: "small", amount: 3, inputTokens: 10 },
        { model: "large", amount: 4, outputTokens: 2, cachedTokens: 8 },
      ],
    },
  },
  "metered, usages over the amount": { ...base, amount: 2, metadata: { usages: [{ model: "large", amount: 5 }] } },
  "usages empty": { ...base, metadata: { usages: [] } },
  "usages not an array": { ...base, metadata: { usages: { model: "x", amount: 3 } } },
  // What a take-back is, the library records (`takeBack`); a caller's metadata and description
  // decide nothing.
  refund: {
    ...base,
    description: "Refund of p1",
    metadata: { paymentId: "p1", refundedAmount: 10 },
    takeBack: "refund",
  },
  "refund as a void": { ...base, type: "void", metadata: { paymentId: "p2", refundedAmount: 4 }, takeBack: "refund" },
  clawback: {
    ...base,
    type: "void",
    description: "Lost dispute on p3",
    metadata: { paymentId: "p3", refundedAmount: 9 },
    takeBack: "clawback",
  },
  "clawback described otherwise": { ...base, type: "void", description: "chargeback", takeBack: "clawback" },
  "a take-back's metadata on a deduction (spend)": {
    ...base,
    description: "Lost dispute on p4",
    metadata: { paymentId: "p4", refundedAmount: 9 },
  },
  "a take-back's metadata on a capture (spend)": {
    ...base,
    type: "commit_reserved",
    reservationId: "h8",
    metadata: { paymentId: "p5", refundedAmount: 9 },
  },
  "a take-back's metadata on a void (no usage)": {
    ...base,
    type: "void",
    description: "Lost dispute on p6",
    metadata: { paymentId: "p6", refundedAmount: 9 },
  },
  // What was served and not paid is the entry's `shortfall`, which the library alone sets; a
  // metadata `shortfall` (the entry's or a lease window part's) counts for nothing.
  "cut deduction (its shortfall)": { ...base, amount: 0, shortfall: 6, metadata: { requested: 6 } },
  "cut capture with usages": {
    ...base,
    type: "commit_reserved",
    reservationId: "h9",
    amount: 4,
    shortfall: 5,
    metadata: { requested: 9, usages: [{ model: "large", amount: 9, inputTokens: 6 }] },
  },
  "cut lease window, its parts saying a shortfall": {
    ...base,
    type: "commit_reserved",
    reservationId: "h10",
    amount: 3,
    shortfall: 2,
    metadata: window({ requests: 2, parts: [{ ...part, credits: 5, shortfall: 9 }] }),
  },
  "a metadata shortfall on a deduction (none)": { ...base, metadata: { requested: 50, shortfall: 40 } },
  "other void (no usage)": { ...base, type: "void" },
  "addition (no usage)": { ...base, type: "add" },
  "hold (no usage)": { ...base, type: "reserve", reservationId: "h7" },
  // Usage recorded late (docs/usage.md, "Late usage"): placed at its occurredAt.
  "late deduct, placed in the range": { ...base, feature: "chat", occurredAt: new Date(Date.now() - 80_000_000) },
  "late deduct, placed before the range": { ...base, occurredAt: new Date(Date.now() - 90_000_000) },
};
// Reversals (docs/usage.md, "Corrections"): a lease window given back in part, then the rest; a
// metered call's given back whole.
const lease = CASES["lease window with parts and a rest"]! as JournalEntry;
const reversal = (charge: Entry, amount: number, before: number): Entry => ({
  ...base,
  type: "reverse",
  amount,
  feature: charge.feature ?? null,
  spender: charge.spender ?? null,
  description: "job failed",
  occurredAt: new Date(Date.now() - 7_200_000),
  metadata: reversalMetadata(charge as JournalEntry, amount, before),
});
CASES["reversal of a lease window, in part"] = reversal(lease, 11, 0);
CASES["reversal of a lease window, the rest"] = reversal(lease, 19, 11);
CASES["reversal of a metered call, whole"] = reversal(CASES["metered, usages short of the amount"]!, 12, 0);

const spend = USAGE_RULES.rules.spend;
/**
 * The table changed as an edit of it would: refunds count at −1, a clawback not on a hold is a
 * request, a lease window's parts balance only its credits (their own requests add up), and
 * metered usages give each a request of its own field. Every generated piece follows the table.
 */
const CHANGED: UsageRules = {
  ...USAGE_RULES,
  rules: {
    ...USAGE_RULES.rules,
    refund: { ...USAGE_RULES.rules.refund, sign: -1 },
    clawback: {
      ...USAGE_RULES.rules.clawback,
      measures: {
        ...USAGE_RULES.rules.clawback.measures,
        requests: [
          { when: [{ held: false }], then: 1 },
          { when: [], then: 0 },
        ],
      },
    },
    spend: {
      ...spend,
      parts: spend.parts.map((p) =>
        p.array[0] === "leaseWindow"
          ? { ...p, balanced: ["credits"] }
          : p.array[0] === "usages"
            ? { ...p, fields: { ...p.fields, requests: "requests" } }
            : p,
      ),
    },
  },
};

const now = Date.now();
const at = new Date(now - 3_600_000);
const from = new Date(now - 86_400_000);
const to = new Date(now + 86_400_000);
const accounts = Object.keys(CASES).map((name, i) => ({ name, user: `case${i}`, e: CASES[name]! }));
const GROUPINGS: UsageDimension[][] = [[], ["account"], ["model", "feature", "spender"], ["reason"]];

function scan(account: string | null, groupBy: UsageDimension[]): UsageScan {
  return {
    account,
    from,
    to,
    interval: null,
    timeZone: "UTC",
    groupBy,
    kinds: ["spend", "refund", "clawback"],
    orderBy: "start",
    limit: 1000,
    boundaries: [from.getTime(), to.getTime()],
  };
}

/** The domain's answer (what the memory store runs). */
function expected(
  user: string,
  e: Entry,
  groupBy: UsageDimension[],
  rules: UsageRules,
  allTime = false,
): UsageBucket[] {
  const within = scan(user, groupBy);
  // All time: the rollup keeps every day, a late entry's before the range too.
  const acc = new UsageAccumulator(allTime ? { ...within, boundaries: [0, 8.64e15] } : within, rules);
  acc.add(user, { ...e, id: "x", userId: user, createdAt: at } as unknown as JournalEntry);
  return acc.result();
}

const sorted = (b: UsageBucket[]) => orderBuckets(b, { groupBy: [], orderBy: "start" }).map((x) => JSON.stringify(x));
const same = (name: string, got: UsageBucket[], want: UsageBucket[]) =>
  expect(sorted(got).sort(), name).toEqual(sorted(want).sort());

it("the cases cover every usage kind and entries that are none", () => {
  const kinds = new Set(Object.values(CASES).map((e) => usageKind(e)));
  expect(kinds).toEqual(new Set(["spend", "refund", "clawback", null]));
  // A take-back is what the library recorded, never what a caller's metadata or description say.
  expect(
    [
      "a take-back's metadata on a deduction (spend)",
      "a take-back's metadata on a capture (spend)",
      "a take-back's metadata on a void (no usage)",
      "clawback described otherwise",
    ].map((name) => usageKind(CASES[name]!)),
  ).toEqual(["spend", "spend", null, "clawback"]);
  // Every case with parts adds up to the entry's amount.
  for (const e of Object.values(CASES)) {
    const parts = usageParts(e);
    if (parts.length > 0) expect(parts.reduce((s, p) => s + p.credits, 0)).toBe(isNegated(e) ? -e.amount : e.amount);
  }
  // The changed table answers otherwise for refunds, clawbacks, lease windows and metered usage.
  const differ = Object.keys(CASES).filter(
    (name) => JSON.stringify(usageParts(CASES[name]!, CHANGED)) !== JSON.stringify(usageParts(CASES[name]!)),
  );
  expect(differ).toEqual(
    expect.arrayContaining([
      "refund",
      "clawback",
      "lease window with parts and a rest",
      "metered, usages short of the amount",
    ]),
  );
  expect(usageParts(CASES.refund!, CHANGED)[0]!.credits).toBe(-10);
});

it("what was served and not paid is the entry's shortfall: never a metadata number, a lease window part's neither (docs/metering.md)", () => {
  const shortfalls = (name: string) => usageParts(CASES[name]!).map((p) => [p.model, p.shortfall]);
  expect(shortfalls("cut deduction (its shortfall)")).toEqual([[null, 6]]);
  // A metered call's: its first usage's model (the rest, what the cut left of its credits, none).
  expect(shortfalls("cut capture with usages")).toEqual([
    ["large", 5],
    [null, 0],
  ]);
  // A lease window's: the part with no dimension's, whatever its parts say.
  expect(shortfalls("cut lease window, its parts saying a shortfall")).toEqual([
    ["m1", 0],
    [null, 2],
  ]);
  expect(shortfalls("a metadata shortfall on a deduction (none)")).toEqual([[null, 0]]);
});

for (const [label, rules] of [
  ["USAGE_RULES", USAGE_RULES],
  ["a changed table", CHANGED],
] as const) {
  describe(`the generated SQLite query, ${label}`, () => {
    const db = new Database(":memory:");
    beforeAll(() => {
      db.exec(
        "CREATE TABLE journal (user_id TEXT, seq INTEGER, type TEXT, amount INTEGER, metadata TEXT, description TEXT, " +
          "spender TEXT, feature TEXT, reservation_id TEXT, created_at TEXT, occurred_at TEXT, take_back TEXT, unit TEXT, shortfall INTEGER, PRIMARY KEY (user_id, seq))",
      );
      const ins = db.prepare("INSERT INTO journal VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)");
      for (const { user, e } of accounts) {
        ins.run(
          user,
          e.type,
          e.amount,
          e.metadata == null ? null : JSON.stringify(e.metadata),
          e.description ?? null,
          e.spender ?? null,
          e.feature ?? null,
          e.reservationId ?? null,
          at.toISOString(),
          e.occurredAt?.toISOString() ?? null,
          e.takeBack ?? null,
          e.shortfall ?? null,
        );
      }
    });
    afterAll(() => db.close());

    for (const groupBy of GROUPINGS) {
      it(`equals the domain for every case, grouped by [${groupBy.join(", ")}]`, () => {
        for (const { name, user, e } of accounts) {
          const s = scan(user, groupBy);
          const { text, params } = usageQuery(SQLITE_QUERY, "journal", s, rules);
          const got = (db.prepare(text).all(...params) as Record<string, unknown>[]).map((r) => usageBucket(r, s));
          same(name, got, expected(user, e, groupBy, rules));
        }
      });
    }
  });

  // reason: needs a PostgreSQL server, whose URL .ci/run sets in CREDIT_PG_URL; skipped without it
  describe.skipIf(!process.env.CREDIT_PG_URL)(`the generated PostgreSQL query and rollup catch-up, ${label}`, () => {
    const url = process.env.CREDIT_PG_URL!;
    const schema = `cm_rules_${rules === CHANGED ? "x" : "u"}_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
    const journal = `"${schema}"."journal"`;
    beforeAll(async () => {
      await withPgClient(url, async (c) => {
        await c.query(`CREATE SCHEMA "${schema}"`);
        await c.query(
          `CREATE TABLE ${journal} (user_id TEXT, seq BIGINT, type TEXT, amount BIGINT, metadata JSONB, description TEXT, ` +
            `spender TEXT, feature TEXT, reservation_id TEXT, created_at TIMESTAMPTZ, occurred_at TIMESTAMPTZ, take_back TEXT, unit TEXT, shortfall BIGINT, PRIMARY KEY (user_id, seq))`,
        );
        await c.query(`CREATE TABLE "${schema}"."accounts" (user_id TEXT PRIMARY KEY, seq BIGINT NOT NULL)`);
        for (const stmt of rollupDdl({ schema }, rules)) await c.query(stmt);
        for (const { user, e } of accounts) {
          await c.query(`INSERT INTO ${journal} VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12)`, [
            user,
            e.type,
            e.amount,
            e.metadata == null ? null : JSON.stringify(e.metadata),
            e.description ?? null,
            e.spender ?? null,
            e.feature ?? null,
            e.reservationId ?? null,
            at,
            e.occurredAt ?? null,
            e.takeBack ?? null,
            e.shortfall ?? null,
          ]);
          await c.query(`INSERT INTO "${schema}"."accounts" VALUES ($1, 1)`, [user]);
        }
        // The rollup's catch-up (src/schema/rollup.ts) adds every account's entry.
        const caught = await c.query(rollupCatchUpSql(journal, `"${schema}"."accounts"`, { schema }, rules));
        expect(caught.rows[0].n).toBe(accounts.length);
      });
    });
    afterAll(() => withPgClient(url, (c) => c.query(`DROP SCHEMA "${schema}" CASCADE`)));

    for (const groupBy of GROUPINGS) {
      it(`the query equals the domain for every case, grouped by [${groupBy.join(", ")}]`, async () => {
        await withPgClient(url, async (c) => {
          for (const { name, user, e } of accounts) {
            const s = scan(user, groupBy);
            const { text, params } = usageSql(journal, s, undefined, rules);
            const got = (await c.query(text, params)).rows.map((r) => usageBucket(r, s));
            same(name, got, expected(user, e, groupBy, rules));
          }
        });
      });
    }

    it("the rollup catch-up adds what the domain does, by kind", async () => {
      const rows = await withPgClient(url, (c) =>
        c.query(
          `SELECT user_id, kind, credits::float8 AS "credits", requests::float8 AS "requests", input_tokens::float8 AS "inputTokens", ` +
            `output_tokens::float8 AS "outputTokens", cached_tokens::float8 AS "cachedTokens", shortfall::float8 AS "shortfall" FROM "${schema}".usage_daily`,
        ),
      );
      for (const { name, user, e } of accounts) {
        const want = expected(user, e, [], rules, true).map((b) => ({
          kind: b.kind,
          ...Object.fromEntries(USAGE_MEASURES.map((m) => [m, b[m]])),
        }));
        const got = rows.rows.filter((r) => r.user_id === user).map(({ user_id: _u, ...r }) => r);
        expect(got, name).toEqual(want);
      }
    });
  });

  // reason: needs a MongoDB server, whose URL .ci/run sets in CREDIT_MONGO_URI; skipped without it
  describe.skipIf(!process.env.CREDIT_MONGO_URI)(`the generated MongoDB pipeline, ${label}`, () => {
    let client: MongoClient;
    const dbName = `credit_test_rules_${process.pid}_${randomUUID().slice(0, 8)}`;
    beforeAll(async () => {
      client = await new MongoClient(process.env.CREDIT_MONGO_URI!).connect();
      await client
        .db(dbName)
        .collection("journal")
        .insertMany(
          accounts.map(({ user, e }) => {
            const doc: Record<string, unknown> = {
              userId: user,
              seq: 1,
              type: e.type,
              amount: e.amount,
              createdAt: at,
            };
            // Null fields are left out of journal documents (docs/schema-upgrades.md, version 6).
            for (const [k, v] of Object.entries({
              metadata: e.metadata,
              description: e.description,
              spender: e.spender,
              takeBack: e.takeBack,
              shortfall: e.shortfall,
              feature: e.feature,
              reservationId: e.reservationId,
              occurredAt: e.occurredAt,
            }))
              if (v != null) doc[k] = v;
            return doc;
          }),
        );
    });
    afterAll(async () => {
      await client?.db(dbName).dropDatabase();
      await client?.close();
    });

    for (const groupBy of GROUPINGS) {
      it(`equals the domain for every case, grouped by [${groupBy.join(", ")}]`, async () => {
        for (const { name, user, e } of accounts) {
          const s = scan(user, groupBy);
          const docs = await client.db(dbName).collection("journal").aggregate(usagePipeline(s, rules)).toArray();
          same(
            name,
            docs.map((d) => usageBucketOf(d, s)),
            expected(user, e, groupBy, rules),
          );
        }
      });
    }
  });
}
