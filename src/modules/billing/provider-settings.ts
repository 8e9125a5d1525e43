import { CreditsPerUnit, KeyNamespace } from "./model-payments.js";
import { stripeEnvOptions, type StripeProviderOptions } from "./provider-stripe.js";
import { UsageError } from "../../util/usage-error.js";

/**
 * The payment settings of `credit-management worker` and `serve` (docs/operations.md, "Payment
 * settings"; docs/service.md): one reading of the environment (and of `--credits-per-unit`) for
 * both, so a process that charges auto top-ups or opens checkouts charges and credits as the
 * application's `createCreditManager({ payments })` does.
 */

/** What `paymentSettings` read: the manager's `payments` option, less the providers' own defaults. */
export interface PaymentSettings {
  /**
   * Credits per smallest currency unit: one rate for every currency, or a rate per currency (any
   * other is refused), as `createCreditManager({ payments: { creditsPerUnit } })`. Default 1.
   */
  creditsPerUnit: number | Readonly<Record<string, number>>;
  /** As `payments.keyNamespace`; undefined: none. */
  keyNamespace: string | undefined;
  /** Stripe from the same environment: keys, return pages and, with `STRIPE_API_BASE_URL`, the API's address. */
  stripe: Pick<StripeProviderOptions, "secretKey" | "webhookSecret" | "successUrl" | "cancelUrl" | "baseUrl">;
}

/** The flag of the payment settings (`worker` and `serve`), as `parseArgs` gives it. */
export interface PaymentFlags {
  "credits-per-unit"?: string;
}

/** `--credits-per-unit`, for `parseArgs`. */
export const PAYMENT_FLAGS = { "credits-per-unit": { type: "string" } } as const;

/** The lines of the payment settings in `worker --help` and `serve --help`. */
export const PAYMENT_OPTIONS = `  --credits-per-unit RATES         CREDIT_CREDITS_PER_UNIT: credits per smallest currency unit, as your
                                   services' payments.creditsPerUnit: one rate for every currency (2, 0.5) or
                                   a rate per currency (USD=2,INR=1: any other currency is refused). Default 1
  CREDIT_PAYMENT_KEY_NAMESPACE     As your services' payments.keyNamespace (payment ids from idempotency keys)
  STRIPE_API_BASE_URL              Where the Stripe API is (a proxy, stripe-mock). Default https://api.stripe.com
`;

type Env = Readonly<Record<string, string | undefined>>;

/**
 * Reads and checks the payment settings of `flags` and `env` (the flag wins over its variable);
 * throws `UsageError` naming the flag or variable. Reads nothing else.
 */
export function paymentSettings(flags: PaymentFlags, env: Env): PaymentSettings {
  const read = (value: string | undefined) => (value === undefined || value.trim() === "" ? undefined : value.trim());
  const flag = flags["credits-per-unit"];
  const ratesText = typeof flag === "string" ? flag.trim() : read(env.CREDIT_CREDITS_PER_UNIT);
  const ratesFrom = typeof flag === "string" ? "--credits-per-unit" : "CREDIT_CREDITS_PER_UNIT";
  const creditsPerUnit = ratesText === undefined ? 1 : parseCreditsPerUnit(ratesText, ratesFrom);

  const namespace = read(env.CREDIT_PAYMENT_KEY_NAMESPACE);
  if (namespace !== undefined && !KeyNamespace.safeParse(namespace).success)
    throw new UsageError(`CREDIT_PAYMENT_KEY_NAMESPACE must be 1 to 64 characters, not ${namespace.length} characters`);

  const baseUrl = read(env.STRIPE_API_BASE_URL);
  if (baseUrl !== undefined && !/^https?:\/\/[^\s/]+/.test(baseUrl))
    throw new UsageError(`STRIPE_API_BASE_URL must be an http:// or https:// URL, not "${baseUrl}"`);

  return {
    creditsPerUnit,
    keyNamespace: namespace,
    stripe: { ...stripeEnvOptions(env), ...(baseUrl === undefined ? {} : { baseUrl }) },
  };
}

/**
 * `2`, `0.5` (every currency) or `USD=2,INR=1` (per currency, codes in either case), checked as
 * the manager checks `creditsPerUnit` (positive, at most 1e9).
 */
export function parseCreditsPerUnit(text: string, from: string): number | Record<string, number> {
  const bad = () =>
    new UsageError(
      `${from} must be a rate (2, 0.5) or rates per currency (USD=2,INR=1), each positive and at most 1e9, not "${text}"`,
    );
  const rate = (t: string) => {
    if (!/^[0-9]+(\.[0-9]+)?$/.test(t)) throw bad();
    return Number(t);
  };
  let value: number | Record<string, number>;
  if (!text.includes("=")) {
    value = rate(text);
  } else {
    const rates: Record<string, number> = {};
    for (const pair of text.split(",")) {
      const m = /^\s*([A-Za-z]{3})\s*=\s*(\S+)\s*$/.exec(pair);
      if (m === null) throw bad();
      const code = (m[1] as string).toUpperCase();
      if (code in rates) throw new UsageError(`${from} names ${code} twice: "${text}"`);
      rates[code] = rate(m[2] as string);
    }
    value = rates;
  }
  if (!CreditsPerUnit.safeParse(value).success) throw bad();
  return value;
}
