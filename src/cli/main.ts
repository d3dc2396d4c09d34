#!/usr/bin/env node
/**
 * phi-agent: the command line of llm-phi-agent.
 *   phi-agent generate --model FILE [--prompt TEXT | stdin] [--max-tokens N] [--temperature T] [--seed S] [--device D] [--threads N] [--json]
 *   phi-agent tokenize --model FILE --text TEXT [--special] [--json]
 *   phi-agent inspect --model FILE [--json]
 *   phi-agent make-test-model --out FILE [--shape tiny|phi2] [--seed N] [--type f32|f16|q8_0|q4_k_m] [--json]
 *   phi-agent quantize --model FILE --out FILE --type q4_k_m|q8_0|... [--json]
 * Errors: exit code 1 (2 for usage errors) and one line on stderr.
 */
import { parseArgs } from "node:util";
import { PhiModel } from "../model/PhiModel.js";
import { listDevices } from "../model/devices.js";
import { isQuantType, quantizeModel, QUANT_TYPES } from "../model/quantize.js";
import { inspectGGUF } from "../gguf/validate.js";
import { makeTestModel, TEST_MODEL_SHAPES, TEST_MODEL_TYPES, type TestModelShape, type TestModelType } from "../testModel/makeTestModel.js";
import type { DeviceSpec, LoadOptions } from "../model/types.js";
import { progressBar } from "./progress.js";

class UsageError extends Error {}

const USAGE = `Usage: phi-agent <command> [options]

Commands:
  generate         --model FILE [--prompt TEXT | stdin] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
                   [--seed S] [--stop TEXT]... [--device D] [--threads N] [--context-size N]
                   [--flash-attention auto|on|off] [--no-repack] [--json]
  tokenize         --model FILE --text TEXT [--special] [--json]
  inspect          --model FILE [--device D] [--json]
  make-test-model  --out FILE [--shape tiny|phi2] [--seed N] [--type f32|f16|q8_0|q4_k_m] [--json]
  quantize         --model FILE --out FILE --type ${Object.keys(QUANT_TYPES).join("|")} [--threads N] [--json]

--model defaults to $PHI2_MODEL. Devices: auto (default), cpu, cuda, cuda:N, vulkan, vulkan:N, metal.`;

function int(name: string, value: string | undefined): number | undefined {
    if (value === undefined) return undefined;
    if (!/^-?\d+$/.test(value.trim())) throw new UsageError(`--${name} must be an integer, got "${value}"`);
    return Number(value);
}

function float(name: string, value: string | undefined): number | undefined {
    if (value === undefined) return undefined;
    const n = Number(value);
    if (value.trim() === "" || Number.isNaN(n)) throw new UsageError(`--${name} must be a number, got "${value}"`);
    return n;
}

function modelPath(value: string | undefined): string {
    const p = value ?? process.env.PHI2_MODEL;
    if (!p) throw new UsageError("--model FILE is required (or set PHI2_MODEL); see models/README.md for where to get a Phi-2 GGUF");
    return p;
}

async function readStdin(): Promise<string> {
    if (process.stdin.isTTY) throw new UsageError("give --prompt TEXT or pipe the prompt on stdin");
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
}

async function generate(argv: string[]): Promise<void> {
    const { values } = parseArgs({
        args: argv, strict: true,
        options: {
            model: { type: "string" }, prompt: { type: "string" }, "max-tokens": { type: "string" },
            temperature: { type: "string" }, "top-k": { type: "string" }, "top-p": { type: "string" },
            seed: { type: "string" }, stop: { type: "string", multiple: true }, device: { type: "string" },
            threads: { type: "string" }, "context-size": { type: "string" }, "flash-attention": { type: "string" },
            "no-repack": { type: "boolean" }, json: { type: "boolean" },
        },
    });
    const prompt = values.prompt ?? (await readStdin());
    const abort = new AbortController();
    process.once("SIGINT", () => abort.abort());
    const model = await PhiModel.load({
        modelPath: modelPath(values.model),
        device: values.device as DeviceSpec | undefined,
        threads: int("threads", values.threads),
        contextSize: int("context-size", values["context-size"]),
        flashAttention: values["flash-attention"] as LoadOptions["flashAttention"],
        ...(values["no-repack"] ? { repack: false } : {}),
        signal: abort.signal,
    });
    try {
        const options = {
            maxTokens: int("max-tokens", values["max-tokens"]) ?? 128,
            temperature: float("temperature", values.temperature),
            topK: int("top-k", values["top-k"]),
            topP: float("top-p", values["top-p"]),
            seed: int("seed", values.seed),
            stop: values.stop,
            signal: abort.signal,
            stopOnAbort: true,
        };
        if (values.json) {
            const r = await model.generate(prompt, options);
            process.stdout.write(JSON.stringify({ text: r.text, tokens: r.tokens, finishReason: r.finishReason, usage: r.usage }) + "\n");
        } else {
            const stream = model.stream(prompt, options);
            for await (const chunk of stream) process.stdout.write(chunk.text);
            const r = await stream.result;
            process.stdout.write("\n");
            const tps = r.usage.generationMs > 0 ? ((r.usage.completionTokens - 1) * 1000) / r.usage.generationMs : 0;
            process.stderr.write(`[${r.finishReason}; ${r.usage.promptTokens} prompt + ${r.usage.completionTokens} generated tokens; ${tps.toFixed(1)} tok/s]\n`);
        }
    } finally {
        await model.dispose();
    }
}

