/**
 * A worker process that runs the jobs every minute and logs each report with pino. `runAll()` is
 * everything a deployment schedules: lapsed holds, renewals, expiry and — once the manager has a
 * `queue` (or `notifications`) — the expiring-credit reminders and the delivery of the outbox.
 *
 *   npx tsx examples/scheduler.ts            (in-memory store: a demo)
 *   CREDIT_MONGO_URI=… npx tsx examples/scheduler.ts
 *
 * Several copies may run at once (on MongoDB or PostgreSQL): the jobs are safe to run
 * concurrently — a grant is expired once, a period allocated once. A run never overlaps the
 * previous one in the same process; SIGTERM/SIGINT finish the current run, then close the store.
 */
import { pino } from "pino";
import { createCreditManager, createDbManagerFromEnv } from "credit-management";

const logger = pino({ name: "credit-jobs" });
const EVERY_MS = Number(process.env.JOB_INTERVAL_MS ?? 60_000);

const db = await createDbManagerFromEnv();
const manager = await createCreditManager({
  db,
  logger,
  ledger: process.env.LEDGER_FILE ? { filePath: process.env.LEDGER_FILE } : false,
});

let running: Promise<void> | null = null;
let stopping = false;

async function tick(): Promise<void> {
  try {
    const report = await manager.expiration.runAll(undefined, { batchSize: 1000, concurrency: 8 });
    logger.info({ report }, "credit jobs ran");
  } catch (error) {
    logger.error({ err: error }, "credit jobs failed; the next run picks up where this one stopped");
  }
}

const timer = setInterval(() => {
  if (running !== null || stopping) return; // never two runs at once in one process
  running = tick().finally(() => (running = null));
}, EVERY_MS);
running = tick().finally(() => (running = null));

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, async () => {
    stopping = true;
    clearInterval(timer);
    await running;
    await manager.close();
    logger.info("credit jobs stopped");
    process.exit(0);
  });
}

if (process.env.RUN_ONCE === "1") {
  await running;
  process.emit("SIGTERM");
}
