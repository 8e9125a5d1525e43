import { type Column, FORGOTTEN_KEY } from "./columns.js";

/**
 * Turns a row read back from SQL (column names, driver or JSON value types) into a model object:
 * dates become `Date`, BIGINT strings exact numbers, JSON text parsed, SQL booleans booleans.
 * Throws when a stored integer is not a safe JavaScript integer (the DDL's checks prevent that).
 */
export function decodeRow<T>(columns: readonly Column[], row: Record<string, unknown>): T {
  const out: Record<string, unknown> = {};
  for (const c of columns) out[c.field] = decodeValue(c, row[c.name]);
  if (FORGOTTEN_KEY in out) foldForgottenKey(out);
  return out as T;
}

/**
 * A journal entry whose idempotency key was forgotten (moved to `forgotten_key` by the retention
 * job) reads back with its key, as it was written and hashed; the extra field goes.
 */
export function foldForgottenKey(out: Record<string, unknown>): void {
  const forgotten = out[FORGOTTEN_KEY];
  delete out[FORGOTTEN_KEY];
  if (
    forgotten !== null &&
    forgotten !== undefined &&
    (out.idempotencyKey === null || out.idempotencyKey === undefined)
  )
    out.idempotencyKey = forgotten;
}

export function decodeValue(c: Column, v: unknown): unknown {
  if (v === null || v === undefined) return null;
  switch (c.kind) {
    case "datetime":
      return v instanceof Date ? v : new Date(v as string);
    case "integer": {
      const n = typeof v === "number" ? v : Number(v);
      if (!Number.isSafeInteger(n)) throw new Error(`column ${c.name} holds ${String(v)}, not a safe integer`);
      return n;
    }
    case "number":
      return typeof v === "number" ? v : Number(v);
    case "boolean":
      return v === true || v === 1 || v === "1" || v === "t" || v === "true";
    case "json": {
      const value: unknown = typeof v === "string" ? JSON.parse(v) : v;
      return c.tuple !== undefined && Array.isArray(value) ? value.map((x) => fromTuple(c.tuple ?? [], x)) : value;
    }
    case "string":
      return c.bytes === true ? hexOf(v) : v;
    default:
      return v;
  }
}

/** One stored tuple (`Column.tuple`) as its object; an object (a row written before) as it is. */
function fromTuple(keys: readonly string[], x: unknown): unknown {
  if (!Array.isArray(x)) return x;
  const out: Record<string, unknown> = {};
  for (let i = 0; i < keys.length && i < x.length; i++)
    if (x[i] !== null && x[i] !== undefined) out[keys[i] as string] = x[i];
  return out;
}

/** An array of objects as stored tuples (`Column.tuple`): each object's values in `keys` order, trailing absent ones left out. */
export function toTuples(keys: readonly string[], value: unknown): unknown {
  if (!Array.isArray(value)) return value;
  return value.map((o: Record<string, unknown>) => {
    const t = keys.map((k) => o[k]);
    while (t.length > 0 && t[t.length - 1] === undefined) t.pop();
    return t;
  });
}

/**
 * A digest stored as bytes, as the model's hex: node-pg reads `bytea` as a Buffer; PostgreSQL's
 * JSON (`row_to_json`) writes it as `"\\x…"`. A store that keeps the hex text answers it as is.
 */
function hexOf(v: unknown): string {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex");
  const s = v as string;
  return s.startsWith("\\x") ? s.slice(2) : s;
}

/** A hex digest as PostgreSQL's `bytea` input (hex format), for JSON that `json_populate_record` reads. */
export function byteaText(hex: string): string {
  return `\\x${hex}`;
}

/**
 * A model object's values in column order, for an INSERT's parameters: dates as `Date` (or ISO
 * text with `dates: "iso"`), JSON as text, booleans as 0/1 with `booleans: "int"`, hex digests
 * (`Column.bytes`) as their hex text or, with `bytes: "buffer"` (PostgreSQL's `BYTEA`), as bytes.
 * (An array: `Object.values` of an object keyed by a wide table's column names collects and sorts
 * its keys, about 10k instructions a SQLite deduction.)
 */
export function encodeValues(
  columns: readonly Column[],
  value: Record<string, unknown>,
  options: EncodeOptions = {},
): unknown[] {
  const out = new Array<unknown>(columns.length);
  for (let i = 0; i < columns.length; i++) {
    const c = columns[i] as Column;
    out[i] = encodeValue(c, value[c.field], options);
  }
  return out;
}

type EncodeOptions = { dates?: "date" | "iso"; booleans?: "bool" | "int"; bytes?: "hex" | "buffer" };

function encodeValue(c: Column, v: unknown, options: EncodeOptions): unknown {
  if (v === null || v === undefined) return null;
  switch (c.kind) {
    case "datetime":
      return options.dates === "iso" ? (v as Date).toISOString() : v;
    case "json":
      return JSON.stringify(c.tuple === undefined ? v : toTuples(c.tuple, v));
    case "boolean":
      return options.booleans === "int" ? (v ? 1 : 0) : v;
    case "string":
      return c.bytes === true && options.bytes === "buffer" ? Buffer.from(v as string, "hex") : v;
    default:
      return v;
  }
}
