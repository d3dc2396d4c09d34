#!/usr/bin/env node
/**
 * phi-agent: the command line of llm-phi-agent.
 *   phi-agent generate --model FILE [--prompt TEXT | stdin] [--max-tokens N] [--temperature T] [--seed S] [--device D] [--threads N]
 *                      [--json-schema FILE|JSON | --grammar FILE] [--json]
 *   phi-agent tokenize --model FILE --text TEXT [--special] [--json]
 *   phi-agent inspect --model FILE [--json]
 *   phi-agent make-test-model --out FILE [--shape tiny|phi2] [--seed N] [--type f32|f16|q8_0|q4_k_m] [--json]
 *   phi-agent quantize --model FILE --out FILE --type q4_k_m|q8_0|... [--json]
 *   phi-agent serve --model FILE [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--parallel N] [--device D] [--threads N] ...
 *   phi-agent agent --redis URL --guild GUILD_ID --model FILE [--agent-id phi_agent] [--agent-name "Phi-2 LLM"] [--device D] [--threads N] ...
 * Errors: one line on stderr; exit code 1, 2 for usage errors (bad flags or values), 130 after Ctrl-C, 141 when
 * stdout is closed by its reader. Every command takes --help; phi-agent --version prints the version.
 */
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { OutputPathError } from "../errors.js";
import { PhiModel } from "../model/PhiModel.js";
import { resolveOutputOptions } from "../model/options.js";
import { listDevices } from "../model/devices.js";
import { isQuantType, quantizeModel, QUANT_TYPES } from "../model/quantize.js";
import { inspectGGUF } from "../gguf/validate.js";
import { packageRoot } from "../native/binding.js";
import { makeTestModel, TEST_MODEL_SHAPES, TEST_MODEL_TYPES } from "../testModel/makeTestModel.js";
import type { DeviceSpec, LoadOptions } from "../model/types.js";
import { choiceFlag, intFlag, numberFlag, UsageError } from "./args.js";
import { COMMON_HELP, HelpShown, modelPath, parseCommand, readStdin, type Command } from "./command.js";
import { exitOverride, installProcessHandlers, interruptSignal, out, stdoutClosed } from "./process.js";
import { progressBar } from "./progress.js";
import { serve } from "./serve.js";
import { agent } from "./agent.js";

export { UsageError } from "./args.js";
export { HelpShown, parseCommand, type Command } from "./command.js";

const int = (name: string, value: string | undefined) => intFlag(name, value);
const float = (name: string, value: string | undefined) => numberFlag(name, value);

/** The library's "pass { overwrite: true }" is --force here. */
function withForceHint(err: unknown, out: string): never {
    if (err instanceof OutputPathError && err.code === "ERR_OUTPUT_EXISTS") {
        throw new OutputPathError("ERR_OUTPUT_EXISTS", `${out} already exists; pass --force to replace it`, err.path);
    }
    throw err;
}

