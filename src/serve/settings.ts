import * as z from "zod/mini";
import {
  PAYMENT_FLAGS,
  PAYMENT_OPTIONS,
  paymentSettings,
  type PaymentFlags,
  type PaymentSettings,
} from "../modules/billing/provider-settings.js";
import { UsageError } from "../util/usage-error.js";

/**
 * `serve` could not start: the store could not be opened, or the port could not be listened on
 * (docs/service.md, "Exit codes"). The CLI prints the message on stderr and exits 1.
 */
export class ServeStartError extends Error {
  override name = "ServeStartError";
}

export type Env = Record<string, string | undefined>;

/** The flags of `serve` as `parseArgs` gives them. */
export const SERVE_FLAGS = {
  port: { type: "string" },
  host: { type: "string" },
  sqlite: { type: "string" },
  worker: { type: "boolean" },
  console: { type: "boolean" },
  "log-level": { type: "string" },
  ...PAYMENT_FLAGS,
} as const;

export interface ServeFlags extends PaymentFlags {
  port?: string;
  host?: string;
  sqlite?: string;
  worker?: boolean;
  console?: boolean;
  "log-level"?: string;
}

/** The default SQLite file when no store is configured (relative to the working directory). */
export const DEFAULT_SQLITE_PATH = "./credit-management.sqlite";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const int = (min: number, max: number) =>
  z.pipe(
    z.pipe(z.string().check(z.regex(/^[0-9]+$/, { error: "must be a whole number" })), z.transform(Number)),
    z.number().check(z.int(), z.minimum(min), z.maximum(max)),
  );

