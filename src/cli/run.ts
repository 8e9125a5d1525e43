import { checkCreditEnv } from "../util/credit-env.js";
import { writeFileSync } from "node:fs";
// Inlined by the build: the CLI prints the version it was built as.
import packageJson from "../../package.json" with { type: "json" };
import { exitCodeOf, parseCommandLine } from "./args.js";
import { ACCOUNTS_HELP, runAccountsCli } from "./accounts.js";
import { runAudit } from "./audit.js";
import { CLOSE_PERIOD_HELP, REVENUE_HELP, runClosePeriodCli, runRevenueCli } from "../modules/revenue/cli.js";
import { REVERSE_HELP, runReverseCli } from "./reverse.js";
import { runServeCli } from "./serve.js";
import { WEBHOOKS_HELP, runWebhooksCli } from "../modules/webhooks/cli.js";
import type { StoreSource } from "./store.js";
import { SERVE_OPTIONS } from "../serve/settings.js";
import { runWorker } from "./worker.js";
import { WORKER_FLAGS, WORKER_OPTIONS, workerSettings } from "../serve/worker-settings.js";
import { generateMongoSchema } from "../schema/mongo.js";
import { generateUpgradeSql } from "../schema/migrations.js";
import { generateMongoScript } from "../schema/mongo-script.js";
import { SCHEMA_VERSION, SQL_DIALECTS, type SqlDialect, generateSql } from "../schema/sql.js";
import { UsageError } from "../util/usage-error.js";
import { ConfigurationError } from "../core/errors.js";

/** Where the CLI writes: its standard output and standard error. @public */
export interface CliIo {
  /** Writes to standard output. */
  stdout: (text: string) => void;
  /** Writes to standard error. */
  stderr: (text: string) => void;
}

const SCHEMA_OPTIONS = `Options of "schema":
  --backend sql|nosql              sql: DDL (default); nosql: MongoDB $jsonSchema validators and indexes (JSON)
  --dialect postgres|mysql|sqlite  SQL dialect (default postgres)
  --dialect mongodb                A mongosh script making what MongoDbManager.init() makes: collections
                                   with validators, indexes, the schema-version document
  --prefix PREFIX                  Put PREFIX in front of every table, collection and index name
  --schema NAME                    PostgreSQL schema / MySQL database / SQLite attached database of the tables
  --from-version N                 Upgrade statements for a store at schema version N (sql; mongodb:
                                   the script also drops indexes later versions removed), instead
                                   of the whole schema; the version row (document) is set last
  --distributed                    PostgreSQL on Citus: user_id first in every per-account table's
                                   primary key and unique indexes, and the calls that distribute the
                                   tables (what init() runs on a Citus coordinator); with
                                   --from-version, the upgrade of such a store; docs/scaling-out.md
  --partitioned day|week|month     PostgreSQL: the journal and ledger tables partitioned by created_at,
                                   with a DEFAULT partition and those of this and the next 2 intervals
                                   (new schema only); docs/running-for-years.md
  --out FILE                       Write to FILE instead of standard output
`;

const AUDIT_OPTIONS = `Options of "audit" (the store: CREDIT_MONGO_URI and CREDIT_MONGO_DB, CREDIT_PG_URL and CREDIT_PG_SCHEMA,
or CREDIT_SQLITE_PATH):
  --sqlite FILE                    Audit this SQLite store (instead of the environment's): an existing file,
                                   opened to read only (nothing created or migrated)
  --user ID                        An account to audit (repeatable)
  --all                            Every account of the store
  --ledger-file FILE               A JSONL ledger file to check against the store (repeatable: give
                                   the rotated files too); each line's hash must recompute, and the
                                   audited accounts' entries must be in the files exactly as stored
  --repair                         Append to the last --ledger-file the audited accounts' journal entries
                                   that none of the files has (lost in a crash before they were written),
                                   in order, and say how many; a second run appends nothing
  --unordered                      Accept an account's lines out of seq order within a file (a file
                                   several processes appended to at once); lines must still be there once
  --from checkpoint|genesis        Replay from each account's latest checkpoint (default) or from its first entry
  --archive FILE                   A JSONL archive written by credits.archiveJournal (repeatable): every
                                   entry's hash and the chain recompute, and replaying each account's part
                                   gives the state of the checkpoint that ends it (and, with a store, that
                                   checkpoint is the store's). Alone, it needs no --user/--all nor a store
  --json                           One JSON object per account (and per bad line); summary on stderr
  Exit code 0: consistent; 1: a problem found (or the audit failed); 2: bad usage, or the SQLite
  file is missing or not a credit-management store at this release's schema version;
  3: an account named with --user does not exist (and nothing else was wrong).
`;

