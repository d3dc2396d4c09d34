/**
 * The one definition of every numeric option's range, as typebox schemas. PhiModel's option checks
 * (./options.ts), PhiAgentProps (src/agent/PhiAgentProps.ts) and the message formats
 * (src/messages/formats.ts) all read their bounds from here; nothing else spells these numbers.
 * Cross-field rules that depend on llama.cpp or the machine live next to them below.
 */
import os from "node:os";
import { Type, type TInteger, type TNumber } from "@sinclair/typebox";

/** LLAMA_MAX_SEQ (llama.cpp src/llama-cparams.h): llama.cpp refuses more sequences in one context. */
export const LLAMA_MAX_SEQ = 256;
/** Most tokens one sequence can hold (contextSize). Also bounds what one call can generate (maxTokens). */
export const MAX_CONTEXT = 1 << 20;

/** Ranges of PhiModel.load() / generate() options (and of the agent props and message fields that feed them). */
export const OPTION_SCHEMAS = {
    // load
    contextSize: Type.Integer({ minimum: 16, maximum: MAX_CONTEXT, description: "Max tokens per sequence (prompt + generated)." }),
    kvCacheSize: Type.Integer({ minimum: 16, maximum: 1 << 24, description: "KV cells shared by all sequences." }),
    sequences: Type.Integer({ minimum: 1, maximum: LLAMA_MAX_SEQ, description: "Max generate() calls decoded together." }),
    batchSize: Type.Integer({ minimum: 1, maximum: 65536, description: "Logical batch size for prompt processing." }),
    /** The hard bound; the machine's bound is threadLimit() (README "Threads"). */
    threads: Type.Integer({ minimum: 1, maximum: 1024, description: "CPU threads for decoding (at most the logical CPUs)." }),
    batchThreads: Type.Integer({ minimum: 1, maximum: 1024, description: "CPU threads for prompt processing (at most the logical CPUs)." }),
    gpuLayers: Type.Integer({ minimum: 0, maximum: 100_000, description: "Layers offloaded to the GPU." }),
    promptCacheSize: Type.Integer({ minimum: 0, maximum: 1 << 24, description: "KV cells that cached prompt prefixes may keep while no call uses them (0 = no prompt cache)." }),
    // generate
    maxTokens: Type.Integer({ minimum: 1, maximum: MAX_CONTEXT, description: "Max tokens to generate." }),
    temperature: Type.Number({ minimum: 0, maximum: 100, description: "0 = greedy." }),
    topK: Type.Integer({ minimum: 0, maximum: 1 << 20, description: "0 = off." }),
    topP: Type.Number({ exclusiveMinimum: 0, maximum: 1, description: "1 = off." }),
    minP: Type.Number({ minimum: 0, maximum: 1, description: "0 = off." }),
    repeatPenalty: Type.Number({ exclusiveMinimum: 0, maximum: 100, description: "1 = off." }),
    presencePenalty: Type.Number({ minimum: -100, maximum: 100, description: "0 = off." }),
    frequencyPenalty: Type.Number({ minimum: -100, maximum: 100, description: "0 = off." }),
    repeatLastN: Type.Integer({ minimum: 0, maximum: 1 << 20, description: "Tokens the penalties look back over." }),
    logprobs: Type.Integer({ minimum: 0, maximum: 20, description: "Most likely alternatives reported with each token's logprob." }),
    // 0xFFFFFFFF is llama.cpp's "random seed"; a caller's seed is any other uint32.
    seed: Type.Integer({ minimum: 0, maximum: 0xfffffffe, description: "Sampling seed (same seed and options, same text)." }),
} as const satisfies Record<string, TInteger | TNumber>;

export type NumericOption = keyof typeof OPTION_SCHEMAS;

/** Most stop strings per call (agent props and request payloads). */
export const MAX_STOP_STRINGS = 16;

/**
 * Bounds of a GBNF grammar (generate()'s `grammar`, and what `jsonSchema` turns into), checked by src/grammar/gbnf.ts
 * before llama.cpp sees it. `repetition` is llama.cpp's own MAX_REPETITION_THRESHOLD (src/llama-grammar.cpp); the
 * others keep llama.cpp's recursive parser and checks within the stack and time of one call (README "Typed output").
 */
