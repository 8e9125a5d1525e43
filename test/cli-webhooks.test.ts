import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../src/cli/run.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager } from "../src/index.js";

async function cli(args: string[], env: Record<string, string>) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(args, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) }, { env });
  return { code, stdout, stderr };
}

let dir: string;
let server: Server;
let url: string;
const got: { headers: IncomingHttpHeaders; body: string }[] = [];
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "cm-webhooks-cli-"));
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      got.push({ headers: req.headers, body });
      res.writeHead(200).end("ok");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

describe("credit-management webhooks", () => {
  it("add, list, rotate-secret, test, disable, remove; the worker (CREDIT_WEBHOOKS=on) delivers signed events", async () => {
    const file = join(dir, "store.sqlite");
    const env = { CREDIT_SQLITE_PATH: file };
    const local = { ...env, CREDIT_WEBHOOK_ALLOW_NETWORKS: "127.0.0.0/8" };

    const plain = await cli(["webhooks", "add", url], env);
    expect(plain.code).toBe(2);
    expect(plain.stderr).toMatch(/https:\/\/ \(http:\/\/ only for an endpoint marked development\)/);
    expect((await cli(["webhooks", "add", url, "--development", "--types", "nope"], env)).code).toBe(2);

    const added = await cli(
      ["webhooks", "add", url, "--development", "--types", "credits_added,credits_deducted"],
      env,
    );
    expect(added.code).toBe(0);
    const [id, secret] = added.stdout.trim().split(" ") as [string, string];
    expect(id).toMatch(/^we_[0-9a-f]{16}$/);
    expect(secret).toMatch(/^whsec_/);
    const list = await cli(["webhooks", "list", "--json"], env);
    expect(JSON.parse(list.stdout)).toMatchObject({
      id,
      url,
      enabled: true,
      types: ["credits_added", "credits_deducted"],
      secrets: 1,
    });
    expect(list.stdout).not.toContain(secret);

    // test: refused without the loopback allowance, then sent and verified.
    const refused = await cli(["webhooks", "test", id], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/loopback/);
    expect(got).toHaveLength(0);
    const rotated = await cli(["webhooks", "rotate-secret", id], env);
    const newSecret = rotated.stdout.trim();
    const tested = await cli(["webhooks", "test", id], local);
    expect(tested.code, tested.stderr).toBe(0);
    expect(tested.stdout).toMatch(/answered 200/);
    const [test] = got.splice(0);
    for (const s of [secret, newSecret])
      expect(new Webhook(s).verify(test!.body, test!.headers as Record<string, string>)).toMatchObject({
        type: "webhook_test",
      });
    expect((await cli(["webhooks", "rotate-secret", id, "--drop-old"], env)).code).toBe(0);

    // The worker delivers what the services recorded.
    const db = new SqliteDbManager({ filename: file });
    const m = await createCreditManager({ db, domainEvents: true, notifications: {} });
    await m.credits.addCredits("u1", 10);
    await m.credits.deductCredits("u1", 3);
    const events = await m.notifications.list("u1");
    await m.close();
    const worker = await cli(["worker", "--once", "--jobs-every", "0", "--reminders-every", "0"], {
      ...local,
      CREDIT_WEBHOOKS: "on",
      CREDIT_LOG_LEVEL: "silent",
    });
    expect(worker.code, worker.stdout + worker.stderr).toBe(0);
    expect(got.map((r) => r.headers["webhook-id"])).toEqual(events.map((e) => e.id));
    for (const r of got)
      expect(() => new Webhook(newSecret).verify(r.body, r.headers as Record<string, string>)).not.toThrow();

    expect((await cli(["webhooks", "disable", id], env)).code).toBe(0);
    expect((await cli(["webhooks", "list"], env)).stdout).toMatch(/disabled \(by hand\)/);
    expect((await cli(["webhooks", "remove", id], env)).code).toBe(0);
    expect((await cli(["webhooks", "remove", id], env)).code).toBe(1);
    expect((await cli(["webhooks", "list"], env)).stdout).toBe("");
  });
});
