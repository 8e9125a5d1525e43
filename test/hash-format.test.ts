import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createHmac } from "node:crypto";
import {
  MissingJournalKeyError,
  canonicalEntry,
  hashEntry,
  hashNewEntry,
  ledgerLineOf,
  quote,
} from "../src/core/domain/hash.js";
import type { JournalEntry } from "../src/core/models/index.js";
import { deep } from "./fixtures/depth.js";

// The canonical form and the hash chain are a storage format: journals already written must keep
// verifying after any change to how the text is built. These values were computed once and are
// pinned; change them only with a migration story for stored hashes.
const plain: Omit<JournalEntry, "hash"> = {
  id: "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
  userId: "user-42",
  seq: 7,
  type: "deduct",
  amount: 25,
  balanceAfter: 975,
  reservedAfter: 10,
  debtAfter: 0,
  grants: [
    { grantId: "g-1", amount: 20 },
    { grantId: "g-2", amount: 5 },
  ],
  reservationId: null,
  idempotencyKey: null,
  fingerprint: null,
  correlationId: null,
  description: null,
  metadata: null,
  createdAt: new Date("2026-01-02T03:04:05.678Z"),
  prevHash: "ab".repeat(32),
};
const full: Omit<JournalEntry, "hash"> = {
  ...plain,
  type: "commit_reserved",
  reservationId: "r-1",
  idempotencyKey: 'key "1"',
  fingerprint: "fp",
  correlationId: "c-1",
  description: "café ☕",
  metadata: { z: 1, a: { y: [1, "two", null], b: true } },
  prevHash: null,
};

