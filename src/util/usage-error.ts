import { ConfigurationError } from "../core/errors.js";

/**
 * A mistake in a command's flags or in a setting it reads from the environment (docs/cli.md): a
 * `ConfigurationError` the CLI prints with where the command's help is, exiting 2. Every command
 * (and `serve`'s, the worker's and the payment settings they share) throws this one class.
 */
export class UsageError extends ConfigurationError {}
