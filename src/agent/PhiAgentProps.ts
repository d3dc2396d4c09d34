/**
 * PhiAgentProps: what LLMPhiAgent runs and how, after RusticAI's `PhiAgentProps(PyTorchAgentProps)`.
 * The seed's fields are accepted under their Python names too: `model_id` (when it is a path to a
 * GGUF) and `torch_device` ("cpu", "cuda", "cuda:N"; "mps" means Metal). Validated when built (a
 * typebox schema plus cross-field rules); a bad value throws a TypeError (wrong type, missing) or
 * RangeError (value not allowed) with `code: "ERR_INVALID_ARGUMENT"`, naming the field.
 */
import fs from "node:fs";
import { Type, type Static } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import type { DeviceSpec, LoadOptions } from "../model/types.js";
import { DEVICE_PATTERN, DEVICE_VALUES, normalizeDevice as normalizeDeviceName } from "../model/devices.js";
import { MAX_STOP_STRINGS, optionSchema, outputSchema, sequencesProblem, threadLimit } from "../model/limits.js";
import { LOAD_DEFAULTS, resolveOutputOptions } from "../model/options.js";
import { fieldErrors, invalid, type FieldError } from "../messages/validation.js";

/** The agent's default contextSize: Phi-2's training context. */
const DEFAULT_CONTEXT_SIZE = 2048;
/** The seed's max_length (prompt + generated tokens), when contextSize leaves room for it. */
const DEFAULT_MAX_LENGTH = 200;

const DeviceSchema = Type.String({
    pattern: DEVICE_PATTERN,
    errorMessage: DEVICE_VALUES,
    description: "Where to run: \"auto\" (a usable GPU, else the CPU), \"cpu\", \"cuda\", \"cuda:N\", \"vulkan\", \"vulkan:N\", \"metal\" (\"mps\" is accepted as Metal).",
});

/** The fields PhiAgentProps accepts (its constructor's argument). */
export const PhiAgentPropsSchema = Type.Object({
    modelPath: Type.Optional(Type.String({ minLength: 1, description: "Path of a phi2-architecture GGUF file, e.g. models/phi-2.Q4_K_M.gguf." })),
    model_id: Type.Optional(Type.String({ minLength: 1, description: "The seed's name for the model; accepted when it is a path to a GGUF file." })),
    device: Type.Optional(DeviceSchema),
    torch_device: Type.Optional(DeviceSchema),
    gpuLayers: Type.Optional(Type.Union([optionSchema("gpuLayers"), Type.Literal("all")], {
        errorMessage: "an integer >= 0 or \"all\"",
        description: "Layers offloaded to the GPU; default all on a GPU, 0 on the CPU.",
    })),
    contextSize: Type.Optional(optionSchema("contextSize", `Max tokens per request, prompt + generated (default ${DEFAULT_CONTEXT_SIZE}, Phi-2's limit).`)),
    threads: Type.Optional(optionSchema("threads", "CPU threads for decoding (at most the logical CPUs).")),
    flashAttention: Type.Optional(Type.Union([Type.Literal("auto"), Type.Literal("on"), Type.Literal("off")], {
        errorMessage: "\"auto\", \"on\" or \"off\"",
        description: "llama.cpp's flash attention (default auto); on the CPU \"off\" decodes long sequences faster.",
    })),
    sequences: Type.Optional(optionSchema("sequences", `Requests decoded together (default ${LOAD_DEFAULTS.sequences}); more wait their turn. At most contextSize.`)),
    maxLength: Type.Optional(optionSchema("maxTokens", `Max tokens of prompt + generated text per request (default ${DEFAULT_MAX_LENGTH}, the seed's max_length, or contextSize when smaller).`)),
    maxNewTokens: Type.Optional(optionSchema("maxTokens", "Max generated tokens per request; overrides maxLength when set.")),
    temperature: Type.Optional(optionSchema("temperature", "0 (default) = greedy, as the seed.")),
    topK: Type.Optional(optionSchema("topK")),
    topP: Type.Optional(optionSchema("topP")),
    repeatPenalty: Type.Optional(optionSchema("repeatPenalty")),
    seed: Type.Optional(optionSchema("seed")),
    stop: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: MAX_STOP_STRINGS, description: "Default stop strings." })),
    includePrompt: Type.Optional(Type.Boolean({ description: "Whether generated_response begins with the prompt (default true, as the seed; never with a JSON schema)." })),
    jsonSchema: Type.Optional(outputSchema("jsonSchema", "A JSON Schema every response must match: generated_response is then the JSON text alone (README \"Typed output\"). A request's json_schema replaces it.")),
}, { additionalProperties: false });

