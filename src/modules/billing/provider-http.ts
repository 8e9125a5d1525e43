import { ConfigurationError } from "../../core/errors.js";
import { PaymentProviderError } from "./errors.js";
import { at, str } from "./provider-signature.js";
import type { FetchLike } from "./provider.js";

/** How long one call to a provider's API may take, in ms, unless the provider is told otherwise. */
const DEFAULT_TIMEOUT_MS = 30_000;

/** What each provider's options say about reaching its API. */
export interface ApiOptions {
  baseUrl?: string;
  fetch?: FetchLike;
  timeoutMs?: number;
}

/**
 * One provider's API: its address, the `fetch` it goes through and how long a call may take (a
 * whole number of ms from 1 to 10 minutes, checked when the provider is made). Non-2xx answers,
 * network failures and time-outs become `PaymentProviderError`s naming the provider.
 */
export class ProviderApi {
  private readonly baseUrl: string;
  private readonly fetch: FetchLike;
  private readonly timeoutMs: number;

  constructor(
    private readonly provider: string,
    defaultBaseUrl: string,
    options: ApiOptions,
  ) {
    this.baseUrl = (options.baseUrl ?? defaultBaseUrl).replace(/\/$/, "");
    this.fetch = options.fetch ?? ((input, init) => fetch(input, init));
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000) {
      throw new ConfigurationError(
        `[credit-management] [${provider}] timeoutMs must be a whole number of milliseconds from 1 to 600,000.`,
      );
    }
    this.timeoutMs = timeoutMs;
  }

  /** One JSON call to `path` (below the base URL); any answer but a 2xx JSON object is refused. */
  async call(path: string, init: RequestInit): Promise<Record<string, unknown>> {
    const { res, json } = await this.send(path, init, {});
    if (!res.ok || typeof json !== "object" || json === null) {
      const message =
        str(at(json, "error", "description")) ?? str(at(json, "error", "message")) ?? `HTTP ${res.status}`;
      throw new PaymentProviderError(`[credit-management] [${this.provider}] API refused the request: ${message}`, {
        provider: this.provider,
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
  async answer(path: string, init: RequestInit): Promise<{ status: number; body: Record<string, unknown> }> {
    const { res, json } = await this.send(path, init, { retryable: true });
    const retryable = res.status >= 500 || res.status === 429 || res.status === 409;
    if (retryable || typeof json !== "object" || json === null) {
      const message = str(at(json, "error", "message")) ?? `HTTP ${res.status}`;
      throw new PaymentProviderError(`[credit-management] [${this.provider}] API refused the request: ${message}`, {
        provider: this.provider,
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
  private async send(
    path: string,
    init: RequestInit,
    details: { retryable?: true },
  ): Promise<{ res: Response; json: unknown }> {
    const { provider, timeoutMs } = this;
    let res: Response;
    let text: string;
    const signal = AbortSignal.timeout(timeoutMs);
    try {
      res = await this.fetch(`${this.baseUrl}${path}`, { ...init, signal });
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
}
