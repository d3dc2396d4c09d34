/**
 * Validation of PhiModel's options and arguments, with messages that name the option, the value and the fix.
 * Bad types are TypeError, bad values RangeError (what JS callers expect from argument checks).
 */
import type { DeviceSpec, GenerateOptions, LoadOptions } from "./types.js";

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
    if (typeof value !== "number") throw new TypeError(`Expected "${name}" to be an integer, got ${typeof value} ${show(value)}`);
    if (!Number.isInteger(value)) throw new RangeError(`Expected "${name}" to be an integer, got ${show(value)}`);
    if (value < min || value > max) throw new RangeError(`Expected "${name}" to be between ${min} and ${max}, got ${value}`);
    return value;
}

export function checkNumber(name: string, value: unknown, min: number, max: number, { minExclusive = false } = {}): number {
    if (typeof value !== "number") throw new TypeError(`Expected "${name}" to be a number, got ${typeof value} ${show(value)}`);
    if (!Number.isFinite(value)) throw new RangeError(`Expected "${name}" to be a finite number, got ${value}`);
    if ((minExclusive ? value <= min : value < min) || value > max) {
        throw new RangeError(`Expected "${name}" to be ${minExclusive ? "greater than" : "at least"} ${min} and at most ${max}, got ${value}`);
    }
    return value;
}

function checkBoolean(name: string, value: unknown): boolean {
    if (typeof value !== "boolean") throw new TypeError(`Expected "${name}" to be a boolean, got ${typeof value} ${show(value)}`);
    return value;
}

function checkFunction(name: string, value: unknown): void {
    if (typeof value !== "function") throw new TypeError(`Expected "${name}" to be a function, got ${typeof value}`);
}

function checkSignal(name: string, value: unknown): AbortSignal {
    if (!(value instanceof AbortSignal)) throw new TypeError(`Expected "${name}" to be an AbortSignal, got ${show(value)}`);
    return value;
}

/** Validates text handed to the tokenizer/generator: a string, well-formed UTF-16, no NUL characters. */
export function checkText(name: string, value: unknown, { allowEmpty }: { allowEmpty: boolean }): string {
    if (typeof value !== "string") throw new TypeError(`Expected "${name}" to be a string, got ${typeof value} ${show(value)}`);
    if (!allowEmpty && value.length === 0) throw new RangeError(`"${name}" is empty; pass at least one character`);
    if (!value.isWellFormed()) {
        throw new RangeError(`"${name}" contains a lone UTF-16 surrogate (at index ${findLoneSurrogate(value)}); it cannot be encoded as UTF-8. Fix the string, e.g. with .toWellFormed()`);
    }
    const nul = value.indexOf("\u0000");
    if (nul >= 0) throw new RangeError(`"${name}" contains a NUL character at index ${nul}; remove it`);
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
        throw new TypeError(`Expected "${name}" to be an array of token ids, got ${show(value)}`);
    }
    const out = new Int32Array(value.length);
    for (let i = 0; i < value.length; i++) {
        const t: unknown = value[i];
        if (typeof t !== "number" || !Number.isInteger(t)) {
            throw new RangeError(`${name}[${i}] = ${show(t)} is not a token id: token ids are integers from 0 to ${vocabSize - 1}`);
        }
        if (t < 0 || t >= vocabSize) {
            throw new RangeError(`${name}[${i}] = ${t} is out of range: this model's token ids are 0 to ${vocabSize - 1}`);
        }
        out[i] = t;
    }
    return out;
}

export interface ParsedDevice {
    backend: "auto" | "cpu" | "cuda" | "vulkan" | "metal";
    ordinal?: number;
}

const DEVICE_RE = /^(auto|cpu|metal|mps|cuda|vulkan)(?::(\d{1,3}))?$/;

