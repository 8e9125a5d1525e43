import { exitCodeOf, numberOf, parseCommandLine, requireAccount } from "./args.js";
import { calendarWindow } from "../core/domain/limits.js";
import { RuleViolationError, ValidationError } from "../core/errors.js";
import type { CreditManager } from "../manager.js";
import { UserId } from "../core/models/index.js";
import { type LimitPeriod, type SpendLimitInput, type SpendLimitStatus } from "../core/models/limits.js";
import { parse } from "../core/models/parse.js";
import type { CliIo } from "./run.js";
import { withCommandManager, type StoreSource } from "./store.js";
import { table } from "./table.js";
import { UsageError } from "../util/usage-error.js";

/**
 * `credit-management accounts show|limits` (docs/cli.md, "Accounts"): one account as the service
 * answers for it — credits, scoped credits, spend limits, this month's spend by spender, the
 * subscription — and its spend limits set or removed (docs/teams-and-limits.md), on the store
 * `audit` reads.
 */
export const ACCOUNTS_HELP = `Usage: credit-management accounts <command> ID [options]

One account's credits, spend limits, spend by spender and subscription, as the library answers for
them, and its spend limits set or removed. Docs: docs/cli.md ("Accounts"), docs/teams-and-limits.md.
The store: as "audit" (CREDIT_MONGO_URI and CREDIT_MONGO_DB, CREDIT_PG_URL and CREDIT_PG_SCHEMA,
CREDIT_SQLITE_PATH, or --sqlite FILE), opened without init(); what a command writes goes to
CREDIT_LEDGER_FILE when it is set and invalidates the cache CREDIT_REDIS_URL and
CREDIT_REDIS_CACHE_PREFIX name (as the worker's).
  show ID [--json]       Balance, held, available (a spend naming no spender or feature) and debt;
                         the scoped credits per scope; the spend limits with what their window
                         counted and when it resets; this month's spend (UTC) by spender; the
                         subscription
  limits ID [--json]     The spend limits
  limits set ID --amount N --period P [--spender S] [--feature F] [--unit U]
                         Adds the limit of this spender, feature, unit and period, or sets its
                         amount (what its window counted is kept). P: day, week, month, year, every
                         N of them as N<unit> (2week), or subscription (the subscription's period);
                         U: the credit unit it counts (docs/units.md; omitted: the default unit)
  limits remove ID [--spender S] [--feature F] [--unit U] [--period P]
                         Removes the limits with exactly this spender, feature and unit (omitted:
                         the limits naming none), and this period when given
  --sqlite FILE          This SQLite store (an existing file) instead of the environment's
  --json                 One JSON object on standard output
  In the tables, * is every spender or every feature.
  Exit code 0: done; 1: failed, or "limits remove" matched no limit; 2: bad usage, or a value the
  library refuses (its message; nothing changed); 3: no such account.
`;

/** Runs `accounts …` (without the word "accounts"); resolves to the exit code. */
export async function runAccountsCli(args: readonly string[], io: CliIo, source: StoreSource = {}): Promise<number> {
  try {
    return await accounts(args, io, source);
  } catch (error) {
    // The library refused the input before changing anything (docs/api.md, errors).
    return exitCodeOf(error, io, "accounts", (e) => e instanceof ValidationError || e instanceof RuleViolationError);
  }
}

type Action = "show" | "limits" | "set" | "remove";

