import * as z from "zod/mini";

/**
 * What a model field becomes in a table: read from zod's JSON Schema output
 * (`z.toJSONSchema`), never from a second hand-written list of the fields.
 */
export type ColumnKind = "string" | "enum" | "integer" | "number" | "boolean" | "datetime" | "json";

/** A column of a table: its name, its kind and its constraints. */
export interface Column {
  /** The model's field name (camelCase). */
  field: string;
  /** The column name (snake_case). */
  name: string;
  /** The column's kind. */
  kind: ColumnKind;
  /** False when the field is required and not nullable (NOT NULL). */
  nullable: boolean;
  /** Allowed values of an enum. */
  values?: readonly string[];
  /** Longest string, in characters, when the model bounds it. */
  maxLength?: number;
  /**
   * A lower-case identifier (`IDENTIFIER_PATTERN`: a grant source, a notification type): any value
   * of that shape is stored, so that a module's own values need no change of the schema
   * (docs/modules.md). Each dialect checks the shape (MySQL/MariaDB: its length).
   */
  identifier?: boolean;
  /** Bounds of an integer or number. */
  minimum?: number;
  /** The largest value (a number) or length (a string). */
  maximum?: number;
  /**
   * A SHA-256 digest, lowercase hex in the model: PostgreSQL stores its 32 bytes (`BYTEA`, read
   * back as hex by the adapter), not 64 characters of text (docs/running-for-years.md).
   */
  bytes?: boolean;
  /**
   * JSON kept as its text on PostgreSQL (`JSON`, not `JSONB`): for small values never queried
   * inside, the text the adapter writes (no spaces) is smaller than JSONB's binary form with its
   * per-key headers (docs/running-for-years.md).
   */
  jsonText?: boolean;
  /**
   * An array of objects stored as an array of arrays, each the object's values in the order of
   * these keys (its model's), trailing absent ones left out: `[["g-1",5]]` rather than
   * `[{"grantId":"g-1","amount":5}]`. Read back as objects; arrays of objects (rows written
   * before) read as they are (docs/running-for-years.md).
   */
  tuple?: readonly string[];
}

/** A JSON Schema node, as zod emits it. */
export type JsonSchemaNode = Record<string, unknown>;

/**
 * The shape of the models' open identifiers (`GrantSource`, `NotificationType`): a column whose
 * model has this pattern is an `identifier` column.
 */
export const IDENTIFIER_PATTERN = "^[a-z][a-z0-9_]{0,63}$";

/** Marker the date override puts on `z.date()` nodes, so a Date is never mistaken for a string. */
export const DATE_MARKER = "x-credit-management-date";

/**
 * The model's JSON Schema (draft 2020-12, output side). `z.date()` has no JSON Schema form, so it
 * becomes `{ type: "string", format: "date-time" }` with a marker the column mapper reads.
 */
export function modelJsonSchema(model: z.core.$ZodType): JsonSchemaNode {
  return z.toJSONSchema(model, {
    io: "output",
    unrepresentable: "any",
    override: (ctx) => {
      if (ctx.zodSchema._zod.def.type === "date") {
        ctx.jsonSchema.type = "string";
        ctx.jsonSchema.format = "date-time";
        (ctx.jsonSchema as JsonSchemaNode)[DATE_MARKER] = true;
      }
    },
  }) as JsonSchemaNode;
}

/**
 * The field (column `forgotten_key`) that holds an idempotency key once its retention window has
 * passed: out of the unique index, still part of the entry (see `tableColumns` in ./sql.ts).
 */
export const FORGOTTEN_KEY = "forgottenKey";

/** `grantId` → `grant_id`. */
export function snakeCase(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** The columns of a model, in the model's field order. */
export function columnsOf(model: z.core.$ZodType): Column[] {
  const schema = modelJsonSchema(model);
  if (schema.type !== "object" || typeof schema.properties !== "object" || schema.properties === null) {
    throw new Error("a table model must be a z.object()");
  }
  const required = new Set((schema.required as string[] | undefined) ?? []);
  return Object.entries(schema.properties as Record<string, JsonSchemaNode>).map(([field, node]) =>
    toColumn(field, node, !required.has(field)),
  );
}

function toColumn(field: string, node: JsonSchemaNode, optional: boolean): Column {
  const { inner, nullable } = unwrapNull(node);
  const column: Column = { field, name: snakeCase(field), kind: kindOf(inner), nullable: nullable || optional };
  if (column.kind === "enum") column.values = inner.enum as string[];
  if (column.kind === "string" && typeof inner.maxLength === "number") column.maxLength = inner.maxLength;
  if (column.kind === "string" && inner.pattern === IDENTIFIER_PATTERN) column.identifier = true;
  if (column.kind === "integer" || column.kind === "number") {
    if (typeof inner.minimum === "number") column.minimum = inner.minimum;
    if (typeof inner.maximum === "number") column.maximum = inner.maximum;
  }
  return column;
}

/** Splits `anyOf: [X, {type: "null"}]` and `type: [X, "null"]` into X and nullable. */
function unwrapNull(node: JsonSchemaNode): { inner: JsonSchemaNode; nullable: boolean } {
  if (Array.isArray(node.anyOf)) {
    const branches = node.anyOf as JsonSchemaNode[];
    const rest = branches.filter((b) => b.type !== "null");
    const nullable = rest.length < branches.length;
    if (rest.length === 1) return { inner: rest[0] as JsonSchemaNode, nullable };
    return { inner: { anyOf: rest }, nullable };
  }
  if (Array.isArray(node.type)) {
    const types = (node.type as string[]).filter((t) => t !== "null");
    const nullable = types.length < (node.type as string[]).length;
    return { inner: { ...node, type: types.length === 1 ? types[0] : types }, nullable };
  }
  return { inner: node, nullable: false };
}

function kindOf(node: JsonSchemaNode): ColumnKind {
  if (node[DATE_MARKER] === true) return "datetime";
  if (Array.isArray(node.enum) && node.enum.every((v) => typeof v === "string")) return "enum";
  switch (node.type) {
    case "string":
      return "string";
    case "integer":
      return "integer";
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    default:
      // Objects, arrays, unions and recursive JSON ($ref) are stored as JSON documents.
      return "json";
  }
}
