/**
 * Validation of PhiModel's options and arguments, with messages that name the option, the value and the fix.
 * Bad types are PhiTypeError, bad values PhiRangeError (instanceof TypeError / RangeError, as JS callers expect
 * from argument checks, with code ERR_INVALID_ARGUMENT). Ranges come from ./limits.ts, defaults from the
 * LOAD_DEFAULTS / GENERATE_DEFAULTS objects below: the one definition of each.
 */
import os from "node:os";
import { PhiRangeError, PhiTypeError } from "../errors.js";
import type { Phi2HParams } from "../gguf/validate.js";
import { parseDevice, type ParsedDevice } from "./devices.js";
import { checkGbnf, type GbnfTokenRef } from "../grammar/gbnf.js";
import { jsonSchemaToGbnf } from "../grammar/jsonSchema.js";
import { OPTION_SCHEMAS, OUTPUT_SCHEMAS, kvCacheBytes, sequencesProblem, threadLimit, type NumericOption } from "./limits.js";
import type { DeviceSpec, GenerateOptions } from "./types.js";

/** Defaults of PhiModel.load() options (contextSize: the model's training context; threads: defaultThreads()). */
export const LOAD_DEFAULTS = Object.freeze({
    gpuLayers: "all" as const,
    sequences: 8,
    batchSize: 512,
    threadpool: true,
    flashAttention: "auto" as const,
    mmap: true,
    /** Chosen from measurements: README "Speed, memory and load time". */
    repack: true,
    /**
     * KV cells of decoded prompts kept for reuse (README "Prompt cache"): one Phi-2 context's worth, so a preamble
     * up to the whole context is reused. They are evicted whenever calls need the cells.
     */
    promptCacheSize: 2048,
});

/**
 * Defaults of generate() options: greedy, no penalties, no limit but the context. The native engine has none of
 * its own (its submit() requires every field); `seed` is random per call when not given.
 */
export const GENERATE_DEFAULTS = Object.freeze({
    maxTokens: -1, // -1 = until EOS or the end of the context
    temperature: 0,
    topK: 0,
    topP: 1,
    minP: 0,
    repeatPenalty: 1,
    presencePenalty: 0,
    frequencyPenalty: 0,
    repeatLastN: 64,
    logprobs: -1, // -1 = off
    truncate: "error" as const,
    stopOnAbort: false,
});

function show(value: unknown): string {
    if (typeof value === "string") return JSON.stringify(value);
    if (typeof value === "bigint") return `${value}n`;
    try {
        return typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
    } catch {
        return String(value);
    }
}

export function checkInteger(name: string, value: unknown, min: number, max: number): number {
    if (typeof value !== "number") throw new PhiTypeError(`Expected "${name}" to be an integer, got ${typeof value} ${show(value)}`);
    if (!Number.isInteger(value)) throw new PhiRangeError(`Expected "${name}" to be an integer, got ${show(value)}`);
    if (value < min || value > max) throw new PhiRangeError(`Expected "${name}" to be between ${min} and ${max}, got ${value}`);
    return value;
}

export function checkNumber(name: string, value: unknown, min: number, max: number, { minExclusive = false } = {}): number {
    if (typeof value !== "number") throw new PhiTypeError(`Expected "${name}" to be a number, got ${typeof value} ${show(value)}`);
    if (!Number.isFinite(value)) throw new PhiRangeError(`Expected "${name}" to be a finite number, got ${value}`);
    if ((minExclusive ? value <= min : value < min) || value > max) {
        throw new PhiRangeError(`Expected "${name}" to be ${minExclusive ? "greater than" : "at least"} ${min} and at most ${max}, got ${value}`);
    }
    return value;
}

/** Checks a numeric option against its schema in ./limits.ts (integer or number, minimum or exclusiveMinimum, maximum). */
export function checkOption(name: NumericOption, value: unknown, label: string = name): number {
    const schema = OPTION_SCHEMAS[name] as { type: string; minimum?: number; exclusiveMinimum?: number; maximum: number };
    if (schema.type === "integer") return checkInteger(label, value, schema.minimum!, schema.maximum);
    return schema.exclusiveMinimum !== undefined
        ? checkNumber(label, value, schema.exclusiveMinimum, schema.maximum, { minExclusive: true })
        : checkNumber(label, value, schema.minimum!, schema.maximum);
}

function checkBoolean(name: string, value: unknown): boolean {
    if (typeof value !== "boolean") throw new PhiTypeError(`Expected "${name}" to be a boolean, got ${typeof value} ${show(value)}`);
    return value;
}

