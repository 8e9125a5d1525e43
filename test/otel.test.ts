import { MeterProvider, MetricReader, type DataPoint, type Histogram } from "@opentelemetry/sdk-metrics";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager, InsufficientCreditsError, recordUsage } from "../src/index.js";
import { instrumentCreditManagement, type CreditInstrumentation } from "../src/otel/index.js";

class TestReader extends MetricReader {
  protected async onShutdown(): Promise<void> {}
  protected async onForceFlush(): Promise<void> {}
}

/** The data points of every metric, by name. */
async function collect(reader: TestReader): Promise<Map<string, DataPoint<unknown>[]>> {
  const { resourceMetrics } = await reader.collect();
  const out = new Map<string, DataPoint<unknown>[]>();
  for (const scope of resourceMetrics.scopeMetrics)
    for (const m of scope.metrics) out.set(m.descriptor.name, m.dataPoints as DataPoint<unknown>[]);
  return out;
}

const value = (points: DataPoint<unknown>[] | undefined, attributes: Record<string, unknown>) =>
  points?.find((p) => Object.entries(attributes).every(([k, v]) => p.attributes[k] === v))?.value;

const instrumentations: CreditInstrumentation[] = [];
afterEach(() => {
  for (const i of instrumentations.splice(0)) i.shutdown();
});

function setup() {
  const reader = new TestReader();
  const meterProvider = new MeterProvider({ readers: [reader] });
  const spans = new InMemorySpanExporter();
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] });
  return { reader, meterProvider, spans, tracerProvider };
}

