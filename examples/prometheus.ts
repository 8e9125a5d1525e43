/**
 * Prometheus metrics for credit-management through OpenTelemetry (docs/observability.md):
 * `instrumentCreditManagement` records the library's metrics into a MeterProvider whose reader is
 * OpenTelemetry's Prometheus exporter, which serves them at http://127.0.0.1:9464/metrics.
 *
 *   npm install @opentelemetry/api @opentelemetry/sdk-metrics @opentelemetry/exporter-prometheus
 *   npx tsx examples/prometheus.ts            (PORT=9464 by default; Ctrl-C stops it)
 *
 * As a demo it makes a few known operations on the in-memory store first — 3 deductions, one
 * refused for lack of credits, a hold committed — so the scrape has something to show.
 */
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import { createCreditManager, InsufficientCreditsError } from "credit-management";
import { instrumentCreditManagement } from "credit-management/otel";

const port = Number(process.env.PORT || 9464);
const exporter = new PrometheusExporter({ host: "127.0.0.1", port, preventServerStart: true });
const meterProvider = new MeterProvider({ readers: [exporter] });

const manager = await createCreditManager();
// Once per process: it sees every manager; `manager` gives the gauges (holds, outbox) a store to read.
const instrumentation = instrumentCreditManagement({ meterProvider, manager });

const { credits } = manager;
await credits.addCredits("demo-user", 100);
for (let i = 0; i < 3; i++) await credits.deductCredits("demo-user", 10);
try {
  await credits.deductCredits("demo-user", 1_000);
} catch (error) {
  if (!(error instanceof InsufficientCreditsError)) throw error;
}
const hold = await credits.reserveCredits("demo-user", 20);
await credits.commitReservedCredits(hold.id, { amount: 5 });
await credits.reserveCredits("demo-user", 7); // left active: the holds gauge shows it

await exporter.startServer();
console.log(`metrics at http://127.0.0.1:${port}/metrics`);
// The exporter's server does not keep a process alive (a real service's own server does).
const alive = setInterval(() => undefined, 60_000);

const stop = async () => {
  clearInterval(alive);
  instrumentation.shutdown();
  await meterProvider.shutdown(); // stops the exporter's server too
  await manager.close();
};
process.once("SIGTERM", () => void stop());
process.once("SIGINT", () => void stop());
