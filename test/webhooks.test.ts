import { spawnSync } from "node:child_process";
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { afterEach, describe, expect, it } from "vitest";
import {
  createCreditManager,
  CreditError,
  InMemoryDbManager,
  ValidationError,
  type CreditManager,
} from "../src/index.js";
import { deliveryUserId } from "../src/modules/webhooks/queue.js";
import { signWebhook, webhookHeaders } from "../src/modules/webhooks/queue-sign.js";
import {
  generateWebhookSecret,
  WebhookAddressError,
  WebhookDeliveryError,
  webhookQueue,
  type Lookup,
  type WebhookEndpoint,
  type WebhookQueueOptions,
} from "../src/webhooks/index.js";

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
}

/** An HTTP receiver on 127.0.0.1: `answer` decides each response (default 204). */
async function receiver(
  answer: (r: Received, res: ServerResponse, n: number) => void = (_r, res) => res.writeHead(204).end(),
) {
  const got: Received[] = [];
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      const r = { headers: req.headers, body };
      got.push(r);
      answer(r, res, got.length);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  servers.push(server);
  return { got, url: `http://127.0.0.1:${port}/hook`, port, server };
}
const servers: Server[] = [];
const managers: CreditManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const local = ["127.0.0.0/8"]; // the test-only allowance for loopback receivers

async function setup(endpoints: WebhookEndpoint[], extra: Partial<WebhookQueueOptions> = {}) {
  const db = new InMemoryDbManager();
  const queue = webhookQueue({
    db,
    endpoints,
    allowNetworks: local,
    retrySchedule: [20, 20, 20, 20, 20],
    timeoutMs: 1000,
    ...extra,
  });
  const m = await createCreditManager({ db, queue, domainEvents: true });
  managers.push(m);
  return { db, queue, m };
}

/** Dispatches until `done()` or `ms` passed. */
async function dispatchUntil(m: CreditManager, done: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!done() && Date.now() < end) {
    await m.notifications.dispatchPending({ limit: 1000 });
    await sleep(10);
  }
}

const ids = (got: Received[]) => got.map((r) => r.headers["webhook-id"]);
const verified = (secret: string, r: Received) =>
  new Webhook(secret).verify(r.body, r.headers as Record<string, string>);

describe("webhook signatures (Standard Webhooks)", () => {
  it("the official verifier accepts each of the secrets during a rotation, and refuses a changed body", () => {
    const a = generateWebhookSecret();
    const b = generateWebhookSecret();
    expect(a).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const body = JSON.stringify({ type: "credits_added", id: "evt_1" });
    const headers = webhookHeaders([a, b], "evt_1", Math.floor(Date.now() / 1000), body);
    expect(headers["webhook-signature"].split(" ")).toHaveLength(2);
    expect(new Webhook(a).verify(body, headers)).toEqual({ type: "credits_added", id: "evt_1" });
    expect(new Webhook(b).verify(body, headers)).toEqual({ type: "credits_added", id: "evt_1" });
    expect(() => new Webhook(generateWebhookSecret()).verify(body, headers)).toThrow();
    expect(() => new Webhook(a).verify(body.replace("evt_1", "evt_2"), headers)).toThrow();
  });

  it("a Python receiver verifies it with the standard library's hmac", () => {
    const secret = generateWebhookSecret();
    const body = JSON.stringify({ type: "low_credits", id: "evt_py", payload: { available: 5, note: "é ✓" } });
    const h = webhookHeaders([secret], "evt_py", Math.floor(Date.now() / 1000), body);
    const script = `
import base64, hmac, hashlib, json, sys
d = json.loads(sys.stdin.read())
key = base64.b64decode(d["secret"].split("_", 1)[1])
signed = f'{d["id"]}.{d["ts"]}.{d["body"]}'.encode()
expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
ok = any(hmac.compare_digest(s.split(",", 1)[1], expected) for s in d["sig"].split(" ") if s.startswith("v1,"))
print("verified" if ok else "refused")`;
    const run = (input: object) =>
      spawnSync("python3", ["-c", script], { input: JSON.stringify(input), encoding: "utf8" }).stdout.trim();
    const input = { secret, id: h["webhook-id"], ts: h["webhook-timestamp"], body, sig: h["webhook-signature"] };
    expect(run(input)).toBe("verified");
    expect(run({ ...input, body: body.replace("5", "6") })).toBe("refused");
  });
});

