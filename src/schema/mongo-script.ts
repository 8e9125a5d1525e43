import {
  MONGO_COLLECTIONS,
  VERSION_COLLECTION,
  droppedIndexesAfter,
  copiedCountsAfter,
  filledFieldsAfter,
  linkedFieldsAfter,
  mongoSteps,
} from "../db/mongodb/layout.js";
import type { JsonSchemaNode } from "./columns.js";
import { generateMongoSchema } from "./mongo.js";
import { SCHEMA_COMPONENT, checkNaming } from "./sql.js";
import { targetVersion } from "./version.js";
import { tableSpecs } from "./tables.js";
import { ConfigurationError } from "../core/errors.js";

/** Options of `generateMongoScript`. @public */
export interface MongoScriptOptions {
  /** Put in front of every collection name, as `MongoDbManager`'s `collectionPrefix` (its default is `"credit_"`). */
  prefix?: string;
  /**
   * The version the store is at now (1 … SCHEMA_VERSION): the script also drops the indexes later
   * versions removed and fills the fields they added. Without it, a fresh install (which still
   * drops such indexes, and fills such fields, where present).
   */
  fromVersion?: number;
}

/**
 * The `$jsonSchema` of a collection's documents as `MongoDbManager` stores them
 * (src/db/mongodb/documents.ts): the id field is `_id`, and an optional field is stored as null.
 */
export function storedValidator(key: keyof typeof MONGO_COLLECTIONS): { $jsonSchema: JsonSchemaNode } {
  const layout = MONGO_COLLECTIONS[key];
  const described = generateMongoSchema().find((c) => c.name === tableSpecs[layout.table].name);
  if (described === undefined) throw new Error(`no model for collection ${layout.name}`);
  const root = structuredClone(described.validator.$jsonSchema);
  const properties = { ...(root.properties as Record<string, JsonSchemaNode>) };
  const required = new Set((root.required as string[] | undefined) ?? []);
  const id = properties[layout.idField];
  if (id !== undefined) {
    delete properties[layout.idField];
    properties._id = id;
  }
  for (const [field, node] of Object.entries(properties)) {
    if (field === "_id" || required.has(field)) continue;
    properties[field] = { anyOf: [node, { bsonType: "null" }] };
  }
  required.delete(layout.idField);
  required.add("_id");
  return { $jsonSchema: withLibraryKeys({ ...root, properties, required: [...required] }) as JsonSchemaNode };
}

/**
 * The models refuse idempotency keys starting with `cm:` from callers because the library keeps
 * that prefix for its own keys (subscriptions, promos, jobs), which it stores: a stored document's
 * validator accepts them.
 */
function withLibraryKeys(node: unknown): unknown {
  if (Array.isArray(node)) {
    const kept = node.filter((n) => !(isRecord(n) && n.pattern === "^(?!cm:)" && Object.keys(n).length === 1));
    return kept.map(withLibraryKeys);
  }
  if (!isRecord(node)) return node;
  return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, withLibraryKeys(v)]));
}

const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

/**
 * A mongosh script (`mongosh "<uri>" --file script.js`) that makes a database hold what
 * `MongoDbManager.init()` makes, for teams that own their database changes and run the manager
 * with `migrate: false`: each collection created (or, when it exists, given its validator with
 * `collMod`), the indexes later versions removed dropped (only with their old keys), the fields
 * they added filled in the documents stored before, every index created, and last the schema-version document. Validators are set with `validationAction:
 * "warn"` (docs/schema-upgrades.md says why). Running it again changes nothing.
 * @public
 */
