/**
 * A referral-credits module written against the package's public entries only (docs/modules.md,
 * "Writing a module"): its own table on memory, SQLite and PostgreSQL (created by the store's
 * `init()`), a unit-of-work hook that
 * saves a referral row with the grant that pays it, its own error code, grant source and event, and
 * an HTTP route. test/example-referral.test.ts runs it on each store.
 */
import * as z from "zod/mini";
import { CreditError, type CreditService } from "credit-management";
import { moduleNotification, type CreditModule, type ModuleContext } from "credit-management/core";
import type { RouteDefinition } from "credit-management/http";
import type {
  MemoryBoundPart,
  ModuleRowLists,
  ModuleStorePart,
  PostgresBoundPart,
  PostgresPartHost,
  SqliteBoundPart,
  SqlitePartHost,
} from "credit-management/store";

/** One paid referral: `referee` was brought by `referrer`, whose grant `grantId` paid for it. */
export interface Referral {
  referee: string;
  referrer: string;
  grantId: string;
  createdAt: string;
}

/** The module's error: a referee is referred once. */
export class ReferralTakenError extends CreditError<"REFERRAL_TAKEN"> {
  constructor(referee: string) {
    super("REFERRAL_TAKEN", 409, `${referee} was referred already.`);
  }
}

/** What the module's store part answers outside units of work. */
export interface ReferralReads {
  get(referee: string): Promise<Referral | null>;
}

const isReferral = (r: unknown): r is Referral =>
  typeof r === "object" && r !== null && "referee" in r && "referrer" in r && "grantId" in r;
/** The referral rows a unit of work saves for this module. */
const referralsOf = (rows: ModuleRowLists): Referral[] => (rows.referrals ?? []).filter(isReferral);
const fromRow = (r: Record<string, unknown> | undefined): Referral | null =>
  r === undefined
    ? null
    : {
        referee: String(r.referee),
        referrer: String(r.referrer),
        grantId: String(r.grant_id),
        createdAt: String(r.created_at),
      };

// Memory: a map; `check` refuses a taken referee before anything of the unit is written.
const memory = (): MemoryBoundPart<ReferralReads> => {
  const byReferee = new Map<string, Referral>();
  return {
    reads: { get: async (referee) => byReferee.get(referee) ?? null },
    check: (rows) => {
      for (const r of referralsOf(rows)) if (byReferee.has(r.referee)) throw new ReferralTakenError(r.referee);
    },
    apply: (rows) => {
      for (const r of referralsOf(rows)) byReferee.set(r.referee, r);
    },
  };
};

const CREATE = `CREATE TABLE IF NOT EXISTS referrals (referee TEXT PRIMARY KEY, referrer TEXT NOT NULL, grant_id TEXT NOT NULL, created_at TEXT NOT NULL)`;

// SQLite: the table created by the store's `init()`; rows written inside the unit's write
// transaction (a taken referee fails the insert).
const sqlite = (db: SqlitePartHost): SqliteBoundPart<ReferralReads> => ({
  migrate: (tx) => void tx.run(CREATE),
  reads: {
    get: async (referee) => fromRow(db.all(`SELECT * FROM referrals WHERE referee = ?`, [referee])[0]),
  },
  write: (tx, rows) => {
    for (const r of referralsOf(rows))
      tx.run(`INSERT INTO referrals VALUES (?, ?, ?, ?)`, [r.referee, r.referrer, r.grantId, r.createdAt]);
  },
});

// PostgreSQL: one statement added to the unit's save message (a taken referee fails the transaction).
const postgres = (host: PostgresPartHost): PostgresBoundPart<ReferralReads> => {
  // Beside the store's own tables: its schema and prefix.
  const { schema, prefix = "" } = host.sql.naming;
  const name = `"${prefix}referrals"`;
  const table = () => (schema === undefined ? name : `"${schema}".${name}`);
  return {
    // In the store's `init()`, in its transaction.
    migrate: (run) => run(CREATE.replace("referrals", table())),
    reads: {
      get: async (referee) =>
        fromRow((await host.read("getReferral", `SELECT * FROM ${table()} WHERE referee = $1`, [referee]))[0]),
    },
    save: (units) => {
      const rows = units.flatMap(referralsOf);
      if (rows.length === 0) return null;
      const text =
        `INSERT INTO ${table()} (referee, referrer, grant_id, created_at) ` +
        `SELECT referee, referrer, "grantId", "createdAt" FROM json_to_recordset($1) ` +
        `AS x(referee text, referrer text, "grantId" text, "createdAt" text)`;
      return { statement: { name: "referrals_save", text, types: ["json"] }, arg: JSON.stringify(rows) };
    },
  };
};

/** The module's store part: a side per store it runs on. */
export const referralStore: ModuleStorePart<ReferralReads> = { module: "referrals", memory, sqlite, postgres };

/**
 * The referral module: `refer(referrer, referee)` pays the referrer `bonus` credits once per
 * referee; the grant and the referral row are saved in one transaction.
 */
export function referrals(options: { bonus: number }) {
  let ctx: ModuleContext | undefined;
  const reads = () => {
    const r = ctx?.db.usePart?.(referralStore);
    if (r === undefined) throw new Error("referrals: give the module to a manager whose store it has a side for");
    return r;
  };

  const module: CreditModule = {
    id: "referrals",
    errorCodes: ["REFERRAL_TAKEN"],
    grantSources: ["referral"],
    eventTypes: ["referral_paid"],
    store: referralStore,
    init: (c) => void (ctx = c),
    // Every referral grant saves its row with it, in the same transaction, and records the event.
    unitHook: ({ changes, now, attach }) => {
      const rows: Referral[] = changes.insertGrants
        .filter((g) => g.source === "referral" && g.sourceRef !== null)
        .map((g) => ({ referee: g.sourceRef ?? "", referrer: g.userId, grantId: g.id, createdAt: now.toISOString() }));
      if (rows.length > 0) attach({ referrals: { referrals: rows } });
      return rows.map((r) => moduleNotification(r.referrer, "referral_paid", { ...r }, now, `referral:${r.referee}`));
    },
  };

  /** Pays `referrer` for bringing `referee`; `ReferralTakenError` when `referee` was referred already. */
  async function refer(credits: CreditService, referrer: string, referee: string): Promise<Referral> {
    if ((await reads().get(referee)) !== null) throw new ReferralTakenError(referee);
    try {
      await credits.addCredits(referrer, options.bonus, { source: "referral", sourceRef: referee });
    } catch (err) {
      // Another referral of the same referee won the race: its row refused ours, and nothing was paid.
      if ((await reads().get(referee)) !== null) throw new ReferralTakenError(referee);
      throw err;
    }
    const saved = await reads().get(referee);
    if (saved === null) throw new Error("referrals: the referral row is missing after its grant");
    return saved;
  }

  /** `POST /credits/referrals` `{ referee }`: the caller is the referrer. */
  const routes: RouteDefinition[] = [
    {
      method: "POST",
      base: "user",
      path: "/referrals",
      access: "user",
      operationId: "createReferral",
      summary: "Pay the caller for a referral",
      body: z.object({ referee: z.string().check(z.minLength(1), z.maxLength(255)) }),
      status: 201,
      errors: [409],
      handle: async (c) => {
        const { referee } = await c.body<{ referee: string }>();
        return refer(c.manager.credits, c.identity?.userId ?? "", referee);
      },
    },
  ];

  return { module, refer, routes, get: (referee: string) => reads().get(referee) };
}
