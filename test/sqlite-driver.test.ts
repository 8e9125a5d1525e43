import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { ConfigurationError } from "../src/core/errors.js";
import { BunSqliteDatabase, openBunSqlite, type BunDatabase } from "../src/db/sqlite/bun.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { CreditService } from "../src/credit-service.js";

// Which driver `credit-management/sqlite` opens its file with (docs/runtimes.md, "SQLite on Bun").
// The bun:sqlite store itself runs under Bun in CI (.ci/runtimes/check.sh bun: the contract suite,
// and a file moving between bun:sqlite and better-sqlite3); here, on Node.js, the choice, its
// refusals, and the adapter over a database that answers as bun:sqlite does.

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-driver-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A better-sqlite3 database that answers as a bun:sqlite one: `get()` null for no row, no
 * `pragma()`, statements to finalize (`open`: those not finalized when it was closed).
 */
function bunLike(file: string): BunDatabase & { raw: Database.Database; prepared: number; open: number | null } {
  const raw = new Database(file);
  let live = 0;
  const db = {
    raw,
    prepared: 0,
    open: null as number | null,
    prepare(sql: string) {
      const s = raw.prepare(sql);
      db.prepared++;
      live++;
      let finalized = false;
      return {
        all: (...p: unknown[]) => (s.reader ? s.all(...p) : (s.run(...p), [])),
        get: (...p: unknown[]) => (s.reader ? (s.get(...p) ?? null) : (s.run(...p), null)),
        run: (...p: unknown[]) => s.run(...p),
        finalize: () => {
          if (!finalized) live--;
          finalized = true;
        },
      };
    },
    exec: (sql: string) => raw.exec(sql),
    transaction: <F extends () => unknown>(fn: F) => raw.transaction(fn),
    get inTransaction() {
      return raw.inTransaction;
    },
    close: () => {
      db.open = live;
      raw.close();
    },
  };
  return db;
}

describe("SqliteDbManager's driver", () => {
  const g = globalThis as { Bun?: unknown };
  afterEach(() => {
    delete g.Bun;
  });

  it("is better-sqlite3 on Node.js when none is asked for, and null for a database handed in", () => {
    expect(new SqliteDbManager({ filename: join(dir, "a.db") }).driver).toBe("better-sqlite3");
    expect(new SqliteDbManager().driver).toBe("better-sqlite3");
    expect(new SqliteDbManager({ filename: join(dir, "a.db"), driver: "better-sqlite3" }).driver).toBe(
      "better-sqlite3",
    );
    const raw = new Database(":memory:");
    expect(new SqliteDbManager({ database: raw }).driver).toBeNull();
    raw.close();
  });

  it("is bun:sqlite under Bun when none is asked for; better-sqlite3 when asked for", () => {
    g.Bun = { version: "test" };
    expect(new SqliteDbManager({ filename: join(dir, "b.db") }).driver).toBe("bun:sqlite");
    expect(new SqliteDbManager({ filename: join(dir, "b.db"), driver: "better-sqlite3" }).driver).toBe(
      "better-sqlite3",
    );
  });

  it("refuses a driver it does not know, and bun:sqlite outside Bun, with a ConfigurationError", () => {
    for (const driver of ["sqlite3", "", 3, null]) {
      const make = () => new SqliteDbManager({ filename: join(dir, "c.db"), driver: driver as never });
      expect(make).toThrow(ConfigurationError);
      expect(make).toThrow(/`driver` must be "better-sqlite3" or "bun:sqlite"/);
    }
    const bun = () => new SqliteDbManager({ filename: join(dir, "c.db"), driver: "bun:sqlite" });
    expect(bun).toThrow(ConfigurationError);
    expect(bun).toThrow(/driver "bun:sqlite" is Bun's own SQLite and cannot be loaded on Node\.js v/);
  });

  it("refuses a driver with a database handed in", () => {
    const raw = new Database(":memory:");
    const make = () => new SqliteDbManager({ database: raw, driver: "better-sqlite3" });
    expect(make).toThrow(ConfigurationError);
    expect(make).toThrow(/pass `driver` or `database`, not both/);
    raw.close();
  });

  it("says bun:sqlite cannot be loaded, as a ConfigurationError, when it is chosen where it is not", async () => {
    g.Bun = { version: "test" }; // chosen as under Bun; the import then fails on Node.js
    const db = new SqliteDbManager({ filename: join(dir, "d.db") });
    delete g.Bun;
    const error = await db.init().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as Error).message).toMatch(/bun:sqlite cannot be loaded on Node\.js v/);
  });
});

