import * as crypto from "node:crypto";
import { stringify } from "safe-stable-stringify";
import type { JournalEntry } from "../models/index.js";

/**
 * The canonical form of an entry that its hash covers (docs/concepts.md, "The journal"): a JSON
 * object of every field but `hash`, in a fixed key order, with metadata keys sorted, dates as ISO
 * strings. Stable across backends and key reorderings (PostgreSQL's JSONB reorders keys). The fields
 * most entries leave empty appear only when set: a grant part's `kind`, `spender` and `feature` (the
 * pair, when either is), `costBasis`, `source`, `reverses`, `occurredAt`, and from hash version 2
 * (`hashVersion: 2`, every entry written since schema version 2) `takeBack`, `paymentId`, `shortfall`, `scope`, `effectiveAt`, `keyId` and `unit`. Built by hand: it is on every write's
 * path, and the ledger file reuses it as the line's `details` (see `ledgerLineOf`).
 */
export function canonicalEntry(entry: Omit<JournalEntry, "hash">): string {
  const grants = entry.grants.map(
    (g) => `{"grantId":${quote(g.grantId)},"amount":${g.amount}${g.kind === undefined ? "" : `,"kind":"${g.kind}"`}}`,
  );
  return (
    `{"id":${quote(entry.id)},"userId":${quote(entry.userId)},"seq":${entry.seq},` +
    `"type":"${entry.type}","amount":${entry.amount},"balanceAfter":${entry.balanceAfter},` +
    `"reservedAfter":${entry.reservedAfter},"debtAfter":${entry.debtAfter},"grants":[${grants.join(",")}],` +
    `"reservationId":${str(entry.reservationId)},"idempotencyKey":${str(entry.idempotencyKey)},` +
    `"fingerprint":${str(entry.fingerprint)},"correlationId":${str(entry.correlationId)},` +
    `"description":${str(entry.description)},` +
    setFields(entry) +
    `"metadata":${entry.metadata === null ? "null" : (stringify(entry.metadata) ?? "null")},` +
    `"createdAt":"${entry.createdAt.toISOString()}","prevHash":${str(entry.prevHash)}}`
  );
}

/** The fields of `canonicalEntry` that appear only when set, each followed by a comma. */
function setFields(entry: Omit<JournalEntry, "hash">): string {
  const spender = entry.spender ?? null;
  const feature = entry.feature ?? null;
  const basis = entry.costBasis ?? null;
  const source = entry.source ?? null;
  const reverses = entry.reverses ?? null;
  const occurredAt = entry.occurredAt ?? null;
  // Hash version 1 (null or absent: entries written at schema version 1) has none of the later fields.
  const later = entry.hashVersion == null || entry.hashVersion === 1 ? "" : laterFields(entry);
  return (
    (spender === null && feature === null ? "" : `"spender":${str(spender)},"feature":${str(feature)},`) +
    (basis === null ? "" : `"costBasis":{"perCredit":${quote(basis.perCredit)},"currency":${quote(basis.currency)}},`) +
    (source === null ? "" : `"source":${quote(source)},`) +
    (reverses === null ? "" : `"reverses":${quote(reverses)},`) +
    (occurredAt === null ? "" : `"occurredAt":"${occurredAt.toISOString()}",`) +
    later
  );
}

/** The fields hash version 2 added to the input, each only when set and followed by a comma. */
function laterFields(entry: Omit<JournalEntry, "hash">): string {
  const takeBack = entry.takeBack ?? null;
  const paymentId = entry.paymentId ?? null;
  const shortfall = entry.shortfall ?? null;
  const scope = entry.scope ?? null;
  const keyId = entry.keyId ?? null;
  const effectiveAt = entry.effectiveAt ?? null;
  const unit = entry.unit ?? null;
  return (
    (takeBack === null ? "" : `"takeBack":"${takeBack}",`) +
    (paymentId === null ? "" : `"paymentId":${quote(paymentId)},`) +
    (shortfall === null ? "" : `"shortfall":${shortfall},`) +
    (scope === null ? "" : `"scope":${stringify(scope) ?? "null"},`) +
    (effectiveAt === null ? "" : `"effectiveAt":"${effectiveAt.toISOString()}",`) +
    (keyId === null ? "" : `"keyId":${quote(keyId)},`) +
    (unit === null ? "" : `"unit":${quote(unit)},`)
  );
}

/**
 * The JSONL ledger line of a journal entry — the ledger-entry shape with the full entry (its
 * canonical form plus `hash`) as `details` — from the entry's canonical text and hash alone: what
 * the ledger hands its writer thread, which builds the lines off the event loop. The line's `id`,
 * `userId`, `correlationId`, `message` and `createdAt` are the canonical text's own pieces (its
 * layout is fixed: it is what the hash covers), so nothing is parsed or quoted again: each string
 * field is found by scanning its JSON literal, and metadata — the one part with keys of the host's
 * choosing — is never searched (`createdAt` is found from the end, after it). Self-contained but
 * for `literalEnd`: the writer thread runs the source of both (see `src/core/ledger/file.ts`), so the
 * line is defined here only. (No function expressions inside: tools that keep function names, as
 * tsx does, wrap those in a helper the thread would not have.)
 */
