import { createHash } from "node:crypto";
import * as z from "zod/mini";
import packageJson from "../../package.json" with { type: "json" };
import type { RouteDefinition } from "./router.js";

/** What the host may add to the generated document. @public */
export interface OpenApiOptions {
  /** `version` by default: this package's version. */
  info?: { title?: string; version?: string; description?: string };
  /** The document's `servers`. */
  servers?: { url: string; description?: string }[];
  /** Default: HTTP bearer. Describe what your `authenticate` hook really reads. */
  securitySchemes?: Record<string, unknown>;
}

type Json = Record<string, unknown>;

const STATUS_TEXT: Record<number, string> = {
  200: "OK",
  201: "Created",
  400: "Invalid body, query or path (field-level `details.issues`)",
  401: "No identity",
  402: "Insufficient credits",
  403: "Not allowed: not an admin, or a spender the caller's credentials do not name",
  404: "Not found (also: another user's resource)",
  409: "Conflict: not active, idempotency key reused with other arguments, or a lost race",
  410: "The reservation expired",
  413: "Body too large",
  415: "Not JSON: the body, or the Content-Type of a mutation (application/json is required, with an empty body too)",
  422: "Well-formed but refused by a rule",
  429: "Too many: a spend limit would be passed (SPEND_LIMIT_EXCEEDED: the limit and when it resets in `details`), or a customer token's account is past its rate limit (RATE_LIMITED, with Retry-After)",
  500: "Internal error",
  503: "The store is unavailable (STORAGE_ERROR: nothing was applied), or the outcome of a change is unknown (OUTCOME_UNKNOWN: the entry ids and idempotency key to learn it by in `details`)",
};

/**
 * A string with two or more `.regex` checks (a user id: printable, and not `.` nor `..`) comes out
 * of `z.toJSONSchema` as `allOf: [{ pattern }, { pattern }]`, which generators read as an
 * intersection of untyped schemas (`string & (unknown & unknown)`). Anchored patterns (`^…`) are
 * merged into one with a lookahead each, `(?=^a)(?=^b)`, which matches where every one of them
 * does: the schema reads `type: "string"` with one `pattern`.
 */
function mergePatterns(schema: Json): void {
  const parts = schema.allOf;
  if (!Array.isArray(parts) || schema.pattern !== undefined) return;
  const patterns = parts.map((p: Json) => (Object.keys(p).length === 1 ? p.pattern : undefined));
  if (!patterns.every((p): p is string => typeof p === "string" && p.startsWith("^"))) return;
  schema.pattern = patterns.map((p) => `(?=${p})`).join("");
  delete schema.allOf;
}

/**
 * Renders an OpenAPI 3.1 document from the route table: request bodies, query parameters and
 * responses are the routes' zod schemas through `z.toJSONSchema` (JSON Schema 2020-12, the dialect
 * of OpenAPI 3.1); dates become `string`/`date-time`; shared definitions (the JSON value of
 * `metadata`) are hoisted into `components.schemas`.
 */