const url = (schemes: readonly string[]) =>
  z.string().check(
    z.refine(
      (v) => {
        try {
          return schemes.includes(new URL(v).protocol);
        } catch {
          return false;
        }
      },
      { error: `must be a ${schemes.map((s) => `${s}//`).join(" or ")} URL` },
    ),
  );

/** A credential of a payment provider: printable, no spaces, 1,024 characters at most. */
const secret = z.optional(
  z.string().check(z.regex(/^[!-~]{1,1024}$/, { error: "must be 1 to 1,024 printable characters without spaces" })),
);

/** What a `CREDIT_TEST_CLOCK` must be. */
const NOT_A_START = "must be now or an ISO 8601 date-time with its offset, such as 2030-01-01T00:00:00Z";

/** The variables, as text; each field's name is its variable's. */
const Schema = z.strictObject({
  CREDIT_PORT: z._default(int(0, 65_535), 8080),
  CREDIT_HOST: z._default(z.string().check(z.minLength(1)), "0.0.0.0"),
  CREDIT_MONGO_URI: z.optional(
    z.string().check(z.regex(/^mongodb(\+srv)?:\/\//, { error: "must be a mongodb:// or mongodb+srv:// URL" })),
  ),
  CREDIT_PG_URL: z.optional(url(["postgres:", "postgresql:"])),
  /** The PostgreSQL schema of the tables and of `credit_api_keys` (PostgreSQL names: 63 bytes at most). */
  CREDIT_PG_SCHEMA: z.optional(
    z
      .string()
      .check(z.regex(/^[^\0"]{1,63}$/, { error: "must be a schema name of 1 to 63 characters, without quotes" })),
  ),
  /** `day`, `week` or `month`: a partitioned PostgreSQL store (docs/running-for-years.md). */
  CREDIT_PG_PARTITIONS: z.optional(z.enum(["day", "week", "month"], { error: "must be day, week or month" })),
  /** The MongoDB database. Default `credit_management`. */
  CREDIT_MONGO_DB: z._default(
    z.string().check(
      z.regex(/^[^/\\. "$*<>:|?\0]{1,63}$/, {
        error: 'must be a MongoDB database name: 1 to 63 characters, none of / \\ . " $ * < > : | ?',
      }),
    ),
    "credit_management",
  ),
  CREDIT_SQLITE_PATH: z.optional(z.string().check(z.minLength(1))),
  CREDIT_LOG_LEVEL: z._default(z.enum(LOG_LEVELS), "info"),
  /**
   * How long info-level log lines may wait in memory before they are written, in ms (one write per
   * batch instead of one per line); 0: every line is written at once. Warnings and errors are never
   * held (docs/service.md, "Logs").
   */
  CREDIT_LOG_FLUSH_MS: z._default(int(0, 10_000), 100),
  CREDIT_MAX_BODY_BYTES: z._default(int(1024, 10_485_760), 65_536),
  /**
   * The manager's `overdraftLimit` (docs/concepts.md, "Overdraft and debt"): how far usage already
   * delivered (`afterService`, commits beyond a hold) may take an account below zero, in credits,
   * or `unlimited`. Default 0: no debt.
   */
  CREDIT_OVERDRAFT_LIMIT: z._default(z.union([z.literal("unlimited"), int(0, Number.MAX_SAFE_INTEGER)]), 0),
  /** Longest a request may take, headers and body included, in ms (node's `requestTimeout`). */
  CREDIT_REQUEST_TIMEOUT_MS: z._default(int(1000, 600_000), 30_000),
  /**
   * Longest a request's headers may take to arrive, in ms (node's `headersTimeout`, checked every
   * second): a client that never ends them is answered 408 and closed. Unset: 10 s, or the request
   * time-out when that is shorter; set, at most the request time-out.
   */
  CREDIT_HEADERS_TIMEOUT_MS: z.optional(int(1000, 600_000)),
  /** Open connections at most (node's `maxConnections`): one past it is closed at once. */
  CREDIT_MAX_CONNECTIONS: z._default(int(1, 1_000_000), 10_000),
  /** Longest SIGTERM waits for requests in flight before it cuts them, in ms. */
  CREDIT_SHUTDOWN_TIMEOUT_MS: z._default(int(100, 600_000), 25_000),
  /** Comma-separated origins allowed by CORS; unset: no CORS headers at all. */
  CREDIT_CORS_ORIGINS: z.optional(
    z.pipe(
      z.pipe(
        z.string(),
        z.transform((v) => v.split(",").map((o) => o.trim())),
      ),
      z
        .array(
          z
            .string()
            .check(z.regex(/^https?:\/\/[^/\s]+$/, { error: "each origin must be like https://app.example.com" })),
        )
        .check(z.minLength(1)),
    ),
  ),
  /** `admin` (default): /metrics needs an admin credential; `public`: anyone; `off`: no /metrics. */
  CREDIT_METRICS: z._default(z.enum(["admin", "public", "off"]), "admin"),
  CREDIT_JWT_JWKS_URL: z.optional(url(["https:", "http:"])),
  /** A PEM public key (SPKI) or, for HS256, a shared secret of 32 bytes or more. */
  CREDIT_JWT_KEY: z.optional(
    z.string().check(z.minLength(32, { error: "must be a PEM public key or a secret of 32+ characters" })),
  ),
  CREDIT_JWT_ISSUER: z.optional(z.string().check(z.minLength(1))),
  CREDIT_JWT_AUDIENCE: z.optional(z.string().check(z.minLength(1))),
  CREDIT_JWT_USER_CLAIM: z._default(z.string().check(z.minLength(1)), "sub"),
  /** A claim whose value `admin` (or, for an array or space-separated scope, one of its items) makes an admin. */
  CREDIT_JWT_ROLE_CLAIM: z._default(z.string().check(z.minLength(1)), "scope"),
  CREDIT_JWT_ADMIN_VALUE: z._default(z.string().check(z.minLength(1)), "credits:admin"),
  /** The claim holding the caller's spender (docs/teams-and-limits.md); a token without it spends as none. */
  CREDIT_JWT_SPENDER_CLAIM: z._default(z.string().check(z.minLength(1)), "spender"),
  /** Failed authentications one IP may make in a burst, and per minute after it. */
  CREDIT_AUTH_FAILURES_BURST: z._default(int(1, 100_000), 20),
  CREDIT_AUTH_FAILURES_PER_MINUTE: z._default(int(1, 100_000), 10),
  /** Trust X-Forwarded-For's last hop for the client's IP (behind your proxy only). */
  CREDIT_TRUST_PROXY: z._default(z.enum(["true", "false"]), "false"),
  /** `1`/`true`: the operator console under /console, for admins (docs/service.md); off by default. */
  CREDIT_CONSOLE: z._default(
    z.pipe(
      z.enum(["1", "0", "true", "false"], { error: "must be 1, 0, true or false" }),
      z.transform((v) => v === "1" || v === "true"),
    ),
    false,
  ),
  /** The key signing the console's CSRF tokens (32+ characters); unset: random per process. */
  CREDIT_CONSOLE_SECRET: z.optional(z.string().check(z.minLength(32, { error: "must be 32 characters or more" }))),
  /**
   * Signs and checks customer tokens (32+ characters; docs/usage.md, "For your customers"): set,
   * the read routes take them and the customer usage page is served at /customer. Unset: off.
   */
  CREDIT_CUSTOMER_TOKEN_SECRET: z.optional(
    z.string().check(z.minLength(32, { error: "must be 32 characters or more" })),
  ),
  /**
   * The customer tokens' rate limit (docs/service.md, "Customer tokens and the customer page"):
   * requests one account's customer tokens may make at once, and per minute after it; a
   * `…_PER_MINUTE` of 0 turns it off.
   */
  CREDIT_CUSTOMER_RATE_LIMIT_BURST: z._default(int(1, 1_000_000), 60),
  CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE: z._default(int(0, 1_000_000), 60),
  /** The secret before the current one, still accepted (not used to sign) while its tokens live. */
  CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET: z.optional(
    z.string().check(z.minLength(32, { error: "must be 32 characters or more" })),
  ),
  /**
   * Who may embed the customer page in a frame: the CSP `frame-ancestors` sources, separated by
   * spaces (`https://app.example.com`, `'self'`). Default `'none'`: no one.
   */
  CREDIT_CUSTOMER_FRAME_ANCESTORS: z._default(
    z.pipe(
      z.pipe(
        z.string(),
        z.transform((v) => v.split(/\s+/).filter((p) => p !== "")),
      ),
      z
        .array(
          z.string().check(
            z.regex(/^('none'|'self'|https?:\/\/(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?)$/, {
              error: "each source must be 'self', 'none' or an origin such as https://app.example.com",
            }),
          ),
        )
        .check(z.minLength(1), z.maxLength(32)),
    ),
    ["'none'"],
  ),
  /**
   * How long an API key's row is reused before the store is read again, in ms (0: every request
   * reads it). A revoked key keeps working in a running service for up to this long, hence the
   * bound of one minute (docs/service.md, "Secure it").
   */
  CREDIT_KEY_CACHE_MS: z._default(int(0, 60_000), 5000),
  /**
   * `now` or an ISO 8601 date-time: `serve` builds its manager on a test clock that starts there and
   * moves only by `POST /admin/test-clock/advance` (docs/service.md, "A test clock in staging").
   * Unset: the real clock, and no such route.
   */
  CREDIT_TEST_CLOCK: z.optional(
    z.union([z.literal("now", { error: NOT_A_START }), z.iso.datetime({ offset: true, error: NOT_A_START })], {
      error: NOT_A_START,
    }),
  ),
  /**
   * The `service.name` of the metrics' resource (OpenTelemetry's variable; it wins over a
   * `service.name` in OTEL_RESOURCE_ATTRIBUTES). Default `credit-management`.
   */
  OTEL_SERVICE_NAME: z.optional(
    z.string().check(z.regex(/^[!-~][ -~]{0,254}$/, { error: "must be 1 to 255 printable characters" })),
  ),
  /**
   * More attributes of the metrics' resource, `key=value` pairs separated by commas, values
   * percent-encoded (the OpenTelemetry resource SDK's format).
   */
  OTEL_RESOURCE_ATTRIBUTES: z.optional(
    z.pipe(
      z.string().check(z.maxLength(4096, { error: "must be 4,096 characters or fewer" })),
      z.transform((v, ctx) => {
        const attributes: Record<string, string> = {};
        for (const pair of v.split(",")) {
          if (pair.trim() === "") continue;
          const at = pair.indexOf("=");
          const key = at < 0 ? "" : pair.slice(0, at).trim();
          let value: string | null = null;
          try {
            value = at < 0 ? null : decodeURIComponent(pair.slice(at + 1).trim());
          } catch {
            value = null;
          }
          if (!/^[!-~]{1,255}$/.test(key) || value === null || value.length > 255) {
            ctx.issues.push({
              code: "custom",
              message: "must be key=value pairs separated by commas (values percent-encoded, 255 characters at most)",
              input: v,
            });
            return z.NEVER;
          }
          attributes[key] = value;
        }
        return attributes;
      }),
    ),
  ),
  // Read by the payment providers (docs/promos-and-payments.md); checked here so a stray value
  // stops the start instead of failing every webhook.
  STRIPE_SECRET_KEY: secret,
  STRIPE_WEBHOOK_SECRET: secret,
  RAZORPAY_KEY_ID: secret,
  RAZORPAY_KEY_SECRET: secret,
  RAZORPAY_WEBHOOK_SECRET: secret,
});

export type ServeSettings = z.output<typeof Schema> & {
  worker: boolean;
  store:
    | { kind: "sqlite"; path: string }
    | { kind: "postgres"; url: string; schema: string | undefined; partitions: "day" | "week" | "month" | undefined }
    | { kind: "mongodb"; uri: string; db: string };
  jwt: boolean;
  /** The application's payment settings (`creditsPerUnit`, Stripe): docs/service.md, "Configure it". */
  payments: PaymentSettings;
};

/** The variables a flag of `serve` sets (the flag wins). */
const FLAG_OF: Record<string, "port" | "host" | "sqlite" | "log-level"> = {
  CREDIT_PORT: "port",
  CREDIT_HOST: "host",
  CREDIT_SQLITE_PATH: "sqlite",
  CREDIT_LOG_LEVEL: "log-level",
};

/** The variables of `schema` that `env` sets, trimmed (a blank one is unset). */
function variables(schema: z.ZodMiniObject, env: Env): Record<string, string> {
  const input: Record<string, string> = {};
  for (const key of Object.keys(schema.shape)) {
    const v = env[key];
    if (v !== undefined && v.trim() !== "") input[key] = v.trim();
  }
  return input;
}

/**
 * `input` checked by `schema`; a `UsageError` names the first wrong value by its flag when a flag
 * gave it, else by its variable, and hides the value of a secret or a URL.
 */
function checked<S extends z.ZodMiniObject>(
  schema: S,
  input: Record<string, string>,
  flags: ServeFlags = {},
): z.output<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const key = String(issue?.path[0] ?? "");
  const flag = FLAG_OF[key];
  const from = flag !== undefined && flags[flag] !== undefined ? `--${flag}` : key;
  const shown = /(KEY|SECRET|URL|URI)$/.test(key) ? "(hidden)" : `"${input[key]}"`;
  throw new UsageError(`${from} ${issue?.message ?? "is invalid"}, not ${shown}`);
}

/** Reads and checks the flags and the environment; throws `UsageError` naming what is wrong. */
export function serveSettings(flags: ServeFlags, env: Env): ServeSettings {
  const input = variables(Schema, env);
  for (const [key, flag] of Object.entries(FLAG_OF)) {
    const v = flags[flag];
    if (v !== undefined) input[key] = v;
  }
  if (flags.console === true) input.CREDIT_CONSOLE = "1";
  const s = checked(Schema, input, flags);
  const store = storeOf(s);
  if (s.CREDIT_JWT_JWKS_URL !== undefined && s.CREDIT_JWT_KEY !== undefined)
    throw new UsageError("set CREDIT_JWT_JWKS_URL or CREDIT_JWT_KEY, not both");
  if (s.CREDIT_HEADERS_TIMEOUT_MS !== undefined && s.CREDIT_HEADERS_TIMEOUT_MS > s.CREDIT_REQUEST_TIMEOUT_MS)
    throw new UsageError(
      `CREDIT_HEADERS_TIMEOUT_MS (${s.CREDIT_HEADERS_TIMEOUT_MS}) must not exceed CREDIT_REQUEST_TIMEOUT_MS (${s.CREDIT_REQUEST_TIMEOUT_MS}): the headers are part of the request`,
    );
  if (s.CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET !== undefined && s.CREDIT_CUSTOMER_TOKEN_SECRET === undefined)
    throw new UsageError("CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET needs CREDIT_CUSTOMER_TOKEN_SECRET");
  if (s.CREDIT_CUSTOMER_FRAME_ANCESTORS.includes("'none'") && s.CREDIT_CUSTOMER_FRAME_ANCESTORS.length > 1)
    throw new UsageError("CREDIT_CUSTOMER_FRAME_ANCESTORS: 'none' cannot be combined with other sources");
  const payments = paymentSettings(flags, env);
  const jwt = s.CREDIT_JWT_JWKS_URL !== undefined || s.CREDIT_JWT_KEY !== undefined;
  if (jwt && (s.CREDIT_JWT_ISSUER === undefined || s.CREDIT_JWT_AUDIENCE === undefined))
    throw new UsageError("JWTs need CREDIT_JWT_ISSUER and CREDIT_JWT_AUDIENCE (both are checked)");
  if (!jwt && (s.CREDIT_JWT_ISSUER !== undefined || s.CREDIT_JWT_AUDIENCE !== undefined))
    throw new UsageError("CREDIT_JWT_ISSUER/CREDIT_JWT_AUDIENCE need CREDIT_JWT_JWKS_URL or CREDIT_JWT_KEY");
  if (s.CREDIT_TEST_CLOCK !== undefined) {
    const production = productionMarkers(env);
    if (production.length > 0)
      throw new UsageError(
        `CREDIT_TEST_CLOCK simulates time, for tests and staging only: it is refused with ${production.join(" and ")}, which mark a production environment (docs/service.md, "A test clock in staging")`,
      );
  }
  return { ...s, worker: flags.worker === true, store, jwt, payments };
}

/**
 * What in `env` says the process runs in production, where a test clock is refused
 * (docs/service.md, "A test clock in staging"): `NODE_ENV=production`, and live payment keys, with
 * which the renewals and auto top-ups of simulated months would charge real cards.
 */
function productionMarkers(env: Env): string[] {
  const found: string[] = [];
  if (env.NODE_ENV?.trim().toLowerCase() === "production") found.push("NODE_ENV=production");
  if (/^(sk|rk)_live_/.test(env.STRIPE_SECRET_KEY?.trim() ?? "")) found.push("a live STRIPE_SECRET_KEY");
  if (/^rzp_live_/.test(env.RAZORPAY_KEY_ID?.trim() ?? "")) found.push("a live RAZORPAY_KEY_ID");
  return found;
}

const StoreSchema = z.pick(Schema, {
  CREDIT_MONGO_URI: true,
  CREDIT_MONGO_DB: true,
  CREDIT_PG_URL: true,
  CREDIT_PG_SCHEMA: true,
  CREDIT_PG_PARTITIONS: true,
  CREDIT_SQLITE_PATH: true,
});

/** The store the checked variables name: MongoDB, PostgreSQL, or the SQLite file (by default ours). */
function storeOf(s: z.output<typeof StoreSchema>): ServeSettings["store"] {
  const given = [s.CREDIT_MONGO_URI && "CREDIT_MONGO_URI", s.CREDIT_PG_URL && "CREDIT_PG_URL"].filter(Boolean);
  if (given.length > 1 || (given.length === 1 && s.CREDIT_SQLITE_PATH !== undefined)) {
    throw new UsageError(
      `choose one store: ${[...given, s.CREDIT_SQLITE_PATH !== undefined ? "CREDIT_SQLITE_PATH/--sqlite" : ""].filter(Boolean).join(" and ")} are set`,
    );
  }
  return s.CREDIT_MONGO_URI !== undefined
    ? { kind: "mongodb", uri: s.CREDIT_MONGO_URI, db: s.CREDIT_MONGO_DB }
    : s.CREDIT_PG_URL !== undefined
      ? { kind: "postgres", url: s.CREDIT_PG_URL, schema: s.CREDIT_PG_SCHEMA, partitions: s.CREDIT_PG_PARTITIONS }
      : { kind: "sqlite", path: s.CREDIT_SQLITE_PATH ?? DEFAULT_SQLITE_PATH };
}

/**
 * The store of `serve`, `keys` and `worker` from the environment (docs/service.md, "Run it"): one
 * resolution for every command on a machine, so that each finds the others' data. Throws
 * `UsageError` naming a bad variable, or two stores set.
 */
export function storeSettings(env: Env): ServeSettings["store"] {
  return storeOf(checked(StoreSchema, variables(StoreSchema, env)));
}

export const SERVE_OPTIONS = `Options of "serve" (each flag wins over its variable; docs/service.md):
  --port N                         CREDIT_PORT. Default 8080
  --host HOST                      CREDIT_HOST. Default 0.0.0.0
  --sqlite FILE                    CREDIT_SQLITE_PATH: the SQLite store (default ${DEFAULT_SQLITE_PATH} when
                                   neither CREDIT_PG_URL nor CREDIT_MONGO_URI is set; needs better-sqlite3)
  --worker                         Also run the worker's rounds in this process (the worker's variables)
  --log-level LEVEL                CREDIT_LOG_LEVEL. Default info
  --console                        CREDIT_CONSOLE=1: the operator console under /console, admins only
                                   (CREDIT_CONSOLE_SECRET signs its forms). Default off
Payments (as your services configure them: the credits a payment buys, the auto top-ups --worker charges):
${PAYMENT_OPTIONS}Environment of "serve": CREDIT_PG_URL (CREDIT_PG_SCHEMA, CREDIT_PG_PARTITIONS), CREDIT_MONGO_URI
  (CREDIT_MONGO_DB), CREDIT_LOG_FLUSH_MS (default 100; 0: each line at once), CREDIT_MAX_BODY_BYTES,
  CREDIT_OVERDRAFT_LIMIT (credits of debt usage already delivered may make, or unlimited; default 0),
  CREDIT_REQUEST_TIMEOUT_MS, CREDIT_HEADERS_TIMEOUT_MS, CREDIT_MAX_CONNECTIONS, CREDIT_SHUTDOWN_TIMEOUT_MS, CREDIT_CORS_ORIGINS,
  CREDIT_METRICS (admin|public|off), CREDIT_JWT_JWKS_URL or CREDIT_JWT_KEY, CREDIT_JWT_ISSUER,
  CREDIT_JWT_AUDIENCE, CREDIT_JWT_USER_CLAIM, CREDIT_JWT_ROLE_CLAIM, CREDIT_JWT_ADMIN_VALUE,
  CREDIT_JWT_SPENDER_CLAIM, CREDIT_AUTH_FAILURES_BURST, CREDIT_AUTH_FAILURES_PER_MINUTE, CREDIT_TRUST_PROXY, CREDIT_CONSOLE,
  CREDIT_CONSOLE_SECRET, CREDIT_CUSTOMER_TOKEN_SECRET (customer tokens and the /customer page;
  CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET, CREDIT_CUSTOMER_FRAME_ANCESTORS, CREDIT_CUSTOMER_RATE_LIMIT_BURST,
  CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE), OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES (the metrics' resource)
  CREDIT_TEST_CLOCK                now or an ISO 8601 date-time: time is simulated, starting there, and
                                   moves only by POST /admin/test-clock/advance (admins). For tests
                                   and staging: refused with NODE_ENV=production or live payment keys
  CREDIT_KEY_CACHE_MS              How long a running service reuses an API key's row, in ms (0 to
                                   60000). Default 5000: a revoked key keeps working up to this long
  Exit codes: 0 stopped cleanly (SIGTERM/SIGINT); 1 could not start (the store could not be opened,
  the port is in use or not allowed), or the shutdown time-out cut requests in flight; 2 a bad flag
  or variable; 3 better-sqlite3 (the default store's driver) is not installed. Each start-up
  failure is one line on stderr: "credit-management: serve could not start: ...".
Commands "keys" (the same store variables):
  keys create --role admin|user:ID [--spender ID] [--name NAME]
                                                   Prints the new key once (store only its hash);
                                                   --spender: a user key's spends are that spender's
                                                   (its limits apply; docs/teams-and-limits.md)
  keys list                                        Id, role (user:ID[/spender]), name, created, revoked
  keys revoke ID                                   Running services refuse the key within
                                                   CREDIT_KEY_CACHE_MS (default 5 s)
`;
