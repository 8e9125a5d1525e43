/**
 * A vitest reporter that ends a run with one block saying which tests were skipped and why: each
 * file's skipped tests are put under the services and tools the file reads that this machine does
 * not have — a database suite's environment variable that is unset, or Chromium missing at
 * /usr/bin/chromium — with how to get each (CONTRIBUTING.md, "Tests"). A file whose skipped tests
 * have another reason (a platform, a tool) is named with its count: the condition is in the file.
 *
 * The files a test file imports from test/ are read too (one level): a suite may take its URL from
 * a fixture. Nothing is printed when nothing was skipped.
 *
 * Under `CI` (CI=true: .ci/run, the hosted workflow) a server is not optional: a file whose tests
 * were skipped because a server's URL is unset fails the run, naming the variable and the files
 * (a green CI without its servers would have tested none of their stores).
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, relative, resolve } from "node:path";
import type { Reporter, TestModule, Vitest } from "vitest/node";

interface Requirement {
  /** What a file names in its source when it needs this. */
  readonly pattern: RegExp;
  /** Whether this machine lacks it. */
  readonly missing: () => boolean;
  /** The line printed for it: what it is and how to get it. */
  readonly line: string;
  /** A server (its URL from the environment): under CI, a file skipped for want of it fails the run. */
  readonly server?: true;
}

/**
 * In the title of a contract case that a variant of a store leaves to the store's main run
 * (test/fixtures/contract-variants.ts): counted apart, as no lack of this machine's.
 */
export const ONCE_MARK = "(once per store, not in this variant";

const unset = (name: string) => () => (process.env[name] ?? "") === "";

const REQUIREMENTS: readonly Requirement[] = [
  {
    pattern: /CREDIT_PG_URL/,
    missing: unset("CREDIT_PG_URL"),
    server: true,
    line: "CREDIT_PG_URL (PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/test)",
  },
  {
    pattern: /CREDIT_MONGO_URI/,
    missing: unset("CREDIT_MONGO_URI"),
    server: true,
    line: "CREDIT_MONGO_URI (a MongoDB replica set; one node started with --replSet is enough, e.g. mongodb://127.0.0.1:27017/?replicaSet=rs0)",
  },
  {
    pattern: /CREDIT_REDIS_URL/,
    missing: unset("CREDIT_REDIS_URL"),
    server: true,
    line: "CREDIT_REDIS_URL (Redis, e.g. redis://127.0.0.1:6379)",
  },
  {
    pattern: /CREDIT_MYSQL_URL/,
    missing: unset("CREDIT_MYSQL_URL"),
    server: true,
    line: "CREDIT_MYSQL_URL (MySQL or MariaDB, e.g. mysql://root@127.0.0.1:3306/test)",
  },
  {
    pattern: /CREDIT_NATS_URL/,
    missing: unset("CREDIT_NATS_URL"),
    server: true,
    line: "CREDIT_NATS_URL (NATS with JetStream, nats-server -js; e.g. nats://127.0.0.1:4222)",
  },
  {
    pattern: /CREDIT_CITUS_URL/,
    missing: unset("CREDIT_CITUS_URL"),
    server: true,
    line: "CREDIT_CITUS_URL (a Citus coordinator with two workers, e.g. postgres://postgres@127.0.0.1:55440/test)",
  },
  {
    pattern: /\/usr\/bin\/chromium/,
    missing: () => !existsSync("/usr/bin/chromium"),
    line: "Chromium at /usr/bin/chromium (Debian and Ubuntu: apt-get install chromium)",
  },
];

/** The file's source and that of the files it imports from the repository's test/ folder. */
function sources(file: string): string {
  const text = readFileSync(file, "utf8");
  const imported = [...text.matchAll(/from "(\.{1,2}\/[^"]+)"/g)]
    .map((m) => resolve(dirname(file), (m[1] as string).replace(/\.js$/, ".ts")))
    .filter((path) => path.includes("/test/") && existsSync(path));
  return [text, ...imported.map((path) => readFileSync(path, "utf8"))].join("\n");
}