/** "auto" | "cpu" | "cuda" | "cuda:N" | "vulkan" | "vulkan:N" | "metal" ("mps" is Metal, as in PyTorch). */
export function parseDevice(value: unknown): ParsedDevice {
    if (value === undefined) return { backend: "auto" };
    if (typeof value !== "string") throw new TypeError(`Expected "device" to be a string such as "auto", "cpu", "cuda:0", got ${show(value)}`);
    const m = DEVICE_RE.exec(value.trim().toLowerCase());
    if (!m || (m[2] !== undefined && !["cuda", "vulkan"].includes(m[1]!))) {
        throw new RangeError(`Unknown device ${show(value)}: use "auto", "cpu", "cuda", "cuda:N", "vulkan", "vulkan:N" or "metal"`);
    }
    const backend = (m[1] === "mps" ? "metal" : m[1]) as ParsedDevice["backend"];
    return m[2] !== undefined ? { backend, ordinal: Number(m[2]) } : { backend };
}

/** Default of LoadOptions.repack (chosen from measurements: README "Memory and load time"). */
export const DEFAULT_REPACK = true;

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
    libraryPath?: string;
    signal?: AbortSignal;
    onProgress?: (progress: number) => void;
}

const LOAD_KEYS = new Set(["modelPath", "device", "gpuLayers", "contextSize", "sequences", "kvCacheSize", "batchSize",
    "threads", "batchThreads", "threadpool", "flashAttention", "mmap", "repack", "libraryPath", "signal", "onProgress"]);

function checkFlashAttention(v: unknown): "auto" | "on" | "off" {
    if (v === "auto" || v === "on" || v === "off") return v;
    throw new TypeError(`Expected "flashAttention" to be "auto", "on" or "off", got ${show(v)}`);
}

export function resolveLoadOptions(options: unknown): ResolvedLoadOptions {
    if (typeof options !== "object" || options === null) throw new TypeError(`PhiModel.load() expects an options object such as { modelPath: "models/phi-2.Q4_K_M.gguf" }, got ${show(options)}`);
    const o = options as Record<string, unknown>;
    for (const key of Object.keys(o)) {
        if (!LOAD_KEYS.has(key) && o[key] !== undefined) throw new TypeError(`Unknown PhiModel.load() option "${key}"; known options: ${[...LOAD_KEYS].join(", ")}`);
    }
    if (typeof o.modelPath !== "string" || o.modelPath.length === 0) {
        throw new TypeError(`Expected "modelPath" to be the path of a GGUF file, got ${show(o.modelPath)}`);
    }
    const device = parseDevice(o.device);
    let gpuLayers: number | "all" = "all";
    if (o.gpuLayers !== undefined && o.gpuLayers !== "all") gpuLayers = checkInteger("gpuLayers", o.gpuLayers, 0, 100000);
    const r: ResolvedLoadOptions = {
        modelPath: o.modelPath,
        device,
        deviceSpec: (o.device as DeviceSpec | undefined) ?? "auto",
        gpuLayers,
        sequences: o.sequences === undefined ? 8 : checkInteger("sequences", o.sequences, 1, 256),
        batchSize: o.batchSize === undefined ? 512 : checkInteger("batchSize", o.batchSize, 1, 65536),
        threadpool: o.threadpool === undefined ? true : checkBoolean("threadpool", o.threadpool),
        flashAttention: o.flashAttention === undefined ? "auto" : checkFlashAttention(o.flashAttention),
        mmap: o.mmap === undefined ? true : checkBoolean("mmap", o.mmap),
        repack: o.repack === undefined ? DEFAULT_REPACK : checkBoolean("repack", o.repack),
    };
    if (o.contextSize !== undefined) r.contextSize = checkInteger("contextSize", o.contextSize, 1, 1 << 20);
    if (o.kvCacheSize !== undefined) r.kvCacheSize = checkInteger("kvCacheSize", o.kvCacheSize, 1, 1 << 24);
    if (o.threads !== undefined) r.threads = checkInteger("threads", o.threads, 1, 1024);
    if (o.batchThreads !== undefined) r.batchThreads = checkInteger("batchThreads", o.batchThreads, 1, 1024);
    if (o.libraryPath !== undefined) {
        if (typeof o.libraryPath !== "string" || !o.libraryPath) throw new TypeError(`Expected "libraryPath" to be a folder path, got ${show(o.libraryPath)}`);
        r.libraryPath = o.libraryPath;
    }
    if (o.signal !== undefined) r.signal = checkSignal("signal", o.signal);
    if (o.onProgress !== undefined) {
        checkFunction("onProgress", o.onProgress);
        r.onProgress = o.onProgress as (p: number) => void;
    }
    if (r.sequences > r.batchSize) throw new RangeError(`"sequences" (${r.sequences}) cannot exceed "batchSize" (${r.batchSize})`);
    return r;
}