/** The argument of `new PhiAgentProps(...)`. */
export type PhiAgentPropsInit = Static<typeof PhiAgentPropsSchema>;

const KNOWN_FIELDS = Object.keys(PhiAgentPropsSchema.properties);

function isGgufPath(value: string): boolean {
    if (/\.gguf$/i.test(value)) return true;
    try {
        return fs.statSync(value).isFile();
    } catch {
        return false;
    }
}

function squash(name: string): string {
    return name.toLowerCase().replace(/[_-]/g, "");
}

function normalizeDevice(value: string): DeviceSpec {
    return normalizeDeviceName(value) as DeviceSpec;
}

function fail(errors: FieldError[], hint?: string): never {
    throw invalid("PhiAgentProps", errors, hint);
}

export class PhiAgentProps {
    /** The typebox schema of the constructor's argument. */
    static readonly schema = PhiAgentPropsSchema;
    /** The JSON Schema of the constructor's argument. */
    static readonly jsonSchema: Record<string, unknown> = { $id: "PhiAgentProps", title: "PhiAgentProps", ...JSON.parse(JSON.stringify(PhiAgentPropsSchema)) };

    /** Path of the GGUF to load (from `modelPath` or `model_id`). */
    readonly modelPath: string;
    /** Normalized device ("mps" → "metal", lower case). */
    readonly device: DeviceSpec;
    readonly gpuLayers?: number | "all";
    readonly contextSize: number;
    readonly threads?: number;
    readonly flashAttention?: "auto" | "on" | "off";
    readonly sequences?: number;
    readonly maxLength: number;
    readonly maxNewTokens?: number;
    readonly temperature: number;
    readonly topK?: number;
    readonly topP?: number;
    readonly repeatPenalty?: number;
    readonly seed?: number;
    readonly stop: readonly string[];
    readonly includePrompt: boolean;
    /** Every response is JSON matching this schema (a request's json_schema replaces it). */
    readonly jsonSchema?: Record<string, unknown> | boolean;

