import { exitCodeOf, parseCommandLine, requireAccount } from "../../cli/args.js";
import { startOfDay, wallClock } from "../../core/domain/windows.js";
import { ConflictError, ValidationError } from "../../core/errors.js";
import { UserId } from "../../core/models/common.js";
import { parse } from "../../core/models/parse.js";
import { MAX_REVENUE_ROWS, RevenueDimension, RevenueQuery, type RevenueReport, type RevenueRow } from "./model.js";
import { UsageInterval } from "../../core/models/usage.js";
import { revenueCsvLines } from "./csv.js";
import type { CliIo } from "../../cli/run.js";
import { withCommandManager, type StoreSource } from "../../cli/store.js";
import { table } from "../../cli/table.js";
import { UsageError } from "../../util/usage-error.js";

/**
 * `credit-management revenue` (docs/cli.md, "Revenue"; docs/revenue.md, "Where finance reads it"):
 * `credits.getRevenue()` of a month (by default this one so far) or a range, on the store `audit`
 * reads, as a table, JSON or CSV.
 */
export const REVENUE_HELP = `Usage: credit-management revenue [options]

Deferred revenue at the start and end of each window, credits sold (paid), revenue recognized,
breakage and refunds per currency (smallest unit), and unbilled usage in credits, from the journal
(credits.getRevenue). Docs: docs/revenue.md, docs/cli.md ("Revenue").
The store: as "audit" (CREDIT_MONGO_URI and CREDIT_MONGO_DB, CREDIT_PG_URL and CREDIT_PG_SCHEMA,
CREDIT_SQLITE_PATH, or --sqlite FILE), opened without init(); nothing is written.
  --month YYYY-MM        The calendar month in --time-zone (default: this month so far)
  --from DATE --to DATE  A range instead (to exclusive): YYYY-MM-DD (midnight in --time-zone) or an
                         ISO 8601 date-time with its offset
  --time-zone TZ         IANA zone of the month and the windows (default UTC)
  --interval I           month (default), week, day, hour, or none (one window)
  --group-by D,...       Split by account, source, plan, feature, spender, unit (comma-separated or repeated)
  --account ID           One account (default: every account of the store)
  --limit N              Most rows, 1-100000 (default 10000): the first by window, currency and
                         groups; a report cut short says so (no window after the one holding now)
  --sqlite FILE          This SQLite store (an existing file) instead of the environment's
  --json                 One JSON object { from, to, timeZone, rows, truncated } on standard output
  --csv                  CSV (RFC 4180, formulas made inert) on standard output
  Before a month-end run, run the expiry job (credit-management worker --once) so that the month's
  expiries are in it (docs/revenue.md, "The decisions").
  Exit code 0: done; 1: failed; 2: bad usage, or a query the library refuses (its message);
  3: the account named with --account does not exist.
`;

/** Runs `revenue …` (without the word "revenue"); resolves to the exit code. */
export async function runRevenueCli(
  args: readonly string[],
  io: CliIo,
  source: StoreSource = {},
  now: () => Date = () => new Date(),
): Promise<number> {
  try {
    return await revenue(args, io, source, now);
  } catch (error) {
    // The library refused the query (docs/revenue.md, "The report"): nothing was read.
    return exitCodeOf(error, io, "revenue", (e) => e instanceof ValidationError);
  }
}

