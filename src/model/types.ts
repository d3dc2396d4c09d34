/** Public option and result types of PhiModel. Validation of these lives in ./options.ts. */

/** "auto" | "cpu" | "cuda" | "cuda:N" | "vulkan" | "vulkan:N" | "metal" */
export type DeviceSpec = "auto" | "cpu" | "cuda" | "vulkan" | "metal" | `cuda:${number}` | `vulkan:${number}`;

export interface LoadOptions {
    /** Path to a phi2-architecture GGUF file. */
    modelPath: string;
    /** Where to run. "auto" (default) uses a usable GPU, else the CPU. */
    device?: DeviceSpec;
    /** Layers to offload to the GPU; default: all of them on a GPU, 0 on the CPU. */
    gpuLayers?: number | "all";
    /** Max tokens per sequence (prompt + generated), 16 or more. Default: the model's training context (2048 for Phi-2). */
    contextSize?: number;
    /**
     * Max generate() calls decoded together (continuous batching). Default 8. More calls wait their turn. At most
     * kvCacheSize and batchSize (llama.cpp needs one KV cell and one batch row per sequence).
     */
    sequences?: number;
    /**
     * KV cells shared by all sequences. Default: contextSize. A call with maxTokens reserves
     * min(prompt + maxTokens, contextSize) cells when it starts; a call without maxTokens starts on its prompt and
     * takes a cell per token, sharing the cache: see GenerateOptions.maxTokens.
     * Refused when its f16 cache (2 × layers × cells × embedding × 2 bytes) exceeds all memory of the device.
     */
    kvCacheSize?: number;
    /** Logical batch size for prompt processing. Default 512. */
    batchSize?: number;
    /** CPU threads for decoding, at most the logical CPUs (README "Threads"). Default: see defaultThreads(). */
    threads?: number;
    /** CPU threads for prompt processing, at most the logical CPUs. Default: same as threads. */
    batchThreads?: number;
    /**
     * Keep one persistent ggml threadpool for the model's context (default true) instead of letting ggml start and
     * join its threads for every graph, i.e. for every decoded token. See README "Threads".
     */
    threadpool?: boolean;
    /**
     * llama.cpp's flash attention: "auto" (default, llama.cpp decides per device), "on" or "off". On the CPU it makes
     * prompt processing faster but Phi-2's decoding slower the longer the sequence gets
     * (measured: see README "Speed, memory and load time"); "off" suits long generations.
     */
    flashAttention?: "auto" | "on" | "off";
    /** Memory-map the weights (default true). */
    mmap?: boolean;
    /**
     * Let llama.cpp repack CPU weights into its interleaved layouts (faster matrix kernels, but a private copy of
     * the weights: more RSS and a slower load). Default: see README "Memory and load time".
     */
    repack?: boolean;
    /**
     * KV cells that decoded prompts may keep for reuse once their calls have ended (README "Prompt cache"): a call
     * whose prompt starts with tokens the engine still holds the KV of (a previous call's prompt and output, or a
     * running call's) copies that KV instead of decoding it again. Default 2048; 0 turns the cache off. The cells
     * come out of kvCacheSize and are evicted (least recently used first) whenever calls need them.
     */
    promptCacheSize?: number;
    /** Folder holding a llama.cpp build's shared libraries (libllama, libggml*) to use instead of the prebuilt ones. Also PHI_LLAMA_LIB_DIR. */
    libraryPath?: string;
    /** Cancels the load. */
    signal?: AbortSignal;
    /** Load progress, 0..1. */
    onProgress?: (progress: number) => void;
}

export interface TokenizeOptions {
    /** Parse special tokens such as <|endoftext|> (default false: they are plain text). */
    special?: boolean;
}

/**
 * One piece of streamed text. Every generated token comes in exactly one chunk, in order; the chunks' texts add up
 * to exactly the result's text, and never contain a stop string.
 */
export interface TokenChunk {
    /**
     * Text completed by this token: "" while a multi-byte character is incomplete or the text's end may still turn
     * into a stop string (then it comes with a later chunk).
     */
    text: string;
    /**
     * The token id; -1 for the one chunk that may follow the last token, carrying the text that was held back until
     * generation ended (at EOS or abort: the start of a stop string that never completed, an incomplete character).
     */
    token: number;
    /** With GenerateOptions.logprobs: this token's log-probability (natural log; absent on the token -1 chunk). */
    logprob?: number;
    /** With GenerateOptions.logprobs: the most likely tokens at this step, most likely first. */
    topLogprobs?: TokenLogprob[];
}

/** A token id and its log-probability (natural log) under the model's raw next-token distribution. */
export interface TokenLogprob {
    token: number;
    logprob: number;
}

/** One generated token's log-probability and the most likely alternatives at its step (GenerationResult.logprobs). */
export interface GeneratedTokenLogprob extends TokenLogprob {
    topLogprobs: TokenLogprob[];
}

