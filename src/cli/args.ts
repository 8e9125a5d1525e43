import { parseArgs, type ParseArgsConfig } from "node:util";
import type { DbManager } from "../core/db/types.js";
import { MissingDriverError } from "../serve/store.js";
import { UsageError } from "../util/usage-error.js";

type Flags = NonNullable<ParseArgsConfig["options"]>;

/**
 * A command's flags (`options`, as node's `parseArgs` takes them) and its positionals. An unknown
 * flag or a flag without its value throws: bad usage (`exitCodeOf`).
 */
export function parseCommandLine<const O extends Flags>(
  args: readonly string[],
  options: O,
): ReturnType<typeof parseArgs<{ args: string[]; allowPositionals: true; strict: true; options: O }>> {
  return parseArgs({ args: [...args], allowPositionals: true, strict: true, options });
}

/** Whether `error` is node's `parseArgs` refusing the command line (an unknown flag, a missing value): bad usage. */
export function isParseArgsError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_");
}

/** The account a command names does not exist (exit code 3). */
export class NoSuchAccountError extends Error {}

/** Throws `NoSuchAccountError` when `db` has no account `userId`. */
export async function requireAccount(db: DbManager, userId: string): Promise<void> {
  if ((await db.getAccount(userId)) === null) throw new NoSuchAccountError(`no such account ${JSON.stringify(userId)}`);
}

/** A number flag (`--amount`); the library checks its range. */
export function numberOf(text: string, flag: string): number {
  if (!/^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(e[+-]?[0-9]+)?$/i.test(text.trim()))
    throw new UsageError(`${flag} must be a number, not ${JSON.stringify(text)}`);
  return Number(text);
}

/**
 * The exit code of a command that failed (docs/cli.md), its message on standard error: 3 for an
 * account that does not exist, or for the default store without its driver (better-sqlite3,
 * docs/service.md); 2 for bad usage (with where the help of `command` is: the list of commands
 * when undefined) or for input the library refused before it changed anything (`refused`: its
 * `ValidationError`, …); 1 otherwise.
 */
export function exitCodeOf(
  error: unknown,
  io: { stderr: (text: string) => void },
  command: string | undefined,
  refused: (error: unknown) => boolean = () => false,
): number {
  if (error instanceof NoSuchAccountError || error instanceof MissingDriverError) {
    io.stderr(`credit-management: ${error.message}\n`);
    return 3;
  }
  if (error instanceof UsageError || isParseArgsError(error)) {
    // node's parseArgs explains how to pass values that start with "-": keep its first sentence.
    const message = error instanceof UsageError ? error.message : ((error as Error).message.split(". ")[0] ?? "");
    const help = command === undefined ? "credit-management --help" : `credit-management ${command} --help`;
    io.stderr(`credit-management: ${message}\nRun "${help}" for usage.\n`);
    return 2;
  }
  if (refused(error)) {
    io.stderr(`credit-management: ${(error as Error).message}\n`);
    return 2;
  }
  io.stderr(`credit-management: ${error instanceof Error ? error.message : String(error)}\n`);
  return 1;
}