/**
 * The top-level help: the commands, one screen. Each command's options, environment and examples
 * are in its own help (`credit-management <command> --help`, or `help <command>`; docs/cli.md).
 */
export const HELP = `Usage: credit-management <command> [options]

Commands:
  schema    Print the storage schema: SQL DDL, MongoDB validators, upgrade scripts
  audit     Replay accounts' journals and check them against the store and the JSONL ledger files
  worker    Run the jobs, the expiring-credit reminders and the notification dispatcher on
            intervals (or once: --once), until SIGTERM/SIGINT
  serve     The credit API as a service: HTTP API behind API keys/JWTs, health, /metrics, console
  keys      Create, list and revoke the service's API keys
  webhooks  Add, list, remove, rotate and test the webhook endpoints the worker delivers to
  accounts  Show an account (credits, spend limits, spend by spender, subscription); set and
            remove its spend limits
  reverse   Give back a charge, in whole or in part, to the grants it drew from; show what was
            given back of it
  revenue   Deferred revenue, recognized revenue, breakage and refunds, from the journal
  close-period  Close the revenue reports through a date (a month-end close); list the closes

Each command's options, environment variables, exit codes and examples:
  credit-management <command> --help       or: credit-management help <command>

Options:
  -h, --help       Show this help
  -v, --version    Print the version

Examples:
  npx credit-management schema --dialect postgres > schema.sql
  npx credit-management keys create --role admin && npx credit-management serve
  CREDIT_PG_URL=postgres://… npx credit-management audit --all --ledger-file ledger.jsonl
  CREDIT_PG_URL=postgres://… npx credit-management worker
  CREDIT_PG_URL=postgres://… npx credit-management accounts show acme
  CREDIT_PG_URL=postgres://… npx credit-management reverse ENTRY_ID --user acme --reason "…"

Docs: docs/cli.md (the commands), docs/service.md (serve and keys).
`;

const SCHEMA_EXAMPLES = `Examples:
  npx credit-management schema --backend sql --dialect postgres > schema.sql
  npx credit-management schema --backend sql --dialect mysql --prefix credits_ --out credits.sql
  npx credit-management schema --backend nosql --out validators.json
  npx credit-management schema --dialect mongodb --from-version 1 > upgrade.js && mongosh "$URI" --file upgrade.js
  npx credit-management schema --dialect postgres --from-version 1 > upgrade.sql
`;

const AUDIT_EXAMPLES = `Examples:
  CREDIT_PG_URL=postgres://… npx credit-management audit --all --ledger-file ledger.jsonl
  npx credit-management audit --sqlite credits.db --all --ledger-file ledger.jsonl --repair
  npx credit-management audit --archive journal-2026-10.jsonl
`;

const WORKER_EXAMPLES = `Examples:
  CREDIT_PG_URL=postgres://… CREDIT_REDIS_URL=redis://… npx credit-management worker
  CREDIT_PG_URL=postgres://… npx credit-management worker --once --reminders-every 0
`;

const SERVE_EXAMPLES = `Examples:
  npx credit-management keys create --role admin && npx credit-management serve
  CREDIT_PG_URL=postgres://… npx credit-management serve --port 8080 --worker
  npx credit-management keys list
`;