describe("the built package on Node.js", () => {
  // bun:sqlite is imported by a chunk of its own, only when the bun:sqlite driver opens a file: on
  // Node.js an import of it fails (ERR_UNSUPPORTED_ESM_URL_SCHEME), so a store that works proves
  // it was not loaded, by the ESM build or the CommonJS one.
  it("imports and requires credit-management/sqlite and runs a store without loading bun:sqlite", async () => {
    const root = fileURLToPath(new URL("..", import.meta.url));
    const body = (m: string) =>
      `const db = new m.SqliteDbManager(); await db.init(); ` +
      `await new (${m}).CreditService({ db }).addCredits("u", 5); console.log(db.driver, (await db.getAccount("u")).balance); await db.close();`;
    const esm = `const m = await import("./dist/sqlite/index.js"); const c = await import("./dist/index.js"); ${body("c")}`;
    const cjs = `(async () => { const m = require("./dist/sqlite/index.cjs"); const c = require("./dist/index.cjs"); ${body("c")} })().catch((e) => { console.error(e); process.exit(1); });`;
    for (const [flag, code] of [
      ["--input-type=module", esm],
      ["--input-type=commonjs", cjs],
    ] as const) {
      const { stdout } = await promisify(execFile)(process.execPath, [flag, "-e", code], { cwd: root });
      expect(stdout.trim()).toBe("better-sqlite3 5");
    }
  }, 30_000);
});

describe("the bun:sqlite adapter (BunSqliteDatabase)", () => {
  it("runs the store over a database that answers as bun:sqlite does: WAL, no row, conflicts, the audit", async () => {
    const file = join(dir, "adapter.db");
    const inner = bunLike(file);
    const db = new SqliteDbManager({ database: new BunSqliteDatabase(inner) });
    await db.init(); // "no schema_version table" is a null get(): read as no row
    expect(inner.raw.pragma("journal_mode", { simple: true })).toBe("wal");
    const credits = new CreditService({ db });
    await credits.addCredits("u", 30, { idempotencyKey: "k" });
    await credits.addCredits("u", 30, { idempotencyKey: "k" }); // the same grant, not a second one
    await credits.deductCredits("u", 4);
    const hold = await credits.reserveCredits("u", 10);
    await credits.commitReservedCredits(hold.id, { amount: 6 });
    expect(await credits.getUserCreditsInfo("u")).toMatchObject({ balance: 20, reserved: 0 });
    expect(await db.getAccount("nobody")).toBeNull();
    expect((await credits.audit("u")).problems).toEqual([]);
    expect(await db.ping()).toMatchObject({ schemaVersion: expect.any(Number) });
    await db.close();
    inner.close();
  });

  it("finalizes every statement it prepared before it closes (bun:sqlite keeps the file open until then)", () => {
    const inner = bunLike(":memory:");
    const db = new BunSqliteDatabase(inner);
    db.exec("CREATE TABLE t (x)");
    db.prepare("INSERT INTO t VALUES (?)").run(1);
    db.prepare("SELECT x FROM t").all();
    db.pragma("journal_mode");
    expect(inner.prepared).toBe(3);
    db.close();
    expect(inner.open).toBe(0);
  });

  it("gives pragma() as better-sqlite3 does: the rows, or with simple the first value", () => {
    const inner = bunLike(":memory:");
    const db = new BunSqliteDatabase(inner);
    expect(db.pragma("user_version")).toEqual([{ user_version: 0 }]);
    db.pragma("user_version = 7");
    expect(db.pragma("user_version", { simple: true })).toBe(7);
    expect(db.prepare("SELECT 1 AS one WHERE 0").get()).toBeUndefined();
    db.close();
  });

  it("opens with bun:sqlite's Database: created, or (fileMustExist) read-write and never created", () => {
    const calls: unknown[] = [];
    const Fake = class {
      constructor(...args: unknown[]) {
        calls.push(args);
      }
    } as never;
    expect(openBunSqlite(Fake, "x.db")).toBeInstanceOf(BunSqliteDatabase);
    openBunSqlite(Fake, "y.db", { fileMustExist: true });
    expect(calls).toEqual([
      ["x.db", { readwrite: true, create: true }],
      ["y.db", { readwrite: true, create: false }],
    ]);
  });
});