async function generate(argv: string[]): Promise<void> {
    const { values } = parseCommand(argv, generate.usage!, {
        model: { type: "string" }, prompt: { type: "string" }, "max-tokens": { type: "string" },
        temperature: { type: "string" }, "top-k": { type: "string" }, "top-p": { type: "string" },
        seed: { type: "string" }, stop: { type: "string", multiple: true }, device: { type: "string" },
        threads: { type: "string" }, "context-size": { type: "string" }, "flash-attention": { type: "string" },
        "no-repack": { type: "boolean" }, json: { type: "boolean" }, progress: { type: "boolean" },
        "json-schema": { type: "string" }, grammar: { type: "string" },
    });
    // Every flag is read before the prompt and the model, so a bad value is a usage error before any work.
    const file = modelPath(values.model);
    const load: LoadOptions = {
        modelPath: file,
        device: values.device as DeviceSpec | undefined,
        threads: int("threads", values.threads),
        contextSize: int("context-size", values["context-size"]),
        flashAttention: choiceFlag("flash-attention", values["flash-attention"], ["auto", "on", "off"] as const),
        ...(values["no-repack"] ? { repack: false } : {}),
    };
    const signal = interruptSignal();
    const options = {
        maxTokens: int("max-tokens", values["max-tokens"]) ?? 128,
        temperature: float("temperature", values.temperature),
        topK: int("top-k", values["top-k"]),
        topP: float("top-p", values["top-p"]),
        seed: int("seed", values.seed),
        stop: values.stop,
        signal,
        stopOnAbort: true,
        ...typedOutput(values["json-schema"], values.grammar),
    };
    const prompt = values.prompt ?? (await readStdin("--prompt", signal));
    // The load line: on stderr, redrawn in place when stderr is a terminal (or always with --progress); never on stdout.
    const bar = values.progress || process.stderr.isTTY ? progressBar(`loading ${path.basename(file)}`, true) : undefined;
    bar?.update(0);
    let model: PhiModel;
    try {
        model = await PhiModel.load({ ...load, signal, ...(bar ? { onProgress: (f: number) => bar.update(f) } : {}) });
    } finally {
        bar?.done();
    }
    try {
        if (values.json) {
            const r = await model.generate(prompt, options);
            out(JSON.stringify({ text: r.text, ...(r.json !== undefined ? { json: r.json } : {}), tokens: r.tokens, finishReason: r.finishReason, usage: r.usage }) + "\n");
        } else {
            const stream = model.stream(prompt, options);
            for await (const chunk of stream) out(chunk.text);
            const r = await stream.result;
            out("\n");
            if (stdoutClosed()) return; // its reader is gone: end quietly
            const tps = r.usage.generationMs > 0 ? ((r.usage.completionTokens - 1) * 1000) / r.usage.generationMs : 0;
            process.stderr.write(`[${r.finishReason}; ${r.usage.promptTokens} prompt + ${r.usage.completionTokens} generated tokens; ${tps.toFixed(1)} tok/s]\n`);
        }
    } finally {
        await model.dispose();
    }
}
generate.usage = `generate --model FILE [--prompt TEXT | stdin] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
                 [--seed S] [--stop TEXT]... [--device D] [--threads N] [--context-size N]
                 [--flash-attention auto|on|off] [--no-repack] [--json-schema FILE|JSON | --grammar FILE]
                 [--progress] [--json]

Generates a continuation of the prompt (--max-tokens defaults to 128) and streams it to stdout; a summary line
goes to stderr. --json prints one JSON object { text, json?, tokens, finishReason, usage } instead. While the model
loads, a progress line is drawn on stderr when stderr is a terminal (--progress: always).
--json-schema constrains the output to JSON that validates against the schema (a file, or the schema's JSON
text itself); --grammar to a GBNF grammar file (start rule "root"). README "Typed output".`;

