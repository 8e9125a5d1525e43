import type { NamingOptions } from "./sql.js";

/** A PostgreSQL identifier, quoted (as `quoteIdent` of ./sql.ts, which imports this module). */
const quoteIdent = (_dialect: "postgres", name: string): string => `"${name.replace(/"/g, '""')}"`;

/**
 * The usage rollup of PostgreSQL (docs/usage.md, "The daily rollup"): `usage_daily`, one row per
 * account, UTC day and usage kind with the sums a usage report adds up (credits, requests, tokens),
 * kept by an `AFTER INSERT` trigger on the journal — in the same statement, so in the same
 * transaction as the entry: it is never behind, and costs no round trip. The rules are those of
 * `src/domain/usage.ts` (`usageKind`, `usageRequests`, the tokens of `usageParts`); the audit
 * compares the rollup with the journal's own report (`CreditService.audit`).
 *
 * Only inserts count: the archival of old journal entries (checkpoints, detached partitions)
 * leaves the days it empties in the rollup, so reports across accounts keep them.
 */
export interface RollupNames {
  /** The rollup table, qualified. */
  table: string;
  /** Its name without the schema (index names are made from it). */
  name: string;
  /** The trigger function, qualified. */
  fn: string;
  /** The trigger's name (unqualified: triggers live on their table). */
  trigger: string;
}

export function rollupNames(naming: NamingOptions): RollupNames {
  const q = (n: string) => quoteIdent("postgres", n);
  const prefix = naming.prefix ?? "";
  const qualify = (n: string) => (naming.schema === undefined ? q(n) : `${q(naming.schema)}.${q(n)}`);
  const name = `${prefix}usage_daily`;
  return { table: qualify(name), name, fn: qualify(`${prefix}usage_daily_add`), trigger: `${prefix}usage_daily_add` };
}

/** `x` (a jsonb) as a number when it is one, else 0: `count` of src/domain/usage.ts. */
const num = (x: string) => `CASE WHEN jsonb_typeof(${x}) = 'number' THEN (${x})::text::numeric ELSE 0 END`;

/**
 * The statements that create the rollup table, its function and its trigger on `journal` (the
 * journal table, qualified): idempotent (the trigger is dropped and made again), so the DDL can
 * run on a store that has them. On a partitioned journal the trigger is made on the parent and
 * PostgreSQL clones it onto every partition, those made later included.
 */
export function rollupDdl(journal: string, naming: NamingOptions): string[] {
  const r = rollupNames(naming);
  const q = (n: string) => quoteIdent("postgres", n);
  const sums = (e: string) =>
    `(SELECT coalesce(sum(${num("x.v -> 'inputTokens'")}), 0), coalesce(sum(${num("x.v -> 'outputTokens'")}), 0), ` +
    `coalesce(sum(${num("x.v -> 'cachedTokens'")}), 0) FROM jsonb_array_elements(${e}) AS x(v))`;
  return [
    `CREATE TABLE IF NOT EXISTS ${r.table} (
  "user_id" TEXT NOT NULL,
  "day" DATE NOT NULL,
  "kind" TEXT NOT NULL CHECK ("kind" IN ('spend', 'refund', 'clawback')),
  "credits" BIGINT NOT NULL,
  "requests" NUMERIC NOT NULL,
  "input_tokens" NUMERIC NOT NULL,
  "output_tokens" NUMERIC NOT NULL,
  "cached_tokens" NUMERIC NOT NULL,
  PRIMARY KEY ("user_id", "day", "kind")
) WITH (fillfactor = 70);`,
    // Reports across accounts read a range of days.
    `CREATE INDEX IF NOT EXISTS ${q(`${r.name}_day`)} ON ${r.table} ("day");`,
    `CREATE OR REPLACE FUNCTION ${r.fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  m jsonb := NEW.metadata;
  k text;
  req numeric;
  parts jsonb;
  i numeric := 0;
  o numeric := 0;
  c numeric := 0;
BEGIN
  -- usageKind (src/domain/usage.ts): a payment's take-back is a refund or, after a lost dispute, a clawback.
  IF NEW.type NOT IN ('deduct', 'commit_reserved', 'void') THEN RETURN NULL; END IF;
  IF jsonb_typeof(m -> 'paymentId') = 'string' AND jsonb_typeof(m -> 'refundedAmount') = 'number' THEN
    k := CASE WHEN NEW.description LIKE 'Lost dispute%' THEN 'clawback' ELSE 'refund' END;
  ELSIF NEW.type = 'void' THEN
    RETURN NULL;
  ELSE
    k := 'spend';
  END IF;
  -- usageRequests
  IF k <> 'spend' THEN req := 0;
  ELSIF NEW.type = 'deduct' THEN req := CASE WHEN NEW.reservation_id IS NULL THEN 1 ELSE 0 END;
  ELSIF jsonb_typeof(m -> 'leaseWindow' -> 'requests') = 'number' THEN req := (m -> 'leaseWindow' ->> 'requests')::numeric;
  ELSE req := 1;
  END IF;
  -- The tokens of usageParts: a lease window's parts, else the recorded usages.
  IF k = 'spend' THEN
    IF jsonb_typeof(m -> 'leaseWindow' -> 'parts') = 'array' THEN parts := m -> 'leaseWindow' -> 'parts';
    ELSIF jsonb_typeof(m -> 'usages') = 'array' THEN parts := m -> 'usages';
    END IF;
    IF parts IS NOT NULL THEN SELECT * INTO i, o, c FROM ${sums("parts")} AS s; END IF;
  END IF;
  INSERT INTO ${r.table} AS u ("user_id", "day", "kind", "credits", "requests", "input_tokens", "output_tokens", "cached_tokens")
  VALUES (NEW.user_id, (NEW.created_at AT TIME ZONE 'UTC')::date, k, NEW.amount, req, i, o, c)
  ON CONFLICT ("user_id", "day", "kind") DO UPDATE SET "credits" = u."credits" + EXCLUDED."credits",
    "requests" = u."requests" + EXCLUDED."requests", "input_tokens" = u."input_tokens" + EXCLUDED."input_tokens",
    "output_tokens" = u."output_tokens" + EXCLUDED."output_tokens", "cached_tokens" = u."cached_tokens" + EXCLUDED."cached_tokens";
  RETURN NULL;
END
$fn$;`,
    `DROP TRIGGER IF EXISTS ${q(r.trigger)} ON ${journal};`,
    `CREATE TRIGGER ${q(r.trigger)} AFTER INSERT ON ${journal} FOR EACH ROW EXECUTE FUNCTION ${r.fn}();`,
  ];
}