/** Each command's own help (`credit-management schema --help`, `credit-management help schema`). */
export const COMMAND_HELP: Readonly<Record<string, string>> = {
  schema: `Usage: credit-management schema [options]\n\nPrints the storage schema generated from the zod models. Docs: docs/storage.md.\n\n${SCHEMA_OPTIONS}\n${SCHEMA_EXAMPLES}`,
  audit: `Usage: credit-management audit (--user ID ... | --all | --archive FILE) [options]\n\nReplays accounts' journals and checks them against the store (and the JSONL ledger files). Docs: docs/cli.md.\n\n${AUDIT_OPTIONS}\n${AUDIT_EXAMPLES}`,
  worker: `Usage: credit-management worker [options]\n\nRuns the jobs (lapsed holds, renewals, expiry), the expiring-credit reminders and the notification\ndispatcher, each on its own interval, or once (--once). Docs: docs/operations.md.\n\n${WORKER_OPTIONS}\n${WORKER_EXAMPLES}`,
  serve: `Usage: credit-management serve [options]\n\nServes the credit API, health and metrics. Docs: docs/service.md.\n\n${SERVE_OPTIONS}\n${SERVE_EXAMPLES}`,
  keys: `Usage: credit-management keys create|list|revoke [options]\n\nThe API keys of "serve". Docs: docs/service.md.\n\n${SERVE_OPTIONS}\n${SERVE_EXAMPLES}`,
  webhooks: WEBHOOKS_HELP,
  accounts: ACCOUNTS_HELP,
  revenue: REVENUE_HELP,
  "close-period": CLOSE_PERIOD_HELP,
  reverse: REVERSE_HELP,
};

const isHelpFlag = (arg: string) => arg === "--help" || arg === "-h";

/**
 * The help a command line asks for, or undefined: `help`, `help <command>`, and `<command> … --help`
 * (a `--help` after `--` is an argument, not the flag).
 */
function helpOf(args: readonly string[]): { text: string; code: number } | undefined {
  const [first, second] = args;
  if (first === "help") {
    if (second === undefined) return { text: HELP, code: 0 };
    const text = COMMAND_HELP[second];
    return text === undefined
      ? {
          text: `credit-management: unknown command "${second}"\nRun "credit-management --help" for the commands.\n`,
          code: 2,
        }
      : { text, code: 0 };
  }
  if (first === undefined || COMMAND_HELP[first] === undefined) return undefined;
  const end = args.indexOf("--");
  const flags = end === -1 ? args : args.slice(0, end);
  return flags.some(isHelpFlag) ? { text: COMMAND_HELP[first] as string, code: 0 } : undefined;
}

const SCHEMA_FLAGS = ["backend", "dialect", "prefix", "schema", "out", "from-version", "distributed", "partitioned"];
const AUDIT_FLAGS = ["user", "all", "ledger-file", "json", "unordered", "repair", "sqlite", "archive", "from"];

/**
 * Runs the CLI with `args` (without node and the script). Resolves to the exit code: 0 done, 1
 * failed (or, for `audit`, a problem found), 2 bad usage (the message says what was wrong); 3, for
 * `audit` and `accounts`, an account named does not exist. `source`: the store `audit` and
 * `accounts` read, or the environment `audit`, `accounts` and `worker` read, instead of the
 * process's (tests).
 */
export async function runCli(args: readonly string[], io: CliIo, source: StoreSource = {}): Promise<number> {
  const help = helpOf(args);
  if (help !== undefined) {
    if (help.code === 0) io.stdout(help.text);
    else io.stderr(help.text);
    return help.code;
  }
  try {
    // A blank or misspelt CREDIT_* variable would silently pick another store or setting.
    checkCreditEnv(source.env ?? process.env);
  } catch (error) {
    return exitCodeOf(error, io, args[0] !== undefined && COMMAND_HELP[args[0]] !== undefined ? args[0] : undefined);
  }
  if (args[0] === "serve" || args[0] === "keys") return runServeCli(args, io, source.env ?? process.env);
  if (args[0] === "webhooks") return runWebhooksCli(args.slice(1), io, source.env ?? process.env);
  // Commands with flags of their own (their --help is answered above).
  if (args[0] === "accounts") return runAccountsCli(args.slice(1), io, source);
  if (args[0] === "revenue") return runRevenueCli(args.slice(1), io, source);
  if (args[0] === "close-period") return runClosePeriodCli(args.slice(1), io, source);
  if (args[0] === "reverse") return runReverseCli(args.slice(1), io, source);
  try {
    return await run(args, io, source);
  } catch (error) {
    // A usage error points at the command's own help when the line names a command.
    return exitCodeOf(error, io, args[0] !== undefined && COMMAND_HELP[args[0]] !== undefined ? args[0] : undefined);
  }
}

