/**
 * The raw addon, typed by hand, and the one loader that finds it and the llama.cpp libraries it runs on.
 * Private: only src/model/* imports this file.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { PhiAgentError } from "../errors.js";

export interface NativeDevice {
    index: number;
    name: string;
    description: string;
    type: "cpu" | "gpu" | "igpu" | "accel" | "other";
    backend: string;
    memoryFree: number;
    memoryTotal: number;
}

export interface NativeModelInfo {
    description: string;
    architecture: string;
    name: string;
    contextLength: number;
    embeddingLength: number;
    layers: number;
    heads: number;
    vocabSize: number;
    fileTypeId: number;
    fileType: string;
    tensorBytes: number;
    parameterCount: number;
    eosToken: number;
}

export interface NativeModel {
    /**
     * Loads the weights on a libuv worker thread. `fd`: an open descriptor of `path` (POSIX): the load reads that
     * very file (the addon dups it; the caller may close its own after the promise settles). Every onProgress
     * call is delivered before the promise settles; one that throws stops the load, which rejects with
     * ERR_LOAD_FAILED and the thrown value as `cause`.
     */
    load(path: string, options: { fd?: number; gpuLayers: number; deviceIndex: number; mmap: boolean; repack: boolean },
        onProgress?: (progress: number) => void): Promise<void>;
    abortLoad(): void;
    info(): NativeModelInfo;
    meta(key: string): string | undefined;
    tokenize(text: string, special: boolean): Int32Array;
    detokenize(tokens: Int32Array, special: boolean): string;
    /** Unusable at once (ERR_DISPOSED); the weights are freed on a worker thread (after the last engine closes). */
    dispose(): Promise<void>;
}

export interface NativeSubmitOptions {
    maxTokens: number;
    stream: boolean;
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
    captureLogits: boolean;
    /** -1: off; else each token event carries its logprob and this many top alternatives (needs stream). */
    logprobs: number;
    /** GBNF (start rule "root") the output must match; "" for none. Checked by src/grammar/gbnf.ts first. */
    grammar: string;
}

export interface NativeDonePayload {
    text: string;
    tokens: Int32Array;
    finishReason: "eos" | "stop" | "length" | "context" | "abort";
    promptTokens: number;
    /** Prompt tokens whose KV was reused from the prompt cache. */
    cachedTokens: number;
    promptMs: number;
    generationMs: number;
    queuedMs: number;
    logits?: Float32Array;
}

export type NativeEvent =
    | ["token", { text: string; token: number; logprob?: number; topTokens?: Int32Array; topLogprobs?: Float32Array }]
    | ["done", NativeDonePayload]
    | ["error", { code: string; message: string }];

export interface NativeEngine {
    /** Creates the context; says whether a persistent threadpool was attached. Once per engine (ERR_INVALID_STATE). */
    init(): Promise<{ threadpool: boolean }>;
    /** Throws ERR_DISPOSED after close(), ERR_GENERATION_FAILED once the decode loop has stopped on a native error. */
    submit(tokens: Int32Array, options: NativeSubmitOptions, callback: (...event: NativeEvent) => void): number;
    cancel(id: number): void;
    /** A paused request keeps its slot and KV cells but is not decoded until resumed (stream() backpressure). */
    pause(id: number, paused: boolean): void;
    close(): Promise<void>;
    /**
     * reservedCells: KV cells in use plus those running requests may still write; usedCells: cells in use;
     * cachedCells: cells only the prompt cache holds (evicted when requests need them).
     */
    stats(): { active: number; waiting: number; reservedCells: number; usedCells: number; cachedCells: number };
}

export interface NativeEngineOptions {
    kvSize: number;
    contextSize: number;
    batchSize: number;
    sequences: number;
    threads: number;
    batchThreads: number;
    threadpool: boolean;
    /** llama_flash_attn_type: -1 auto, 0 off, 1 on. */
    flashAttention: -1 | 0 | 1;
    /** KV cells decoded prompts may keep for reuse (0: no prompt cache). */
    promptCacheSize: number;
}

export interface Binding {
    loadLibrary(dir: string): { dir: string; systemInfo: string; supportsGpuOffload: boolean; maxSequences: number };
    listDevices(): NativeDevice[];
    quantize(input: string, output: string, ftype: number, threads: number): Promise<void>;
    /** Tests only: runs token pieces through native/TextStream as the engine does; the chunks it would stream. */
    textStreamRun(pieces: Uint8Array[], stops: string[], ending: "eos" | "length" | "abort"): { chunks: string[]; text: string; stopped: boolean; consumed: number };
    hardwareConcurrency: number;
    NativeModel: new () => NativeModel;
    NativeEngine: new (model: NativeModel, options: NativeEngineOptions) => NativeEngine;
}

/** The package root (the folder holding our package.json), from dist/src/native/ or src/native/. */
export const packageRoot = (() => {
    let dir = path.dirname(fileURLToPath(import.meta.url));
    while (!fs.existsSync(path.join(dir, "package.json")) && path.dirname(dir) !== dir) dir = path.dirname(dir);
    return dir;
})();

