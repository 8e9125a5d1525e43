/**
 * A notifications worker: reads the Redis stream the dispatcher writes (`RedisStreamQueue`) with a
 * consumer group, prints each notification, and acknowledges it.
 *
 *   CREDIT_REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/notifications-worker.ts --demo --once
 *
 * `--demo` first records a few events (an in-memory credit manager whose queue is the stream) and
 * dispatches them; `--once` exits when the stream has nothing more (else it waits for new ones).
 * Delivery is at least once: the worker drops a message whose `id` it has already handled, and
 * on start re-reads what it was given but never acknowledged (a crash between print and XACK).
 */
import { Redis } from "ioredis";
import { createCreditManager } from "credit-management";
import { RedisStreamQueue } from "credit-management/redis";

const url = process.env.CREDIT_REDIS_URL ?? "redis://127.0.0.1:6379";
const stream = process.env.CREDIT_STREAM ?? "credit-management:notifications";
const group = "notifications-worker";
const consumer = `worker-${process.pid}`;
const once = process.argv.includes("--once");
const redis = new Redis(url);

if (process.argv.includes("--demo")) {
  const queue = new RedisStreamQueue({ client: redis, stream });
  const manager = await createCreditManager({ queue, notifications: { lowCredits: 20 } });
  await manager.credits.addCredits("demo-user", 100);
  await manager.credits.deductCredits("demo-user", 85); // low_credits
  await manager.credits.deductCredits("demo-user", 15); // credits_exhausted
  await manager.credits.addCredits("demo-user", 50); // balance_restored
  await manager.notifications.emit("demo-user", {
    type: "subscription_renewed",
    payload: { planId: "pro" },
    dedupeKey: "demo",
  });
  console.log("dispatched", await manager.notifications.dispatchPending());
  await manager.close();
}

// The group starts at the stream's beginning ("0"); MKSTREAM creates an empty stream if needed.
await redis.xgroup("CREATE", stream, group, "0", "MKSTREAM").catch((error: Error) => {
  if (!error.message.includes("BUSYGROUP")) throw error;
});

const handled = new Set<string>();
let cursor = "0"; // first our own unacknowledged messages, then new ones (">")
for (;;) {
  const reply = (await redis.xreadgroup(
    "GROUP",
    group,
    consumer,
    "COUNT",
    100,
    "BLOCK",
    once ? 500 : 5000,
    "STREAMS",
    stream,
    cursor,
  )) as Array<[string, Array<[string, string[]]>]> | null;
  const entries = reply?.[0]?.[1] ?? [];
  if (entries.length === 0) {
    if (cursor === "0") {
      cursor = ">";
      continue;
    }
    if (once) break;
    continue;
  }
  for (const [entryId, flat] of entries) {
    const m: Record<string, string> = {};
    for (let i = 0; i < flat.length; i += 2) m[flat[i] as string] = flat[i + 1] as string;
    const id = m.id as string;
    if (!handled.has(id)) {
      handled.add(id);
      console.log(`${m.createdAt} ${m.userId} ${m.type} ${m.payload} (id ${id}, attempt ${m.attempt})`);
    }
    await redis.xack(stream, group, entryId);
  }
}
await redis.quit();
