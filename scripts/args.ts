/**
 * Argument parsing for the scripts: node:util parseArgs through the CLI's parseFlags (src/cli/args.ts), so a flag
 * never takes the next flag as its value, `--flag -1` and `--flag=-1` both work, and every mistake is one line plus
 * the script's usage on stderr, exit code 2.
 */
import { parseFlags, UsageError, type FlagOptions, type FlagValues } from "../src/cli/args.js";

export { choiceFlag, intFlag, listFlag, numberFlag, UsageError } from "../src/cli/args.js";

/**
 * Parses `argv` against `options` (plus -h/--help, which prints `usage` and exits 0) and hands the values to
 * `read`, which turns them into the script's settings; a UsageError from either exits 2 with one line and the usage.
 */
export function scriptArgs<O extends FlagOptions, T>(name: string, usage: string, options: O, read: (values: FlagValues<O>) => T,
    argv: readonly string[] = process.argv.slice(2)): T {
    if (argv.includes("--help") || argv.includes("-h")) {
        process.stdout.write(usage + "\n");
        process.exit(0);
    }
    try {
        return read(parseFlags(argv, options).values);
    } catch (err) {
        if (!(err instanceof UsageError)) throw err;
        process.stderr.write(`${name}: ${err.message}\n${usage}\n`);
        process.exit(2);
    }
}