async function revenue(args: readonly string[], io: CliIo, source: StoreSource, now: () => Date): Promise<number> {
  const { values, positionals } = parseCommandLine(args, {
    month: { type: "string" },
    from: { type: "string" },
    to: { type: "string" },
    "time-zone": { type: "string" },
    interval: { type: "string" },
    "group-by": { type: "string", multiple: true },
    account: { type: "string" },
    limit: { type: "string" },
    sqlite: { type: "string" },
    json: { type: "boolean" },
    csv: { type: "boolean" },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  if (values.json === true && values.csv === true) throw new UsageError("--json and --csv: choose one");
  if (values.sqlite === "") throw new UsageError("--sqlite needs a file name");
  const timeZone = values["time-zone"] ?? "UTC";
  // The zone is the library's to check (a ValidationError naming it), but the month's bounds need it first.
  if (!RevenueQuery.shape.timeZone.safeParse(timeZone).success)
    throw new UsageError(`--time-zone must be an IANA time zone (e.g. Europe/Berlin), not ${JSON.stringify(timeZone)}`);
  const { from, to, label, current } = rangeOf(values, timeZone, now());
  const interval = values.interval ?? "month";
  if (interval !== "none" && !UsageInterval.safeParse(interval).success)
    throw new UsageError(`--interval must be month, week, day, hour or none, not ${JSON.stringify(interval)}`);
  const groupBy = (values["group-by"] ?? []).flatMap((g) => g.split(",")).map((g) => g.trim());
  for (const g of groupBy)
    if (!RevenueDimension.safeParse(g).success)
      throw new UsageError(
        `--group-by takes account, source, plan, feature, spender and unit, not ${JSON.stringify(g)}`,
      );
  if (values.account !== undefined) parse(UserId, values.account, "--account");
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (limit !== undefined && !(/^\d+$/.test(values.limit ?? "") && limit >= 1 && limit <= MAX_REVENUE_ROWS))
    throw new UsageError(
      `--limit must be a whole number from 1 to ${MAX_REVENUE_ROWS}, not ${JSON.stringify(values.limit)}`,
    );
  const query: RevenueQuery = {
    ...(values.account === undefined ? {} : { account: values.account }),
    ...(limit === undefined ? {} : { limit }),
    from,
    to,
    interval: interval === "none" ? null : (interval as UsageInterval),
    timeZone,
    groupBy: groupBy as RevenueDimension[],
  };

  return withCommandManager({ name: "revenue", sqlite: values.sqlite, writes: false }, source, async (manager, db) => {
    // A typo must not read as an account with no revenue.
    if (values.account !== undefined) await requireAccount(db, values.account);
    const report = await manager.credits.getRevenue(query);
    const cut = `Only the first ${report.rows.length} rows (--limit, at most ${MAX_REVENUE_ROWS}): the report has more.\n`;
    if (values.csv === true) {
      // In pieces of about 64 KiB, never the whole document as one string.
      let piece = "";
      for (const line of revenueCsvLines(report, query.groupBy ?? [])) {
        piece += line;
        if (piece.length >= 65_536) {
          io.stdout(piece);
          piece = "";
        }
      }
      if (piece !== "") io.stdout(piece);
      if (report.truncated) io.stderr(cut);
    } else if (values.json === true) io.stdout(`${JSON.stringify({ from, to, ...report })}\n`);
    else
      io.stdout(
        text(report, query, label) +
          (report.truncated ? cut : "") +
          (current === true || report.rows.length === 0 ? ANOTHER : ""),
      );
    return 0;
  });
}

/** `--month` (default: this month so far) or `--from`/`--to`, as instants; `label` names the range. */
function rangeOf(
  values: { month?: string | undefined; from?: string | undefined; to?: string | undefined },
  tz: string,
  now: Date,
): { from: Date; to: Date; label: string; current?: boolean } {
  if (values.from !== undefined || values.to !== undefined) {
    if (values.month !== undefined) throw new UsageError("--month or --from/--to: choose one");
    if (values.from === undefined || values.to === undefined) throw new UsageError("--from and --to go together");
    return {
      from: instantOf(values.from, "--from", tz),
      to: instantOf(values.to, "--to", tz),
      label: `${values.from} to ${values.to}`,
    };
  }
  if (values.month === undefined) {
    // This month so far (docs/cli.md, "Revenue"): a month not over yet ends now.
    const w = wallClock(now.getTime(), tz);
    return {
      from: new Date(startOfDay(w.year, w.month, 1, tz)),
      to: now,
      label: `${w.year}-${String(w.month).padStart(2, "0")} so far (to ${now.toISOString()})`,
      current: true,
    };
  }
  const m = /^(\d{4})-(0[1-9]|1[0-2])$/.exec(values.month);
  if (m === null) throw new UsageError(`--month must be YYYY-MM, not ${JSON.stringify(values.month)}`);
  const year = Number(m[1]);
  const month = Number(m[2]);
  return {
    from: new Date(startOfDay(year, month, 1, tz)),
    to: new Date(startOfDay(year, month + 1, 1, tz)),
    label: `${year}-${String(month).padStart(2, "0")}`,
  };
}

/** A date (midnight in `tz`) or an ISO 8601 date-time with its offset. */
function instantOf(text: string, flag: string, tz: string): Date {
  const d = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (d !== null) {
    const [year, month, day] = [Number(d[1]), Number(d[2]), Number(d[3])];
    const check = new Date(Date.UTC(year, month - 1, day));
    if (check.getUTCMonth() === month - 1 && check.getUTCDate() === day)
      return new Date(startOfDay(year, month, day, tz));
  } else if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(text)) {
    const at = new Date(text);
    if (!Number.isNaN(at.getTime())) return at;
  }
  throw new UsageError(
    `${flag} must be a date (YYYY-MM-DD) or an ISO 8601 date-time with its offset, not ${JSON.stringify(text)}`,
  );
}

/** A window's start on the wall clock of the report's zone: the month, the day, or the day and time. */
function windowText(at: Date, interval: RevenueQuery["interval"], tz: string): string {
  const w = wallClock(at.getTime(), tz);
  const two = (n: number) => String(n).padStart(2, "0");
  const dayText = `${w.year}-${two(w.month)}-${two(w.day)}`;
  if (interval === "month" && w.day === 1 && w.hour === 0 && w.minute === 0) return `${w.year}-${two(w.month)}`;
  if (interval === "day" || interval === "week")
    return w.hour === 0 && w.minute === 0 ? dayText : `${dayText} ${two(w.hour)}:${two(w.minute)}`;
  return `${dayText} ${two(w.hour)}:${two(w.minute)}`;
}

/** After the table of the default period, or of an empty one: how to read another. */
const ANOTHER = "Another month: --month YYYY-MM (e.g. last month's close); any range: --from DATE --to DATE.\n";

const COLUMNS: [keyof RevenueRow, string][] = [
  ["deferredStart", "DEFERRED START"],
  ["paid", "PAID"],
  ["recognized", "RECOGNIZED"],
  ["breakage", "BREAKAGE"],
  ["refunds", "REFUNDS"],
  ["deferredEnd", "DEFERRED END"],
  ["unbilledCredits", "UNBILLED CREDITS"],
];

/** The report as aligned columns under a line naming the range, the zone and whose it is. */
function text(report: RevenueReport, query: RevenueQuery, label: string): string {
  const groups = query.groupBy ?? [];
  const whose = query.account === undefined ? "every account" : `account ${JSON.stringify(query.account)}`;
  const head = `Revenue ${label} (${report.timeZone}), ${whose}; amounts in each currency's smallest unit\n`;
  if (report.rows.length === 0) return `${head}  none: no paid credits, no usage on credit\n`;
  // Catch-up rows (docs/revenue.md, "Closing a month"): a column naming their close, when there are any.
  const catchUp = report.rows.some((r) => r.catchUpThrough !== null);
  const rows = report.rows.map((r) => [
    windowText(r.start, query.interval, report.timeZone),
    r.currency ?? "-",
    ...groups.map((g) => cellOf(r[g])),
    ...(catchUp ? [r.catchUpThrough?.toISOString() ?? "-"] : []),
    ...COLUMNS.map(([k]) => String(r[k])),
  ]);
  return (
    head +
    table(
      [
        "WINDOW",
        "CURRENCY",
        ...groups.map((g) => g.toUpperCase()),
        ...(catchUp ? ["CATCH-UP OF CLOSE"] : []),
        ...COLUMNS.map(([, h]) => h),
      ],
      rows,
      [false, false, ...groups.map(() => false), ...(catchUp ? [false] : []), ...COLUMNS.map(() => true)],
    )
  );
}

/** A group's value in a cell: "-" for none; JSON-quoted when it holds a control character (a terminal escape). */
function cellOf(value: unknown): string {
  if (value === null || value === undefined) return "-";
  const text = String(value);
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  return /[\u0000-\u001f\u007f-\u009f]/.test(text) ? JSON.stringify(text) : text;
}

/**
 * `credit-management close-period` (docs/cli.md, "Closing a month"; docs/revenue.md, "Closing a
 * month"): `credits.closePeriod(through)`, or the closes so far (`--list`).
 */
export const CLOSE_PERIOD_HELP = `Usage: credit-management close-period (--through DATE | --list) [options]

Closes the revenue reports through DATE (credits.closePeriod): records every account's journal seq
now and the close. Reports of windows ending at or before DATE then read the same forever; what is
recorded later with a time before DATE is booked at DATE, on catch-up rows. One row per account.
Docs: docs/revenue.md ("Closing a month"), docs/cli.md ("Closing a month").
The store: as "audit" (CREDIT_MONGO_URI and CREDIT_MONGO_DB, CREDIT_PG_URL and CREDIT_PG_SCHEMA,
CREDIT_SQLITE_PATH, or --sqlite FILE), opened without init().
  --through DATE   The end (exclusive) of the period: YYYY-MM-DD (midnight UTC) or an ISO 8601
                   date-time with its offset; not in the future, after the latest close's
  --list           The closes so far, oldest first (nothing is written)
  --sqlite FILE    This SQLite store (an existing file) instead of the environment's
  --json           JSON on standard output (the close, or { closes })
  Run the expiry job first (credit-management worker --once): the period's expiries settled then are
  in it, not catch-up.
  Exit code 0: done; 1: failed; 2: bad usage, or a close the library refuses (its message): in the
  future, not after the latest close, or another close recorded at the same time.
Examples:
  CREDIT_PG_URL=postgres://… npx credit-management close-period --through 2030-02-01
  CREDIT_PG_URL=postgres://… npx credit-management close-period --list
`;

/** Runs `close-period …` (without the words); resolves to the exit code. */
export async function runClosePeriodCli(args: readonly string[], io: CliIo, source: StoreSource = {}): Promise<number> {
  try {
    return await closePeriodCommand(args, io, source);
  } catch (error) {
    return exitCodeOf(error, io, "close-period", (e) => e instanceof ValidationError || e instanceof ConflictError);
  }
}

async function closePeriodCommand(args: readonly string[], io: CliIo, source: StoreSource): Promise<number> {
  const { values, positionals } = parseCommandLine(args, {
    through: { type: "string" },
    list: { type: "boolean" },
    sqlite: { type: "string" },
    json: { type: "boolean" },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  if (values.sqlite === "") throw new UsageError("--sqlite needs a file name");
  if ((values.through === undefined) === (values.list !== true))
    throw new UsageError("--through DATE or --list: choose one");
  const through = values.through === undefined ? undefined : instantOf(values.through, "--through", "UTC");
  return withCommandManager(
    { name: "close-period", sqlite: values.sqlite, writes: through !== undefined },
    source,
    async (manager) => {
      if (through === undefined) {
        const closes = await manager.credits.listPeriodCloses();
        if (values.json === true) io.stdout(`${JSON.stringify({ closes })}\n`);
        else if (closes.length === 0) io.stdout("No period closed yet.\n");
        else
          io.stdout(
            table(
              ["THROUGH", "CLOSED AT", "ACCOUNTS"],
              closes.map((c) => [c.through.toISOString(), c.closedAt.toISOString(), String(c.accounts)]),
              [false, false, true],
            ),
          );
        return 0;
      }
      const close = await manager.credits.closePeriod(through);
      if (values.json === true) io.stdout(`${JSON.stringify(close)}\n`);
      else
        io.stdout(
          `Closed the revenue reports through ${close.through.toISOString()} at ${close.closedAt.toISOString()}: ${close.accounts} accounts marked.\n`,
        );
      return 0;
    },
  );
}