/** --json-schema FILE|JSON and --grammar FILE as generate() options, checked before the model loads. */
function typedOutput(schemaFlag: string | undefined, grammarFile: string | undefined): { jsonSchema?: Record<string, unknown> | boolean; grammar?: string } {
    if (schemaFlag !== undefined && grammarFile !== undefined) throw new UsageError("give --json-schema or --grammar, not both");
    const read = (flag: string, file: string) => {
        try {
            return fs.readFileSync(file, "utf8");
        } catch (err) {
            throw new UsageError(`${flag}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
        }
    };
    if (schemaFlag !== undefined) {
        const inline = /^\s*[{[]|^\s*(true|false)\s*$/.test(schemaFlag);
        const text = inline ? schemaFlag : read("--json-schema", schemaFlag);
        let jsonSchema: unknown;
        try {
            jsonSchema = JSON.parse(text);
        } catch (err) {
            throw new UsageError(`--json-schema: ${inline ? "the schema" : schemaFlag} is not JSON (${(err as Error).message})`);
        }
        resolveOutputOptions(jsonSchema, undefined, { jsonSchema: "--json-schema", grammar: "--grammar" });
        return { jsonSchema: jsonSchema as Record<string, unknown> | boolean };
    }
    if (grammarFile !== undefined) {
        const grammar = read("--grammar", grammarFile);
        resolveOutputOptions(undefined, grammar, { jsonSchema: "--json-schema", grammar: "--grammar" });
        return { grammar };
    }
    return {};
}

async function tokenize(argv: string[]): Promise<void> {
    const { values } = parseCommand(argv, tokenize.usage!, {
        model: { type: "string" }, text: { type: "string" }, special: { type: "boolean" }, device: { type: "string" }, json: { type: "boolean" },
    });
    const file = modelPath(values.model);
    const text = values.text ?? (await readStdin("--text"));
    const model = await PhiModel.load({ modelPath: file, device: (values.device ?? "cpu") as DeviceSpec, contextSize: 64 });
    try {
        const tokens = model.tokenize(text, { special: values.special ?? false });
        if (values.json) out(JSON.stringify({ tokens }) + "\n");
        else out(tokens.join(" ") + "\n");
    } finally {
        await model.dispose();
    }
}
tokenize.usage = `tokenize --model FILE [--text TEXT | stdin] [--special] [--device D] [--json]

Prints the token ids of the text (--special: parse special tokens such as <|endoftext|>).`;

async function inspect(argv: string[]): Promise<void> {
    const { values } = parseCommand(argv, inspect.usage!, { model: { type: "string" }, device: { type: "string" }, json: { type: "boolean" } });
    const { summary } = await inspectGGUF(modelPath(values.model));
    const devices = listDevices({ device: values.device });
    const result = { ...summary, devices };
    if (values.json) {
        out(JSON.stringify(result) + "\n");
        return;
    }
    const rows: [string, unknown][] = [
        ["file", summary.path], ["size", `${(summary.fileSize / 2 ** 20).toFixed(1)} MiB`], ["architecture", summary.architecture],
        ["name", summary.name], ["file type", summary.fileType], ["parameters", summary.parameterCount.toLocaleString("en-US")],
        ["context length", summary.contextLength], ["embedding length", summary.embeddingLength], ["layers", summary.layers],
        ["heads", summary.heads], ["vocab size", summary.vocabSize], ["phi2 check", summary.phi2Problem ?? "ok"],
    ];
    for (const [k, v] of rows) out(`${k.padEnd(18)}${String(v)}\n`);
    for (const d of devices) out(`${"device".padEnd(18)}${d.name} (${d.backend}, ${d.type}) ${d.description} ${(d.memoryTotal / 2 ** 30).toFixed(1)} GiB\n`);
}
inspect.usage = `inspect --model FILE [--device D] [--json]

Reads the GGUF's header with our own reader (no llama.cpp) and lists the devices.`;

async function makeModel(argv: string[]): Promise<void> {
    const { values } = parseCommand(argv, makeModel.usage!, {
        out: { type: "string" }, shape: { type: "string" }, seed: { type: "string" }, type: { type: "string" },
        force: { type: "boolean" }, json: { type: "boolean" },
    });
    if (!values.out) throw new UsageError("--out FILE is required");
    const shape = choiceFlag("shape", values.shape, TEST_MODEL_SHAPES) ?? "tiny";
    const type = choiceFlag("type", values.type, TEST_MODEL_TYPES) ?? "f32";
    const seed = intFlag("seed", values.seed, 0, 0xffffffff) ?? 1;
    const bar = values.json ? undefined : progressBar(`writing ${values.out}`);
    const result = await makeTestModel({ out: values.out, shape, type, seed, overwrite: values.force === true, ...(bar ? { onProgress: bar.update } : {}) })
        .catch((err: unknown) => withForceHint(err, values.out!));
    bar?.done();
    if (values.json) out(JSON.stringify(result) + "\n");
    else out(`wrote ${result.path} (${shape}, ${type}, seed ${result.seed}, ${(result.bytes / 2 ** 20).toFixed(1)} MiB; random weights: its text is noise)\n`);
}
makeModel.usage = `make-test-model --out FILE [--shape ${TEST_MODEL_SHAPES.join("|")}] [--seed N] [--type ${TEST_MODEL_TYPES.join("|")}] [--force] [--json]

Writes a phi2-architecture GGUF with seeded random weights and the real Phi-2 vocabulary (its text is noise).
An existing FILE is replaced only with --force.`;

async function quantize(argv: string[]): Promise<void> {
    const { values } = parseCommand(argv, quantize.usage!, {
        model: { type: "string" }, out: { type: "string" }, type: { type: "string" }, threads: { type: "string" },
        force: { type: "boolean" }, json: { type: "boolean" },
    });
    if (!values.out) throw new UsageError("--out FILE is required");
    if (!isQuantType(values.type)) throw new UsageError(`--type must be one of ${Object.keys(QUANT_TYPES).join(", ")}`);
    const started = Date.now();
    await quantizeModel(modelPath(values.model), values.out, { type: values.type, threads: int("threads", values.threads), overwrite: values.force === true })
        .catch((err: unknown) => withForceHint(err, values.out!));
    const result = { out: values.out, type: values.type, seconds: (Date.now() - started) / 1000 };
    out(values.json ? JSON.stringify(result) + "\n" : `wrote ${values.out} (${values.type}) in ${result.seconds.toFixed(1)} s\n`);
}
quantize.usage = `quantize --model FILE --out FILE --type ${Object.keys(QUANT_TYPES).join("|")} [--threads N] [--force] [--json]

Quantizes a phi2 GGUF with llama.cpp's own quantizer. An existing --out is replaced only with --force, and the
input file is never replaced.`;

/** name → command. A new command is one line here (its `usage` feeds the help). */
const COMMANDS: Record<string, Command> = {
    generate, tokenize, inspect, "make-test-model": makeModel, quantize, serve, agent,
};

function version(): string {
    return (JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { version: string }).version;
}

function usage(): string {
    const lines = Object.entries(COMMANDS).map(([name, cmd]) => {
        const synopsis = (cmd.usage ?? name).split("\n\n")[0]!.replace(/^\S+\s*/, "").replace(/\n\s*/g, `\n${" ".repeat(19)}`);
        return `  ${name.padEnd(17)}${synopsis}`;
    });
    return `Usage: phi-agent <command> [options]     (phi-agent <command> --help for one command)

Commands:
${lines.join("\n")}

${COMMON_HELP}
phi-agent --version prints the version.`;
}

/** Bad values of flags are usage errors (exit 2): the library's argument errors, and ours. */
function isUsageError(err: unknown): boolean {
    return err instanceof UsageError || err instanceof TypeError || err instanceof RangeError ||
        (err as { code?: unknown } | null)?.code === "ERR_INVALID_ARGUMENT";
}

export async function main(argv: string[]): Promise<number> {
    installProcessHandlers();
    const [command, ...rest] = argv;
    if (command === "--version" || command === "-v" || command === "version") {
        out(version() + "\n");
        return 0;
    }
    if (!command || command === "--help" || command === "-h" || command === "help") {
        (command ? out : (t: string) => process.stderr.write(t))(usage() + "\n");
        return command ? 0 : 2;
    }
    const run = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
    try {
        if (!run) throw new UsageError(`unknown command "${command}"; commands: ${Object.keys(COMMANDS).join(", ")} (phi-agent --help)`);
        await run(rest);
        return exitOverride() ?? 0;
    } catch (err) {
        if (err instanceof HelpShown) return 0;
        const fate = exitOverride();
        if (fate !== undefined) return fate; // Ctrl-C or a closed stdout: quiet, as Unix tools are
        const e = err as Error & { code?: string };
        const usageErr = isUsageError(err);
        const firstLine = String(e?.message ?? err).split("\n")[0];
        const code = e?.code ? ` [${e.code}]` : "";
        const name = !usageErr && e?.name && e.name !== "Error" ? e.name + ": " : "";
        const hint = err instanceof UsageError ? ` (phi-agent ${command} --help)` : "";
        process.stderr.write(`phi-agent ${command}: ${usageErr ? "usage: " : ""}${name}${firstLine}${code}${hint}\n`);
        return usageErr ? 2 : 1;
    }
}

// Run when this file is the program (also through npm's bin link, and from a path with #, % or ? in it).
const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href;
if (isMain) process.exitCode = await main(process.argv.slice(2));