export default class SkipSummary implements Reporter {
  private vitest: Vitest | undefined;

  onInit(vitest: Vitest): void {
    this.vitest = vitest;
  }

  async onTestRunEnd(modules: ReadonlyArray<TestModule>): Promise<void> {
    // The default reporter prints its summary in the same round of hooks, synchronously: this
    // block comes after it, as the run's last words.
    await new Promise((done) => setImmediate(done));
    const root = this.vitest?.config.root ?? process.cwd();
    let total = 0;
    let skipped = 0;
    let once = 0;
    /** Reason (the missing requirements' lines, joined) → file → skipped tests. */
    const byReason = new Map<string, Map<string, number>>();
    /** Under CI: each missing server → the files skipped for want of it. */
    const serversMissing = new Map<string, string[]>();
    for (const module of modules) {
      let count = 0;
      for (const test of module.children.allTests()) {
        // A case a contract variant leaves to its store's main run: no lack of this machine's.
        if (test.name.includes(ONCE_MARK)) {
          once += 1;
          continue;
        }
        total += 1;
        if (test.result().state === "skipped") count += 1;
      }
      if (count === 0) continue;
      skipped += count;
      const file = module.moduleId;
      const text = existsSync(file) ? sources(file) : "";
      const lacking = REQUIREMENTS.filter((r) => r.pattern.test(text) && r.missing());
      const missing = lacking.map((r) => r.line);
      for (const r of lacking.filter((r) => r.server)) {
        serversMissing.set(r.line, [...(serversMissing.get(r.line) ?? []), relative(root, file)]);
      }
      const reason = missing.length > 0 ? missing.join("\n      and ") : "";
      const files = byReason.get(reason) ?? new Map<string, number>();
      files.set(relative(root, file), count);
      byReason.set(reason, files);
    }
    if (once > 0) {
      this.vitest?.logger.log(
        `\n${once} contract cases not run by a variant of a store: each runs in the store's main run (test/fixtures/contract-variants.ts).`,
      );
    }
    if (skipped === 0) return;
    const filtered = this.vitest?.config.testNamePattern !== undefined;
    const lines = [
      "",
      `Skipped: ${skipped.toLocaleString("en-US")} of ${total.toLocaleString("en-US")} tests${filtered ? " (with those -t left out)" : ""}. To run them, give the run what it lacks (CONTRIBUTING.md, "Tests"; docker compose -f compose.test.yaml up -d --wait starts every server):`,
    ];
    const reasons = [...byReason.keys()].sort((a, b) => (a === "" ? 1 : b === "" ? -1 : a.localeCompare(b)));
    for (const reason of reasons) {
      const files = byReason.get(reason) as Map<string, number>;
      const count = [...files.values()].reduce((a, b) => a + b, 0);
      const names = [...files.keys()].sort();
      const shown =
        names.length > 4 ? `${names.slice(0, 4).join(", ")} and ${names.length - 4} more` : names.join(", ");
      lines.push(
        reason === ""
          ? `  ${count} for a condition in their file (a platform or a tool): ${names.map((n) => `${n} (${files.get(n)})`).join(", ")}`
          : `  ${count} without ${reason}\n      in ${shown}`,
      );
    }
    this.vitest?.logger.log(lines.join("\n"));
    if (process.env.CI && serversMissing.size > 0) {
      const failed = [...serversMissing].map(([line, files]) => `  ${line}\n      for ${files.sort().join(", ")}`);
      this.vitest?.logger.error(
        [
          "",
          `CI is set, and these suites could not run for want of their server: set each URL (.ci/run and .github/workflows/ci.yml do; CONTRIBUTING.md, "Tests"). The run fails.`,
          ...failed,
        ].join("\n"),
      );
      process.exitCode = 1;
    }
  }
}