async function run(args: readonly string[], io: CliIo, source: StoreSource): Promise<number> {
  const { values, positionals } = parseCommandLine(args, {
    backend: { type: "string" },
    dialect: { type: "string" },
    prefix: { type: "string" },
    schema: { type: "string" },
    out: { type: "string" },
    "from-version": { type: "string" },
    distributed: { type: "boolean" },
    partitioned: { type: "string" },
    user: { type: "string", multiple: true },
    all: { type: "boolean" },
    "ledger-file": { type: "string", multiple: true },
    unordered: { type: "boolean" },
    repair: { type: "boolean" },
    sqlite: { type: "string" },
    archive: { type: "string", multiple: true },
    from: { type: "string" },
    json: { type: "boolean" },
    ...WORKER_FLAGS,
    help: { type: "boolean", short: "h" },
    version: { type: "boolean", short: "v" },
  });
  const [command, ...rest] = positionals;
  if (values.help) {
    io.stdout((command !== undefined && COMMAND_HELP[command]) || HELP);
    return 0;
  }
  if (values.version) {
    io.stdout(`${packageJson.version}\n`);
    return 0;
  }
  if (command === undefined)
    throw new UsageError(
      'missing command (try "schema", "audit", "accounts", "reverse", "revenue", "worker", "serve", "keys" or "webhooks")',
    );
  if (command !== "schema" && command !== "audit" && command !== "worker")
    throw new UsageError(`unknown command "${command}"`);
  if (rest.length > 0) throw new UsageError(`unexpected argument "${rest[0]}"`);
  const only = (names: readonly string[], of: string) => {
    for (const name of names) {
      if ((values as Record<string, unknown>)[name] !== undefined)
        throw new UsageError(`--${name} applies to "${of}" only`);
    }
  };
  const workerFlags = Object.keys(WORKER_FLAGS);
  if (command === "worker") {
    only(SCHEMA_FLAGS, "schema");
    only(AUDIT_FLAGS, "audit");
    const env = source.env ?? process.env;
    return runWorker(workerSettings(values, env), io, env);
  }
  only(workerFlags, "worker");
  if (command === "audit") {
    only(SCHEMA_FLAGS, "schema");
    const users = values.user ?? [];
    const archives = values.archive ?? [];
    for (const file of archives) if (file === "") throw new UsageError("--archive needs a file name");
    if (users.length === 0 && values.all !== true && archives.length === 0)
      throw new UsageError("audit needs --user ID (repeatable), --all or --archive FILE");
    const from = values.from;
    if (from !== undefined && from !== "checkpoint" && from !== "genesis")
      throw new UsageError(`--from must be "checkpoint" or "genesis", not "${from}"`);
    for (const user of users) if (user.trim() === "") throw new UsageError("--user needs an account id");
    const ledgerFiles = values["ledger-file"] ?? [];
    for (const file of ledgerFiles) if (file === "") throw new UsageError("--ledger-file needs a file name");
    if (values.unordered === true && ledgerFiles.length === 0)
      throw new UsageError("--unordered applies to --ledger-file");
    if (values.repair === true && (ledgerFiles.length === 0 || (users.length === 0 && values.all !== true)))
      throw new UsageError(
        "--repair needs --ledger-file FILE and the accounts to compare it with (--user ID or --all)",
      );
    if (values.sqlite === "") throw new UsageError("--sqlite needs a file name");
    return runAudit(
      {
        users,
        all: values.all === true,
        json: values.json === true,
        ledgerFiles,
        unordered: values.unordered === true,
        repair: values.repair === true,
        ...(values.sqlite === undefined ? {} : { sqlite: values.sqlite }),
        archives,
        ...(from === undefined ? {} : { from }),
      },
      io,
      source,
    );
  }
  only(AUDIT_FLAGS, "audit");

  const backend = values.backend ?? (values.dialect === "mongodb" ? "nosql" : "sql");
  if (backend !== "sql" && backend !== "nosql") {
    throw new UsageError(`--backend must be "sql" or "nosql", not "${backend}"`);
  }
  const from = values["from-version"];
  const fromVersion = from === undefined ? undefined : /^[0-9]+$/.test(from) ? Number(from) : NaN;
  if (fromVersion !== undefined && !(fromVersion >= 1 && fromVersion <= SCHEMA_VERSION)) {
    throw new UsageError(`--from-version must be a schema version from 1 to ${SCHEMA_VERSION}, not "${from}"`);
  }
  let text: string;
  if (backend === "sql") {
    const dialect = values.dialect ?? "postgres";
    if (!SQL_DIALECTS.includes(dialect as SqlDialect)) {
      throw new UsageError(`--dialect must be one of ${SQL_DIALECTS.join(", ")}, mongodb, not "${dialect}"`);
    }
    if (values.distributed === true && dialect !== "postgres") {
      throw new UsageError("--distributed applies to --dialect postgres only (Citus)");
    }
    const partitioned = values.partitioned;
    if (partitioned !== undefined) {
      if (dialect !== "postgres" || fromVersion !== undefined || values.distributed === true)
        throw new UsageError(
          "--partitioned applies to a new PostgreSQL schema only (--dialect postgres, no --from-version, no --distributed)",
        );
      if (partitioned !== "day" && partitioned !== "week" && partitioned !== "month")
        throw new UsageError(`--partitioned must be day, week or month, not "${partitioned}"`);
    }
    if (fromVersion === undefined) {
      text = naming(() =>
        generateSql({
          dialect: dialect as SqlDialect,
          prefix: values.prefix,
          schema: values.schema,
          distributed: values.distributed === true,
          ...(partitioned === undefined ? {} : { partitioned }),
        }),
      );
    } else {
      text = naming(() =>
        generateUpgradeSql({
          dialect: dialect as SqlDialect,
          fromVersion,
          prefix: values.prefix,
          schema: values.schema,
          ...(values.distributed === true ? { distributed: true } : {}),
        }),
      );
    }
  } else {
    if (values.partitioned !== undefined) throw new UsageError("--partitioned applies to --dialect postgres only");
    if (values.dialect !== undefined && values.dialect !== "mongodb")
      throw new UsageError(
        `--dialect applies to --backend sql only (nosql takes --dialect mongodb), not "${values.dialect}"`,
      );
    if (values.schema !== undefined)
      throw new UsageError("--schema applies to --backend sql only (name the database in your MongoDB connection)");
    if (values.distributed === true)
      throw new UsageError(
        "--distributed applies to --dialect postgres only (MongoDB: shard the collections, docs/scaling-out.md)",
      );
    if (values.dialect === "mongodb" || fromVersion !== undefined) {
      text = naming(() => generateMongoScript({ prefix: values.prefix, fromVersion }));
    } else {
      text = `${JSON.stringify(
        naming(() => generateMongoSchema({ prefix: values.prefix })),
        null,
        2,
      )}\n`;
    }
  }
  if (values.out !== undefined) {
    if (values.out === "") throw new UsageError("--out needs a file name");
    writeFileSync(values.out, text);
    io.stderr(`credit-management: wrote ${values.out}\n`);
  } else {
    io.stdout(text);
  }
  return 0;
}

/** A bad --prefix or --schema (the generator's `ConfigurationError`) is a usage error, not a crash. */
function naming<T>(generate: () => T): T {
  try {
    return generate();
  } catch (error) {
    if (error instanceof ConfigurationError) throw new UsageError(error.message);
    throw error;
  }
}
