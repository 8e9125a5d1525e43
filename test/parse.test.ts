import fc from "fast-check";
import { describe, expect, it, vi } from "vitest";
import { ValidationError } from "../src/core/errors.js";
import {
  Amount,
  CommitOptions,
  EntityId,
  MeterOptions,
  NonNegativeAmount,
  ReserveOptions,
  UsageRecord,
  UserId,
  parse,
} from "../src/models-entry.js";
import { PromoCode } from "../src/modules/billing/model-promos.js";
import { deep } from "./fixtures/depth.js";

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

describe("parse() on strings and numbers", () => {
  it("answers exactly as the zod model does, however often a value comes back", () => {
    const values = fc.oneof(
      fc.string({ maxLength: 12 }),
      // Ids as the library makes them, and near misses.
      fc.uuid(),
      fc.uuid().map((u) => u.toUpperCase()),
      fc.uuid().map((u) => u.replace("-", "")),
      fc.uuid().map((u) => `${u.slice(0, 35)}\u0000`),
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
          // Twice: a value seen before is answered as the first time.
          expect(viaParse(schema, v)).toEqual(direct(schema, v));
          expect(viaParse(schema, v)).toEqual(direct(schema, v));
        }
      }),
      { numRuns: deep(300) },
    );
  });

  it("runs the model on every call: a value accepted before is judged again", () => {
    const user = vi.spyOn(UserId, "safeParse");
    const id = vi.spyOn(EntityId, "safeParse");
    const options = vi.spyOn(CommitOptions, "safeParse");
    try {
      for (let i = 0; i < 3; i++) {
        expect(parse(UserId, "parse-user", "userId")).toBe("parse-user");
        expect(parse(EntityId, "0f0e0d0c-aaaa-4bbb-8ccc-0123456789ab", "reservationId")).toBe(
          "0f0e0d0c-aaaa-4bbb-8ccc-0123456789ab",
        );
        expect(parse(CommitOptions, { amount: 12_345 }, "options")).toEqual({ amount: 12_345 });
      }
      expect(user).toHaveBeenCalledTimes(3);
      expect(id).toHaveBeenCalledTimes(3);
      expect(options).toHaveBeenCalledTimes(3);
    } finally {
      user.mockRestore();
      id.mockRestore();
      options.mockRestore();
    }
  });
});

describe("parse() on strict options objects", () => {
  /** The result as zod gives it, with its keys in order (`toStrictEqual` does not compare order). */
  const shape = (r: { ok?: unknown; refused?: boolean }) =>
    "ok" in r && typeof r.ok === "object" && r.ok !== null ? { keys: Object.keys(r.ok), value: r.ok } : r;
  /** The model's answer, and parse's own rule on top: text with a lone surrogate is refused. */
  const expected = (schema: Parameters<typeof direct>[0], v: Record<string, unknown>) => {
    const r = direct(schema, v);
    const loneSurrogate = Object.values(v).some((x) => typeof x === "string" && /[\ud800-\udfff]/.test(x));
    return "ok" in r && loneSurrogate ? { refused: true } : r;
  };

  it("answers exactly as the zod model does, field by field, however often an object comes back", () => {
    const values = fc.oneof(
      fc.constantFrom(0, 1, 3, 10, -1, 1.5, Number.NaN, 900, 0x7fffffff, Number.MAX_SAFE_INTEGER + 1),
      fc.constantFrom("", "x", "POST /api/chat", "a\u0000b", "\ud800", "cm:key", "key-1", "x".repeat(300)),
      fc.constantFrom(undefined, null, true, {}, { a: 1 }, [], "release", "estimate", "gpt-4o-mini"),
    );
    const keys = fc.constantFrom(
      "amount",
      "estimate",
      "reason",
      "ttlSeconds",
      "description",
      "idempotencyKey",
      "correlationId",
      "noUsage",
      "model",
      "provider",
      "metadata",
      "unknown",
    );
    const schemas = [CommitOptions, MeterOptions, UsageRecord, ReserveOptions] as const;
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.constantFrom(0, 1, 2, 3), fc.dictionary(keys, values, { maxKeys: 4 })), {
          maxLength: 40,
        }),
        (calls) => {
          for (const [i, given] of calls) {
            const schema = schemas[i] as (typeof schemas)[number];
            // Twice: an object seen before is answered as the first time.
            expect(shape(viaParse(schema, given))).toStrictEqual(shape(expected(schema, given)));
            expect(shape(viaParse(schema, given))).toStrictEqual(shape(expected(schema, given)));
          }
        },
      ),
      { numRuns: deep(300) },
    );
  });
});