function checkFunction(name: string, value: unknown): void {
    if (typeof value !== "function") throw new PhiTypeError(`Expected "${name}" to be a function, got ${typeof value}`);
}

function checkSignal(name: string, value: unknown): AbortSignal {
    if (!(value instanceof AbortSignal)) throw new PhiTypeError(`Expected "${name}" to be an AbortSignal, got ${show(value)}`);
    return value;
}

/** Threads beyond the logical CPUs make ggml's spinning workers wait for each other: refused (README "Threads"). */
function checkThreads(name: "threads" | "batchThreads", value: unknown): number {
    const limit = threadLimit();
    const min = OPTION_SCHEMAS[name].minimum ?? 1;
    if (typeof value === "number" && Number.isInteger(value) && value < min) {
        throw new PhiRangeError(`Expected "${name}" to be between ${min} and ${limit} (the logical CPUs here), got ${value}`);
    }
    const n = checkOption(name, value);
    if (n > limit) {
        throw new PhiRangeError(`"${name}" is ${n}, but this machine has ${limit} logical CPU${limit === 1 ? "" : "s"}: ggml's threads wait for each ` +
            `other by spinning, so more threads than CPUs make generation many times slower (README "Threads"). Use at most ${limit}, or leave it unset`);
    }
    return n;
}

const TOKENIZE_KEYS = new Set(["special"]);

/** The options of tokenize() and detokenize() (one checker for both): undefined or { special?: boolean }. */
export function resolveTokenizeOptions(what: "tokenize" | "detokenize", options: unknown): { special: boolean } {
    if (options === undefined) return { special: false };
    if (typeof options !== "object" || options === null || Array.isArray(options)) {
        throw new PhiTypeError(`${what}() options must be an object such as { special: true }, got ${show(options)}`);
    }
    const o = options as Record<string, unknown>;
    for (const key of Object.keys(o)) {
        if (!TOKENIZE_KEYS.has(key) && o[key] !== undefined) throw new PhiTypeError(`Unknown ${what}() option "${key}"; known options: ${[...TOKENIZE_KEYS].join(", ")}`);
    }
    return { special: o.special === undefined ? false : checkBoolean("special", o.special) };
}

/** Validates text handed to the tokenizer/generator: a string, well-formed UTF-16, no NUL characters. */
export function checkText(name: string, value: unknown, { allowEmpty }: { allowEmpty: boolean }): string {
    if (typeof value !== "string") throw new PhiTypeError(`Expected "${name}" to be a string, got ${typeof value} ${show(value)}`);
    if (!allowEmpty && value.length === 0) throw new PhiRangeError(`"${name}" is empty; pass at least one character`);
    if (!value.isWellFormed()) {
        throw new PhiRangeError(`"${name}" contains a lone UTF-16 surrogate (at index ${findLoneSurrogate(value)}); it cannot be encoded as UTF-8. Fix the string, e.g. with .toWellFormed()`);
    }
    const nul = value.indexOf("\u0000");
    if (nul >= 0) throw new PhiRangeError(`"${name}" contains a NUL character at index ${nul}; remove it`);
    return value;
}

function findLoneSurrogate(s: string): number {
    for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0xd800 && c <= 0xdbff) {
            const next = s.charCodeAt(i + 1);
            if (next >= 0xdc00 && next <= 0xdfff) { i++; continue; }
            return i;
        }
        if (c >= 0xdc00 && c <= 0xdfff) return i;
    }
    return -1;
}

/** Token ids: integers in [0, vocabSize). */
export function checkTokens(name: string, value: unknown, vocabSize: number): Int32Array {
    if (!Array.isArray(value) && !(value instanceof Int32Array) && !(value instanceof Uint32Array)) {
        throw new PhiTypeError(`Expected "${name}" to be an array of token ids, got ${show(value)}`);
    }
    const out = new Int32Array(value.length);
    for (let i = 0; i < value.length; i++) {
        const t: unknown = value[i];
        if (typeof t !== "number" || !Number.isInteger(t)) {
            throw new PhiRangeError(`${name}[${i}] = ${show(t)} is not a token id: token ids are integers from 0 to ${vocabSize - 1}`);
        }
        if (t < 0 || t >= vocabSize) {
            throw new PhiRangeError(`${name}[${i}] = ${t} is out of range: this model's token ids are 0 to ${vocabSize - 1}`);
        }
        out[i] = t;
    }
    return out;
}

