import { ConfigurationError, PaymentProviderError } from "../errors.js";
import { at, str } from "./signature.js";
import type { FetchLike } from "./types.js";

/** How long one call to a provider's API may take, in ms, unless the provider is told otherwise. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** A provider's `timeoutMs` option: a whole number of ms from 1 to 10 minutes. */
export function checkTimeout(provider: string, ms: number | undefined): number {
  const value = ms ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isSafeInteger(value) || value < 1 || value > 600_000) {
    throw new ConfigurationError(
      `[credit-management] [${provider}] timeoutMs must be a whole number of milliseconds from 1 to 600,000.`,
    );
  }
  return value;
}

/**
 * One JSON call to a provider's API, given up after `timeoutMs`; non-2xx answers, network failures
 * and time-outs become `PaymentProviderError`.
 */
export async function call(
  f: FetchLike,
  provider: string,
  url: string,
  init: RequestInit,
  timeoutMs: number,
): Promise<Record<string, unknown>> {
  const { res, json } = await send(f, provider, url, init, timeoutMs, {});
  if (!res.ok || typeof json !== "object" || json === null) {
    const message = str(at(json, "error", "description")) ?? str(at(json, "error", "message")) ?? `HTTP ${res.status}`;
    throw new PaymentProviderError(`[credit-management] [${provider}] API refused the request: ${message}`, {
      provider,
      status: res.status,
    });
  }
  return json as Record<string, unknown>;
}

/**
 * One JSON call whose refusals are answers (a declined charge is a 402 with the reason): resolves
 * to the status and body of any answer below 500 but 409 and 429; throws `PaymentProviderError`
 * (`details.retryable: true`) for network failures, time-outs, 409 (a concurrent request with the
 * same idempotency key), 429 and 5xx — errors that may pass, to be retried under the same key.
 */
export async function callAnswer(
  f: FetchLike,
  provider: string,
  url: string,
  init: RequestInit,
  timeoutMs: number,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const { res, json } = await send(f, provider, url, init, timeoutMs, { retryable: true });
  const retryable = res.status >= 500 || res.status === 429 || res.status === 409;
  if (retryable || typeof json !== "object" || json === null) {
    const message = str(at(json, "error", "message")) ?? `HTTP ${res.status}`;
    throw new PaymentProviderError(`[credit-management] [${provider}] API refused the request: ${message}`, {
      provider,
      status: res.status,
      retryable: retryable || res.ok,
    });
  }
  return { status: res.status, body: json as Record<string, unknown> };
}

/**
 * The request and its answer's body as JSON (null when empty or not JSON: the caller reports it).
 * A network failure or a time-out is a `PaymentProviderError` with `details` besides the provider's.
 */
async function send(
  f: FetchLike,
  provider: string,
  url: string,
  init: RequestInit,
  timeoutMs: number,
  details: { retryable?: true },
): Promise<{ res: Response; json: unknown }> {
  let res: Response;
  let text: string;
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    res = await f(url, { ...init, signal });
    text = await res.text();
  } catch (error) {
    const timedOut = signal.aborted;
    throw new PaymentProviderError(
      timedOut
        ? `[credit-management] [${provider}] The API did not answer within ${timeoutMs} ms.`
        : `[credit-management] [${provider}] Request failed: ${(error as Error).message}`,
      { provider, ...details, ...(timedOut ? { timeoutMs } : {}) },
      error,
    );
  }
  let json: unknown = null;
  try {
    json = text === "" ? null : JSON.parse(text);
  } catch {
    // not JSON; reported by the caller
  }
  return { res, json };
}