async function accounts(args: readonly string[], io: CliIo, source: StoreSource): Promise<number> {
  const { values, positionals } = parseCommandLine(args, {
    json: { type: "boolean" },
    sqlite: { type: "string" },
    amount: { type: "string" },
    period: { type: "string" },
    spender: { type: "string" },
    feature: { type: "string" },
    unit: { type: "string" },
  });
  const [command, ...rest] = positionals;
  let action: Action;
  if (command === "show") action = "show";
  else if (command === "limits") {
    action = rest[0] === "set" ? "set" : rest[0] === "remove" ? "remove" : "limits";
    if (action !== "limits") rest.shift();
  } else if (command === undefined) throw new UsageError('missing command (try "show" or "limits")');
  else throw new UsageError(`unknown command "accounts ${command}" (try "show" or "limits")`);
  const [id, ...extra] = rest;
  const name = action === "set" || action === "remove" ? `limits ${action}` : action;
  if (id === undefined) throw new UsageError(`"accounts ${name}" needs an account id`);
  if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
  const only = (flags: readonly (keyof typeof values)[], actions: readonly Action[], what: string) => {
    for (const flag of flags)
      if (values[flag] !== undefined && !actions.includes(action))
        throw new UsageError(`--${flag} applies to ${what} only`);
  };
  only(["amount"], ["set"], '"accounts limits set"');
  only(
    ["spender", "feature", "unit", "period"],
    ["set", "remove"],
    '"accounts limits set" and "accounts limits remove"',
  );
  if (values.sqlite === "") throw new UsageError("--sqlite needs a file name");
  let limit: SpendLimitInput | undefined;
  if (action === "set") {
    if (values.amount === undefined) throw new UsageError('"accounts limits set" needs --amount N');
    if (values.period === undefined) throw new UsageError('"accounts limits set" needs --period P');
    limit = {
      ...spendOf(values),
      // The library checks it is a whole, non-negative amount.
      amount: numberOf(values.amount, "--amount"),
      ...periodOf(values.period),
    };
  }
  const userId = parse(UserId, id, "account id");

  return withCommandManager({ name: "accounts", sqlite: values.sqlite, writes: true }, source, async (manager, db) => {
    // A typo must not read as an empty account, nor create one with limits.
    await requireAccount(db, userId);
    const json = values.json === true;
    const { credits } = manager;
    if (action === "show") {
      print(io, json, await showOf(manager, userId));
      return 0;
    }
    if (action === "limits") {
      print(io, json, { userId, limits: await credits.getLimits(userId) });
      return 0;
    }
    if (action === "set") {
      // setLimit: this one replaced or added in the account's unit of work, the others untouched.
      print(io, json, { userId, limits: await credits.setLimit(userId, limit as SpendLimitInput) });
      return 0;
    }
    const which = { ...spendOf(values), ...(values.period === undefined ? {} : periodOf(values.period)) };
    const before = await credits.getLimits(userId);
    const left = await credits.removeLimit(userId, which);
    if (left.length === before.length) {
      io.stderr(
        `credit-management: ${JSON.stringify(userId)} has no limit of ${describeWhich(which)}; nothing removed\n`,
      );
      return 1;
    }
    print(io, json, { userId, limits: left });
    return 0;
  });
}

/** What `accounts show` reports. */
interface Show {
  userId: string;
  balance: number;
  reserved: number;
  available: number;
  debt: number;
  scoped: { features: string[] | null; spenders: string[] | null; remaining: number }[];
  limits: SpendLimitStatus[];
  spendThisMonth: {
    from: Date;
    to: Date;
    bySpender: { spender: string | null; credits: number; requests: number }[];
    truncated: boolean;
  };
  subscription: {
    id: string;
    planId: string;
    status: string;
    billingPeriod: string;
    currentPeriodStart: Date;
    currentPeriodEnd: Date;
    autoRenew: boolean;
    cancelAtPeriodEnd: boolean;
    pendingPlanId: string | null;
  } | null;
}

/** The account as the services answer for it (each read brings it up to date first, as the API's). */
async function showOf(manager: CreditManager, userId: string): Promise<Show> {
  const { credits } = manager;
  const info = await credits.getUserCreditsInfo(userId);
  const limits = await credits.getLimits(userId);
  const month = calendarWindow("month", Date.now());
  const from = new Date(month.start);
  const to = new Date(month.end);
  // Deductions, captured holds and lease windows of the month (UTC), summed by the store (docs/usage.md).
  const usage = await credits.getUsage({
    account: userId,
    from,
    to,
    interval: null,
    groupBy: ["spender"],
    kinds: ["spend"],
  });
  const bySpender = new Map<string | null, { spender: string | null; credits: number; requests: number }>();
  for (const r of usage.rows) {
    const spender = r.spender ?? null;
    const row = bySpender.get(spender) ?? { spender, credits: 0, requests: 0 };
    row.credits += r.credits;
    row.requests += r.requests;
    bySpender.set(spender, row);
  }
  // The members with a limit of their own are listed even when they spent nothing yet.
  for (const l of limits)
    if (l.spender !== null && !bySpender.has(l.spender))
      bySpender.set(l.spender, { spender: l.spender, credits: 0, requests: 0 });
  const s = await manager.subscriptions.getUserSubscription(userId);
  return {
    userId,
    balance: info.balance,
    reserved: info.reserved,
    available: info.available,
    debt: info.debt,
    scoped: info.scoped ?? [],
    limits,
    spendThisMonth: {
      from,
      to,
      bySpender: [...bySpender.values()].sort(
        (a, b) => b.credits - a.credits || (a.spender ?? "").localeCompare(b.spender ?? ""),
      ),
      truncated: usage.truncated,
    },
    subscription:
      s === null
        ? null
        : {
            id: s.id,
            planId: s.planId,
            status: s.status,
            billingPeriod: s.billingPeriod,
            currentPeriodStart: s.currentPeriodStart,
            currentPeriodEnd: s.currentPeriodEnd,
            autoRenew: s.autoRenew,
            cancelAtPeriodEnd: s.cancelAtPeriodEnd,
            pendingPlanId: s.pendingPlanId,
          },
  };
}