describe("credit-management/otel (docs/observability.md)", () => {
  it("counts operations by outcome, refusals, holds and metering; reads the store's gauges", async () => {
    const { reader, meterProvider, tracerProvider } = setup();
    const manager = await createCreditManager();
    instrumentations.push(instrumentCreditManagement({ meterProvider, tracerProvider, manager, statsIntervalMs: 0 }));
    const { credits } = manager;
    await credits.addCredits("u1", 100);
    for (let i = 0; i < 3; i++) await credits.deductCredits("u1", 10);
    await expect(credits.deductCredits("u1", 1000)).rejects.toBeInstanceOf(InsufficientCreditsError);
    const hold = await credits.reserveCredits("u1", 20);
    await credits.releaseReservedCredits(hold.id);
    await credits.reserveCredits("u1", 15);
    await credits.meter("u1", { estimate: 10 }, () => {
      recordUsage({ amount: 4 });
    });

    const m = await collect(reader);
    const ops = m.get("credit_management.operations");
    expect(value(ops, { operation: "deductCredits", outcome: "ok", store: "memory" })).toBe(3);
    expect(value(ops, { operation: "deductCredits", outcome: "refused" })).toBe(1);
    expect(
      value(m.get("credit_management.refusals"), { operation: "deductCredits", reason: "insufficient_credits" }),
    ).toBe(1);
    expect(value(m.get("credit_management.holds"), { action: "reserved" })).toBe(3);
    expect(value(m.get("credit_management.holds"), { action: "released" })).toBe(1);
    expect(value(m.get("credit_management.holds"), { action: "committed" })).toBe(1);
    expect(value(m.get("credit_management.metering.calls"), { outcome: "committed", reason: "none" })).toBe(1);
    expect(value(m.get("credit_management.metering.credits"), { kind: "charged" })).toBe(4);
    expect(value(m.get("credit_management.metering.credits"), { kind: "released" })).toBe(6);
    const duration = value(m.get("credit_management.operation.duration"), {
      operation: "deductCredits",
      outcome: "ok",
    }) as Histogram;
    expect(duration.count).toBe(3);
    // Gauges read from the store: one hold of 15 is still active.
    expect(value(m.get("credit_management.holds.active"), {})).toBe(1);
    expect(value(m.get("credit_management.holds.credits"), {})).toBe(15);
    expect(value(m.get("credit_management.outbox.pending"), {})).toBe(0);
    await manager.close();
  });

  it("keeps one series per (operation, outcome, store), counts and durations alike, across stores", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cm-otel-series-"));
    try {
      const { reader, meterProvider } = setup();
      instrumentations.push(instrumentCreditManagement({ meterProvider }));
      const memory = await createCreditManager();
      const sqlite = await createCreditManager({ db: new SqliteDbManager({ filename: join(dir, "series.db") }) });
      await memory.credits.addCredits("a", 10);
      await sqlite.credits.addCredits("a", 10);
      for (let i = 0; i < 4; i++) await memory.credits.deductCredits("a", 1);
      for (let i = 0; i < 2; i++) await sqlite.credits.deductCredits("a", 1);
      await expect(sqlite.credits.deductCredits("a", 100)).rejects.toBeInstanceOf(InsufficientCreditsError);
      const m = await collect(reader);
      const ops = m.get("credit_management.operations") ?? [];
      const deducts = ops.filter((p) => p.attributes.operation === "deductCredits");
      expect(deducts.map((p) => [p.attributes.store, p.attributes.outcome, p.value]).sort()).toEqual([
        ["memory", "ok", 4],
        ["sqlite", "ok", 2],
        ["sqlite", "refused", 1],
      ]);
      const durations = m.get("credit_management.operation.duration") ?? [];
      const count = (store: string, outcome: string) =>
        (value(durations, { operation: "deductCredits", store, outcome }) as Histogram | undefined)?.count;
      expect([count("memory", "ok"), count("sqlite", "ok"), count("sqlite", "refused")]).toEqual([4, 2, 1]);
      await memory.close();
      await sqlite.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("reads the store gauges of a SQLite store (its stats())", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cm-otel-sqlite-"));
    try {
      const { reader, meterProvider } = setup();
      const manager = await createCreditManager({
        db: new SqliteDbManager({ filename: join(dir, "otel.db") }),
        notifications: { lowCredits: 50 },
      });
      instrumentations.push(instrumentCreditManagement({ meterProvider, manager, statsIntervalMs: 0 }));
      await manager.credits.addCredits("q", 100);
      await manager.credits.reserveCredits("q", 15);
      await manager.credits.deductCredits("q", 40); // below 50: a low_credits row waits in the outbox
      const m = await collect(reader);
      expect(value(m.get("credit_management.holds.active"), {})).toBe(1);
      expect(value(m.get("credit_management.holds.credits"), {})).toBe(15);
      expect(value(m.get("credit_management.outbox.pending"), {})).toBe(1);
      expect(value(m.get("credit_management.outbox.failed"), {})).toBe(0);
      expect(value(m.get("credit_management.outbox.oldest_age"), {})).toBeGreaterThanOrEqual(0);
      await manager.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("spans around units of work, job runs and dispatch rounds, failed ones marked", async () => {
    const { meterProvider, spans, tracerProvider } = setup();
    const manager = await createCreditManager({ notifications: { lowCredits: 10 } });
    instrumentations.push(instrumentCreditManagement({ meterProvider, tracerProvider }));
    await manager.credits.addCredits("u1", 20);
    await expect(manager.credits.commitReservedCredits("00000000-0000-4000-8000-000000000000")).rejects.toMatchObject({
      code: "NOT_FOUND",
    });
    await manager.expiration.runAll();
    const names = spans.getFinishedSpans().map((s) => s.name);
    expect(names).toEqual(
      expect.arrayContaining([
        "credit-management addCredits",
        "credit-management job releaseExpiredHolds",
        "credit-management job renewDueSubscriptions",
        "credit-management job expireDueGrants",
        "credit-management dispatch",
      ]),
    );
    const add = spans.getFinishedSpans().find((s) => s.name === "credit-management addCredits");
    expect(add?.attributes).toMatchObject({
      "credit_management.operation": "addCredits",
      "credit_management.user_id": "u1",
      "credit_management.outcome": "ok",
      "credit_management.attempts": 1,
    });
    expect(add?.status.code).toBe(0);
    await manager.close();
  });

  it("records nothing once shut down, and refuses bad options with a ConfigurationError", async () => {
    const { reader, meterProvider, tracerProvider, spans } = setup();
    const instrumentation = instrumentCreditManagement({ meterProvider, tracerProvider });
    const manager = await createCreditManager();
    await manager.credits.addCredits("u1", 1);
    instrumentation.shutdown();
    instrumentation.shutdown();
    await manager.credits.addCredits("u1", 1);
    expect(value((await collect(reader)).get("credit_management.operations"), { operation: "addCredits" })).toBe(1);
    expect(spans.getFinishedSpans()).toHaveLength(1);
    expect(() => instrumentCreditManagement({ meterProvider: {} as never })).toThrow(
      expect.objectContaining({ code: "CONFIGURATION_ERROR" }),
    );
    expect(() => instrumentCreditManagement({ statsIntervalMs: -1 })).toThrow(
      expect.objectContaining({ code: "CONFIGURATION_ERROR" }),
    );
    await manager.close();
  });
});
