import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { createAuthenticator } from "../src/serve/auth.js";
import { newKey } from "../src/serve/keys.js";
import { memoryKeyStore } from "./memory-key-store.js";
import { METRICS_PACKAGES, serveApp } from "../src/serve/server.js";
import { serveSettings } from "../src/serve/settings.js";

/**
 * `serve` where the OpenTelemetry packages are not installed (docs/service.md, "Run it"): /metrics
 * says metrics are off and which packages turn them on, instead of "No route".
 */
describe("serve without the OpenTelemetry packages", () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise((resolve) => server?.close(resolve));
    server = undefined;
  });

  async function start(env: Record<string, string>) {
    const settings = serveSettings({}, env);
    const keys = memoryKeyStore();
    const admin = newKey("admin", null, "ops");
    await keys.insert(admin.record);
    const auth = await createAuthenticator(settings, keys, 0);
    // metrics null: what startMetrics answers when the packages' import fails.
    const app = serveApp(await createCreditManager(), settings, auth, pino({ level: "silent" }), null);
    server = createServer(app.listener);
    await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return (path: string) => fetch(base + path, { headers: { authorization: `Bearer ${admin.key}` } });
  }

  it("/metrics answers 503 naming the packages that turn metrics on", async () => {
    const get = await start({});
    const r = await get("/metrics");
    expect(r.status).toBe(503);
    const body = (await r.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("METRICS_OFF");
    for (const name of METRICS_PACKAGES.split(" ")) expect(body.error.message).toContain(name);
    expect(body.error.message).toContain("npm install");
    expect((await get("/health/live")).status).toBe(200);
  });

  it("with CREDIT_METRICS=off, /metrics is no route (the operator turned it off)", async () => {
    const get = await start({ CREDIT_METRICS: "off" });
    expect((await get("/metrics")).status).toBe(404);
  });
});