export function buildOpenApi(
  routes: readonly (RouteDefinition & { fullPath: string })[],
  options: OpenApiOptions = {},
): Json {
  const components: Record<string, unknown> = {
    Error: {
      type: "object",
      required: ["error"],
      properties: {
        error: {
          type: "object",
          required: ["code", "message"],
          properties: {
            code: { type: "string", description: "Stable code, e.g. INSUFFICIENT_CREDITS" },
            message: { type: "string" },
            details: { type: "object", additionalProperties: true },
          },
        },
      },
    },
  };
  const defNames = new Map<string, string>();

  const schema = (s: z.core.$ZodType, io: "input" | "output"): Json => {
    const out = z.toJSONSchema(s, {
      target: "draft-2020-12",
      io,
      unrepresentable: "any",
      override: (ctx) => {
        if (ctx.zodSchema._zod.def.type === "date") {
          ctx.jsonSchema.type = "string";
          ctx.jsonSchema.format = "date-time";
        }
        mergePatterns(ctx.jsonSchema);
      },
    }) as Json;
    delete out.$schema;
    const defs = (out.$defs ?? {}) as Record<string, unknown>;
    delete out.$defs;
    const rename = new Map<string, string>();
    for (const [key, value] of Object.entries(defs)) {
      const text = JSON.stringify(value);
      let name = defNames.get(text);
      if (name === undefined) {
        const jsonValue = ["string", "number", "boolean", "null", "array", "object"].every((t) =>
          text.includes(`"type":"${t}"`),
        );
        name =
          jsonValue && !Object.values(Object.fromEntries(defNames)).includes("JsonValue")
            ? "JsonValue"
            : `Def${createHash("sha256").update(text).digest("hex").slice(0, 8)}`;
        defNames.set(text, name);
      }
      rename.set(key, name);
    }
    if (rename.size === 0) return out;
    const fix = (text: string) =>
      text.replace(/"#\/\$defs\/([^"]+)"/g, (_m, key: string) => `"#/components/schemas/${rename.get(key) ?? key}"`);
    for (const [key, value] of Object.entries(defs)) {
      const name = rename.get(key) as string;
      if (!(name in components)) components[name] = JSON.parse(fix(JSON.stringify(value)));
    }
    return JSON.parse(fix(JSON.stringify(out))) as Json;
  };

  const errorRef = (status: number) => ({
    description: STATUS_TEXT[status] ?? "Error",
    content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } },
  });

  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const path = r.fullPath.replace(/:([A-Za-z0-9_]+)/g, "{$1}");
    const parameters: Json[] = [];
    for (const m of r.fullPath.matchAll(/:([A-Za-z0-9_]+)/g)) {
      parameters.push({ name: m[1], in: "path", required: true, schema: { type: "string" } });
    }
    if (r.query) {
      const q = schema(r.query, "input");
      const props = (q.properties ?? {}) as Record<string, Json>;
      const required = new Set((q.required ?? []) as string[]);
      for (const [name, s] of Object.entries(props)) {
        const isArray = s.type === "array";
        parameters.push({
          name,
          in: "query",
          required: required.has(name),
          schema: s,
          ...(isArray ? { style: "form", explode: false } : {}),
        });
      }
    }
    if (r.idempotent) {
      parameters.push({
        name: "Idempotency-Key",
        in: "header",
        required: false,
        description: "Makes the operation safe to retry: the same key and arguments return the first result.",
        schema: { type: "string", minLength: 1, maxLength: 255 },
      });
    }
    const status = r.status ?? 200;
    const responses: Record<string, unknown> = {
      [String(status)]: {
        description: STATUS_TEXT[status] ?? "OK",
        ...(r.response ? { content: { "application/json": { schema: schema(r.response, "output") } } } : {}),
        ...(r.responseType === undefined ? {} : { content: { [r.responseType]: { schema: { type: "string" } } } }),
      },
    };
    const errors = new Set<number>([
      400,
      ...(r.access === "public" ? [] : [401]),
      ...(r.access === "admin" ? [403] : []),
      // The customer tokens' rate limit (docs/usage.md, "For your customers").
      ...(r.customer === true ? [429] : []),
      ...(r.body ? [413, 415] : r.method !== "GET" && !(r.rawBody === true && r.access === "public") ? [415] : []),
      ...(r.errors ?? []),
      500,
    ]);
    for (const code of [...errors].sort()) responses[String(code)] = errorRef(code);
    const op: Json = {
      operationId: r.operationId,
      summary: r.summary,
      ...(r.description ? { description: r.description } : {}),
      ...(r.tags ? { tags: r.tags } : {}),
      ...(r.access === "public" ? { security: [] } : {}),
      ...(parameters.length > 0 ? { parameters } : {}),
      ...(r.body
        ? { requestBody: { required: false, content: { "application/json": { schema: schema(r.body, "input") } } } }
        : {}),
      responses,
    };
    paths[path] ??= {};
    (paths[path] as Json)[r.method.toLowerCase()] = op;
  }

  const securitySchemes = options.securitySchemes ?? { bearerAuth: { type: "http", scheme: "bearer" } };
  return {
    openapi: "3.1.0",
    info: {
      title: options.info?.title ?? "Credits API",
      version: options.info?.version ?? packageJson.version,
      ...(options.info?.description ? { description: options.info.description } : {}),
    },
    ...(options.servers ? { servers: options.servers } : {}),
    jsonSchemaDialect: "https://json-schema.org/draft/2020-12/schema",
    security: Object.keys(securitySchemes).map((name) => ({ [name]: [] })),
    paths,
    components: { schemas: components, securitySchemes },
  };
}
