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
     * KV cells shared by all sequences. Default: contextSize. A call reserves min(prompt + maxTokens, contextSize).
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

export interface TokenChunk {
    /** Text completed by this token (may be "" while a multi-byte character is incomplete or a stop string may begin). */
    text: string;
    /** The token id. */
    token: number;
}

export interface GenerateOptions {
    /** Max tokens to generate. Default: until EOS or the end of the context. */
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
     * decoded together in one batch may see logits differ in the last bits (llama.cpp's batched attention
     * rounds differently), which can change a sampled token; greedy output is unaffected in practice.
     */
    seed?: number;
    /** Generation stops before the first occurrence of any of these. */
    stop?: string[];
    /** What to do with a prompt that does not fit: "error" (default, ContextOverflowError) or "start" (drop its beginning). */
    truncate?: "error" | "start";
    signal?: AbortSignal;
    /** On abort, resolve with the text so far and finishReason "abort" instead of rejecting with AbortError. */
    stopOnAbort?: boolean;
    /** Called for every generated token (from the event loop, batched; never blocks decoding). */
    onToken?: (chunk: TokenChunk) => void;
}

export type FinishReason = "eos" | "stop" | "length" | "context" | "abort";

export interface GenerationUsage {
    promptTokens: number;
    completionTokens: number;
    promptMs: number;
    generationMs: number;
}

export interface GenerationResult {
    text: string;
    tokens: number[];
    finishReason: FinishReason;
    usage: GenerationUsage;
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
        libraryPath: string;
        llamaCppRelease: string;
    };
}
