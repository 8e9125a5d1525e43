import { exitCodeOf, numberOf, parseCommandLine, requireAccount } from "./args.js";
import { IdempotencyConflictError, NotFoundError, RuleViolationError, ValidationError } from "../core/errors.js";
import { EntityId, UserId, type JournalEntry } from "../core/models/index.js";
import { parse } from "../core/models/parse.js";
import type { CliIo } from "./run.js";
import { withCommandManager, type StoreSource } from "./store.js";
import { table } from "./table.js";
import { UsageError } from "../util/usage-error.js";

/**
 * `credit-management reverse ENTRY_ID --user ID --reason TEXT` (docs/cli.md, "Reverse";
 * docs/corrections.md): gives back a charge, in whole or in part, as `credits.reverseCharge` does,
 * on the store `accounts` writes to; `--show` prints what was given back of it.
 */
export const REVERSE_HELP = `Usage: credit-management reverse ENTRY_ID --user ID --reason TEXT [options]
       credit-management reverse ENTRY_ID --user ID --show [--json]

Gives back a charge (a deduction, a hold's capture, a lease window, a metered request) in whole or
in part: the credits return to the grants it drew from, in the same proportions, with their own
expiry, priority and cost basis; debt the charge made is reduced first. ENTRY_ID is the charge's
journal entry id (what deductCredits and commitReservedCredits return, "credit-management accounts"
and the console's journal show). Docs: docs/corrections.md, docs/cli.md ("Reverse").
The store: as "accounts" (CREDIT_MONGO_URI and CREDIT_MONGO_DB, CREDIT_PG_URL and CREDIT_PG_SCHEMA,
CREDIT_SQLITE_PATH, or --sqlite FILE), opened without init(); the entry goes to CREDIT_LEDGER_FILE
when it is set and invalidates the cache CREDIT_REDIS_URL and CREDIT_REDIS_CACHE_PREFIX name.
  --user ID              The account the charge belongs to (required)
  --amount N             Credits to give back (default: all that is left of the charge)
  --reason TEXT          Why it is given back, written into the journal (required to give back)
  --key KEY              An idempotency key: run again with the same key, nothing more is given
                         back and the first result is printed (use one in scripts that may retry)
  --show                 Print the charge, its reversals and what is left; change nothing
  --sqlite FILE          This SQLite store (an existing file) instead of the environment's
  --json                 One JSON object on standard output: { reversal, charge, reversals,
                         reversed, remaining } (--show: no reversal)
  Exit code 0: done; 1: failed; 2: bad usage, or a value the library refuses (an entry that is no
  charge, more than is left, a key used for another give-back: its message; nothing changed);
  3: no such account, or no such entry of it.

Examples:
  CREDIT_PG_URL=postgres://… npx credit-management reverse 0a3fa747-2caf-4dc7-a9ae-196cc8da8566 --user acme --reason "job failed"
  npx credit-management reverse 0a3fa747-… --user acme --amount 40 --reason "double-reported hour" --key ticket-4711
  npx credit-management reverse 0a3fa747-… --user acme --show --json
`;

/** Runs `reverse …` (without the word "reverse"); resolves to the exit code. */
export async function runReverseCli(args: readonly string[], io: CliIo, source: StoreSource = {}): Promise<number> {
  try {
    return await reverse(args, io, source);
  } catch (error) {
    if (error instanceof NotFoundError) {
      io.stderr(`credit-management: ${error.message}\n`);
      return 3;
    }
    // The library refused the input before changing anything (docs/corrections.md).
    return exitCodeOf(
      error,
      io,
      "reverse",
      (e) => e instanceof ValidationError || e instanceof RuleViolationError || e instanceof IdempotencyConflictError,
    );
  }
}

async function reverse(args: readonly string[], io: CliIo, source: StoreSource): Promise<number> {
  const { values, positionals } = parseCommandLine(args, {
    user: { type: "string" },
    amount: { type: "string" },
    reason: { type: "string" },
    key: { type: "string" },
    show: { type: "boolean" },
    json: { type: "boolean" },
    sqlite: { type: "string" },
  });
  const [id, ...extra] = positionals;
  if (id === undefined) throw new UsageError('"reverse" needs the charge\'s entry id');
  if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
  if (values.user === undefined) throw new UsageError('"reverse" needs --user ID (the account of the charge)');
  const show = values.show === true;
  if (show) {
    for (const flag of ["amount", "reason", "key"] as const)
      if (values[flag] !== undefined) throw new UsageError(`--${flag} gives back: not with --show`);
  } else if (values.reason === undefined || values.reason.trim() === "")
    throw new UsageError('"reverse" needs --reason TEXT (why the charge is given back; it goes into the journal)');
  if (values.sqlite === "") throw new UsageError("--sqlite needs a file name");
  // The library checks it is a whole amount of at least 1.
  const amount = values.amount === undefined ? undefined : numberOf(values.amount, "--amount");
  const userId = parse(UserId, values.user, "--user");
  const entryId = parse(EntityId, id, "entry id");

  return withCommandManager({ name: "reverse", sqlite: values.sqlite, writes: true }, source, async (manager, db) => {
    await requireAccount(db, userId);
    const { credits } = manager;
    const reversal = show
      ? undefined
      : await credits.reverseCharge(userId, entryId, {
          reason: values.reason as string,
          ...(amount === undefined ? {} : { amount }),
          ...(values.key === undefined ? {} : { idempotencyKey: values.key }),
        });
    const r = await credits.getReversals(userId, entryId);
    if (values.json === true) io.stdout(`${JSON.stringify(reversal === undefined ? r : { reversal, ...r })}\n`);
    else io.stdout(text(reversal, r));
    return 0;
  });
}

function text(
  reversal: JournalEntry | undefined,
  r: { charge: JournalEntry; reversals: JournalEntry[]; reversed: number; remaining: number },
): string {
  const c = r.charge;
  const what = `charge #${c.seq} of ${JSON.stringify(c.userId)} (${c.type}, ${c.amount} credits, ${c.createdAt.toISOString()})`;
  const head =
    reversal === undefined
      ? `Reversals of ${what}\n`
      : `Gave back ${reversal.amount} credits of ${what}: entry #${reversal.seq}, ${reversal.id}\n`;
  const rows = [
    ["given back", `${r.reversed} of ${c.amount}`],
    ["left", String(r.remaining)],
  ];
  if (reversal !== undefined) rows.push(["balance", String(reversal.balanceAfter)]);
  const list =
    r.reversals.length === 0
      ? "  none\n"
      : table(
          ["SEQ", "CREDITS", "AT", "REASON"],
          r.reversals.map((e) => [String(e.seq), String(e.amount), e.createdAt.toISOString(), e.description ?? ""]),
          [true, true, false, false],
        );
  return `${head}${table(["", ""], rows, [false, true])}\nReversals\n${list}`;
}