async function tokenize(argv: string[]): Promise<void> {
    const { values } = parseArgs({
        args: argv, strict: true,
        options: { model: { type: "string" }, text: { type: "string" }, special: { type: "boolean" }, device: { type: "string" }, json: { type: "boolean" } },
    });
    const text = values.text ?? (await readStdin());
    const model = await PhiModel.load({ modelPath: modelPath(values.model), device: (values.device ?? "cpu") as DeviceSpec, contextSize: 64 });
    try {
        const tokens = model.tokenize(text, { special: values.special ?? false });
        if (values.json) process.stdout.write(JSON.stringify({ tokens }) + "\n");
        else process.stdout.write(tokens.join(" ") + "\n");
    } finally {
        await model.dispose();
    }
}

async function inspect(argv: string[]): Promise<void> {
    const { values } = parseArgs({ args: argv, strict: true, options: { model: { type: "string" }, device: { type: "string" }, json: { type: "boolean" } } });
    const { summary } = await inspectGGUF(modelPath(values.model));
    const devices = listDevices({ device: values.device });
    const out = { ...summary, devices };
    if (values.json) {
        process.stdout.write(JSON.stringify(out) + "\n");
        return;
    }
    const rows: [string, unknown][] = [
        ["file", summary.path], ["size", `${(summary.fileSize / 1e6).toFixed(1)} MB`], ["architecture", summary.architecture],
        ["name", summary.name], ["file type", summary.fileType], ["parameters", summary.parameterCount.toLocaleString("en-US")],
        ["context length", summary.contextLength], ["embedding length", summary.embeddingLength], ["layers", summary.layers],
        ["heads", summary.heads], ["vocab size", summary.vocabSize], ["phi2 check", summary.phi2Problem ?? "ok"],
    ];
    for (const [k, v] of rows) process.stdout.write(`${k.padEnd(18)}${String(v)}\n`);
    for (const d of devices) process.stdout.write(`${"device".padEnd(18)}${d.name} (${d.backend}, ${d.type}) ${d.description} ${(d.memoryTotal / 2 ** 30).toFixed(1)} GiB\n`);
}

async function makeModel(argv: string[]): Promise<void> {
    const { values } = parseArgs({
        args: argv, strict: true,
        options: { out: { type: "string" }, shape: { type: "string" }, seed: { type: "string" }, type: { type: "string" }, json: { type: "boolean" } },
    });
    if (!values.out) throw new UsageError("--out FILE is required");
    const shape = (values.shape ?? "tiny") as TestModelShape;
    if (!TEST_MODEL_SHAPES.includes(shape)) throw new UsageError(`--shape must be one of ${TEST_MODEL_SHAPES.join(", ")}, got "${values.shape}"`);
    const type = (values.type ?? "f32") as TestModelType;
    if (!TEST_MODEL_TYPES.includes(type)) throw new UsageError(`--type must be one of ${TEST_MODEL_TYPES.join(", ")}, got "${values.type}"`);
    const bar = values.json ? undefined : progressBar(`writing ${values.out}`);
    const result = await makeTestModel({ out: values.out, shape, type, seed: int("seed", values.seed) ?? 1, onProgress: bar?.update });
    bar?.done();
    if (values.json) process.stdout.write(JSON.stringify(result) + "\n");
    else process.stdout.write(`wrote ${result.path} (${shape}, ${type}, seed ${result.seed}, ${(result.bytes / 1e6).toFixed(1)} MB; random weights: its text is noise)\n`);
}

async function quantize(argv: string[]): Promise<void> {
    const { values } = parseArgs({
        args: argv, strict: true,
        options: { model: { type: "string" }, out: { type: "string" }, type: { type: "string" }, threads: { type: "string" }, json: { type: "boolean" } },
    });
    if (!values.out) throw new UsageError("--out FILE is required");
    if (!isQuantType(values.type)) throw new UsageError(`--type must be one of ${Object.keys(QUANT_TYPES).join(", ")}`);
    const started = Date.now();
    await quantizeModel(modelPath(values.model), values.out, { type: values.type, threads: int("threads", values.threads) });
    const result = { out: values.out, type: values.type, seconds: (Date.now() - started) / 1000 };
    process.stdout.write(values.json ? JSON.stringify(result) + "\n" : `wrote ${values.out} (${values.type}) in ${result.seconds.toFixed(1)} s\n`);
}

const COMMANDS: Record<string, (argv: string[]) => Promise<void>> = {
    generate, tokenize, inspect, "make-test-model": makeModel, quantize,
};

export async function main(argv: string[]): Promise<number> {
    const [command, ...rest] = argv;
    if (!command || command === "--help" || command === "-h" || command === "help") {
        process.stdout.write(USAGE + "\n");
        return command ? 0 : 2;
    }
    const run = COMMANDS[command];
    try {
        if (!run) throw new UsageError(`unknown command "${command}"; commands: ${Object.keys(COMMANDS).join(", ")}`);
        await run(rest);
        return 0;
    } catch (err) {
        const e = err as Error & { code?: string };
        const usage = err instanceof UsageError || e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" || e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" || e.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL";
        const firstLine = e.message.split("\n")[0];
        const code = e.code && !e.code.startsWith("ERR_PARSE_ARGS") ? ` [${e.code}]` : "";
        process.stderr.write(`phi-agent ${command}: ${usage ? "usage: " : ""}${e.name && e.name !== "Error" && !usage ? e.name + ": " : ""}${firstLine}${code}\n`);
        return usage ? 2 : 1;
    }
}

const isMain = process.argv[1] !== undefined && import.meta.url === new URL(`file://${(await import("node:fs")).realpathSync(process.argv[1])}`).href;
if (isMain) process.exitCode = await main(process.argv.slice(2));
