/** The codes of the HTTP API's own answers (`HttpError`, docs/http.md). */
export const HTTP_ERROR_CODES = [
  "UNAUTHORIZED",
  "FORBIDDEN",
  "METHOD_NOT_ALLOWED",
  "PAYLOAD_TOO_LARGE",
  "UNSUPPORTED_MEDIA_TYPE",
  "TOO_MANY_FAILED_AUTHENTICATIONS",
  "RATE_LIMITED",
  "CUSTOMER_TOKENS_OFF",
  "METRICS_OFF",
] as const satisfies readonly HttpErrorCode[];
/** A code of the HTTP API's own answers. @public */
export type HttpErrorCode =
  | "UNAUTHORIZED"
  | "FORBIDDEN"
  | "METHOD_NOT_ALLOWED"
  | "PAYLOAD_TOO_LARGE"
  | "UNSUPPORTED_MEDIA_TYPE"
  | "TOO_MANY_FAILED_AUTHENTICATIONS"
  | "RATE_LIMITED"
  | "CUSTOMER_TOKENS_OFF"
  | "METRICS_OFF";
