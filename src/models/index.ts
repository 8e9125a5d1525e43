export * from "./common.js";
export * from "./entities.js";
export * from "./inputs.js";
export { parse } from "./parse.js";
export * from "./promos.js";
export * from "./payments.js";
export * from "./notifications.js";
export * from "./metering.js";
