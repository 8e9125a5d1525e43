/**
 * The payment provider contract (docs/testing.md, "A payment provider's contract"): what
 * `PaymentService` relies on from a `PaymentProvider` when a webhook arrives. Signature vectors
 * the provider must accept and must refuse (a wrong secret, a stale timestamp where the provider
 * signs one; a tampered body and missing signature headers are derived from every accepted
 * vector), and the event each accepted body maps to. Both built-in providers run it.
 */
import { describe, expect, it, useTestApi, type TestApi } from "../../core/testing/runner.js";
import { WebhookRejectedError } from "./errors.js";
import type { HeadersLike, PaymentEvent, PaymentProvider } from "./provider.js";

/** One webhook as it arrives: the exact bytes, the headers, and when it is received. @beta */
export interface WebhookVector {
  /** Names the test. */
  name: string;
  /** The body as sent (a string is taken as UTF-8). */
  body: string | Uint8Array;
  /** The webhook's headers, its signature included. */
  headers: HeadersLike;
  /** When the webhook is received (the provider's tolerance window is measured from it). */
  now: Date;
}

/** The vectors `runPaymentProviderContract` checks a provider with. @beta */
export interface PaymentProviderVectors {
  /** Webhooks signed with the provider's webhook secret: they must verify, and parse to `event`. */
  valid: (WebhookVector & { event: PaymentEvent })[];
  /**
   * Webhooks that must be refused with `WebhookRejectedError`: signed with a wrong secret, a
   * timestamp outside the tolerance (where the provider signs one), a malformed signature header.
   * A tampered copy and an unsigned copy of each valid vector are refused too, without listing them.
   */
  invalid: WebhookVector[];
  /** Bodies that verify but are not events (not JSON, no type): `parseEvent` refuses them. Default: `not json`. */
  notEvents?: (string | Uint8Array)[];
}

/** Options of `runPaymentProviderContract`: the provider, the test functions and the webhook vectors. @beta */
export interface PaymentProviderContractOptions {
  /** The provider under test, configured with the webhook secret the vectors are signed with. */
  provider: PaymentProvider;
  /** Webhook bodies with their headers, signed by the provider, that the provider must accept. */
  vectors: PaymentProviderVectors;
  /** Your runner's functions (`{ describe, it, expect, beforeAll, afterAll }`); default: its globals. */
  test?: TestApi;
}

const KINDS = new Set<string | null>([
  "authorized",
  "paid",
  "failed",
  "expired",
  "cancelled",
  "refund",
  "dispute_lost",
  null,
]);
const bytes = (body: string | Uint8Array) => (typeof body === "string" ? new TextEncoder().encode(body) : body);

/** The bytes with one changed in the middle (a tampered body). */
function tampered(body: Uint8Array): Uint8Array {
  const out = Uint8Array.from(body);
  const i = Math.floor(out.length / 2);
  out[i] = (out[i] as number) === 0x20 ? 0x09 : 0x20;
  return out;
}

/**
 * Runs the payment provider contract on `provider`: every valid vector verifies and maps to its
 * event; every invalid one, a tampered copy and an unsigned copy of every valid one are refused
 * with `WebhookRejectedError`; non-events are refused by `parseEvent`.
 * @beta
 */
export function runPaymentProviderContract(options: PaymentProviderContractOptions): void {
  useTestApi(options.test);
  const { provider, vectors } = options;
  describe(`payment provider contract: ${provider.name}`, () => {
    it("has a name and the webhook methods", () => {
      expect(typeof provider.name).toBe("string");
      expect(provider.name.length > 0).toBe(true);
      expect(typeof provider.verifyWebhook).toBe("function");
      expect(typeof provider.parseEvent).toBe("function");
      expect(provider.receivesWebhooks === false).toBe(false);
      expect(vectors.valid.length > 0).toBe(true);
    });

    for (const v of vectors.valid) {
      it(`verifies and maps: ${v.name}`, () => {
        const body = bytes(v.body);
        provider.verifyWebhook(body, v.headers, v.now);
        const event = provider.parseEvent(body);
        expect(KINDS.has(event.kind)).toBe(true);
        expect(event).toEqual(v.event);
      });
      it(`refuses a tampered body: ${v.name}`, () => {
        expect(() => provider.verifyWebhook(tampered(bytes(v.body)), v.headers, v.now)).toThrow(WebhookRejectedError);
      });
      it(`refuses it unsigned: ${v.name}`, () => {
        expect(() => provider.verifyWebhook(bytes(v.body), {}, v.now)).toThrow(WebhookRejectedError);
        expect(() => provider.verifyWebhook(bytes(v.body), new Headers(), v.now)).toThrow(WebhookRejectedError);
      });
    }

    for (const v of vectors.invalid) {
      it(`refuses: ${v.name}`, () => {
        expect(() => provider.verifyWebhook(bytes(v.body), v.headers, v.now)).toThrow(WebhookRejectedError);
      });
    }

    for (const body of vectors.notEvents ?? ["not json"]) {
      it(`parseEvent refuses a non-event: ${JSON.stringify(typeof body === "string" ? body : `${body.length} bytes`)}`, () => {
        expect(() => provider.parseEvent(bytes(body))).toThrow(WebhookRejectedError);
      });
    }
  });
}