export const GRAMMAR_LIMITS = Object.freeze({
    /** Characters of grammar text. */
    chars: 256 * 1024,
    /** Most repetitions x{m,n} llama.cpp accepts (it refuses a larger m, and silently drops a larger n). */
    repetition: 2000,
    /** Nested parentheses (llama.cpp parses them recursively). */
    nesting: 256,
    /** Rule elements after llama.cpp expands repetitions. */
    elements: 1_000_000,
    /** Rules after llama.cpp expands repetitions and groups. */
    rules: 100_000,
    /** Rule references a rule may start with, one inside the other (llama.cpp's left-recursion check recurses on them). */
    leftDepth: 10_000,
    /** Calls llama.cpp's left-recursion check may take (it revisits shared rules, once per path). */
    leftPaths: 1_000_000,
    /** Ways a rule may begin (llama.cpp keeps one parse stack for each, for every sampled token). */
    stacks: 4096,
});

/** Schemas of the typed-output options (generate()'s `grammar` and `jsonSchema`, the agent's and requests' fields). */
export const OUTPUT_SCHEMAS = {
    grammar: Type.String({ minLength: 1, maxLength: GRAMMAR_LIMITS.chars, description: "A GBNF grammar (llama.cpp's format) the output must match; its start rule is root." }),
    jsonSchema: Type.Union([Type.Object({}), Type.Boolean()], { description: "A JSON Schema the output must validate against (README \"Typed output\")." }),
} as const;

/** A copy of a typed-output schema with its own description (for a field that documents it in its own words). */
export function outputSchema<K extends keyof typeof OUTPUT_SCHEMAS>(name: K, description?: string): (typeof OUTPUT_SCHEMAS)[K] {
    const schema = OUTPUT_SCHEMAS[name];
    return (description === undefined ? { ...schema } : { ...schema, description }) as (typeof OUTPUT_SCHEMAS)[K];
}

/** A copy of an option's schema with its own description (for a field that documents it in its own words). */
export function optionSchema<K extends NumericOption>(name: K, description?: string): (typeof OPTION_SCHEMAS)[K] {
    const schema = OPTION_SCHEMAS[name];
    return (description === undefined ? { ...schema } : { ...schema, description }) as (typeof OPTION_SCHEMAS)[K];
}

/**
 * The most ggml threads worth running here: the logical CPUs this process may use. ggml's workers wait for each
 * other by spinning, so past the CPU count every token waits for threads the OS has descheduled (measured on 2
 * CPUs, 3 tokens of the tiny model: 7 ms with 2 threads, 756 ms with 3, 2.4 s with 8, 7.1 s with 16: README
 * "Threads"). Options above it are refused.
 */
export function threadLimit(): number {
    return Math.max(1, typeof os.availableParallelism === "function" ? os.availableParallelism() : os.cpus().length);
}

/**
 * llama.cpp's rule for n_seq_max (src/llama-context.cpp): it sizes the output buffer for
 * n_outputs_max = min(n_ctx, n_batch) rows, where n_ctx is the KV size as passed (before its padding to 256), and
 * reserves one output row per sequence; more sequences than that fail GGML_ASSERT(n_outputs_max <= ...) and abort
 * the process. So sequences <= min(kvCacheSize, batchSize). Returns the violated bound's name, or undefined.
 */
export function sequencesProblem(sequences: number, kvCacheSize: number, batchSize: number): "kvCacheSize" | "batchSize" | undefined {
    if (sequences > kvCacheSize) return "kvCacheSize";
    if (sequences > batchSize) return "batchSize";
    return undefined;
}

/**
 * Bytes of the f16 KV cache llama.cpp allocates for `cells` cells (llama-kv-cache.cpp: one K and one V tensor per
 * layer of n_embd_k_gqa = headDim × headCountKV values per cell). The cell count is padded to 256 as llama.cpp does.
 */
export function kvCacheBytes(hparams: { blockCount: number; headDim: number; headCountKV: number }, cells: number): number {
    const padded = Math.ceil(cells / 256) * 256;
    return 2 /* K and V */ * hparams.blockCount * padded * hparams.headDim * hparams.headCountKV * 2 /* f16 */;
}