const require = createRequire(import.meta.url);
let binding: Binding | undefined;

/** Where the addon may be, in the order tried. */
export function addonCandidates(): string[] {
    const platformArch = `${process.platform}-${process.arch}`;
    return [
        process.env.PHI_AGENT_ADDON,
        path.join(packageRoot, "build", "Release", "phi_agent.node"),
        path.join(packageRoot, "prebuilds", platformArch, "phi_agent.napi.node"),
    ].filter((p): p is string => typeof p === "string" && p.length > 0);
}

export function loadBinding(): Binding {
    if (binding) return binding;
    const tried: string[] = [];
    for (const candidate of addonCandidates()) {
        if (!fs.existsSync(candidate)) {
            tried.push(`${candidate} (not found)`);
            continue;
        }
        try {
            binding = require(candidate) as Binding;
            return binding;
        } catch (err) {
            tried.push(`${candidate} (${(err as Error).message.split("\n")[0]})`);
        }
    }
    throw new PhiAgentError("ERR_NATIVE_BINDING", [
        `llm-phi-agent has no native addon for this platform: ${process.platform}-${process.arch}, Node ${process.version} (Node-API ${process.versions.napi}).`,
        "Tried:",
        ...tried.map((t) => `  - ${t}`),
        "Fix: build it here with `npm run build` (needs a C++17 compiler, Python and git), or",
        "     `npm run build:source -- --backend cpu|cuda|vulkan|metal` to build llama.cpp from source too.",
    ].join("\n"), { details: { platform: process.platform, arch: process.arch, tried } });
}

/** The library sets node-llama-cpp publishes, per platform, best first. */
function platformPackages(): { pkg: string; backend: "cuda" | "vulkan" | "metal" | "cpu" }[] {
    const { platform, arch } = process;
    if (platform === "linux" && arch === "x64") {
        return [
            { pkg: "linux-x64-cuda", backend: "cuda" },
            { pkg: "linux-x64-vulkan", backend: "vulkan" },
            { pkg: "linux-x64", backend: "cpu" },
        ];
    }
    if (platform === "linux" && arch === "arm64") return [{ pkg: "linux-arm64", backend: "cpu" }];
    if (platform === "linux" && arch === "arm") return [{ pkg: "linux-armv7l", backend: "cpu" }];
    if (platform === "darwin" && arch === "arm64") return [{ pkg: "mac-arm64-metal", backend: "metal" }];
    if (platform === "darwin" && arch === "x64") return [{ pkg: "mac-x64", backend: "cpu" }];
    if (platform === "win32" && arch === "x64") {
        return [
            { pkg: "win-x64-cuda", backend: "cuda" },
            { pkg: "win-x64-vulkan", backend: "vulkan" },
            { pkg: "win-x64", backend: "cpu" },
        ];
    }
    if (platform === "win32" && arch === "arm64") return [{ pkg: "win-arm64", backend: "cpu" }];
    return [];
}

function findPackageDir(name: string): string | undefined {
    for (let dir = packageRoot; ; dir = path.dirname(dir)) {
        const candidate = path.join(dir, "node_modules", name);
        if (fs.existsSync(path.join(candidate, "package.json"))) return candidate;
        if (path.dirname(dir) === dir) return undefined;
    }
}

export interface LibrarySet {
    dir: string;
    backend: "cuda" | "vulkan" | "metal" | "cpu" | "custom";
    source: string;
}

/** Every library set usable here, best first (the user's own build first). */
export function librarySets(libraryPath?: string): LibrarySet[] {
    const sets: LibrarySet[] = [];
    const custom = libraryPath ?? process.env.PHI_LLAMA_LIB_DIR;
    if (custom) sets.push({ dir: path.resolve(custom), backend: "custom", source: libraryPath ? "libraryPath option" : "PHI_LLAMA_LIB_DIR" });
    const sourceBuild = path.join(packageRoot, "build", "llama", "bin");
    const marker = path.join(packageRoot, "build", "llama", "backend.txt");
    if (fs.existsSync(marker)) {
        const backend = fs.readFileSync(marker, "utf8").trim() as LibrarySet["backend"];
        sets.push({ dir: sourceBuild, backend, source: "npm run build:source" });
    }
    for (const { pkg, backend } of platformPackages()) {
        const dir = findPackageDir(`@node-llama-cpp/${pkg}`);
        if (dir && fs.existsSync(path.join(dir, "bins", pkg))) {
            sets.push({ dir: path.join(dir, "bins", pkg), backend, source: `@node-llama-cpp/${pkg}` });
        }
    }
    return sets;
}

function nvidiaDriverPresent(): boolean {
    if (process.platform === "linux") return fs.existsSync("/proc/driver/nvidia/version");
    if (process.platform === "win32") return fs.existsSync(path.join(process.env.SystemRoot ?? "C:\\Windows", "System32", "nvcuda.dll"));
    return false;
}

