import * as http from "node:http";
import * as https from "node:https";
import { isIP } from "node:net";
import type { BlockList } from "node:net";
import { addressProblem, guardedLookup, WebhookAddressError, type Lookup } from "./queue-guard.js";

/** What one POST got: the status, and the start of the response body (at most `maxResponseBytes`). @public */
export interface PostResult {
  /** The endpoint's HTTP status; 0 when it did not answer. */
  status: number;
  /** The start of the endpoint's answer. */
  body: string;
}

/** The endpoint did not answer (connection, TLS, status and body) within the time-out. */
export class WebhookTimeoutError extends Error {
  override readonly name = "WebhookTimeoutError";
}

export interface PostOptions {
  timeoutMs: number;
  maxResponseBytes: number;
  allow: BlockList | null;
  lookup: Lookup | undefined;
  agents: { http: http.Agent; https: https.Agent };
}

/**
 * POSTs `body` to `url` (docs/notifications.md, "Webhooks"): redirects are not followed (a 3xx is
 * an answer like any other), the target address is checked before the connection (an IP literal)
 * or at it (every address the name resolves to), the whole exchange ends within `timeoutMs`, and
 * at most `maxResponseBytes` of the answer are read.
 */
export function postWebhook(
  url: URL,
  headers: Record<string, string>,
  body: string,
  o: PostOptions,
): Promise<PostResult> {
  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  if (isIP(host) !== 0) {
    const problem = addressProblem(host, o.allow);
    if (problem !== null) return Promise.reject(new WebhookAddressError(problem));
  }
  const secure = url.protocol === "https:";
  const request = secure ? https.request : http.request;
  return new Promise<PostResult>((resolve, reject) => {
    let done = false;
    const finish = (error: Error | null, result?: PostResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (error !== null) reject(error);
      else resolve(result as PostResult);
    };
    const req = request(url, {
      method: "POST",
      agent: secure ? o.agents.https : o.agents.http,
      lookup: guardedLookup(o.allow, o.lookup) as never,
      headers: {
        ...headers,
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        "user-agent": "credit-management-webhooks",
      },
    });
    const timer = setTimeout(() => {
      const error = new WebhookTimeoutError(`no answer within ${o.timeoutMs} ms`);
      req.destroy(error);
      finish(error);
    }, o.timeoutMs);
    req.on("error", (error) => finish(error));
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const settle = () =>
        finish(null, {
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks).toString("utf8").slice(0, o.maxResponseBytes),
        });
      res.on("data", (chunk: Buffer) => {
        if (size >= o.maxResponseBytes) return;
        chunks.push(chunk.subarray(0, o.maxResponseBytes - size));
        size += chunk.length;
        if (size >= o.maxResponseBytes) {
          // Enough read: the rest is not ours to wait for.
          settle();
          res.destroy();
        }
      });
      res.on("end", settle);
      res.on("error", () => settle());
      res.on("close", settle);
    });
    req.end(body);
  });
}