describe("journal hash format", () => {
  it("builds the canonical text of an entry exactly as pinned", () => {
    expect(canonicalEntry(plain)).toMatchInlineSnapshot(
      `"{"id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","userId":"user-42","seq":7,"type":"deduct","amount":25,"balanceAfter":975,"reservedAfter":10,"debtAfter":0,"grants":[{"grantId":"g-1","amount":20},{"grantId":"g-2","amount":5}],"reservationId":null,"idempotencyKey":null,"fingerprint":null,"correlationId":null,"description":null,"metadata":null,"createdAt":"2026-01-02T03:04:05.678Z","prevHash":"abababababababababababababababababababababababababababababababab"}"`,
    );
    expect(canonicalEntry(full)).toMatchInlineSnapshot(
      `"{"id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","userId":"user-42","seq":7,"type":"commit_reserved","amount":25,"balanceAfter":975,"reservedAfter":10,"debtAfter":0,"grants":[{"grantId":"g-1","amount":20},{"grantId":"g-2","amount":5}],"reservationId":"r-1","idempotencyKey":"key \\"1\\"","fingerprint":"fp","correlationId":"c-1","description":"café ☕","metadata":{"a":{"b":true,"y":[1,"two",null]},"z":1},"createdAt":"2026-01-02T03:04:05.678Z","prevHash":null}"`,
    );
  });

  it("hashes entries exactly as pinned, and the ledger line carries the same text", () => {
    expect(hashEntry(plain)).toMatchInlineSnapshot(
      `"c117d33e1efaab559748fd1c27969f4dc7d3dbb1bed528bb5808a2c4ec4a01f9"`,
    );
    expect(hashEntry(full)).toMatchInlineSnapshot(`"e3eef0a3deeb423eb8ca174ca80749d9c8fac40513fa3239282692dca325d69b"`);
    const entry = { ...full, hash: hashEntry(full) };
    const line = JSON.parse(ledgerLineOf(canonicalEntry(entry), entry.hash)) as { details: unknown };
    expect(line.details).toEqual(JSON.parse(JSON.stringify(entry)));
  });

  it("hashes a new entry (hashNewEntry, the write path) exactly as hashEntry does, with the same canonical text", () => {
    for (const e of [plain, full])
      expect(hashNewEntry(e)).toEqual({ hash: hashEntry(e), canonical: canonicalEntry(e) });
  });

  it("covers a reversal's charge and an entry's occurredAt only when set: null or absent, the text of an entry without them", () => {
    const reversal: Omit<JournalEntry, "hash"> = {
      ...plain,
      type: "reverse",
      reverses: "0a1b2c3d-0000-4000-8000-000000000001",
      occurredAt: new Date("2026-01-01T23:00:00.000Z"),
    };
    expect(canonicalEntry(reversal)).toContain(
      `"grants":[{"grantId":"g-1","amount":20},{"grantId":"g-2","amount":5}],"reservationId":null,"idempotencyKey":null,"fingerprint":null,"correlationId":null,"description":null,"reverses":"0a1b2c3d-0000-4000-8000-000000000001","occurredAt":"2026-01-01T23:00:00.000Z","metadata":null,`,
    );
    expect(canonicalEntry({ ...plain, occurredAt: reversal.occurredAt })).toContain(
      `"description":null,"occurredAt":"2026-01-01T23:00:00.000Z","metadata":null,`,
    );
    // Null (as every store reads an entry without them) or absent: left out.
    expect(hashEntry({ ...plain, reverses: null, occurredAt: null })).toBe(hashEntry(plain));
    expect(hashEntry({ ...plain, occurredAt: reversal.occurredAt })).not.toBe(hashEntry(plain));
    expect(hashEntry({ ...reversal, reverses: "another" })).not.toBe(hashEntry(reversal));
    const entry = { ...reversal, hash: hashEntry(reversal) };
    const line = JSON.parse(ledgerLineOf(canonicalEntry(entry), entry.hash)) as { details: unknown };
    expect(line.details).toEqual(JSON.parse(JSON.stringify(entry)));
  });

  it("pins the text and hash of an entry with every field that appears only when set", () => {
    const every: Omit<JournalEntry, "hash"> = {
      ...plain,
      grants: [
        { grantId: "g-1", amount: 20, kind: "returned" },
        { grantId: "g-2", amount: 5 },
      ],
      spender: "s",
      feature: "f",
      costBasis: { perCredit: "1", currency: "EUR" },
      reverses: "r",
      occurredAt: new Date("2026-01-01T00:00:00.000Z"),
    };
    expect(canonicalEntry(every)).toMatchInlineSnapshot(
      `"{"id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","userId":"user-42","seq":7,"type":"deduct","amount":25,"balanceAfter":975,"reservedAfter":10,"debtAfter":0,"grants":[{"grantId":"g-1","amount":20,"kind":"returned"},{"grantId":"g-2","amount":5}],"reservationId":null,"idempotencyKey":null,"fingerprint":null,"correlationId":null,"description":null,"spender":"s","feature":"f","costBasis":{"perCredit":"1","currency":"EUR"},"reverses":"r","occurredAt":"2026-01-01T00:00:00.000Z","metadata":null,"createdAt":"2026-01-02T03:04:05.678Z","prevHash":"abababababababababababababababababababababababababababababababab"}"`,
    );
    expect(hashEntry(every)).toBe("e204a1b396e7706b31f083fd798eb7a4a7e7dd20bf2c5065e22258fc4065686f");
    // spender and feature appear as a pair when either is set.
    expect(canonicalEntry({ ...plain, spender: "s" })).toContain(
      `"description":null,"spender":"s","feature":null,"metadata"`,
    );
  });

  it("hash version 2: takeBack, shortfall, scope and keyId appear when set; version 1 (no hashVersion) leaves them out; keyed: HMAC-SHA256", () => {
    const later = {
      takeBack: "refund" as const,
      shortfall: 7,
      scope: { spenders: ["s"], features: ["f"] },
      keyId: "k1",
    };
    expect(canonicalEntry({ ...plain, ...later, hashVersion: 2 })).toContain(
      `"description":null,"takeBack":"refund","shortfall":7,"scope":{"features":["f"],"spenders":["s"]},"keyId":"k1","metadata"`,
    );
    // What was served and not paid is covered: another shortfall is another hash.
    expect(hashEntry({ ...plain, ...later, hashVersion: 2, keyId: null })).not.toBe(
      hashEntry({ ...plain, ...later, shortfall: 8, hashVersion: 2, keyId: null }),
    );
    // Version 1 (entries written at schema version 1): its text, whatever the later fields hold.
    expect(canonicalEntry({ ...plain, ...later })).toBe(canonicalEntry(plain));
    expect(canonicalEntry({ ...plain, ...later, hashVersion: 1 })).toBe(canonicalEntry(plain));
    // Version 2 with none of them set: the same text and hash as version 1.
    expect(hashEntry({ ...plain, hashVersion: 2 })).toBe(hashEntry(plain));
    const key = new TextEncoder().encode("k".repeat(32));
    const keyed = { ...plain, hashVersion: 2, keyId: "k1" };
    const text = `${plain.prevHash}\n${canonicalEntry(keyed)}`;
    expect(hashEntry(keyed, new Map([["k1", key]]))).toBe(createHmac("sha256", key).update(text).digest("hex"));
    expect(hashNewEntry(keyed, key)).toEqual({
      hash: hashEntry(keyed, new Map([["k1", key]])),
      canonical: canonicalEntry(keyed),
    });
    expect(() => hashEntry(keyed)).toThrow(MissingJournalKeyError);
  });

  it("quotes every string exactly as JSON.stringify does (the fast path is only a shortcut)", () => {
    for (const s of [
      "",
      "plain-id",
      'a"b',
      "a\\b",
      "tab\there",
      "\u0000",
      "\u001f",
      "\u007f",
      "\u2028",
      "café ☕",
      "😀",
      "\ud800",
      "x\udfff",
      "\udfff\ud800",
    ]) {
      expect(quote(s)).toBe(JSON.stringify(s));
    }
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.string({ unit: "binary" }),
          fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) }),
        ),
        (s) => {
          expect(quote(s)).toBe(JSON.stringify(s));
        },
      ),
      { numRuns: deep(2000) },
    );
  });
});
