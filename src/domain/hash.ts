import * as crypto from "node:crypto";
import { stringify } from "safe-stable-stringify";
import type { JournalEntry } from "../models/index.js";

/**
 * The canonical form of an entry that its hash covers: a JSON object of every field but `hash`, in
 * a fixed key order, with metadata keys sorted, dates as ISO strings. Stable across backends and key
 * reorderings (PostgreSQL's JSONB reorders keys). Built by hand: it is on every write's path, and
 * the ledger file reuses it as the line's `details` (see `ledgerLine`).
 */
export function canonicalEntry(entry: Omit<JournalEntry, "hash">): string {
  let grants = "";
  for (const g of entry.grants) {
    grants += `${grants === "" ? "" : ","}{"grantId":${quote(g.grantId)},"amount":${g.amount}}`;
  }
  return (
    `{"id":${quote(entry.id)},"userId":${quote(entry.userId)},"seq":${entry.seq},` +
    `"type":"${entry.type}","amount":${entry.amount},"balanceAfter":${entry.balanceAfter},` +
    `"reservedAfter":${entry.reservedAfter},"debtAfter":${entry.debtAfter},"grants":[${grants}],` +
    optionalFields(entry) +
    `"metadata":${entry.metadata === null ? "null" : (stringify(entry.metadata) ?? "null")},` +
    `"createdAt":"${iso(entry.createdAt)}","prevHash":${str(entry.prevHash)}}`
  );
}

/** The five optional text fields, most often all null: then one constant instead of ten pieces. */
function optionalFields(entry: Omit<JournalEntry, "hash">): string {
  if (
    entry.reservationId === null &&
    entry.idempotencyKey === null &&
    entry.fingerprint === null &&
    entry.correlationId === null &&
    entry.description === null
  ) {
    return ALL_NULL;
  }
  return (
    `"reservationId":${str(entry.reservationId)},"idempotencyKey":${str(entry.idempotencyKey)},` +
    `"fingerprint":${str(entry.fingerprint)},"correlationId":${str(entry.correlationId)},` +
    `"description":${str(entry.description)},`
  );
}
const ALL_NULL = `"reservationId":null,"idempotencyKey":null,"fingerprint":null,"correlationId":null,"description":null,`;

/**
 * The JSONL ledger line of a journal entry: the ledger-entry shape with the full entry (its
 * canonical form plus `hash`) as `details`. Pass the canonical text when it is at hand (the unit of
 * work that hashed the entry keeps it), so it is not built twice.
 */
export function ledgerLine(entry: JournalEntry, canonical?: string): string {
  return ledgerLinePieces(entry, canonical).join("");
}

/**
 * `ledgerLine` as the three texts it is joined from — up to `details`, the canonical text without
 * its closing brace, then the hash, `createdAt` and the newline — for a writer that joins many
 * lines at once (no line-sized copy per entry).
 */
export function ledgerLinePieces(entry: JournalEntry, canonical: string = canonicalEntry(entry)): [string, string, string] {
  return [
    `{"id":${quote(entry.id)},"eventType":"transaction","userId":${quote(entry.userId)},` +
      `"correlationId":${str(entry.correlationId)},"message":"${entry.type} ${entry.amount}","details":`,
    canonical.slice(0, -1),
    `,"hash":"${entry.hash}"},"createdAt":"${iso(entry.createdAt)}"}\n`,
  ];
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

/**
 * `date.toISOString()`, remembering the last one: a busy account writes many entries in the same
 * millisecond, and the canonical form and the ledger line both need it.
 */
let lastTime = Number.NaN;
let lastIso = "";
function iso(date: Date): string {
  const t = date.getTime();
  if (t !== lastTime) {
    lastIso = date.toISOString();
    lastTime = t;
  }
  return lastIso;
}

/** One-shot sha256 where Node has it (>= 20.12; about twice as fast as a Hash object). */
const sha256: (data: string, encoding: "hex" | "base64url") => string =
  typeof (crypto as { hash?: unknown }).hash === "function"
    ? (data, encoding) => (crypto as unknown as { hash: (a: string, d: string, e: string) => string }).hash("sha256", data, encoding)
    : (data, encoding) => crypto.createHash("sha256").update(data).digest(encoding);

/** sha256(prevHash ‖ "\n" ‖ canonical entry), hex: what an entry's `hash` must be. */
export function hashEntry(entry: Omit<JournalEntry, "hash">): string {
  return hashNewEntry(entry).hash;
}

/**
 * An entry's hash (`hashEntry`, the one place its text is defined) with its canonical text, for the
 * write path that needs both. The hashed text (prevHash, newline, canonical entry) is built as one
 * string; hashing flattens it, and the canonical text is a slice of it (no copy), which the ledger
 * line slices again. Building the canonical text first and prefixing it would flatten it twice.
 */
export function hashNewEntry(entry: Omit<JournalEntry, "hash">): { hash: string; canonical: string } {
  const prefix = entry.prevHash === null ? "\n" : `${entry.prevHash}\n`;
  const text = prefix + canonicalEntry(entry);
  const hash = sha256(text, "hex");
  return { hash, canonical: text.slice(prefix.length) };
}

/** Digest of a request's arguments, stored with its idempotency key. */
export function fingerprint(operation: string, args: unknown): string {
  return sha256(`${operation}\n${stringify(args) ?? ""}`, "base64url");
}