    constructor(init: PhiAgentPropsInit) {
        if (typeof init !== "object" || init === null || Array.isArray(init)) {
            fail([{ path: "", message: `must be an object such as { modelPath: "models/phi-2.Q4_K_M.gguf" } (got ${init === null ? "null" : Array.isArray(init) ? "an array" : typeof init})`, kind: "type" }]);
        }
        // undefined fields count as absent, as in an options object
        const raw = Object.fromEntries(Object.entries(init).filter(([, v]) => v !== undefined)) as Record<string, unknown>;
        if (typeof raw.device === "string") raw.device = raw.device.trim().toLowerCase();
        if (typeof raw.torch_device === "string") raw.torch_device = raw.torch_device.trim().toLowerCase();
        if (!Value.Check(PhiAgentPropsSchema, raw)) {
            const errors = fieldErrors(PhiAgentPropsSchema, raw);
            for (const e of errors) {
                if (e.message !== "is not a known field") continue;
                const near = KNOWN_FIELDS.find((k) => squash(k) === squash(e.path));
                e.message = near ? `is not a known field (did you mean ${near}?)` : `is not a known field (known: ${KNOWN_FIELDS.join(", ")})`;
            }
            fail(errors);
        }
        const o = raw as PhiAgentPropsInit;

        // model: modelPath, or model_id when it is a path
        if (o.model_id !== undefined && !isGgufPath(o.model_id)) {
            fail([{
                path: "model_id", kind: "range",
                message: `is ${JSON.stringify(o.model_id)}, which is not a GGUF file: this agent runs Phi-2 locally from a GGUF file ` +
                    `(no downloads). Convert or download Phi-2 as GGUF (e.g. phi-2.Q4_K_M.gguf) and pass its path as modelPath`,
            }]);
        }
        if (o.modelPath !== undefined && o.model_id !== undefined && o.modelPath !== o.model_id) {
            fail([{ path: "model_id", kind: "range", message: `(${JSON.stringify(o.model_id)}) differs from modelPath (${JSON.stringify(o.modelPath)}); give only modelPath` }]);
        }
        const modelPath = o.modelPath ?? o.model_id;
        if (modelPath === undefined) {
            fail([{ path: "modelPath", kind: "type", message: "is required: the path of a Phi-2 GGUF file such as \"models/phi-2.Q4_K_M.gguf\" (model_id is accepted too, as a path)" }]);
        }

        // device: device, or the seed's torch_device
        if (o.device !== undefined && o.torch_device !== undefined && normalizeDevice(o.device) !== normalizeDevice(o.torch_device)) {
            fail([{ path: "torch_device", kind: "range", message: `(${JSON.stringify(o.torch_device)}) differs from device (${JSON.stringify(o.device)}); give only device` }]);
        }
        const device = normalizeDevice(o.device ?? o.torch_device ?? "auto");

        const contextSize = o.contextSize ?? DEFAULT_CONTEXT_SIZE;
        if (o.maxLength !== undefined && o.maxLength > contextSize) {
            fail([{ path: "maxLength", kind: "range", message: `(${o.maxLength}) exceeds contextSize (${contextSize}): a request cannot hold more tokens than the context; lower maxLength or raise contextSize` }]);
        }
        // llama.cpp aborts the process on more sequences than KV cells (limits.ts sequencesProblem); the agent's KV
        // cache is contextSize cells
        const sequences = o.sequences ?? LOAD_DEFAULTS.sequences;
        if (sequencesProblem(sequences, contextSize, LOAD_DEFAULTS.batchSize) !== undefined) {
            fail([{ path: "sequences", kind: "range", message: `(${sequences}${o.sequences === undefined ? ", the default" : ""}) exceeds contextSize (${contextSize}): every request decoded at once needs KV room; lower sequences or raise contextSize` }]);
        }
        if (o.threads !== undefined && o.threads > threadLimit()) {
            fail([{ path: "threads", kind: "range", message: `(${o.threads}) exceeds the ${threadLimit()} logical CPUs of this machine: more threads than CPUs make generation many times slower (README "Threads")` }]);
        }
        if (o.maxNewTokens !== undefined && o.maxNewTokens >= contextSize) {
            fail([{ path: "maxNewTokens", kind: "range", message: `(${o.maxNewTokens}) must be below contextSize (${contextSize}), which also holds the prompt` }]);
        }

        if (o.jsonSchema !== undefined) {
            if (o.includePrompt === true) {
                fail([{ path: "includePrompt", kind: "range", message: "cannot be true together with jsonSchema: the response is then the JSON document alone, so that it parses; leave includePrompt out" }]);
            }
            try {
                resolveOutputOptions(o.jsonSchema, undefined); // an unsupported keyword or a broken schema fails here, not at the first request
            } catch (err) {
                fail([{ path: "jsonSchema", kind: err instanceof TypeError ? "type" : "range", message: `is not usable: ${(err as Error).message}` }]);
            }
        }

        this.modelPath = modelPath;
        this.device = device;
        if (o.gpuLayers !== undefined) this.gpuLayers = o.gpuLayers;
        this.contextSize = contextSize;
        if (o.threads !== undefined) this.threads = o.threads;
        if (o.flashAttention !== undefined) this.flashAttention = o.flashAttention;
        if (o.sequences !== undefined) this.sequences = o.sequences;
        this.maxLength = o.maxLength ?? Math.min(DEFAULT_MAX_LENGTH, contextSize);
        if (o.maxNewTokens !== undefined) this.maxNewTokens = o.maxNewTokens;
        this.temperature = o.temperature ?? 0;
        if (o.topK !== undefined) this.topK = o.topK;
        if (o.topP !== undefined) this.topP = o.topP;
        if (o.repeatPenalty !== undefined) this.repeatPenalty = o.repeatPenalty;
        if (o.seed !== undefined) this.seed = o.seed;
        this.stop = Object.freeze([...(o.stop ?? [])]);
        this.includePrompt = o.includePrompt ?? true;
        if (o.jsonSchema !== undefined) this.jsonSchema = JSON.parse(JSON.stringify(o.jsonSchema)) as Record<string, unknown> | boolean;
        Object.freeze(this);
    }