describe("webhookQueue endpoints read by a function", () => {
  it("reads them once per refreshMs, and again at once after refresh(); a fixed list is the list given", async () => {
    const endpoint = (id: string): WebhookEndpoint => ({
      id,
      url: `https://example.com/${id}`,
      secret: generateWebhookSecret(),
    });
    let list = [endpoint("a")];
    let reads = 0;
    const read = async () => {
      reads++;
      return list;
    };
    const q = webhookQueue({ db: new InMemoryDbManager(), endpoints: read, refreshMs: 3_600_000 });
    expect([...(await q.endpoints()).keys()]).toEqual(["a"]);
    list = [endpoint("a"), endpoint("b")];
    // Within refreshMs: the endpoints read before, without another read.
    expect([...(await q.endpoints()).keys()]).toEqual(["a"]);
    expect(reads).toBe(1);
    q.refresh();
    expect([...(await q.endpoints()).keys()]).toEqual(["a", "b"]);
    expect(reads).toBe(2);

    const fixed = webhookQueue({ db: new InMemoryDbManager(), endpoints: [endpoint("c")] });
    fixed.refresh();
    expect([...(await fixed.endpoints()).keys()]).toEqual(["c"]);
  });
});

describe("webhookQueue delivery", () => {
  it("POSTs each event's envelope, id = the outbox row's id, signed; a 500ing endpoint never holds back a healthy one", async () => {
    const secret = generateWebhookSecret();
    const healthy = await receiver();
    let failing = true;
    const flaky = await receiver((_r, res) => res.writeHead(failing ? 500 : 200).end(failing ? "down" : "ok"));
    const { m, db } = await setup(
      [
        { id: "healthy", url: healthy.url, secret, development: true },
        { id: "flaky", url: flaky.url, secret, development: true },
      ],
      { retrySchedule: [30, 30, 30, 30, 30, 30, 30, 30] },
    );
    for (const user of ["u1", "u2"]) {
      await m.credits.addCredits(user, 100, { source: "payment" });
      await m.credits.deductCredits(user, 10);
    }
    const events = [...(await m.notifications.list("u1")), ...(await m.notifications.list("u2"))];
    expect(events.map((e) => e.type)).toEqual([
      "credits_added",
      "credits_deducted",
      "credits_added",
      "credits_deducted",
    ]);
    await dispatchUntil(m, () => healthy.got.length >= 4);
    expect(new Set(ids(healthy.got))).toEqual(new Set(events.map((e) => e.id)));
    expect(flaky.got.length).toBeGreaterThan(0); // tried, answered 500
    for (const r of healthy.got) {
      const body = verified(secret, r) as { id: string; type: string; userId: string };
      expect(body.id).toBe(r.headers["webhook-id"]);
      expect(r.headers["content-type"]).toBe("application/json");
    }
    // In order per account and endpoint.
    const u1 = healthy.got
      .map((r) => JSON.parse(r.body) as { userId: string; type: string })
      .filter((e) => e.userId === "u1");
    expect(u1.map((e) => e.type)).toEqual(["credits_added", "credits_deducted"]);
    failing = false;
    await dispatchUntil(
      m,
      () => new Set(ids(flaky.got.filter((r) => r.body !== ""))).size >= 4 && flaky.got.length > 4,
    );
    await dispatchUntil(m, () => false, 200);
    const okIds = new Set(flaky.got.map((r) => r.headers["webhook-id"]));
    expect(okIds).toEqual(new Set(events.map((e) => e.id)));
    for (const r of flaky.got) verified(secret, r);
    const rows = await db.listNotifications(deliveryUserId("flaky", "u1"), { limit: 10 });
    expect(rows.map((r) => r.status)).toEqual(["sent", "sent"]);
    expect(rows[0]?.attempts).toBeGreaterThan(1);
  });

  it("an endpoint that does not answer in time is retried; the other is delivered meanwhile", async () => {
    const secret = generateWebhookSecret();
    const healthy = await receiver();
    let hang = true;
    const slow = await receiver((_r, res) => {
      if (!hang) res.writeHead(200).end();
    });
    const { m, db } = await setup(
      [
        { id: "healthy", url: healthy.url, secret, development: true },
        { id: "slow", url: slow.url, secret, development: true },
      ],
      { timeoutMs: 200, coolOffMs: 100 },
    );
    await m.credits.addCredits("u", 5);
    await dispatchUntil(m, () => healthy.got.length === 1 && slow.got.length >= 1);
    expect(healthy.got).toHaveLength(1);
    const [row] = await db.listNotifications(deliveryUserId("slow", "u"), { limit: 10 });
    expect(row?.status).toBe("pending");
    expect(row?.lastError).toMatch(/no answer within 200 ms/);
    hang = false;
    await dispatchUntil(m, () => slow.got.length >= 2);
    await dispatchUntil(m, () => false, 100);
    const [after] = await db.listNotifications(deliveryUserId("slow", "u"), { limit: 10 });
    expect(after?.status).toBe("sent");
  });

  it("a hung endpoint costs the rounds one time-out per cool-off, not one per delivery", async () => {
    const secret = generateWebhookSecret();
    const healthy = await receiver();
    const hung = await receiver(() => undefined); // never answers
    const { m, db } = await setup(
      [
        { id: "healthy", url: healthy.url, secret, development: true },
        { id: "hung", url: hung.url, secret, development: true },
      ],
      // A time-out well above what eight deliveries take on a loaded machine, so the bound below
      // tells a round that waited for the hung endpoint from one that did not.
      { timeoutMs: 1_000, coolOffMs: 60_000, retrySchedule: [0, 0, 0, 60_000] },
    );
    await m.credits.addCredits("first", 5);
    await dispatchUntil(m, () => hung.got.length === 1 && healthy.got.length === 1);
    await dispatchUntil(m, () => false, 1_100); // the hung request times out: the cool-off starts
    const users = ["a", "b", "c", "d", "e", "f", "g", "h"];
    for (const u of users) await m.credits.addCredits(u, 5);
    const started = Date.now();
    await dispatchUntil(m, () => healthy.got.length === 1 + users.length);
    expect(healthy.got).toHaveLength(1 + users.length);
    expect(Date.now() - started).toBeLessThan(1_000); // no round waited for the hung endpoint
    expect(hung.got).toHaveLength(1);
    const [row] = await db.listNotifications(deliveryUserId("hung", "a"), { limit: 1 });
    expect(row?.lastError).toMatch(/not sent: the endpoint did not answer in time lately/);
  });

  it("after the schedule the delivery is failed and kept; 410 disables the endpoint", async () => {
    const secret = generateWebhookSecret();
    const dead = await receiver((_r, res) => res.writeHead(503).end());
    const gone = await receiver((_r, res) => res.writeHead(410).end());
    const disabled: string[] = [];
    const { m, db } = await setup(
      [
        { id: "dead", url: dead.url, secret, development: true },
        { id: "gone", url: gone.url, secret, development: true },
      ],
      { retrySchedule: [10, 10], onDisabled: (id) => void disabled.push(id) },
    );
    await m.credits.addCredits("u", 5);
    await dispatchUntil(m, () => dead.got.length >= 3, 3000);
    await dispatchUntil(m, () => false, 100);
    expect(dead.got).toHaveLength(3); // the schedule's 2 waits: 3 attempts
    const [row] = await db.listNotifications(deliveryUserId("dead", "u"), { limit: 10 });
    expect(row?.status).toBe("failed");
    expect(row?.attempts).toBe(3);
    expect(row?.lastError).toMatch(/answered 503.*no more attempts/);

    expect(gone.got).toHaveLength(1);
    expect(disabled).toEqual(["gone"]);
    const [goneRow] = await db.listNotifications(deliveryUserId("gone", "u"), { limit: 10 });
    expect(goneRow?.status).toBe("failed");
    expect(goneRow?.lastError).toMatch(/410 Gone/);
    await m.credits.addCredits("u", 5); // no delivery row for a disabled endpoint
    await dispatchUntil(m, () => dead.got.length >= 4);
    expect(gone.got).toHaveLength(1);
    expect(await db.listNotifications(deliveryUserId("gone", "u"), { limit: 10 })).toHaveLength(1);
  });

  it("limit_warning and limit_reached reach an endpoint that filters on them, signed, once each (docs/teams-and-limits.md)", async () => {
    const secret = generateWebhookSecret();
    const limits = await receiver();
    const { m } = await setup([
      { id: "limits", url: limits.url, secret, development: true, types: ["limit_warning", "limit_reached"] },
    ]);
    await m.credits.addCredits("u1", 1000, { source: "payment" });
    await m.credits.setLimits("u1", [{ spender: "alice", amount: 100, period: "month" }]);
    for (const amount of [50, 35, 5, 10]) await m.credits.deductCredits("u1", amount, { spender: "alice" });
    const hold = await m.credits.reserveCredits("u1", 1, { spender: "bob" }); // bob: no limit applies
    await m.credits.releaseReservedCredits(hold.id);
    await dispatchUntil(m, () => limits.got.length >= 2);
    await dispatchUntil(m, () => false, 200); // nothing else arrives
    const bodies = limits.got.map((r) => verified(secret, r) as { type: string; payload: Record<string, unknown> });
    expect(bodies.map((b) => [b.type, b.payload.threshold, b.payload.used])).toEqual([
      ["limit_warning", 0.8, 85],
      ["limit_reached", 1, 100],
    ]);
    expect(bodies[0]?.payload.limit).toEqual({
      spender: "alice",
      feature: null,
      amount: 100,
      period: "month",
      resetsWith: null,
    });
  });

  it("an event redelivered to the queue writes no second delivery; type filters and disabled endpoints get none", async () => {
    const secret = generateWebhookSecret();
    const a = await receiver();
    const db = new InMemoryDbManager();
    const queue = webhookQueue({
      db,
      allowNetworks: local,
      endpoints: [
        { id: "all", url: a.url, secret, development: true },
        { id: "deducted", url: a.url, secret, development: true, types: ["credits_deducted"] },
        { id: "off", url: a.url, secret, development: true, enabled: false },
      ],
    });
    const message = {
      id: "0evt",
      userId: "u",
      type: "credits_added" as const,
      payload: { amount: 1 },
      createdAt: new Date().toISOString(),
      attempt: 1,
    };
    await queue.publish(message);
    await queue.publish({ ...message, attempt: 2 });
    expect(await db.listNotifications(deliveryUserId("all", "u"), { limit: 10 })).toHaveLength(1);
    expect(await db.listNotifications(deliveryUserId("deducted", "u"), { limit: 10 })).toHaveLength(0);
    expect(await db.listNotifications(deliveryUserId("off", "u"), { limit: 10 })).toHaveLength(0);
    await queue.close();
  });
});

