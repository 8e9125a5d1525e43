/**
 * The worker's rounds as a BullMQ repeatable job (docs/operations.md, "The worker in your own
 * code"): a Job Scheduler produces one `credit-rounds` job per interval, however many processes
 * upsert it, and whichever BullMQ worker takes the job runs `createWorker(manager).runOnce()` — one
 * round of each task (lapsed holds, renewals, expiry; the reminders and the outbox's delivery when
 * the manager records notifications; the auto top-ups' charges) on the application's own manager.
 * Overlapping rounds are safe, so no lock is needed.
 *
 *   CREDIT_REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/bullmq.ts
 *
 * BullMQ keeps its jobs in Redis: without CREDIT_REDIS_URL it says so and exits. As a demo it uses
 * an in-memory store with a grant that has just expired, and stops after ROUNDS rounds (default
 * 1; 0: until SIGTERM).
 */
import { randomUUID } from "node:crypto";
import { Queue, Worker, type ConnectionOptions } from "bullmq";
import { createCreditManager } from "credit-management";
import { createWorker, type WorkerRunSummary } from "credit-management/worker";

const redisUrl = process.env.CREDIT_REDIS_URL;
if (!redisUrl) {
  console.log("skipped: BullMQ needs Redis; set CREDIT_REDIS_URL (e.g. redis://127.0.0.1:6379)");
  process.exit(0);
}
const rounds = Number(process.env.ROUNDS ?? 1);
const u = new URL(redisUrl);
const connection: ConnectionOptions = {
  host: u.hostname,
  port: Number(u.port || 6379),
  ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
  ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
  ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
};

// Your application's manager (its store, providers, rate and queue); in memory for the demo.
const manager = await createCreditManager();
await manager.credits.addCredits("user-1", 100, { expiresAt: new Date(Date.now() + 100) });
await manager.credits.addCredits("user-1", 40);
await new Promise((resolve) => setTimeout(resolve, 200)); // the first grant is now past its expiry

const credits = createWorker(manager, { batchSize: 500 });
// One queue per demo run, so runs beside each other on one Redis never take each other's jobs;
// an application names its queue once ("credit-rounds").
const name = `credit-rounds-${randomUUID()}`;
const queue = new Queue(name, { connection });
await queue.upsertJobScheduler("credit-rounds", { every: 60_000 }, { name: "credit-rounds" });

let done = 0;
const worker = new Worker<unknown, WorkerRunSummary>(name, () => credits.runOnce(), { connection, concurrency: 1 });
const finished = new Promise<void>((resolve) => {
  worker.on("completed", (_job, summary) => {
    for (const r of summary.rounds)
      console.log(`round ${r.task}: ${r.ok ? "ok" : "failed"} ${JSON.stringify(r.report)}`);
    if (rounds > 0 && ++done >= rounds) resolve();
  });
  // A round that failed is reported in its summary; this is a processor that threw (BullMQ retries it).
  worker.on("failed", (_job, error) => console.error(`credit rounds failed: ${error.message}`));
  process.once("SIGTERM", () => resolve());
});

await finished;
await worker.close(); // waits for the job in flight
await queue.removeJobScheduler("credit-rounds");
await queue.obliterate({ force: true }); // the demo's queue only
await queue.close();
const info = await manager.credits.getUserCreditsInfo("user-1");
console.log(`balance after the rounds: ${info.balance}`);
await manager.close();
