import { SYSTEM_KEY_PREFIX } from "../models/common.js";

/** The library's own idempotency key for `key`, in the namespace clients' keys cannot reach. */
export const systemKey = (key: string): string => `${SYSTEM_KEY_PREFIX}${key}`;
