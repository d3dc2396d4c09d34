/**
 * Flag parsing shared by the CLI and the scripts: node:util parseArgs, plus
 *  - a value that starts with a single dash is taken as the value of the string flag before it
 *    (`--threads -1`, `--text "-x"`); a value starting with `--` must be written `--flag=--value`,
 *    so a missing value never swallows the next flag;
 *  - every parse problem becomes a one-line UsageError (exit code 2).
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

/** A mistake in how the command was called: the CLI prints one line and exits 2. */
export class UsageError extends Error {
    constructor(message: string) {
        super(message);
        this.name = "UsageError";
    }
}

export type FlagOptions = NonNullable<ParseArgsConfig["options"]>;

/** Joins `--flag -value` into `--flag=-value` for string flags when `-value` is not itself a flag of `options`. */
function joinDashValues(argv: readonly string[], options: FlagOptions): string[] {
    const shorts = new Set(Object.values(options).map((o) => o.short).filter((s): s is string => !!s));
    const out: string[] = [];
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i]!;
        out.push(a);
        if (a === "--") {
            out.push(...argv.slice(i + 1));
            break;
        }
        if (!a.startsWith("--") || a.includes("=")) continue;
        const opt = options[a.slice(2)];
        const next = argv[i + 1];
        if (opt?.type !== "string" || next === undefined || !next.startsWith("-") || next.startsWith("--")) continue;
        if (next.length === 2 && shorts.has(next[1]!)) continue;
        out[out.length - 1] = `${a}=${next}`;
        i++;
    }
    return out;
}

/** The values parseFlags returns for `options`. */
export type FlagValues<O extends FlagOptions> = {
    [K in keyof O]?: O[K] extends { type: "boolean" } ? (O[K] extends { multiple: true } ? boolean[] : boolean)
        : O[K] extends { multiple: true } ? string[] : string;
};

/** node:util parseArgs (strict) with dash-leading values and one-line usage errors. */
export function parseFlags<O extends FlagOptions>(argv: readonly string[], options: O, allowPositionals = false): { values: FlagValues<O>; positionals: string[] } {
    try {
        const r = parseArgs({ args: joinDashValues(argv, options), options, strict: true, allowPositionals });
        return { values: r.values as FlagValues<O>, positionals: r.positionals };
    } catch (err) {
        const e = err as Error & { code?: string };
        if (typeof e.code !== "string" || !e.code.startsWith("ERR_PARSE_ARGS")) throw err;
        const flag = /'(-[^' ]+)/.exec(e.message)?.[1];
        if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && flag && /ambiguous|argument missing/.test(e.message)) {
            throw new UsageError(`${flag} needs a value (for a value that starts with "--", write ${flag}=VALUE)`);
        }
        if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && flag) {
            const opt = options[flag.replace(/^-+/, "")];
            throw new UsageError(opt?.type === "boolean" ? `${flag} takes no value` : `${flag} needs a value`);
        }
        if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && flag) throw new UsageError(`unknown option ${flag}`);
        if (e.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
            const arg = /'([^']*)'/.exec(e.message)?.[1];
            throw new UsageError(`unexpected argument ${JSON.stringify(arg ?? "")}`);
        }
        throw new UsageError(e.message.split("\n")[0]!);
    }
}

/** An integer flag (undefined when absent); `min`/`max` are for the scripts' own flags (the library checks its own ranges). */
export function intFlag(name: string, value: string | undefined, min?: number, max?: number): number | undefined {
    if (value === undefined) return undefined;
    if (!/^[+-]?\d+$/.test(value.trim())) throw new UsageError(`--${name} must be an integer, got ${JSON.stringify(value)}`);
    const n = Number(value);
    if ((min !== undefined && n < min) || (max !== undefined && n > max)) {
        throw new UsageError(`--${name} must be ${max === undefined ? `>= ${min}` : `in ${min ?? "-inf"}..${max}`}, got ${value}`);
    }
    return n;
}

/** A number flag (undefined when absent). */
export function numberFlag(name: string, value: string | undefined, min?: number): number | undefined {
    if (value === undefined) return undefined;
    const n = Number(value);
    if (value.trim() === "" || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got ${JSON.stringify(value)}`);
    if (min !== undefined && n < min) throw new UsageError(`--${name} must be >= ${min}, got ${value}`);
    return n;
}

/** A value that must be one of `choices` (undefined when absent). */
export function choiceFlag<T extends string>(name: string, value: string | undefined, choices: readonly T[]): T | undefined {
    if (value === undefined) return undefined;
    if (!(choices as readonly string[]).includes(value)) throw new UsageError(`--${name} must be one of ${choices.join(", ")}, got ${JSON.stringify(value)}`);
    return value as T;
}

/** A comma-separated list whose items must be in `choices`. */
export function listFlag<T extends string>(name: string, value: string | undefined, choices?: readonly T[]): T[] | undefined {
    if (value === undefined) return undefined;
    const items = value.split(",").map((s) => s.trim()).filter(Boolean);
    if (items.length === 0) throw new UsageError(`--${name} needs at least one value`);
    if (choices) for (const it of items) choiceFlag(name, it, choices);
    return items as T[];
}