describe("webhookQueue safety", () => {
  it("http:// only for an endpoint marked development; secrets and ids checked", () => {
    const db = new InMemoryDbManager();
    const secret = generateWebhookSecret();
    expect(() => webhookQueue({ db, endpoints: [{ id: "a", url: "http://example.com/h", secret }] })).toThrow(
      ValidationError,
    );
    expect(() =>
      webhookQueue({ db, endpoints: [{ id: "a", url: "https://example.com/h", secret: "whsec_short" }] }),
    ).toThrow(/whsec_/);
    expect(() => webhookQueue({ db, endpoints: [{ id: "a b", url: "https://example.com/h", secret }] })).toThrow(
      ValidationError,
    );
    expect(() => webhookQueue({ db, endpoints: [{ id: "a", url: "https://u:p@example.com/h", secret }] })).toThrow(
      /user or password/,
    );
    expect(() => webhookQueue({ db, endpoints: [{ id: "a", url: "ftp://example.com/h", secret }] })).toThrow(
      ValidationError,
    );
  });

  it("its errors are CreditErrors with their own codes (docs/concepts.md, Errors)", () => {
    const refused = new WebhookAddressError("hooks.example resolved to 10.0.0.1");
    expect(refused).toBeInstanceOf(CreditError);
    expect([refused.name, refused.code, refused.status]).toEqual([
      "WebhookAddressError",
      "WEBHOOK_ADDRESS_REFUSED",
      422,
    ]);
    const failed = new WebhookDeliveryError("webhook e1: answered 500", 30_000, false, 500);
    expect(failed).toBeInstanceOf(CreditError);
    expect([failed.name, failed.code, failed.status]).toEqual(["WebhookDeliveryError", "WEBHOOK_DELIVERY_FAILED", 502]);
    expect([failed.retryAfterMs, failed.final, failed.endpointStatus]).toEqual([30_000, false, 500]);
  });

  it("a malformed allowNetworks entry or signing secret is a ConfigurationError that names it", () => {
    const db = new InMemoryDbManager();
    const endpoints = [{ id: "a", url: "https://example.com/h", secret: generateWebhookSecret() }];
    const configuration = (message: string) =>
      expect.objectContaining({ name: "ConfigurationError", message: expect.stringContaining(message) });
    expect(() => webhookQueue({ db, endpoints, allowNetworks: ["10.0.0.0/33"] })).toThrow(
      configuration('"10.0.0.0/33" has a bad prefix length'),
    );
    expect(() => webhookQueue({ db, endpoints, allowNetworks: ["intranet"] })).toThrow(
      configuration('"intranet" is not an IP address or CIDR network'),
    );
    expect(() => signWebhook("whsec_short", "id", 0, "{}")).toThrow(configuration("a webhook secret is whsec_"));
  });

  it("refuses loopback, link-local, [::1], a name resolving to a private address and a redirect: nothing sent", async () => {
    const secret = generateWebhookSecret();
    const target = await receiver();
    const redirect = await receiver((_r, res) =>
      res.writeHead(302, { location: "http://169.254.169.254/latest/meta-data" }).end(),
    );
    const lookup: Lookup = (hostname, options, callback) => {
      // "rebind.example" resolves to a public address and to the loopback receiver.
      if (hostname === "rebind.example")
        callback(null, [
          { address: "93.184.215.14", family: 4 },
          { address: "127.0.0.1", family: 4 },
        ]);
      else callback(null, [{ address: "127.0.0.1", family: 4 }]);
      void options;
    };
    const endpoints: WebhookEndpoint[] = [
      { id: "loopback", url: target.url, secret, development: true },
      { id: "metadata", url: "http://169.254.169.254/latest/meta-data", secret, development: true },
      { id: "v6", url: `http://[::1]:${target.port}/hook`, secret, development: true },
      { id: "mapped", url: `http://[::ffff:127.0.0.1]:${target.port}/hook`, secret, development: true },
      { id: "named", url: `http://internal.example:${target.port}/hook`, secret, development: true },
      { id: "rebind", url: `http://rebind.example:${target.port}/hook`, secret, development: true },
    ];
    const db = new InMemoryDbManager();
    const queue = webhookQueue({ db, endpoints, lookup, retrySchedule: [10_000] }); // no allowNetworks: the default
    const m = await createCreditManager({ db, queue, domainEvents: true });
    managers.push(m);
    await m.credits.addCredits("u", 5);
    await m.notifications.dispatchPending();
    await m.notifications.dispatchPending();
    expect(target.got).toHaveLength(0);
    for (const e of endpoints) {
      const [row] = await db.listNotifications(deliveryUserId(e.id, "u"), { limit: 10 });
      expect(row?.status, e.id).toBe("pending");
      expect(row?.lastError, e.id).toMatch(/refused: .*(private, loopback, link-local or reserved)/);
    }

    // The same receivers, allowed: a redirect is an answer, not followed.
    const allowed = webhookQueue({
      db: new InMemoryDbManager(),
      endpoints: [{ id: "redirect", url: redirect.url, secret, development: true }],
      allowNetworks: local,
      retrySchedule: [10_000],
    });
    const m2 = await createCreditManager({ db: new InMemoryDbManager(), queue: allowed, domainEvents: true });
    managers.push(m2);
    const message = {
      id: "0evt",
      userId: "u",
      type: "credits_added" as const,
      payload: {},
      createdAt: new Date().toISOString(),
      attempt: 1,
    };
    await allowed.publish(message);
    const delivery = {
      ...message,
      userId: deliveryUserId("redirect", "u"),
      payload: { webhook: { endpointId: "redirect", userId: "u" }, event: { id: "0evt" } },
    };
    await expect(allowed.publish(delivery)).rejects.toThrow(/answered 302 \(redirects are not followed\)/);
    expect(redirect.got).toHaveLength(1);
    await allowed.close();
  });
});