export function ledgerLineOf(canonical: string, hash: string): string {
  const idEnd = literalEnd(canonical, 6); // {"id":
  const userAt = idEnd + 10; // ,"userId":
  const userEnd = literalEnd(canonical, userAt);
  const typeAt = canonical.indexOf(',"type":"', userEnd) + 9;
  const typeEnd = canonical.indexOf('"', typeAt);
  const amountAt = typeEnd + 11; // ","amount":
  const amountEnd = canonical.indexOf(",", amountAt);
  const correlationAt = canonical.indexOf(',"correlationId":', amountEnd) + 17;
  const createdAt = canonical.lastIndexOf(',"createdAt":"') + 14;
  return (
    `{"id":${canonical.slice(6, idEnd)},"eventType":"transaction","userId":${canonical.slice(userAt, userEnd)},` +
    `"correlationId":${canonical.slice(correlationAt, literalEnd(canonical, correlationAt))},` +
    `"message":"${canonical.slice(typeAt, typeEnd)} ${canonical.slice(amountAt, amountEnd)}","details":` +
    `${canonical.slice(0, -1)},"hash":"${hash}"},"createdAt":"${canonical.slice(createdAt, canonical.indexOf('"', createdAt))}"}\n`
  );
}

/** Where the JSON string (or `null`) starting at `at` in `text` ends. */
export function literalEnd(text: string, at: number): number {
  if (text.charCodeAt(at) !== 34) return at + 4;
  for (let i = at + 1; ; i++) {
    const c = text.charCodeAt(i);
    if (c === 92) i++;
    else if (c === 34) return i + 1;
  }
}

const str = (v: string | null): string => (v === null ? "null" : quote(v));

/** Strings JSON writes as they are, between quotes: no quote, backslash, control character or surrogate. */
// Control characters are exactly what the pattern must find (JSON escapes them).
// eslint-disable-next-line no-control-regex
const PLAIN = /^[^"\\\u0000-\u001f\ud800-\udfff]*$/;

/**
 * `JSON.stringify(s)` for a string, without the general path when nothing needs escaping (ids,
 * keys and hashes: nearly always) — about a third of the cost. Same text in every case.
 */
export function quote(s: string): string {
  return PLAIN.test(s) ? `"${s}"` : JSON.stringify(s);
}

/** One-shot sha256 where Node has it (>= 20.12; about twice as fast as a Hash object). */
const sha256: (data: string, encoding: "hex" | "base64url") => string =
  typeof (crypto as { hash?: unknown }).hash === "function"
    ? (data, encoding) => crypto.hash("sha256", data, encoding)
    : (data, encoding) => crypto.createHash("sha256").update(data).digest(encoding);

/**
 * The keys of a keyed chain by id (docs/concepts.md, "A keyed chain"): what verifies an entry whose
 * `keyId` is set.
 */
export type JournalKeys = ReadonlyMap<string, Uint8Array>;

/** A keyed entry whose key is not among those given (`hashEntry`). */
export class MissingJournalKeyError extends Error {
  constructor(readonly keyId: string) {
    super(`the journal key ${JSON.stringify(keyId)} is not among the keys given`);
    this.name = "MissingJournalKeyError";
  }
}

/**
 * What an entry's `hash` must be: sha256(prevHash ‖ "\n" ‖ canonical entry), hex; for a keyed entry
 * (`keyId` set), HMAC-SHA256 of the same text under the key of that id in `keys` — none there: a
 * `MissingJournalKeyError`.
 */
export function hashEntry(entry: Omit<JournalEntry, "hash">, keys?: JournalKeys): string {
  const keyId = entry.keyId ?? null;
  if (keyId === null) return hashNewEntry(entry).hash;
  const key = keys?.get(keyId);
  if (key === undefined) throw new MissingJournalKeyError(keyId);
  return hashNewEntry(entry, key).hash;
}

/**
 * An entry's hash (`hashEntry`, the one place its text is defined) with its canonical text, for the
 * write path that needs both. The hashed text (prevHash, newline, canonical entry) is built as one
 * string; hashing flattens it, and the canonical text is a slice of it (no copy), which the ledger
 * line slices again. Building the canonical text first and prefixing it would flatten it twice.
 * With `key` (the entry's `keyId` set), HMAC-SHA256 under it instead of SHA-256.
 */
export function hashNewEntry(entry: Omit<JournalEntry, "hash">, key?: Uint8Array): { hash: string; canonical: string } {
  const prefix = entry.prevHash === null ? "\n" : `${entry.prevHash}\n`;
  const text = prefix + canonicalEntry(entry);
  const hash = key === undefined ? sha256(text, "hex") : crypto.createHmac("sha256", key).update(text).digest("hex");
  return { hash, canonical: text.slice(prefix.length) };
}

/** Digest of a request's arguments, stored with its idempotency key. */
export function fingerprint(operation: string, args: unknown): string {
  return sha256(`${operation}\n${stringify(args) ?? ""}`, "base64url");
}
