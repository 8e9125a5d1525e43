import { randomUUID } from "node:crypto";

/**
 * A new random (version 4) id: of a grant, a hold, an entry. Its own module so that a test can make
 * the ids it sees deterministic (test/simulation.test.ts replaces it).
 */
export function newId(): string {
  return randomUUID();
}
