import { UsageError } from "./usage-error.js";

/**
 * Every `CREDIT_*` variable the package and its commands read (docs/operations.md, "Environment
 * variables"), in one place: a `CREDIT_*` name not here is a typo (`CREDIT_PG_URI`) that would
 * otherwise leave its setting silently unset. The last ones are read by the project's own tests,
 * benchmarks and examples, so that their environment passes the check too.
 */
export const CREDIT_VARIABLES: ReadonlySet<string> = new Set([
  // The store (docs/storage.md).
  "CREDIT_MONGO_URI",
  "CREDIT_MONGO_DB",
  "CREDIT_PG_URL",
  "CREDIT_PG_SCHEMA",
  "CREDIT_PG_PARTITIONS",
  "CREDIT_SQLITE_PATH",
  "CREDIT_JOURNAL_KEYS",
  "CREDIT_LEDGER_FILE",
  "CREDIT_REDIS_URL",
  "CREDIT_REDIS_CACHE_PREFIX",
  "CREDIT_REDIS_STREAM",
  // `serve` (docs/service.md).
  "CREDIT_PORT",
  "CREDIT_HOST",
  "CREDIT_LOG_LEVEL",
  "CREDIT_LOG_FLUSH_MS",
  "CREDIT_MAX_BODY_BYTES",
  "CREDIT_OVERDRAFT_LIMIT",
  "CREDIT_REQUEST_TIMEOUT_MS",
  "CREDIT_HEADERS_TIMEOUT_MS",
  "CREDIT_MAX_CONNECTIONS",
  "CREDIT_SHUTDOWN_TIMEOUT_MS",
  "CREDIT_CORS_ORIGINS",
  "CREDIT_METRICS",
  "CREDIT_JWT_JWKS_URL",
  "CREDIT_JWT_KEY",
  "CREDIT_JWT_ISSUER",
  "CREDIT_JWT_AUDIENCE",
  "CREDIT_JWT_USER_CLAIM",
  "CREDIT_JWT_ROLE_CLAIM",
  "CREDIT_JWT_ADMIN_VALUE",
  "CREDIT_JWT_SPENDER_CLAIM",
  "CREDIT_AUTH_FAILURES_BURST",
  "CREDIT_AUTH_FAILURES_PER_MINUTE",
  "CREDIT_TRUST_PROXY",
  "CREDIT_CONSOLE",
  "CREDIT_CONSOLE_SECRET",
  "CREDIT_CUSTOMER_TOKEN_SECRET",
  "CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET",
  "CREDIT_CUSTOMER_FRAME_ANCESTORS",
  "CREDIT_CUSTOMER_RATE_LIMIT_BURST",
  "CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE",
  "CREDIT_KEY_CACHE_MS",
  "CREDIT_WEBHOOK_ALLOW_NETWORKS",
  "CREDIT_TEST_CLOCK",
  // Payments (docs/promos-and-payments.md).
  "CREDIT_CREDITS_PER_UNIT",
  "CREDIT_PAYMENT_KEY_NAMESPACE",
  // The worker (docs/operations.md).
  "CREDIT_NOTIFICATIONS",
  "CREDIT_WEBHOOKS",
  "CREDIT_IDEMPOTENCY_RETENTION",
  "CREDIT_LOW_CREDITS",
  "CREDIT_LOW_CREDITS_PERCENT",
  "CREDIT_REMINDER_DAYS",
  "CREDIT_WORKER_BATCH_SIZE",
  "CREDIT_WORKER_CHECKPOINT_ENTRIES",
  "CREDIT_WORKER_CONCURRENCY",
  "CREDIT_WORKER_DISPATCH_EVERY",
  "CREDIT_WORKER_DISPATCH_LIMIT",
  "CREDIT_WORKER_JITTER",
  "CREDIT_WORKER_JOBS_EVERY",
  "CREDIT_WORKER_REMINDERS_EVERY",
  "CREDIT_WORKER_REVENUE_EVERY",
  "CREDIT_WORKER_TOP_UP_EVERY",
  "CREDIT_WORKER_USAGE_EVERY",
  // The project's own test servers and examples (CONTRIBUTING.md).
  "CREDIT_CITUS_URL",
  "CREDIT_MYSQL_URL",
  "CREDIT_NATS_URL",
  "CREDIT_SERVICE_URL",
  "CREDIT_STREAM",
  "CREDIT_TEST_DEPTH",
]);

/**
 * Refuses an environment with a `CREDIT_*` variable set but blank (empty or spaces: a setting
 * meant and lost, which would otherwise pick another store or schema) or not among
 * `CREDIT_VARIABLES` (a misspelt name): a `UsageError` (a `ConfigurationError`; the CLI exits 2)
 * naming each. `names`: only these of the known ones are checked for blanks (all when absent).
 */
export function checkCreditEnv(env: Record<string, string | undefined>, names?: readonly string[]): void {
  const blank: string[] = [];
  const unknown: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith("CREDIT_") || value === undefined) continue;
    if (!CREDIT_VARIABLES.has(name)) unknown.push(name);
    else if (value.trim() === "" && (names === undefined || names.includes(name))) blank.push(name);
  }
  const wrong: string[] = [];
  if (blank.length > 0)
    wrong.push(
      `${blank.sort().join(", ")} ${blank.length === 1 ? "is" : "are"} set but blank (unset ${blank.length === 1 ? "it" : "them"} or give a value)`,
    );
  if (unknown.length > 0)
    wrong.push(
      `${unknown
        .sort()
        .map((n) => `${n}${suggestion(n)}`)
        .join(", ")} ${unknown.length === 1 ? "is not a variable" : "are not variables"} of credit-management`,
    );
  if (wrong.length > 0) throw new UsageError(wrong.join("; "));
}

/** ` (did you mean CREDIT_PG_URL?)` for a name one or two edits from a known one; else "". */
function suggestion(name: string): string {
  let best: string | null = null;
  let bestDistance = 3;
  for (const known of CREDIT_VARIABLES) {
    const d = distance(name, known);
    if (d < bestDistance) [best, bestDistance] = [known, d];
  }
  return best === null ? "" : ` (did you mean ${best}?)`;
}

/** Levenshtein distance. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++)
      row[j] = Math.min(
        (prev[j] as number) + 1,
        (row[j - 1] as number) + 1,
        (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    prev = row;
  }
  return prev[b.length] as number;
}
