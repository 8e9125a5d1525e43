import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..");

/**
 * The Dockerfile and compose.yaml of docs/service.md, linted (CI has no container runtime to build
 * them: docs/service.md says what is and is not verified).
 */
describe("containers", () => {
  it("the Dockerfile is multi-stage, runs as a non-root user, has a HEALTHCHECK and runs the built CLI", () => {
    const lines = readFileSync(join(root, "Dockerfile"), "utf8")
      .replace(/\\\n/g, " ")
      .split("\n")
      .filter((l) => l.trim() !== "" && !l.startsWith("#"));
    const from = lines.filter((l) => l.startsWith("FROM "));
    expect(from.length).toBeGreaterThanOrEqual(2);
    expect(from[0]).toMatch(/ AS build$/);
    const final = lines.slice(lines.lastIndexOf(from.at(-1) as string));
    expect(final.find((l) => l.startsWith("USER "))).toMatch(/^USER (node|[1-9][0-9]*)$/);
    expect(final.some((l) => l.startsWith("HEALTHCHECK ") && l.includes("/health/live"))).toBe(true);
    expect(final.find((l) => l.startsWith("ENTRYPOINT "))).toContain("credit-management/dist/cli/index.js");
    expect(final.find((l) => l.startsWith("CMD "))).toContain('"serve"');
    for (const l of lines)
      expect(l.split(" ")[0]).toMatch(/^(FROM|WORKDIR|COPY|RUN|ENV|VOLUME|USER|EXPOSE|HEALTHCHECK|ENTRYPOINT|CMD)$/);
  });

  it("compose.yaml runs PostgreSQL, the service and a worker on it", () => {
    const compose = parse(readFileSync(join(root, "compose.yaml"), "utf8")) as {
      services: Record<string, { command?: string[]; environment?: Record<string, string>; depends_on?: object }>;
    };
    expect(Object.keys(compose.services).sort()).toEqual(["credits", "postgres", "worker"]);
    expect(compose.services.credits?.command).toEqual(["serve"]);
    expect(compose.services.worker?.command).toEqual(["worker"]);
    for (const name of ["credits", "worker"]) {
      expect(compose.services[name]?.environment?.CREDIT_PG_URL).toMatch(/^postgres:\/\/.*@postgres:5432\//);
      expect(compose.services[name]?.depends_on).toBeDefined();
    }
  });
});
