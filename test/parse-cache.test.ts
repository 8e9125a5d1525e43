import fc from "fast-check";
import { describe, expect, it, vi } from "vitest";
import { ValidationError } from "../src/errors.js";
import { Amount, EntityId, NonNegativeAmount, UserId, parse } from "../src/models/index.js";
import { PromoCode } from "../src/models/promos.js";

/** What the schema alone says about a value: its output, or that it refuses it. */
function direct(schema: { safeParse(v: unknown): { success: boolean; data?: unknown } }, v: unknown) {
  const r = schema.safeParse(v);
  return r.success ? { ok: r.data } : { refused: true };
}

function viaParse(schema: Parameters<typeof parse>[0], v: unknown) {
  try {
    return { ok: parse(schema, v, "x") };
  } catch (error) {
    expect(error).toBeInstanceOf(ValidationError);
    return { refused: true };
  }
}

describe("parse() remembers accepted strings and numbers", () => {
  it("answers exactly as the zod model does, however often a value comes back", () => {
    const values = fc.oneof(
      fc.string({ maxLength: 12 }),
      fc.constantFrom("", "u", "U", "abc", "ABC", "a\u0000b", "x".repeat(257), "SPRING-25", "spring-25"),
      fc.integer({ min: -5, max: 5 }),
      fc.constantFrom(
        0,
        -0,
        1,
        1.5,
        Number.NaN,
        Infinity,
        Number.MAX_SAFE_INTEGER,
        Number.MAX_SAFE_INTEGER + 1,
        2 ** 60,
      ),
    );
    const schemas = [UserId, Amount, NonNegativeAmount, PromoCode, EntityId] as const;
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom(0, 1, 2, 3, 4), values), { maxLength: 60 }), (calls) => {
        for (const [i, v] of calls) {
          const schema = schemas[i] as (typeof schemas)[number];
          // Twice: the second call may be answered from memory.
          expect(viaParse(schema, v)).toEqual(direct(schema, v));
          expect(viaParse(schema, v)).toEqual(direct(schema, v));
        }
      }),
      { numRuns: 300 },
    );
  });

  it("remembers user ids, but not hold and grant ids (each is new: remembering them only churns the set)", () => {
    const user = vi.spyOn(UserId, "safeParse");
    const id = vi.spyOn(EntityId, "safeParse");
    try {
      for (let i = 0; i < 3; i++) {
        parse(UserId, "parse-cache-user", "userId");
        parse(EntityId, "0f0e0d0c-aaaa-4bbb-8ccc-0123456789ab", "reservationId");
      }
      expect(user).toHaveBeenCalledTimes(1);
      expect(id).toHaveBeenCalledTimes(3);
    } finally {
      user.mockRestore();
      id.mockRestore();
    }
  });
});