export interface ResolvedLoadOptions {
    modelPath: string;
    device: ParsedDevice;
    deviceSpec: DeviceSpec;
    gpuLayers: number | "all";
    contextSize?: number;
    sequences: number;
    kvCacheSize?: number;
    batchSize: number;
    threads?: number;
    batchThreads?: number;
    threadpool: boolean;
    flashAttention: "auto" | "on" | "off";
    mmap: boolean;
    repack: boolean;
    promptCacheSize: number;
    libraryPath?: string;
    signal?: AbortSignal;
    onProgress?: (progress: number) => void;
}

const LOAD_KEYS = new Set(["modelPath", "device", "gpuLayers", "contextSize", "sequences", "kvCacheSize", "batchSize",
    "threads", "batchThreads", "threadpool", "flashAttention", "mmap", "repack", "promptCacheSize", "libraryPath", "signal", "onProgress"]);

function checkFlashAttention(v: unknown): "auto" | "on" | "off" {
    if (v === "auto" || v === "on" || v === "off") return v;
    throw new PhiTypeError(`Expected "flashAttention" to be "auto", "on" or "off", got ${show(v)}`);
}

/** Checks PhiModel.load()'s options; what needs the model's header (context sizes, memory) is resolveContext(). */
export function resolveLoadOptions(options: unknown): ResolvedLoadOptions {
    if (typeof options !== "object" || options === null) throw new PhiTypeError(`PhiModel.load() expects an options object such as { modelPath: "models/phi-2.Q4_K_M.gguf" }, got ${show(options)}`);
    const o = options as Record<string, unknown>;
    for (const key of Object.keys(o)) {
        if (!LOAD_KEYS.has(key) && o[key] !== undefined) throw new PhiTypeError(`Unknown PhiModel.load() option "${key}"; known options: ${[...LOAD_KEYS].join(", ")}`);
    }
    if (typeof o.modelPath !== "string" || o.modelPath.length === 0) {
        throw new PhiTypeError(`Expected "modelPath" to be the path of a GGUF file, got ${show(o.modelPath)}`);
    }
    const device = parseDevice(o.device);
    const d = LOAD_DEFAULTS;
    const r: ResolvedLoadOptions = {
        modelPath: o.modelPath,
        device,
        deviceSpec: (o.device as DeviceSpec | undefined) ?? "auto",
        gpuLayers: o.gpuLayers === undefined || o.gpuLayers === "all" ? d.gpuLayers : checkOption("gpuLayers", o.gpuLayers),
        sequences: o.sequences === undefined ? d.sequences : checkOption("sequences", o.sequences),
        batchSize: o.batchSize === undefined ? d.batchSize : checkOption("batchSize", o.batchSize),
        threadpool: o.threadpool === undefined ? d.threadpool : checkBoolean("threadpool", o.threadpool),
        flashAttention: o.flashAttention === undefined ? d.flashAttention : checkFlashAttention(o.flashAttention),
        mmap: o.mmap === undefined ? d.mmap : checkBoolean("mmap", o.mmap),
        repack: o.repack === undefined ? d.repack : checkBoolean("repack", o.repack),
        promptCacheSize: o.promptCacheSize === undefined ? d.promptCacheSize : checkOption("promptCacheSize", o.promptCacheSize),
    };
    if (o.contextSize !== undefined) r.contextSize = checkOption("contextSize", o.contextSize);
    if (o.kvCacheSize !== undefined) r.kvCacheSize = checkOption("kvCacheSize", o.kvCacheSize);
    if (o.threads !== undefined) r.threads = checkThreads("threads", o.threads);
    if (o.batchThreads !== undefined) r.batchThreads = checkThreads("batchThreads", o.batchThreads);
    if (o.libraryPath !== undefined) {
        if (typeof o.libraryPath !== "string" || !o.libraryPath) throw new PhiTypeError(`Expected "libraryPath" to be a folder path, got ${show(o.libraryPath)}`);
        r.libraryPath = o.libraryPath;
    }
    if (o.signal !== undefined) r.signal = checkSignal("signal", o.signal);
    if (o.onProgress !== undefined) {
        checkFunction("onProgress", o.onProgress);
        r.onProgress = o.onProgress as (p: number) => void;
    }
    if (r.contextSize !== undefined && r.kvCacheSize !== undefined && r.kvCacheSize < r.contextSize) {
        throw new PhiRangeError(`"kvCacheSize" (${r.kvCacheSize}) must be at least "contextSize" (${r.contextSize})`);
    }
    checkSequences(r.sequences, r.kvCacheSize ?? r.contextSize, r.batchSize, r.kvCacheSize !== undefined ? "kvCacheSize" : "contextSize");
    return r;
}

