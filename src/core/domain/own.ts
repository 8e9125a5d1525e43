/**
 * `record[key]` when `record` has `key` as its own property; else undefined. The keys of the
 * records the library keeps by a caller's name (units, features, spenders, scopes, alert ids) may
 * be names `Object.prototype` has (`constructor`, `toString`, `valueOf`): a plain `record[key]`
 * would read the prototype's member for a name the record does not hold (docs/units.md).
 */
export function own<V>(record: Readonly<Record<string, V>> | null | undefined, key: string): V | undefined {
  return record != null && Object.hasOwn(record, key) ? record[key] : undefined;
}

/**
 * Sets `record[key]` as an own, enumerable property whatever the key: an assignment with the key
 * `__proto__` would replace the object's prototype and store nothing.
 */
export function setOwn<V>(record: Record<string, V>, key: string, value: V): void {
  Object.defineProperty(record, key, { value, writable: true, enumerable: true, configurable: true });
}