export interface GenerateOptions {
    /**
     * Max tokens to generate. Default: until EOS or the end of the context. A call with maxTokens reserves its KV
     * cells (min(prompt + maxTokens, contextSize)) when it starts and always gets them. A call without it starts
     * once its prompt fits in the free cells and takes one more cell per generated token; concurrent calls without
     * maxTokens therefore decode together, sharing the cache. When the cache runs short (a call finds no free cell
     * for its next token, or another call waits for cells), each call without maxTokens that holds its fair share,
     * kvCacheSize / sequences cells, ends with finishReason "context"; the others go on, up to their fair share.
     * Alone, a call without maxTokens runs to EOS or contextSize.
     */
    maxTokens?: number;
    /** 0 (default) = greedy. */
    temperature?: number;
    topK?: number;
    topP?: number;
    minP?: number;
    /** 1 = off (default). */
    repeatPenalty?: number;
    presencePenalty?: number;
    frequencyPenalty?: number;
    /** Tokens the penalties look back over (default 64). */
    repeatLastN?: number;
    /**
     * Seed for sampling: same seed + same options + same prompt = same tokens when the call runs alone. Calls
     * decoded together in one batch can see logits differ in the last bits (llama.cpp's kernels round differently
     * for other batch shapes), which can change a sampled token, and a greedy one at a near-tie: measured on a
     * random-weight f32 tiny model, 61 of 64 greedy outputs (64 prompts × 32 tokens) were identical run together
     * and alone, against 62 of 64 for a plain C++ loop over llama.cpp batching the same prompts (the same two
     * prompts differ there at the same tokens); 16 of 16 at 16 × 64 on both. README "Concurrent requests".
     */
    seed?: number;
    /** Generation stops before the first occurrence of any of these. */
    stop?: string[];
    /**
     * Report each generated token's log-probability, and this many most likely alternatives at its step (0 to
     * 20): on every chunk (TokenChunk.logprob, topLogprobs) and in the result (GenerationResult.logprobs). Off by
     * default. They are the model's raw distribution (log-softmax of the logits), before temperature, top-k/top-p
     * and penalties. Costs one pass over the vocabulary per token.
     */
    logprobs?: number;
    /**
     * What to do with a prompt that does not fit: "error" (default, ContextOverflowError when it is longer than
     * contextSize) or "start": drop its beginning so that maxTokens still fit after it in contextSize (one token
     * when there is no maxTokens).
     */
    truncate?: "error" | "start";
    /** Cancels the call: it rejects with an AbortError whose cause is the signal's reason. */
    signal?: AbortSignal;
    /** On abort, resolve with the text so far and finishReason "abort" instead of rejecting with AbortError. */
    stopOnAbort?: boolean;
    /**
     * Called for every generated token (from the event loop, batched; never blocks decoding), and once more with
     * token -1 when text held back until the end remains (see TokenChunk).
     */
    onToken?: (chunk: TokenChunk) => void;
    /**
     * A JSON Schema (a typebox schema is one) the output must match: generation is constrained token by token by a
     * grammar made from it (src/grammar/jsonSchema.ts), so a result that ends with "eos" or "stop" is JSON that
     * validates against the schema (`result.json` holds it parsed), even from a model that knows nothing of JSON.
     * One cut short ("length", "context", "abort") is a prefix of such a document. The supported keywords and the
     * documents generated: README "Typed output". An unsupported keyword or a broken schema is a JsonSchemaError
     * (ERR_INVALID_ARGUMENT) before anything runs. Not together with `grammar`.
     */
    jsonSchema?: Record<string, unknown> | boolean;
    /**
     * A GBNF grammar (llama.cpp's format, start rule `root`) the output must match, with the same guarantee as
     * `jsonSchema`: complete at "eos"/"stop", a prefix of a match otherwise. A grammar llama.cpp would refuse, abort
     * or hang on is a GrammarError (ERR_INVALID_ARGUMENT) naming the line first. With a grammar, a stop string ends
     * the text only where the text before it is complete under the grammar.
     */
    grammar?: string;
}

export type FinishReason = "eos" | "stop" | "length" | "context" | "abort";

export interface GenerationUsage {
    promptTokens: number;
    /** Prompt tokens whose KV came from the prompt cache instead of being decoded (at most promptTokens - 1). */
    cachedPromptTokens: number;
    completionTokens: number;
    promptMs: number;
    generationMs: number;
}

export interface GenerationResult {
    text: string;
    /** With `jsonSchema`, when finishReason is "eos" or "stop": the text parsed (it validates against the schema). */
    json?: unknown;
    tokens: number[];
    finishReason: FinishReason;
    usage: GenerationUsage;
    /** With GenerateOptions.logprobs: one entry per generated token, in order (tokens[i] ↔ logprobs[i]). */
    logprobs?: GeneratedTokenLogprob[];
}

export interface DeviceInfo {
    /** e.g. "CPU", "CUDA0", "Vulkan0" */
    name: string;
    description: string;
    type: "cpu" | "gpu" | "igpu" | "accel" | "other";
    /** Backend registry name, e.g. "CPU", "CUDA", "Vulkan", "Metal". */
    backend: string;
    memoryTotal: number;
    memoryFree: number;
}

export interface ModelInfo {
    path: string;
    architecture: string;
    name: string;
    contextLength: number;
    embeddingLength: number;
    layers: number;
    heads: number;
    vocabSize: number;
    /** llama.cpp's file type name, e.g. "Q4_K - Medium". */
    fileType: string;
    /** Short quantization tag, e.g. "q4_k_m", "q8_0", "f16", "f32". */
    quantization: string;
    fileSize: number;
    parameterCount: number;
    /** What was loaded where. */
    runtime: {
        device: string;
        backend: string;
        gpuLayers: number;
        contextSize: number;
        kvCacheSize: number;
        sequences: number;
        batchSize: number;
        threads: number;
        batchThreads: number;
        /** A persistent ggml threadpool is attached (LoadOptions.threadpool, when the CPU backend provides one). */
        threadpool: boolean;
        flashAttention: "auto" | "on" | "off";
        /** LoadOptions.promptCacheSize as used: 0 when the cache is off. */
        promptCacheSize: number;
        libraryPath: string;
        llamaCppRelease: string;
    };
}