/**
 * llama.cpp aborts the process (GGML_ASSERT n_outputs_max) when sequences exceed min(KV cells, batchSize): see
 * sequencesProblem() in ./limits.ts. `cells` is undefined while the context size is not known yet.
 */
export function checkSequences(sequences: number, cells: number | undefined, batchSize: number, cellsOption: string): void {
    const problem = sequencesProblem(sequences, cells ?? Infinity, batchSize);
    if (problem === "batchSize") throw new PhiRangeError(`"sequences" (${sequences}) cannot exceed "batchSize" (${batchSize})`);
    if (problem === "kvCacheSize") {
        throw new PhiRangeError(`"sequences" (${sequences}) cannot exceed "${cellsOption}" (${cells}): every sequence needs at least one KV cell; ` +
            `lower "sequences" or raise "${cellsOption}"`);
    }
}

/** The context and KV sizes PhiModel.load() uses. */
export interface ResolvedContext {
    contextSize: number;
    kvCacheSize: number;
}

/**
 * The context and KV sizes for a model: contextSize defaults to the training context, kvCacheSize to contextSize.
 * Refuses, before anything is allocated, sequences that llama.cpp would abort on, and a KV cache larger than all the
 * memory of what holds it (`memory`: the GPU's when the layers are offloaded, else the machine's RAM), instead of
 * letting llama.cpp fail with a log line about training context overflow.
 */
export function resolveContext(o: ResolvedLoadOptions, hparams: Pick<Phi2HParams, "contextLength" | "blockCount" | "headDim" | "headCountKV">,
    memory: { bytes: number; where: string } = { bytes: os.totalmem(), where: "this machine's RAM" }): ResolvedContext {
    const contextSize = o.contextSize ?? hparams.contextLength;
    const kvCacheSize = o.kvCacheSize ?? contextSize;
    const kvName = o.kvCacheSize !== undefined ? "kvCacheSize" : "contextSize";
    if (kvCacheSize < contextSize) throw new PhiRangeError(`"kvCacheSize" (${kvCacheSize}) must be at least "contextSize" (${contextSize})`);
    checkSequences(o.sequences, kvCacheSize, o.batchSize, o.kvCacheSize !== undefined || o.contextSize !== undefined ? kvName : "the model's context length");
    const bytes = kvCacheBytes(hparams, kvCacheSize);
    if (memory.bytes > 0 && bytes > memory.bytes) {
        const gib = (n: number) => (n / 2 ** 30).toFixed(n < 2 ** 30 ? 2 : 1);
        throw new PhiRangeError(`"${kvName}" is ${kvCacheSize}: its KV cache would need ${gib(bytes)} GiB ` +
            `(2 × ${hparams.blockCount} layers × ${Math.ceil(kvCacheSize / 256) * 256} cells × ${hparams.headDim * hparams.headCountKV} values × 2 bytes), ` +
            `more than all of ${memory.where} (${gib(memory.bytes)} GiB). Lower "${kvName}"`,
        { details: { kvCacheSize, kvCacheBytes: bytes, memoryBytes: memory.bytes } });
    }
    return { contextSize, kvCacheSize };
}

const GENERATE_KEYS = new Set(["maxTokens", "temperature", "topK", "topP", "minP", "repeatPenalty", "presencePenalty",
    "frequencyPenalty", "repeatLastN", "seed", "stop", "logprobs", "truncate", "signal", "onToken", "stopOnAbort", "jsonSchema", "grammar"]);

export interface ResolvedGenerateOptions {
    maxTokens: number; // -1 = unlimited
    temperature: number;
    topK: number;
    topP: number;
    minP: number;
    repeatPenalty: number;
    presencePenalty: number;
    frequencyPenalty: number;
    repeatLastN: number;
    seed: number;
    stop: string[];
    logprobs: number; // -1 = off
    truncate: "error" | "start";
    stopOnAbort: boolean;
    signal?: AbortSignal;
    onToken?: GenerateOptions["onToken"];
    /** The GBNF to constrain the output with: `grammar` as given, or the one made from `jsonSchema`. */
    grammar?: string;
    /** Whether `grammar` came from `jsonSchema` (then the result's text is parsed as JSON). */
    fromJsonSchema?: boolean;
    /** The grammar's token references, which PhiModel checks against the vocabulary. */
    grammarTokens?: readonly GbnfTokenRef[];
}