function print(io: CliIo, json: boolean, what: Show | { userId: string; limits: SpendLimitStatus[] }): void {
  if (json) {
    io.stdout(`${JSON.stringify(what)}\n`);
    return;
  }
  if (!("spendThisMonth" in what)) {
    io.stdout(`Spend limits of ${JSON.stringify(what.userId)}\n${limitTable(what.limits)}`);
    return;
  }
  const out: string[] = [`Account ${JSON.stringify(what.userId)}\n`];
  out.push(
    table(
      ["", ""],
      [
        ["balance", String(what.balance)],
        ["held", String(what.reserved)],
        ["available", String(what.available)],
        ["debt", String(what.debt)],
      ],
      [false, true],
    ),
  );
  out.push(
    "\nScoped credits\n",
    what.scoped.length === 0
      ? "  none\n"
      : table(
          ["FEATURES", "SPENDERS", "REMAINING"],
          what.scoped.map((s) => [s.features?.join(",") ?? "*", s.spenders?.join(",") ?? "*", String(s.remaining)]),
          [false, false, true],
        ),
  );
  out.push("\nSpend limits\n", limitTable(what.limits));
  const m = what.spendThisMonth;
  out.push(
    `\nSpend this month (${day(m.from)} to ${day(m.to)}, UTC) by spender\n`,
    m.bySpender.length === 0
      ? "  none\n"
      : table(
          ["SPENDER", "CREDITS", "SPENDS"],
          m.bySpender.map((r) => [r.spender ?? "(no spender)", String(r.credits), String(r.requests)]),
          [false, true, true],
        ),
  );
  if (m.truncated) out.push(`  (the ${m.bySpender.length} spenders with the most spend)\n`);
  const s = what.subscription;
  out.push(
    "\nSubscription\n",
    s === null
      ? "  none\n"
      : table(
          ["", ""],
          [
            ["plan", s.planId],
            ["status", s.status],
            ["period", `${s.currentPeriodStart.toISOString()} to ${s.currentPeriodEnd.toISOString()}`],
            [
              "at period end",
              s.pendingPlanId !== null
                ? `changes to ${s.pendingPlanId}`
                : s.cancelAtPeriodEnd
                  ? "cancels"
                  : s.autoRenew
                    ? `renews (${s.billingPeriod})`
                    : "ends",
            ],
            ["id", s.id],
          ],
          [false, false],
        ),
  );
  io.stdout(out.join(""));
}

function limitTable(limits: readonly SpendLimitStatus[]): string {
  if (limits.length === 0) return "  none\n";
  return table(
    ["SPENDER", "FEATURE", "PERIOD", "USED", "AMOUNT", "REMAINING", "RESETS AT"],
    limits.map((l) => [
      l.spender ?? "*",
      l.feature ?? "*",
      periodText(l),
      String(l.used),
      // A limit in another unit than the default one names it (docs/units.md).
      l.unit === undefined ? String(l.amount) : `${l.amount} ${l.unit}`,
      String(l.remaining),
      l.resetsAt.toISOString(),
    ]),
    [false, false, false, true, true, true, false],
  );
}

const day = (d: Date) => d.toISOString().slice(0, 10);

/** A limit's window as `--period` takes it. */
function periodText(l: Pick<SpendLimitStatus, "period" | "resetsWith">): string {
  const p = l.period;
  if (p === null) return l.resetsWith ?? "subscription";
  if (typeof p === "string") return p;
  return p.every === 1 ? p.unit : `${p.every}${p.unit}`;
}

/** `--period`: day, week, month, year, N<unit>, or subscription. */
function periodOf(text: string): { period: LimitPeriod } | { resetsWith: "subscription" } {
  if (text === "subscription") return { resetsWith: "subscription" };
  const m = /^([0-9]+)?(day|week|month|year)$/.exec(text);
  if (m === null)
    throw new UsageError(
      `--period must be day, week, month, year, N<unit> (every N of them, e.g. 2week) or subscription, not ${JSON.stringify(text)}`,
    );
  const unit = m[2] as "day" | "week" | "month" | "year";
  // The number's range is the model's to check (LimitPeriod: 1 to 1000).
  return { period: m[1] === undefined ? unit : { every: Number(m[1]), unit } };
}

function spendOf(values: { spender?: string | undefined; feature?: string | undefined; unit?: string | undefined }): {
  spender?: string;
  feature?: string;
  unit?: string;
} {
  return {
    ...(values.spender === undefined ? {} : { spender: values.spender }),
    ...(values.feature === undefined ? {} : { feature: values.feature }),
    ...(values.unit === undefined ? {} : { unit: values.unit }),
  };
}

/** The limits `limits remove` looked for, in the tables' words. */
function describeWhich(w: { spender?: string; feature?: string; period?: LimitPeriod; resetsWith?: string }): string {
  const text = `spender ${w.spender === undefined ? "*" : JSON.stringify(w.spender)} and feature ${w.feature === undefined ? "*" : JSON.stringify(w.feature)}`;
  if (w.period === undefined && w.resetsWith === undefined) return text;
  return `${text}, period ${periodText({ period: w.period ?? null, resetsWith: w.resetsWith === undefined ? null : "subscription" })}`;
}