function vulkanPresent(): boolean {
    if (process.platform === "linux") {
        const hasLoader = ["/usr/lib/x86_64-linux-gnu/libvulkan.so.1", "/usr/lib64/libvulkan.so.1", "/usr/lib/libvulkan.so.1"]
            .some((p) => fs.existsSync(p));
        return hasLoader && fs.existsSync("/dev/dri");
    }
    if (process.platform === "win32") return fs.existsSync(path.join(process.env.SystemRoot ?? "C:\\Windows", "System32", "vulkan-1.dll"));
    return false;
}

let loaded: LibrarySet | undefined;

/** The library set this process loaded, if any. */
export function loadedLibrarySet(): LibrarySet | undefined {
    return loaded;
}

/**
 * Loads the llama.cpp library set that fits `backend` ("auto" picks CUDA when an NVIDIA driver is present,
 * else Metal on Apple Silicon, else Vulkan when a Vulkan loader and a GPU are present, else the CPU set).
 * One set per process: later calls reuse it when it can serve the request.
 */
export function ensureLibrary(backend: "auto" | "cpu" | "cuda" | "vulkan" | "metal", libraryPath?: string): LibrarySet {
    const b = loadBinding();
    const sets = librarySets(libraryPath);
    if (loaded) {
        if (libraryPath && path.resolve(libraryPath) !== loaded.dir) {
            throw new PhiAgentError("ERR_LIBRARY_NOT_FOUND",
                `llama.cpp is already loaded from ${loaded.dir} in this process; it cannot switch to ${libraryPath}. Use one libraryPath per process.`);
        }
        if (backend === "auto" || backend === "cpu" || loaded.backend === backend || loaded.backend === "custom") return loaded;
        throw new PhiAgentError("ERR_DEVICE_UNAVAILABLE",
            `This process already loaded the ${loaded.backend} llama.cpp libraries (${loaded.source}); a "${backend}" device needs the ${backend} set. ` +
            `Use one backend per process (load the ${backend} model first, or in another process).`);
    }
    let pick: LibrarySet | undefined = sets.find((s) => s.backend === "custom");
    if (!pick) {
        const wanted = backend === "auto"
            ? [nvidiaDriverPresent() ? "cuda" : "", process.platform === "darwin" ? "metal" : "", vulkanPresent() ? "vulkan" : "", "cpu"].filter(Boolean)
            : [backend];
        for (const w of wanted) {
            pick = sets.find((s) => s.backend === w);
            if (pick) break;
        }
        // The Metal set also runs on the CPU; a CUDA/Vulkan set does too, when it is all there is.
        if (!pick && backend === "cpu") pick = sets[0];
    }
    if (!pick) {
        const pkgs = platformPackages().filter((p) => backend === "auto" || p.backend === backend).map((p) => `@node-llama-cpp/${p.pkg}`);
        throw new PhiAgentError(backend === "auto" || backend === "cpu" ? "ERR_LIBRARY_NOT_FOUND" : "ERR_DEVICE_UNAVAILABLE", [
            `No llama.cpp libraries for device "${backend}" on ${process.platform}-${process.arch}.`,
            `Looked for: ${pkgs.length ? pkgs.join(", ") : "(no prebuilt package exists for this platform)"}; PHI_LLAMA_LIB_DIR ${process.env.PHI_LLAMA_LIB_DIR ? "= " + process.env.PHI_LLAMA_LIB_DIR : "is not set"}.`,
            pkgs.length ? `Fix: npm install ${pkgs[pkgs.length - 1]}@3.22.1, or build llama.cpp yourself: npm run build:source -- --backend ${backend === "auto" ? "cpu" : backend}` :
                `Fix: npm run build:source -- --backend ${backend === "auto" ? "cpu" : backend}, or point PHI_LLAMA_LIB_DIR at a llama.cpp build's library folder.`,
        ].join("\n"));
    }
    try {
        b.loadLibrary(pick.dir);
    } catch (err) {
        throw new PhiAgentError("ERR_LIBRARY_NOT_FOUND", `Could not load llama.cpp from ${pick.dir} (${pick.source}): ${(err as Error).message}`, { cause: err });
    }
    loaded = pick;
    return pick;
}

/** Physical cores (hyperthread siblings counted once) where the OS tells, else logical CPUs. */
export function physicalCores(): number {
    const logical = typeof os.availableParallelism === "function" ? os.availableParallelism() : os.cpus().length;
    if (process.platform !== "linux") return logical;
    try {
        const cores = new Set<string>();
        let physical = "0";
        for (const line of fs.readFileSync("/proc/cpuinfo", "utf8").split("\n")) {
            const [key, value] = line.split(":").map((s) => s.trim());
            if (key === "physical id") physical = value ?? "0";
            else if (key === "core id") cores.add(`${physical}:${value}`);
        }
        return cores.size > 0 ? Math.min(cores.size, logical) : logical;
    } catch {
        return logical;
    }
}

/**
 * Default ggml threads: one per physical core (SMT siblings share the FPU and memory port that decoding is bound
 * by), at most 8 (decode is memory-bandwidth bound; past that, more threads only add barrier overhead).
 * The JS thread is idle while generate() runs natively, so using every core does not starve it.
 */
export function defaultThreads(): number {
    return Math.max(1, Math.min(physicalCores(), 8));
}
