/** The text of Responses this package built from a string it still holds (see `textResponse`). */
const knownText = new WeakMap<Response, string>();

/**
 * @internal A `Response` over `text` that `sendResponse` (src/http/node.ts) writes with one
 * `res.end(text)`, a `Content-Length` and no web stream, instead of reading it back through its
 * body stream. Used for the credit API's JSON answers (`json()`) and the JSON bodies the metering
 * wrapper re-emits. On other hosts it is an ordinary `Response`.
 */
export function textResponse(text: string, init: ResponseInit): Response {
  const response = new Response(text, init);
  knownText.set(response, text);
  return response;
}

/** @internal The text `response` was built from by `textResponse`, if nobody has read its body since. */
export function unreadText(response: Response): string | undefined {
  const text = knownText.get(response);
  return text !== undefined && !response.bodyUsed ? text : undefined;
}
