import { describe, expect, it } from "vitest";
import { ConfigurationError, CreditService, InMemoryDbManager, ValidationError } from "../src/index.js";
import { generateMongoScript, generateMongoSchema, generateSql, generateUpgradeSql } from "../src/schema/public.js";
import { runCli } from "../src/cli/run.js";

// One error class per kind of mistake (docs/concepts.md, "Errors"): a bad option is a
// ConfigurationError wherever it is given, bad input to a call a ValidationError.
describe("one error class per kind of mistake", () => {
  it("bad options of the schema generators are a ConfigurationError", () => {
    expect(() => generateSql({ dialect: "postgres", prefix: "bad-prefix" })).toThrow(ConfigurationError);
    expect(() => generateSql({ dialect: "postgres", schema: "1st" })).toThrow(ConfigurationError);
    expect(() => generateSql({ dialect: "mysql", distributed: true })).toThrow(ConfigurationError);
    expect(() => generateSql({ dialect: "sqlite", partitioned: "day" })).toThrow(ConfigurationError);
    expect(() => generateSql({ dialect: "postgres", prefix: "p".repeat(70) })).toThrow(ConfigurationError);
    expect(() => generateUpgradeSql({ dialect: "postgres", fromVersion: 0 })).toThrow(ConfigurationError);
    expect(() => generateMongoScript({ fromVersion: 1.5 })).toThrow(ConfigurationError);
    expect(() => generateMongoSchema({ prefix: "a b" })).toThrow(ConfigurationError);
  });

  it("bad options of a service are a ConfigurationError, bad input to its calls a ValidationError", async () => {
    const db = new InMemoryDbManager();
    expect(() => new CreditService({ db, trial: { amount: 0 } })).toThrow(ConfigurationError);
    const credits = new CreditService({ db });
    await expect(credits.deductCredits("u", -1)).rejects.toBeInstanceOf(ValidationError);
  });

  it("a bad flag of the CLI exits 2 with its message, through the same class", async () => {
    let err = "";
    const io = { stdout: () => undefined, stderr: (t: string) => void (err += t) };
    expect(await runCli(["schema", "--prefix", "bad-prefix"], io)).toBe(2);
    expect(err).toMatch(/prefix "bad-prefix" may only contain/);
  });
});
