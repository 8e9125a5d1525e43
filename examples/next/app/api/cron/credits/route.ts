/**
 * The worker's rounds from a cron route (docs/operations.md, "The worker in your own code"): on
 * Vercel, a Cron Job calls GET /api/cron/credits every minute (`vercel.json`: `{ "crons": [{ "path":
 * "/api/cron/credits", "schedule": "* * * * *" }] }`) with `Authorization: Bearer $CRON_SECRET`.
 * One round of each task — lapsed holds, renewals, expiry, the reminders and the outbox's delivery
 * when the manager records notifications, the auto top-ups' charges — on the application's own
 * manager (its store, providers, rate and queue). Overlapping calls are safe.
 */
import { createWorker } from "credit-management/worker";
import { credits } from "../../../../lib/credits";

export const dynamic = "force-dynamic";

export async function GET(request: Request): Promise<Response> {
  const secret = process.env.CRON_SECRET;
  if (!secret || request.headers.get("authorization") !== `Bearer ${secret}`) {
    return Response.json({ error: "unauthorized" }, { status: 401 });
  }
  const summary = await createWorker(await credits(), { batchSize: 500 }).runOnce();
  const rounds = summary.rounds.map(({ task, ok, durationMs, report }) => ({ task, ok, durationMs, report }));
  // 500 when a round failed: the cron's log shows it; what failed is done by the next call.
  return Response.json({ ok: summary.ok, rounds }, { status: summary.ok ? 200 : 500 });
}
