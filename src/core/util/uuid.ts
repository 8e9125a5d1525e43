import { v7 } from "uuid";

/**
 * A new id of a grant, a hold, an entry: a time-ordered UUID (version 7, RFC 9562), 36 characters
 * of lowercase text as a random one is. Ids made one after another sort in the order they were
 * made, so a store's index on them appends instead of touching a random page; their order is no
 * promise of the journal's, `seq` is (docs/concepts.md, "Ids"). Its own module so that a test can
 * make the ids it sees deterministic (test/simulation.test.ts replaces it).
 */
export function newId(): string {
  return v7();
}
