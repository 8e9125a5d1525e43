/**
 * Changes every field of `value` in place, as a careless caller might: numbers, strings and
 * booleans, Dates (`setTime`), arrays and nested objects. For the "hands out copies" tests.
 */
export function scribble(value: unknown): void {
  if (value === null || typeof value !== "object") return;
  if (value instanceof Date) {
    value.setTime(value.getTime() + 1);
    return;
  }
  if (Array.isArray(value)) {
    for (const v of value) scribble(v);
    value.push("scribbled");
    return;
  }
  const o = value as Record<string, unknown>;
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === "number") o[k] = v + 1;
    else if (typeof v === "string") o[k] = `${v}!`;
    else if (typeof v === "boolean") o[k] = !v;
    else if (v === null) o[k] = "scribbled";
    else scribble(v);
  }
  o.scribbled = true;
}
