/**
 * What a phi-agent command is made of, for main.ts's COMMANDS table and for commands in their own files:
 * a function of its arguments with a `usage` text, parseCommand (flags + --help), and the shared flag readers.
 */
import { parseFlags, UsageError, type FlagOptions, type FlagValues } from "./args.js";
import { out } from "./process.js";

/** A command: runs with the arguments after its name; `usage` is its --help text (first paragraph: the synopsis). */
export interface Command {
    (argv: string[]): Promise<void>;
    usage?: string;
}

/** Thrown by parseCommand after it printed a command's --help (main exits 0). */
export class HelpShown extends Error {}

export const COMMON_HELP = `--model defaults to $PHI2_MODEL. Devices: auto (default), cpu, cuda, cuda:N, vulkan, vulkan:N, metal.
A value that starts with "--" is written --flag=VALUE. Exit codes: 0 done, 1 failed, 2 usage error,
130 interrupted (Ctrl-C), 141 stdout closed (e.g. piped into head).`;

/** parseArgs for one command (src/cli/args.ts), plus -h/--help: prints `usage` and stops the command. */
export function parseCommand<O extends FlagOptions>(argv: string[], usage: string, options: O, allowPositionals = false):
    { values: FlagValues<O>; positionals: string[] } {
    if (argv.includes("--help") || argv.includes("-h")) {
        out(`Usage: phi-agent ${usage}\n\n${COMMON_HELP}\n`);
        throw new HelpShown();
    }
    return parseFlags(argv, options, allowPositionals);
}

/** --model, or $PHI2_MODEL. */
export function modelPath(value: string | undefined): string {
    const p = value ?? process.env.PHI2_MODEL;
    if (!p) throw new UsageError("--model FILE is required (or set PHI2_MODEL); see models/README.md for where to get a Phi-2 GGUF");
    return p;
}

/** All of stdin as UTF-8 (a usage error on a terminal); rejects when `signal` aborts first. */
export async function readStdin(flag: string, signal?: AbortSignal): Promise<string> {
    if (process.stdin.isTTY) throw new UsageError(`give ${flag} TEXT or pipe it on stdin`);
    const chunks: Buffer[] = [];
    const read = (async () => {
        for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    })();
    if (signal) {
        read.catch(() => undefined); // settled below, or dropped when aborted
        await new Promise<void>((resolve, reject) => {
            const onAbort = () => {
                process.stdin.destroy(); // nothing more to wait for
                reject(signal.reason);
            };
            if (signal.aborted) return onAbort();
            signal.addEventListener("abort", onAbort, { once: true });
            read.then(() => { signal.removeEventListener("abort", onAbort); resolve(); }, reject);
        });
    } else await read;
    return Buffer.concat(chunks).toString("utf8");
}