export function resolveGenerateOptions(options: unknown): ResolvedGenerateOptions {
    if (options === undefined) options = {};
    if (typeof options !== "object" || options === null) throw new PhiTypeError(`generate() options must be an object, got ${show(options)}`);
    const o = options as Record<string, unknown>;
    for (const key of Object.keys(o)) {
        if (!GENERATE_KEYS.has(key) && o[key] !== undefined) throw new PhiTypeError(`Unknown generate() option "${key}"; known options: ${[...GENERATE_KEYS].join(", ")}`);
    }
    const d = GENERATE_DEFAULTS;
    const r: ResolvedGenerateOptions = {
        maxTokens: o.maxTokens === undefined ? d.maxTokens : checkOption("maxTokens", o.maxTokens),
        temperature: o.temperature === undefined ? d.temperature : checkOption("temperature", o.temperature),
        topK: o.topK === undefined ? d.topK : checkOption("topK", o.topK),
        topP: o.topP === undefined ? d.topP : checkOption("topP", o.topP),
        minP: o.minP === undefined ? d.minP : checkOption("minP", o.minP),
        repeatPenalty: o.repeatPenalty === undefined ? d.repeatPenalty : checkOption("repeatPenalty", o.repeatPenalty),
        presencePenalty: o.presencePenalty === undefined ? d.presencePenalty : checkOption("presencePenalty", o.presencePenalty),
        frequencyPenalty: o.frequencyPenalty === undefined ? d.frequencyPenalty : checkOption("frequencyPenalty", o.frequencyPenalty),
        repeatLastN: o.repeatLastN === undefined ? d.repeatLastN : checkOption("repeatLastN", o.repeatLastN),
        seed: o.seed === undefined ? randomSeed() : checkOption("seed", o.seed),
        stop: [],
        logprobs: o.logprobs === undefined ? d.logprobs : checkOption("logprobs", o.logprobs),
        truncate: d.truncate,
        stopOnAbort: o.stopOnAbort === undefined ? d.stopOnAbort : checkBoolean("stopOnAbort", o.stopOnAbort),
    };
    if (o.stop !== undefined) {
        const stops = typeof o.stop === "string" ? [o.stop] : o.stop;
        if (!Array.isArray(stops)) throw new PhiTypeError(`Expected "stop" to be a string or an array of strings, got ${show(o.stop)}`);
        r.stop = stops.map((s, i) => checkText(`stop[${i}]`, s, { allowEmpty: false }));
    }
    if (o.truncate !== undefined) {
        if (o.truncate !== "error" && o.truncate !== "start") throw new PhiRangeError(`Expected "truncate" to be "error" or "start", got ${show(o.truncate)}`);
        r.truncate = o.truncate;
    }
    if (o.signal !== undefined) r.signal = checkSignal("signal", o.signal);
    if (o.onToken !== undefined) {
        checkFunction("onToken", o.onToken);
        r.onToken = o.onToken as GenerateOptions["onToken"];
    }
    const output = resolveOutputOptions(o.jsonSchema, o.grammar);
    if (output) Object.assign(r, output);
    return r;
}

/**
 * The typed-output options (generate()'s `jsonSchema` / `grammar`, the agent's and requests' fields): at most one;
 * a schema becomes GBNF (src/grammar/jsonSchema.ts). What needs the model's vocabulary (token references) is
 * checked by PhiModel. Throws PhiTypeError, JsonSchemaError or GrammarError (all ERR_INVALID_ARGUMENT).
 */
export function resolveOutputOptions(jsonSchema: unknown, grammar: unknown, names = { jsonSchema: "jsonSchema", grammar: "grammar" }):
    { grammar: string; fromJsonSchema: boolean; grammarTokens: readonly GbnfTokenRef[] } | undefined {
    if (jsonSchema !== undefined && grammar !== undefined) {
        throw new PhiTypeError(`Give "${names.jsonSchema}" or "${names.grammar}", not both: a JSON Schema is turned into a grammar itself`);
    }
    if (jsonSchema !== undefined) return { grammar: jsonSchemaToGbnf(jsonSchema), fromJsonSchema: true, grammarTokens: [] };
    if (grammar !== undefined) {
        checkText(names.grammar, grammar, { allowEmpty: false });
        const max = OUTPUT_SCHEMAS.grammar.maxLength!;
        if ((grammar as string).length > max) throw new PhiRangeError(`"${names.grammar}" is ${(grammar as string).length} characters; at most ${max} are accepted`);
        const { tokens } = checkGbnf(grammar);
        return { grammar: grammar as string, fromJsonSchema: false, grammarTokens: tokens };
    }
    return undefined;
}

/** A random seed: any uint32 below llama.cpp's "random" marker (the top of OPTION_SCHEMAS.seed). */
function randomSeed(): number {
    return Math.floor(Math.random() * OPTION_SCHEMAS.seed.maximum!);
}