/**
 * Fills the rollup from the journal there is (the upgrade to version 12, docs/schema-upgrades.md):
 * what it held is replaced, so the statement can run again. Runs after the trigger exists, whose
 * lock on the journal keeps writers out until the upgrade commits: no entry is counted twice or
 * missed.
 */
export function rollupBackfillSql(journal: string, naming: NamingOptions): string[] {
  const r = rollupNames(naming);
  const kind =
    `CASE WHEN jsonb_typeof(j.metadata -> 'paymentId') = 'string' AND jsonb_typeof(j.metadata -> 'refundedAmount') = 'number' ` +
    `THEN CASE WHEN j.description LIKE 'Lost dispute%' THEN 'clawback' ELSE 'refund' END WHEN j.type = 'void' THEN NULL ELSE 'spend' END`;
  const parts = `CASE WHEN e.kind <> 'spend' THEN NULL WHEN jsonb_typeof(e.metadata -> 'leaseWindow' -> 'parts') = 'array' THEN e.metadata -> 'leaseWindow' -> 'parts' WHEN jsonb_typeof(e.metadata -> 'usages') = 'array' THEN e.metadata -> 'usages' END`;
  const tokens = (field: string) =>
    `coalesce((SELECT sum(${num(`x.v -> '${field}'`)}) FROM jsonb_array_elements(${parts}) AS x(v)), 0)`;
  const requests =
    `CASE WHEN e.kind <> 'spend' THEN 0 WHEN e.type = 'deduct' THEN CASE WHEN e.reservation_id IS NULL THEN 1 ELSE 0 END ` +
    `WHEN jsonb_typeof(e.metadata -> 'leaseWindow' -> 'requests') = 'number' THEN (e.metadata -> 'leaseWindow' ->> 'requests')::numeric ELSE 1 END`;
  return [
    `DELETE FROM ${r.table};`,
    `INSERT INTO ${r.table} ("user_id", "day", "kind", "credits", "requests", "input_tokens", "output_tokens", "cached_tokens") ` +
      `SELECT e.user_id, (e.created_at AT TIME ZONE 'UTC')::date, e.kind, sum(e.amount), sum(${requests}), ` +
      `sum(${tokens("inputTokens")}), sum(${tokens("outputTokens")}), sum(${tokens("cachedTokens")}) ` +
      `FROM (SELECT j.*, ${kind} AS kind FROM ${journal} j WHERE j.type IN ('deduct', 'commit_reserved', 'void')) AS e ` +
      // In day order, as the trigger writes them: a report's range of days reads adjacent pages.
      `WHERE e.kind IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 2, 1, 3;`,
  ];
}