const GENERATE_KEYS = new Set(["maxTokens", "temperature", "topK", "topP", "minP", "repeatPenalty", "presencePenalty",
    "frequencyPenalty", "repeatLastN", "seed", "stop", "truncate", "signal", "onToken", "stopOnAbort"]);

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
    truncate: "error" | "start";
    stopOnAbort: boolean;
    signal?: AbortSignal;
    onToken?: GenerateOptions["onToken"];
}

export function resolveGenerateOptions(options: unknown): ResolvedGenerateOptions {
    if (options === undefined) options = {};
    if (typeof options !== "object" || options === null) throw new TypeError(`generate() options must be an object, got ${show(options)}`);
    const o = options as Record<string, unknown>;
    for (const key of Object.keys(o)) {
        if (!GENERATE_KEYS.has(key) && o[key] !== undefined) throw new TypeError(`Unknown generate() option "${key}"; known options: ${[...GENERATE_KEYS].join(", ")}`);
    }
    const r: ResolvedGenerateOptions = {
        maxTokens: o.maxTokens === undefined ? -1 : checkInteger("maxTokens", o.maxTokens, 1, 1 << 24),
        temperature: o.temperature === undefined ? 0 : checkNumber("temperature", o.temperature, 0, 100),
        topK: o.topK === undefined ? 0 : checkInteger("topK", o.topK, 0, 1 << 20),
        topP: o.topP === undefined ? 1 : checkNumber("topP", o.topP, 0, 1, { minExclusive: true }),
        minP: o.minP === undefined ? 0 : checkNumber("minP", o.minP, 0, 1),
        repeatPenalty: o.repeatPenalty === undefined ? 1 : checkNumber("repeatPenalty", o.repeatPenalty, 0, 100, { minExclusive: true }),
        presencePenalty: o.presencePenalty === undefined ? 0 : checkNumber("presencePenalty", o.presencePenalty, -100, 100),
        frequencyPenalty: o.frequencyPenalty === undefined ? 0 : checkNumber("frequencyPenalty", o.frequencyPenalty, -100, 100),
        repeatLastN: o.repeatLastN === undefined ? 64 : checkInteger("repeatLastN", o.repeatLastN, 0, 1 << 20),
        // 0xFFFFFFFF is llama.cpp's "random seed"; a caller's seed is any other uint32.
        seed: o.seed === undefined ? randomSeed() : checkInteger("seed", o.seed, 0, 0xfffffffe),
        stop: [],
        truncate: "error",
        stopOnAbort: o.stopOnAbort === undefined ? false : checkBoolean("stopOnAbort", o.stopOnAbort),
    };
    if (o.stop !== undefined) {
        const stops = typeof o.stop === "string" ? [o.stop] : o.stop;
        if (!Array.isArray(stops)) throw new TypeError(`Expected "stop" to be a string or an array of strings, got ${show(o.stop)}`);
        r.stop = stops.map((s, i) => checkText(`stop[${i}]`, s, { allowEmpty: false }));
    }
    if (o.truncate !== undefined) {
        if (o.truncate !== "error" && o.truncate !== "start") throw new RangeError(`Expected "truncate" to be "error" or "start", got ${show(o.truncate)}`);
        r.truncate = o.truncate;
    }
    if (o.signal !== undefined) r.signal = checkSignal("signal", o.signal);
    if (o.onToken !== undefined) {
        checkFunction("onToken", o.onToken);
        r.onToken = o.onToken as GenerateOptions["onToken"];
    }
    return r;
}

function randomSeed(): number {
    return Math.floor(Math.random() * 0xfffffffe);
}