    /**
     * PhiAgentProps from a PhiAgentProps (checked again) or its plain fields; `undefined` fails
     * with "modelPath is required". Used by AgentBuilder.buildSpec().
     */
    static from(input: PhiAgentProps | PhiAgentPropsInit | undefined): PhiAgentProps {
        if (input instanceof PhiAgentProps) return new PhiAgentProps(input.toJSON());
        if (input === undefined) {
            fail([{ path: "modelPath", kind: "type", message: "is required: call setProperties(new PhiAgentProps({ modelPath: \"models/phi-2.Q4_K_M.gguf\" }))" }]);
        }
        return new PhiAgentProps(input);
    }

    /** The fields as plain JSON (what the constructor accepts). */
    toJSON(): PhiAgentPropsInit {
        const out: PhiAgentPropsInit = { modelPath: this.modelPath, device: this.device, contextSize: this.contextSize, maxLength: this.maxLength, temperature: this.temperature, includePrompt: this.includePrompt };
        if (this.gpuLayers !== undefined) out.gpuLayers = this.gpuLayers;
        if (this.threads !== undefined) out.threads = this.threads;
        if (this.flashAttention !== undefined) out.flashAttention = this.flashAttention;
        if (this.sequences !== undefined) out.sequences = this.sequences;
        if (this.maxNewTokens !== undefined) out.maxNewTokens = this.maxNewTokens;
        if (this.topK !== undefined) out.topK = this.topK;
        if (this.topP !== undefined) out.topP = this.topP;
        if (this.repeatPenalty !== undefined) out.repeatPenalty = this.repeatPenalty;
        if (this.seed !== undefined) out.seed = this.seed;
        if (this.stop.length > 0) out.stop = [...this.stop];
        if (this.jsonSchema !== undefined) {
            out.jsonSchema = JSON.parse(JSON.stringify(this.jsonSchema)) as Record<string, unknown> | boolean;
            delete out.includePrompt; // true by default, refused together with a schema
        }
        return out;
    }

    /** PhiModel.load() options for these props. */
    toLoadOptions(extra: Pick<LoadOptions, "signal" | "onProgress"> = {}): LoadOptions {
        const o: LoadOptions = { modelPath: this.modelPath, device: this.device, contextSize: this.contextSize };
        if (this.gpuLayers !== undefined) o.gpuLayers = this.gpuLayers;
        if (this.threads !== undefined) o.threads = this.threads;
        if (this.flashAttention !== undefined) o.flashAttention = this.flashAttention;
        if (this.sequences !== undefined) o.sequences = this.sequences;
        if (extra.signal) o.signal = extra.signal;
        if (extra.onProgress) o.onProgress = extra.onProgress;
        return o;
    }
}
