import type { Logger } from "pino";
import * as z from "zod";
import type { Cache } from "./cache/index.js";
import { InMemoryDbManager } from "./db/memory/index.js";
import type { DbManager } from "./db/types.js";
import { LedgerLogger } from "./ledger/index.js";
import { parse } from "./models/index.js";
import { CreditService } from "./services/credit-service.js";
import { PaymentManagerOptions, buildPaymentService } from "./payments/index.js";
import type { PaymentService } from "./services/payment-service.js";
import { PromoService } from "./services/promo-service.js";

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/** Options of `createCreditManager`, validated like every public input. */
export const CreditManagerOptions = z.strictObject({
  /** The store. Default `new InMemoryDbManager()`. */
  db: z.custom<DbManager>((v) => isObject(v) && typeof (v as DbManager).transaction === "function", {
    error: "db must implement DbManager",
  }).optional(),
  /** `{ filePath }` mirrors the ledger to a JSONL file; `false` or omitted: no file. */
  ledger: z.union([z.literal(false), z.strictObject({ filePath: z.string().min(1) })]).optional(),
  cache: z.custom<Cache>((v) => isObject(v) && typeof (v as Cache).get === "function", {
    error: "cache must implement Cache",
  }).optional(),
  clock: z.custom<() => Date>((v) => typeof v === "function", { error: "clock must be a function" }).optional(),
  logger: z.custom<Logger>((v) => isObject(v) && typeof (v as Logger).warn === "function", {
    error: "logger must be a pino logger",
  }).optional(),
  /** TTL of a hold when none is given, in seconds. Default 900. */
  defaultReservationTtlSeconds: z.number().int().min(1).max(30 * 24 * 3600).optional(),
  /** Credits `available` may go below zero through after-service usage; null = unlimited (default). */
  overdraftLimit: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  /** Payment providers and the credits a payment buys (see README "Promo codes and payments"). */
  payments: PaymentManagerOptions.optional(),
  /** Run `db.init()` (create tables/indexes). Default true. */
  init: z.boolean().optional(),
});
export type CreditManagerOptions = z.input<typeof CreditManagerOptions>;

export interface CreditManager {
  credits: CreditService;
  promos: PromoService;
  payments: PaymentService;
  ledger: LedgerLogger;
  db: DbManager;
  /** Flushes and closes the ledger file, then closes the store. */
  close(): Promise<void>;
}

/** Builds the services over one store, ledger and cache. */
export async function createCreditManager(options: CreditManagerOptions = {}): Promise<CreditManager> {
  const o = parse(CreditManagerOptions, options, "options");
  const db = o.db ?? new InMemoryDbManager();
  if (o.init !== false) await db.init();
  const ledger = new LedgerLogger({
    db,
    filePath: o.ledger ? o.ledger.filePath : false,
    logger: o.logger,
    clock: o.clock,
  });
  const credits = new CreditService({
    db,
    ledger,
    cache: o.cache,
    clock: o.clock,
    logger: o.logger,
    defaultReservationTtlSeconds: o.defaultReservationTtlSeconds,
    overdraftLimit: o.overdraftLimit ?? null,
  });
  const shared = { db, ledger, cache: o.cache, clock: o.clock, logger: o.logger };
  const promos = new PromoService(shared);
  const payments = buildPaymentService(shared, o.payments);
  let closed = false;
  return {
    credits,
    promos,
    payments,
    ledger,
    db,
    async close() {
      if (closed) return;
      closed = true;
      await ledger.close();
      await db.close();
    },
  };
}
