import { DATE_MARKER, type JsonSchemaNode, columnsOf, modelJsonSchema } from "./columns.js";
import { checkNaming } from "./sql.js";
import { type IndexCondition, type TableKey, type TableSpecs, indexesOf, tableSpecs } from "./tables.js";

/** Options of `generateMongoSchema()`. @public */
export interface MongoOptions {
  /** Put in front of every collection name. */
  prefix?: string;
  /** The tables to describe; default `tableSpecs`. */
  tables?: TableSpecs;
}

/** One index, in the shape `collection.createIndex(key, { name, unique, partialFilterExpression })` takes. @public */
export interface MongoIndex {
  /** The indexed fields. */
  key: Record<string, 1>;
  /** The index's name. */
  name: string;
  /** Whether the index is unique. */
  unique?: boolean;
  /** The documents the index covers, when not all. */
  partialFilterExpression?: Record<string, unknown>;
}

/** A MongoDB collection: its name, its validator and its indexes. @public */
export interface MongoCollection {
  /** The collection's name. */
  name: string;
  /** Pass as `validator` to `db.createCollection(name, { validator })` or `collMod`: a JSON Schema in MongoDB's dialect. */
  validator: { $jsonSchema: Record<string, unknown> };
  /** The collection's indexes. */
  indexes: MongoIndex[];
}

/**
 * MongoDB `$jsonSchema` validators and index specs for every collection, converted from zod's JSON
 * Schema of the models. MongoDB's dialect has `bsonType`, no `$ref`, `$defs` or `format`, and
 * documents carry `_id`, so: dates become `bsonType: "date"`, integers any BSON number holding a
 * whole value (the Node driver stores numbers beyond 32 bits as doubles), free-form JSON
 * (metadata) an unchecked value, and top-level documents accept fields beyond the model's.
 * @public
 */
export function generateMongoSchema(options: MongoOptions = {}): MongoCollection[] {
  checkNaming({ prefix: options.prefix });
  const specs = options.tables ?? tableSpecs;
  return (Object.keys(specs) as TableKey[]).map((key) => {
    const spec = specs[key];
    const columns = new Map(columnsOf(spec.model).map((c) => [c.field, c]));
    const root = toMongo(modelJsonSchema(spec.model));
    delete root.additionalProperties;
    const properties = root.properties as Record<string, JsonSchemaNode>;
    for (const field of spec.binary ?? []) {
      const node = properties[field];
      if (node !== undefined) properties[field] = withBinData(node);
    }
    if (spec.sparse === true && Array.isArray(root.required))
      root.required = (root.required as string[]).filter((f) => columns.get(f)?.nullable !== true);
    const bsonTypeOf = (field: string): string => {
      const kind = columns.get(field)?.kind;
      if (kind === undefined) throw new Error(`collection ${spec.name}: no field "${field}" in its model`);
      return kind === "datetime"
        ? "date"
        : kind === "integer" || kind === "number"
          ? "number"
          : kind === "boolean"
            ? "bool"
            : "string";
    };
    const filter = (where: readonly IndexCondition[]): Record<string, unknown> =>
      Object.fromEntries(
        where.map((w) => [
          w.field,
          w.op === "gt"
            ? { $gt: w.value }
            : w.op === "eq"
              ? { $eq: w.value }
              : w.op === "isNull"
                ? { $type: "null" }
                : { $type: bsonTypeOf(w.field) },
        ]),
      );
    const indexes: MongoIndex[] = [
      { key: keyOf(spec.primaryKey), name: "pkey", unique: true },
      ...indexesOf(spec).map((index) => ({
        key: keyOf(index.fields),
        name: index.name,
        ...(index.unique ? { unique: true } : {}),
        ...(index.where ? { partialFilterExpression: filter(index.where) } : {}),
      })),
    ];
    return { name: (options.prefix ?? "") + spec.name, validator: { $jsonSchema: root }, indexes };
  });
}

/** A field's node that also accepts BinData (a digest stored as bytes, `TableSpec.binary`). */
function withBinData(node: JsonSchemaNode): JsonSchemaNode {
  if (Array.isArray(node.anyOf))
    return { ...node, anyOf: [...(node.anyOf as JsonSchemaNode[]), { bsonType: "binData" }] };
  const types = node.bsonType === undefined ? [] : Array.isArray(node.bsonType) ? node.bsonType : [node.bsonType];
  return { ...node, bsonType: [...(types as string[]), "binData"] };
}

function keyOf(fields: readonly string[]): Record<string, 1> {
  return Object.fromEntries(fields.map((f) => [f, 1 as const]));
}

const TYPE_TO_BSON: Record<string, string> = {
  string: "string",
  boolean: "bool",
  null: "null",
  object: "object",
  array: "array",
  number: "number",
};

/** Rewrites one JSON Schema node into MongoDB's `$jsonSchema` dialect. */
function toMongo(node: JsonSchemaNode): JsonSchemaNode {
  if (node[DATE_MARKER] === true) return { bsonType: "date" };
  if (typeof node.$ref === "string") return {}; // recursive JSON (metadata): any value
  const out: JsonSchemaNode = {};
  for (const [k, v] of Object.entries(node)) {
    switch (k) {
      case "$schema":
      case "$defs":
      case "definitions":
      case "format":
      case "propertyNames":
      case "id":
      case "default":
        break;
      case "type": {
        const types = (Array.isArray(v) ? v : [v]) as string[];
        const bson = types.flatMap((t) => (t === "integer" ? ["int", "long", "double"] : [TYPE_TO_BSON[t] ?? t]));
        out.bsonType = bson.length === 1 ? bson[0] : bson;
        if (types.includes("integer")) out.multipleOf = 1;
        break;
      }
      case "pattern":
        // MongoDB uses PCRE: \uXXXX is JavaScript-only, \x{XXXX} means the same there.
        out.pattern = String(v).replace(/\\u([0-9a-fA-F]{4})/g, "\\x{$1}");
        break;
      case "properties":
        out.properties = Object.fromEntries(
          Object.entries(v as Record<string, JsonSchemaNode>).map(([p, s]) => [p, toMongo(s)]),
        );
        break;
      case "items":
        out.items = toMongo(v as JsonSchemaNode);
        break;
      case "additionalProperties":
        out.additionalProperties = typeof v === "boolean" ? v : toMongo(v as JsonSchemaNode);
        break;
      case "anyOf":
      case "oneOf":
      case "allOf":
        out[k] = (v as JsonSchemaNode[]).map(toMongo);
        break;
      default:
        out[k] = v;
    }
  }
  return out;
}
