import { describe, expect, it } from "vitest";
import { ConfigurationError } from "../src/core/errors.js";
import { driverMismatch, installedDriverVersion, refuseDriverForNode } from "../src/db/sqlite/driver-version.js";

/** better-sqlite3 13 needs Node.js 22 and crashes on 20: refused by name before it loads (docs/runtimes.md). */
describe("better-sqlite3 against the Node.js line", () => {
  it("refuses better-sqlite3 13 and later on Node.js 20 with a ConfigurationError naming the install that works", () => {
    let error: unknown;
    try {
      refuseDriverForNode({ driver: "13.2.0", node: "20.20.2" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as Error).message).toContain("better-sqlite3 13.2.0 needs Node.js 22 or later");
    expect((error as Error).message).toContain("npm install better-sqlite3@12");
    expect(driverMismatch("14.0.0", "21.7.3")).not.toBeNull();
  });

  it("accepts the pairs that work, and says nothing when a version is unknown", () => {
    expect(() => refuseDriverForNode({ driver: "13.2.0", node: "22.12.0" })).not.toThrow();
    expect(() => refuseDriverForNode({ driver: "13.2.0", node: "24.19.0" })).not.toThrow();
    expect(() => refuseDriverForNode({ driver: "12.11.1", node: "20.20.2" })).not.toThrow();
    expect(() => refuseDriverForNode({ driver: "11.10.0", node: "20.0.0" })).not.toThrow();
    expect(driverMismatch(undefined, "20.20.2")).toBeNull();
    expect(driverMismatch("13.2.0", undefined)).toBeNull();
    expect(driverMismatch("not-a-version", "20.20.2")).toBeNull();
  });

  it("reads the installed driver's version from its package.json, and passes the repository's own pair", () => {
    expect(installedDriverVersion([`${process.cwd()}/`])).toMatch(/^\d+\.\d+\.\d+/);
    expect(installedDriverVersion(["/nonexistent-folder/"])).toBeUndefined();
    expect(() => refuseDriverForNode()).not.toThrow();
  });
});
