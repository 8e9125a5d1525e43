import { randomUUID } from "node:crypto";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  AckPolicy,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import * as z from "zod";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dropSharedStore, killHard, openSharedStore, startChildUntil } from "./fixtures/child.js";
import {
  ConfigurationError,
  CreditService,
  InMemoryDbManager,
  NotificationService,
  OutcomeUnknownError,
  createCreditManager,
  type NotificationMessage,
} from "../src/index.js";
import { type DbManager } from "../src/store.js";
import { DomainEvent } from "../src/core/models/index.js";
import { NatsJetStreamQueue, consumeCreditEvents, inboundHandler } from "../src/nats/index.js";

const natsUrl = process.env.CREDIT_NATS_URL;
const mongoUri = process.env.CREDIT_MONGO_URI;
const pgUrl = process.env.CREDIT_PG_URL;
const here = dirname(fileURLToPath(import.meta.url));
/** Unique per run: other sessions use the same server at the same time. */
const tag = `cm${process.pid}${randomUUID().slice(0, 8)}`.replace(/-/g, "");
const streams: string[] = [];
const names = (label: string) => {
  const stream = `T_${tag}_${label}`;
  streams.push(stream);
  return { stream, subjectPrefix: `t.${tag}.${label}` };
};

/** A port nothing listens on: a NATS server that is down. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("credit-management/nats: options are validated without a server", () => {
  const fakeConnection = { request: () => Promise.reject(new Error("no server")), isClosed: () => false } as never;
  it("NatsJetStreamQueue and consumeCreditEvents refuse bad options with ConfigurationError", () => {
    expect(() => new NatsJetStreamQueue({})).toThrow(ConfigurationError);
    expect(() => new NatsJetStreamQueue({ connection: fakeConnection, subjectPrefix: "evt..credits" })).toThrow(
      ConfigurationError,
    );
    expect(() => new NatsJetStreamQueue({ connection: fakeConnection, timeoutMs: 0 })).toThrow(ConfigurationError);
    expect(
      new NatsJetStreamQueue({ connection: fakeConnection, subjectPrefix: "evt.credits" }).subjectOf("hold_placed"),
    ).toBe("evt.credits.hold_placed");
    const consumer = { consume: () => Promise.reject(new Error("unused")) } as never;
    const js = { publish: () => Promise.reject(new Error("unused")) } as never;
    const handler = inboundHandler(z.object({ id: z.string() }), async () => undefined);
    expect(() =>
      consumeCreditEvents({ consumer, js, handlers: { "a.b": handler }, deadLetterSubject: "dlq.>" }),
    ).toThrow(ConfigurationError);
    expect(() => consumeCreditEvents({ consumer: {} as never, js, handlers: {}, deadLetterSubject: "dlq.x" })).toThrow(
      /JetStream consumer/,
    );
    expect(() =>
      consumeCreditEvents({
        consumer,
        js,
        handlers: { "a.b": { handle: async () => 1 } as never },
        deadLetterSubject: "dlq.x",
      }),
    ).toThrow(/each handler/);
    expect(() =>
      consumeCreditEvents({ consumer, js, handlers: {}, deadLetterSubject: "dlq.x", maxDeliveries: 0 }),
    ).toThrow(ConfigurationError);
  });
});

// reason: needs a NATS server with JetStream; CREDIT_NATS_URL (set by .ci/run)
describe.skipIf(!natsUrl)("NATS JetStream", () => {
  // reason: needs CREDIT_NATS_URL (set by .ci/run); the run's closing block names it when skipped
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let js: JetStreamClient;
  beforeAll(async () => {
    nc = await connect({ servers: natsUrl });
    jsm = await jetstreamManager(nc);
    js = jetstream(nc);
  });
  afterAll(async () => {
    for (const s of streams) await jsm?.streams.delete(s).catch(() => undefined);
    await nc?.close();
  });

  /** Every message of `stream`, in stream order. */
  const read = async (stream: string) => {
    const info = await jsm.streams.info(stream);
    const out: { subject: string; msgId: string | undefined; body: unknown }[] = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq });
      if (m !== null) out.push({ subject: m.subject, msgId: m.header?.get("Nats-Msg-Id"), body: m.json() });
    }
    return out;
  };
  const message = (id: string, userId = "u1"): NotificationMessage => ({
    id,
    userId,
    type: "low_credits",
    payload: { available: 5, threshold: 10, level: "low", previousLevel: "ok", balance: 5, reserved: 0, seq: 2 },
    createdAt: new Date().toISOString(),
    attempt: 1,
  });

  describe("NatsJetStreamQueue", () => {
    it("validates its options (typed ConfigurationError)", () => {
      expect(() => new NatsJetStreamQueue({})).toThrow(ConfigurationError);
      expect(() => new NatsJetStreamQueue({ servers: natsUrl, connection: nc })).toThrow(/either `connection`/);
      expect(() => new NatsJetStreamQueue({ connection: nc, subjectPrefix: "evt.*" })).toThrow(ConfigurationError);
      expect(() => new NatsJetStreamQueue({ connection: nc, stream: "has.dot" })).toThrow(ConfigurationError);
      expect(() => new NatsJetStreamQueue({ connection: nc, duplicateWindowMs: 10 })).toThrow(ConfigurationError);
    });

    it("init() creates the stream (subjects under the prefix, the duplicate window), then checks it", async () => {
      const { stream, subjectPrefix } = names("init");
      const queue = new NatsJetStreamQueue({ connection: nc, stream, subjectPrefix, duplicateWindowMs: 600_000 });
      await queue.init();
      const info = await jsm.streams.info(stream);
      expect(info.config.subjects).toEqual([`${subjectPrefix}.>`]);
      expect(info.config.duplicate_window).toBe(600_000 * 1_000_000);
      await new NatsJetStreamQueue({ connection: nc, stream, subjectPrefix, duplicateWindowMs: 600_000 }).init(); // exists: checked
      // A window shorter than asked, a stream that does not capture the subjects, a missing stream that may not be created.
      await expect(
        new NatsJetStreamQueue({ connection: nc, stream, subjectPrefix, duplicateWindowMs: 3_600_000 }).init(),
      ).rejects.toThrow(/keeps message ids for 600000 ms/);
      await expect(
        new NatsJetStreamQueue({ connection: nc, stream, subjectPrefix: `t.${tag}.other` }).init(),
      ).rejects.toThrow(/does not capture/);
      // A stream of yours with a wider wildcard captures the subjects: accepted as it is.
      const wide = names("wide");
      await jsm.streams.add({ name: wide.stream, subjects: [`t.${tag}.wide.>`], duplicate_window: 3_600_000_000_000 });
      await new NatsJetStreamQueue({ connection: nc, stream: wide.stream, subjectPrefix: `t.${tag}.wide.evt` }).init();
      await expect(
        new NatsJetStreamQueue({ connection: nc, stream: wide.stream, subjectPrefix: `t.${tag}.wid` }).init(),
      ).rejects.toThrow(/does not capture/);
      await expect(
        new NatsJetStreamQueue({
          connection: nc,
          stream: `${stream}_missing`,
          subjectPrefix,
          createStream: false,
        }).init(),
      ).rejects.toThrow(/does not exist/);
      await queue.close();
      expect(nc.isClosed()).toBe(false); // a connection it was given stays open
    });

    it("publishes the envelope to <prefix>.<type> with the row id as Nats-Msg-Id; a redelivery is dropped", async () => {
      const { stream, subjectPrefix } = names("dup");
      const queue = new NatsJetStreamQueue({ connection: nc, stream, subjectPrefix });
      await queue.publish(message("0001-a"));
      await queue.publish({ ...message("0001-a"), attempt: 2 }); // the same row again
      await queue.publish(message("0002-b"));
      const stored = await read(stream);
      expect(stored.map((m) => [m.subject, m.msgId])).toEqual([
        [`${subjectPrefix}.low_credits`, "0001-a"],
        [`${subjectPrefix}.low_credits`, "0002-b"],
      ]);
      expect(DomainEvent.parse(stored[0]?.body)).toMatchObject({
        type: "low_credits",
        version: 1,
        id: "0001-a",
        userId: "u1",
        payload: { level: "low" },
      });
    });

    it("delivers a manager's domain events once each, in order per user", async () => {
      const { stream, subjectPrefix } = names("order");
      const queue = new NatsJetStreamQueue({ connection: nc, stream, subjectPrefix });
      const manager = await createCreditManager({
        queue,
        domainEvents: true,
        notifications: { lowCredits: 50 },
        features: { chat: { minAvailable: 1 } },
      });
      const users = ["a", "b", "c"].map((u) => `${tag}-${u}`);
      for (let round = 0; round < 4; round++) {
        for (const u of users) {
          if (round === 0) await manager.credits.addCredits(u, 100, { source: "payment" });
          else if (round === 3) await manager.credits.deductCredits(u, 10);
          else {
            const hold = await manager.credits.reserveCredits(u, 20);
            await manager.credits.commitReservedCredits(hold.id, { amount: 20 });
          }
        }
      }
      // 100 − 40 − 10 = 50: on the line, so low (the line is on the alarm side); − 50 = 0: exhausted, chat off.
      await manager.credits.deductCredits(users[0] as string, 50);
      let total = 0;
      for (let i = 0; i < 20; i++) total += (await manager.notifications.dispatchPending({ limit: 100 })).sent;
      const rows = (await Promise.all(users.map((u) => manager.notifications.list(u)))).flat();
      expect(total).toBe(rows.length);
      expect(rows.every((r) => r.status === "sent")).toBe(true);
      const stored = await read(stream);
      expect(stored.length).toBe(rows.length);
      const events = stored.map((m) => DomainEvent.parse(m.body));
      for (const u of users) {
        const published = events.filter((e) => e.userId === u).map((e) => e.id);
        const outbox = rows.filter((r) => r.userId === u).map((r) => r.id);
        expect(published).toEqual(outbox); // once each, in the order the units of work ran
        expect(published).toEqual([...published].sort());
      }
      expect(events.filter((e) => e.userId === users[0]).map((e) => e.type)).toEqual([
        "credits_added",
        "feature_status_changed",
        "hold_placed",
        "hold_settled",
        "hold_placed",
        "hold_settled",
        "credits_deducted",
        "low_credits",
        "credits_deducted",
        "credits_exhausted",
        "feature_status_changed",
      ]);
      expect(
        stored.every(
          (m) =>
            m.subject === `${subjectPrefix}.${(m.body as { type: string }).type}` &&
            m.msgId === (m.body as { id: string }).id,
        ),
      ).toBe(true);
      await manager.close();
    });

    it("a server that is down: the publish fails, the row is retried, then delivered once", async () => {
      const { stream, subjectPrefix } = names("down");
      const db = new InMemoryDbManager();
      const clock = { now: Date.now() };
      const now = () => new Date(clock.now);
      const credits = new CreditService({ db, domainEvents: true, clock: now });
      await credits.addCredits("down-user", 10);
      const down = new NatsJetStreamQueue({
        servers: `nats://127.0.0.1:${await deadPort()}`,
        stream,
        subjectPrefix,
        timeoutMs: 500,
      });
      const failing = new NotificationService({ db, queue: down, clock: now, backoffBaseMs: 1000 });
      expect(await failing.dispatchPending()).toMatchObject({ claimed: 1, sent: 0, retried: 1 });
      const [row] = await failing.list("down-user");
      expect(row).toMatchObject({ status: "pending", attempts: 1 });
      expect(row?.lastError).toBeTruthy();
      await down.close();
      clock.now += 2000;
      const up = new NatsJetStreamQueue({ servers: natsUrl as string, stream, subjectPrefix });
      const working = new NotificationService({ db, queue: up, clock: now });
      expect(await working.dispatchPending()).toMatchObject({ sent: 1 });
      expect((await read(stream)).map((m) => m.msgId)).toEqual([row?.id]);
      await up.close();
    });

    const stores = [
      { kind: "mongodb", url: mongoUri },
      { kind: "postgres", url: pgUrl },
    ] as const;
    for (const store of stores) {
      // reason: a store two processes share
      it.skipIf(!store.url)(
        `${store.kind}: a process killed (SIGKILL) after JetStream stored an event but before it was marked sent: every event once`,
        async () => {
          // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
          const { stream, subjectPrefix } = names(`crash_${store.kind}`);
          const name = `credit_test_nats_${process.pid}_${randomUUID().slice(0, 8)}`;
          const userId = `crash-${randomUUID()}`;
          const { child, output } = await startChildUntil(
            join(here, "fixtures/nats-crash.ts"),
            [store.kind, store.url as string, name, userId, natsUrl as string, stream, subjectPrefix],
            "published",
          );
          expect(await killHard(child)).toBe("SIGKILL");
          const publishedId = /published (\S+)/.exec(output())?.[1];

          const db: DbManager = openSharedStore({ kind: store.kind, url: store.url as string }, name);
          try {
            expect((await read(stream)).map((m) => m.msgId)).toEqual([publishedId]); // stored, but the row says otherwise
            const queue = new NatsJetStreamQueue({ connection: nc, stream, subjectPrefix });
            const notifications = new NotificationService({ db, queue });
            const rows = await notifications.list(userId);
            expect(rows.map((r) => [r.type, r.status])).toEqual([
              ["credits_added", "pending"],
              ["credits_deducted", "pending"],
            ]);
            expect(rows[0]?.id).toBe(publishedId);
            await new Promise((r) => setTimeout(r, 1600)); // the dead process's lease lapses
            let sent = 0;
            for (let i = 0; i < 5 && sent < 2; i++) sent += (await notifications.dispatchPending()).sent;
            expect(sent).toBe(2); // the first row published again: JetStream dropped it
            const stored = await read(stream);
            expect(stored.map((m) => m.msgId)).toEqual(rows.map((r) => r.id));
            expect(stored.map((m) => DomainEvent.parse(m.body).type)).toEqual(["credits_added", "credits_deducted"]);
          } finally {
            await db.close();
            await dropSharedStore({ kind: store.kind, url: store.url as string }, name);
          }
        },
        30_000,
      );
    }
  });

  describe("consumeCreditEvents", () => {
    const OrderPaid = z.object({
      id: z.string().min(1),
      merchantId: z.string().min(1),
      orderId: z.string().min(1),
      credits: z.number().int().positive(),
    });
    const OrderRefunded = z.object({
      id: z.string().min(1),
      merchantId: z.string().min(1),
      orderId: z.string().min(1),
      credits: z.number().int().positive(),
    });
    const MerchantCreated = z.object({ id: z.string().min(1), merchantId: z.string().min(1) });

    it("credits from order_paid / order_refunded / merchant.created once each; poison messages go to the dead-letter subject, acked", async () => {
      const inbound = names("in");
      const dead = names("dead");
      await jsm.streams.add({ name: inbound.stream, subjects: [`${inbound.subjectPrefix}.>`] });
      await jsm.streams.add({ name: dead.stream, subjects: [`${dead.subjectPrefix}.>`] });
      await jsm.consumers.add(inbound.stream, {
        durable_name: "credits",
        ack_policy: AckPolicy.Explicit,
        ack_wait: 5_000_000_000,
      });
      const manager = await createCreditManager({ trial: { amount: 50 }, domainEvents: true });
      const s = (name: string) => `${inbound.subjectPrefix}.${name}`;
      let flaky = 0;
      const consumer = consumeCreditEvents({
        consumer: await js.consumers.get(inbound.stream, "credits"),
        js,
        deadLetterSubject: `${dead.subjectPrefix}.credits`,
        maxDeliveries: 2,
        retryDelayMs: 50,
        handlers: {
          [s("merchant_created")]: inboundHandler(MerchantCreated, (e) => manager.credits.openAccount(e.merchantId)),
          [s("order_paid")]: inboundHandler(OrderPaid, async (e) => {
            // The first delivery's commit answer is lost: its outcome is unknown, so it is retried
            // (under its key it applies once), never dead-lettered as a refusal.
            if (e.orderId === "flaky" && flaky++ === 0)
              throw new OutcomeUnknownError("the commit's answer was lost", { entryIds: [] });
            return manager.credits.addCredits(e.merchantId, e.credits, {
              idempotencyKey: `order_paid:${e.id}`,
              source: "payment",
              sourceRef: e.orderId,
            });
          }),
          [s("order_refunded")]: inboundHandler(OrderRefunded, (e) =>
            manager.credits.deductCreditsAfterService(e.merchantId, e.credits, {
              idempotencyKey: `order_refunded:${e.id}`,
              metadata: { paymentId: e.orderId, refundedAmount: e.credits },
            }),
          ),
          [s("always_fails")]: inboundHandler(z.object({}), async () => {
            throw new Error("never works");
          }),
        },
      });
      const m = `m-${tag}`;
      const send = (name: string, body: unknown) =>
        js.publish(s(name), typeof body === "string" ? body : JSON.stringify(body));
      await send("merchant_created", { id: "e1", merchantId: m });
      await send("merchant_created", { id: "e1", merchantId: m }); // redelivered by the producer
      await send("order_paid", { id: "e2", merchantId: m, orderId: "o-1", credits: 100 });
      await send("order_paid", { id: "e2", merchantId: m, orderId: "o-1", credits: 100 }); // again
      await send("order_paid", { id: "e3", merchantId: m, orderId: "flaky", credits: 7 });
      await send("order_refunded", { id: "e4", merchantId: m, orderId: "o-1", credits: 30 });
      await send("order_paid", "{not json");
      await send("order_paid", { id: "e5", merchantId: m, orderId: "o-2", credits: -5 });
      await send("unknown_subject", { id: "e6" });
      await send("always_fails", {});
      const deadline = Date.now() + 15_000;
      while (consumer.counts.applied + consumer.counts.dead_lettered < 10 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      await consumer.stop();
      expect(consumer.counts).toEqual({ applied: 6, retry: 2, dead_lettered: 4 });
      // 50 trial + 100 + 7 − 30: each once, whatever was redelivered.
      expect((await manager.credits.getUserCreditsInfo(m)).balance).toBe(127);
      const types = (await manager.notifications.list(m)).map((r) => [r.type, r.payload.source ?? null]);
      // The flaky order comes back after the refund: a retried message does not hold up later ones.
      expect(types).toEqual([
        ["credits_added", "trial"],
        ["credits_added", "payment"],
        // A deduction of the host's, whatever its metadata: only the payments module's take-backs are refunds.
        ["credits_deducted", null],
        ["credits_added", "payment"],
      ]);
      const letters = (await read(dead.stream)).map(
        (x) => x.body as { reason: string; subject: string; deliveryCount: number },
      );
      expect(
        letters.map((l) => [l.reason, l.subject.slice(inbound.subjectPrefix.length + 1), l.deliveryCount]),
      ).toEqual([
        ["invalid_payload", "order_paid", 1],
        ["invalid_payload", "order_paid", 1],
        ["no_handler", "unknown_subject", 1],
        ["failed", "always_fails", 2],
      ]);
      const pending = await jsm.consumers.info(inbound.stream, "credits");
      expect(pending.num_ack_pending + pending.num_pending).toBe(0); // every message acked, poison ones too
      await manager.close();
    }, 30_000);
  });
});