export function generateMongoScript(options: MongoScriptOptions = {}): string {
  checkNaming({ prefix: options.prefix });
  const from = options.fromVersion;
  const target = targetVersion();
  if (from !== undefined && (!Number.isSafeInteger(from) || from < 1 || from > target)) {
    throw new ConfigurationError(`fromVersion must be a whole number from 1 to ${target}, got ${String(from)}`);
  }
  const prefix = options.prefix ?? "credit_";
  const j = (v: unknown) => JSON.stringify(v);
  const lines: string[] = [
    from === undefined
      ? `// credit-management: MongoDB collections, validators, indexes and schema version ${target} (collection prefix ${j(prefix)}).`
      : `// credit-management: upgrade of the MongoDB collections from schema version ${from} to ${target} (collection prefix ${j(prefix)}).`,
    ...mongoSteps()
      .filter((m) => m.to > (from ?? target))
      .map((m) => `// version ${m.to}: ${m.summary}`),
    `// Run: mongosh "mongodb://…/<database>" --file <this file>. Idempotent.`,
    "",
    "const existing = db.getCollectionNames();",
    "function check(reply, what) {",
    "  if (!reply || reply.ok !== 1) throw new Error(what + ': ' + JSON.stringify(reply));",
    "}",
    "function ensureCollection(name, validator) {",
    "  const options = { validator, validationLevel: 'moderate', validationAction: 'warn' };",
    "  if (existing.includes(name)) check(db.runCommand({ collMod: name, ...options }), 'collMod ' + name);",
    "  else db.createCollection(name, options);",
    "}",
    "function dropIndexIfSame(name, index, key) {",
    "  if (!existing.includes(name)) return;",
    "  const old = db.getCollection(name).getIndexes().find((i) => i.name === index);",
    "  if (old !== undefined && JSON.stringify(old.key) === JSON.stringify(key))",
    "    check(db.runCommand({ dropIndexes: name, index }), 'dropIndexes ' + name + '.' + index);",
    "}",
    "function createIndexes(name, indexes) {",
    "  if (indexes.length > 0) check(db.runCommand({ createIndexes: name, indexes }), 'createIndexes ' + name);",
    "}",
    "",
  ];
  for (const [key, layout] of Object.entries(MONGO_COLLECTIONS) as [
    keyof typeof MONGO_COLLECTIONS,
    (typeof MONGO_COLLECTIONS)[keyof typeof MONGO_COLLECTIONS],
  ][]) {
    lines.push(`ensureCollection(${j(prefix + layout.name)}, ${j(storedValidator(key))});`);
  }
  lines.push(
    `if (!existing.includes(${j(prefix + VERSION_COLLECTION)})) db.createCollection(${j(prefix + VERSION_COLLECTION)});`,
    "",
  );
  for (const dropped of droppedIndexesAfter(from ?? 0)) {
    lines.push(
      `dropIndexIfSame(${j(prefix + MONGO_COLLECTIONS[dropped.collection].name)}, ${j(dropped.name)}, ${j(dropped.key)});`,
    );
  }
  for (const filled of filledFieldsAfter(from ?? 0)) {
    const name = prefix + MONGO_COLLECTIONS[filled.collection].name;
    lines.push(
      `if (existing.includes(${j(name)})) check(db.runCommand(${j({ update: name, updates: [{ q: { [filled.field]: { $exists: false }, ...(filled.where === undefined ? {} : { $expr: filled.where }) }, u: { $set: { [filled.field]: filled.value } }, multi: true }] })}), 'fill ' + ${j(`${name}.${filled.field}`)});`,
    );
  }
  for (const copied of copiedCountsAfter(from ?? 0)) {
    const name = prefix + MONGO_COLLECTIONS[copied.collection].name;
    const filter = {
      [copied.field]: { $exists: false },
      [copied.from]: { $exists: true },
      ...(copied.where === undefined ? {} : { $expr: copied.where }),
    };
    const value = `d${copied.from
      .split(".")
      .map((k) => `?.[${j(k)}]`)
      .join("")}`;
    lines.push(
      `if (existing.includes(${j(name)})) db.getCollection(${j(name)}).find(${j(filter)}).forEach((d) => { const v = ${value}; ` +
        `if (typeof v === "number" && Number.isSafeInteger(v) && v >= 1) db.getCollection(${j(name)}).updateOne({ _id: d._id, ${j(copied.field)}: { $exists: false } }, { $set: { ${j(copied.field)}: v } }); });`,
    );
  }
  for (const linked of linkedFieldsAfter(from ?? 0)) {
    const name = prefix + MONGO_COLLECTIONS[linked.collection].name;
    const source = prefix + MONGO_COLLECTIONS[linked.source].name;
    const named = linked.key === undefined ? `{ ${j(linked.by)}: d._id }` : `{ _id: d[${j(linked.key)}] }`;
    const sourceFilter = linked.key === undefined ? "{}" : `{ ${j(linked.key)}: { $type: "string" } }`;
    lines.push(
      `if (existing.includes(${j(name)}) && existing.includes(${j(source)})) db.getCollection(${j(source)}).find(${sourceFilter}).forEach((d) => ` +
        `db.getCollection(${j(name)}).updateMany({ ...${named}, userId: d.userId, ${j(linked.field)}: { $exists: false }, ...${j(linked.where ?? {})} }, { $set: { ${j(linked.field)}: d._id } }));`,
    );
  }
  for (const layout of Object.values(MONGO_COLLECTIONS)) {
    lines.push(`createIndexes(${j(prefix + layout.name)}, ${j(layout.indexes)});`);
  }
  lines.push(
    "",
    "// Last, once everything else is there ($max: never lowers a newer release's version).",
    `check(db.runCommand({ update: ${j(prefix + VERSION_COLLECTION)}, updates: [{ q: { _id: ${j(SCHEMA_COMPONENT)} }, u: { $max: { version: ${target} }, $set: { updatedAt: new Date() } }, upsert: true }] }), 'schema version');`,
    "",
  );
  return lines.join("\n");
}
