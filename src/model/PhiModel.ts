/**
 * PhiModel: a Phi-2 GGUF loaded through llama.cpp. The path a call takes: PhiModel (validation, tokenization,
 * typing) → src/native/binding.ts → native/NativeModel.cpp / native/NativeEngine.cpp → llama.cpp.
 */
import fs from "node:fs";
import path from "node:path";
import os from "node:os";
import { AbortError, ContextOverflowError, DisposedError, PhiAgentError, PhiRangeError, type PhiErrorCode } from "../errors.js";
import { fileTypeTag } from "../gguf/types.js";
import { openAndCheckPhi2, type CheckedModelFile } from "../gguf/validate.js";
import { defaultThreads, loadBinding, type NativeEngine, type NativeModel, type NativeDonePayload, type NativeDevice } from "../native/binding.js";
import { checkGbnfTokens, type GbnfVocab } from "../grammar/gbnf.js";
import { selectDevice } from "./devices.js";
import { kvCacheBytes } from "./limits.js";
import { checkText, checkTokens, resolveContext, resolveGenerateOptions, resolveLoadOptions, resolveTokenizeOptions, type ResolvedGenerateOptions } from "./options.js";
import type { GeneratedTokenLogprob, GenerateOptions, GenerationResult, LoadOptions, ModelInfo, TokenChunk, TokenLogprob, TokenizeOptions } from "./types.js";

/** Rewrites an error's stack to point at the JS caller that started the native work. */
function withCallerStack<E extends Error>(error: E, caller: Error): E {
    const callerFrames = (caller.stack ?? "").split("\n").slice(1).join("\n");
    error.stack = `${error.name}: ${error.message}\n${callerFrames}`;
    return error;
}

function nativeError(code: string, message: string, caller: Error): Error {
    if (code === "ERR_DISPOSED") return withCallerStack(new DisposedError(), caller);
    if (code === "ERR_ABORTED") return withCallerStack(new AbortError(message), caller);
    return withCallerStack(new PhiAgentError((code || "ERR_GENERATION_FAILED") as PhiErrorCode, message), caller);
}

/**
 * Whether a load hands llama.cpp the descriptor that the GGUF check read (POSIX). On Windows the addon loads the
 * path, and checkSameFile() before and after the load stands in for it (it catches a replaced file, but a file
 * swapped in and out during the load itself can still reach llama.cpp there). Tests turn the handoff off with
 * PHI_AGENT_TEST_FD_HANDOFF=0 (only under PHI_AGENT_TEST=1) to run that fallback on any platform.
 */
function fdHandoff(): boolean {
    if (process.env["PHI_AGENT_TEST"] === "1" && process.env["PHI_AGENT_TEST_FD_HANDOFF"] === "0") return false;
    return process.platform !== "win32";
}

/** Refuses when `path` no longer names the file that was checked (device, inode, size). */
async function checkSameFile(path: string, file: CheckedModelFile): Promise<void> {
    const now = await fs.promises.stat(path).catch(() => undefined);
    if (!now || now.dev !== file.dev || now.ino !== file.ino || now.size !== file.size) {
        throw new PhiAgentError("ERR_LOAD_FAILED",
            `${path} was replaced or changed while it was being loaded; load it again once nothing writes to it`,
            { details: { path } });
    }
}

/**
 * A stream of generated text; `result` settles when generation ends. Breaking out of the loop cancels it. It can be
 * iterated once (a second `for await` throws a TypeError). At most STREAM_BUFFER_CHUNKS chunks wait for a slow
 * reader: then the request is paused natively (its sequence is not decoded, the others are) until it reads on.
 */
export interface GenerationStream extends AsyncIterable<TokenChunk> {
    readonly result: Promise<GenerationResult>;
}

/** Chunks stream() buffers for a reader that falls behind before it pauses the request (resumed at a quarter). */
export const STREAM_BUFFER_CHUNKS = 64;

/** An AbortError that carries the signal's reason (as `cause`, and in the message). */
function abortError(what: string, signal: AbortSignal | undefined, caller: Error, cause?: unknown): AbortError {
    return withCallerStack(cause === undefined ? AbortError.fromSignal(what, signal) : AbortError.fromSignal(what, signal, cause), caller);
}

interface RunHooks {
    captureLogits?: boolean;
    /** Called once the request is submitted, with a handle to pause and resume its decoding. */
    onSubmit?: (pause: (paused: boolean) => void) => void;
}

export class PhiModel implements AsyncDisposable {
    readonly info: ModelInfo;
    #native: NativeModel | undefined;
    #engine: NativeEngine | undefined;
    #inFlight = new Set<Promise<unknown>>();
    #disposing: Promise<void> | undefined;

    private constructor(native: NativeModel, engine: NativeEngine, info: ModelInfo) {
        this.#native = native;
        this.#engine = engine;
        this.info = Object.freeze(info);
    }

    /** Loads a phi2 GGUF. The file's header is checked in TypeScript first, so a bad file is a typed error, never a crash. */
    static async load(options: LoadOptions): Promise<PhiModel> {
        const caller = new Error();
        const o = resolveLoadOptions(options);
        if (o.signal?.aborted) throw abortError("The model load was aborted before it started", o.signal, caller);

        // One open descriptor from the check to the end of the load: llama.cpp reads the very file that was checked
        // (a rename or swap of the path meanwhile changes nothing), and the descriptor stays open until the load ends.
        const { header, hparams, file } = await openAndCheckPhi2(o.modelPath);
        let binding: ReturnType<typeof loadBinding>, device: NativeDevice, libraryDir: string, native: NativeModel;
        let gpuLayers: number, contextSize: number, kvSize: number, threads: number, batchThreads: number;
        try {
            if (o.signal?.aborted) throw abortError("The model load was aborted before it started", o.signal, caller);
            binding = loadBinding();
            ({ device, libraryDir } = selectDevice(o.device, o.libraryPath));
            gpuLayers = device.type === "cpu" ? 0 : o.gpuLayers === "all" ? hparams.blockCount + 1 : o.gpuLayers;
            const kvOnGpu = device.type !== "cpu" && gpuLayers > hparams.blockCount && device.memoryTotal > 0;
            ({ contextSize, kvCacheSize: kvSize } = resolveContext(o, hparams, kvOnGpu
                ? { bytes: device.memoryTotal, where: `the memory of ${device.name}` }
                : { bytes: os.totalmem(), where: "this machine's RAM" }));
            threads = o.threads ?? defaultThreads();
            batchThreads = o.batchThreads ?? threads;

            native = new binding.NativeModel();
            const handoff = fdHandoff();
            if (!handoff) await checkSameFile(o.modelPath, file);
            const onAbort = () => native.abortLoad();
            o.signal?.addEventListener("abort", onAbort, { once: true });
            try {
                await native.load(o.modelPath, {
                    fd: handoff ? file.fh.fd : undefined,
                    gpuLayers, deviceIndex: device.type === "cpu" ? -1 : device.index, mmap: o.mmap, repack: o.repack,
                }, o.onProgress);
            } catch (err) {
                const e = err as Error & { code?: string; cause?: unknown };
                if (e.code === "ERR_ABORTED" || o.signal?.aborted) throw abortError("The model load was aborted", o.signal, caller, err);
                throw withCallerStack(new PhiAgentError("ERR_LOAD_FAILED", e.message, { cause: e.cause ?? err }), caller);
            } finally {
                o.signal?.removeEventListener("abort", onAbort);
            }
            if (!handoff) {
                try {
                    await checkSameFile(o.modelPath, file);
                } catch (err) {
                    await native.dispose();
                    throw withCallerStack(err as Error, caller);
                }
            }
        } finally {
            await file.fh.close().catch(() => undefined);
        }
        if (o.signal?.aborted) {
            await native.dispose();
            throw abortError("The model load was aborted", o.signal, caller);
        }

        let threadpool = false;
        const engine = new binding.NativeEngine(native, {
            kvSize, contextSize, batchSize: o.batchSize, sequences: o.sequences, threads, batchThreads,
            threadpool: o.threadpool,
            flashAttention: o.flashAttention === "auto" ? -1 : o.flashAttention === "on" ? 1 : 0,
            promptCacheSize: o.promptCacheSize,
        });
        try {
            threadpool = (await engine.init()).threadpool;
        } catch (err) {
            await engine.close().catch(() => undefined);
            await native.dispose();
            throw withCallerStack(new PhiAgentError("ERR_LOAD_FAILED", contextFailure((err as Error).message, kvSize, kvCacheBytes(hparams, kvSize)), { cause: err }), caller);
        }
        const n = native.info();
        const info: ModelInfo = {
            path: o.modelPath,
            architecture: n.architecture,
            name: n.name,
            contextLength: n.contextLength,
            embeddingLength: n.embeddingLength,
            layers: n.layers,
            heads: n.heads,
            vocabSize: n.vocabSize,
            fileType: n.fileType,
            quantization: fileTypeTag(n.fileTypeId),
            fileSize: header.fileSize,
            parameterCount: n.parameterCount,
            runtime: {
                device: device.type === "cpu" ? "cpu" : device.name,
                backend: device.backend,
                gpuLayers,
                contextSize,
                kvCacheSize: kvSize,
                sequences: o.sequences,
                batchSize: o.batchSize,
                threads,
                batchThreads,
                threadpool,
                flashAttention: o.flashAttention,
                promptCacheSize: o.promptCacheSize,
                libraryPath: libraryDir,
                llamaCppRelease: libraryRelease(libraryDir),
            },
        };
        return new PhiModel(native, engine, info);
    }

    /** True from the moment dispose() is called (methods throw DisposedError from then on). */
    get disposed(): boolean {
        return this.#native === undefined || this.#disposing !== undefined;
    }

    #live(): { native: NativeModel; engine: NativeEngine } {
        if (!this.#native || !this.#engine || this.#disposing) throw new DisposedError();
        return { native: this.#native, engine: this.#engine };
    }

    /** Text → token ids with the model's own vocabulary. No BOS is added (Phi-2 has none). */
    tokenize(text: string, options?: TokenizeOptions): number[] {
        const { native } = this.#live();
        checkText("text", text, { allowEmpty: true });
        const { special } = resolveTokenizeOptions("tokenize", options);
        return Array.from(native.tokenize(text, special));
    }

    /** Token ids → text. Special tokens (<|endoftext|>) are rendered only with { special: true }. */
    detokenize(tokens: readonly number[] | Int32Array, options?: TokenizeOptions): string {
        const { native } = this.#live();
        const ids = checkTokens("tokens", tokens, this.info.vocabSize);
        const { special } = resolveTokenizeOptions("detokenize", options);
        return native.detokenize(ids, special);
    }

    /** Generates a completion of `prompt`. Runs entirely in native code; concurrent calls are decoded together. */
    async generate(prompt: string, options?: GenerateOptions): Promise<GenerationResult> {
        const caller = new Error();
        const o = resolveGenerateOptions(options);
        const { engine, tokens } = this.#prepare(prompt, o);
        return this.#run(engine, tokens, o, caller);
    }

    /**
     * Streams a completion: `for await (const chunk of model.stream(prompt)) process.stdout.write(chunk.text)`.
     * The chunks' texts add up to `result.text`; each generated token comes in one chunk, and a last chunk with
     * token -1 may carry text held back until the end (see TokenChunk).
     */
    stream(prompt: string, options?: Omit<GenerateOptions, "onToken">): GenerationStream {
        const caller = new Error();
        const o = resolveGenerateOptions(options);
        const { engine, tokens } = this.#prepare(prompt, o);
        const queue: TokenChunk[] = [];
        let head = 0;
        let wake: (() => void) | undefined;
        let finished = false;
        let iterated = false;
        let pause: ((paused: boolean) => void) | undefined;
        let paused = false;
        const controller = new AbortController();
        const userSignal = o.signal;
        o.signal = userSignal ? AbortSignal.any([userSignal, controller.signal]) : controller.signal;
        o.onToken = (chunk) => {
            queue.push(chunk);
            if (!paused && queue.length - head >= STREAM_BUFFER_CHUNKS && pause) {
                paused = true;
                pause(true);
            }
            wake?.();
        };
        const result = this.#run(engine, tokens, o, caller, { onSubmit: (p) => (pause = p) }).finally(() => {
            finished = true;
            wake?.();
        });
        result.catch(() => undefined); // surfaced through the iterator (and `result` for whoever awaits it)
        async function* read(): AsyncGenerator<TokenChunk> {
            try {
                for (;;) {
                    while (head < queue.length) {
                        const chunk = queue[head]!;
                        queue[head++] = undefined as unknown as TokenChunk;
                        if (head > 1024 && head * 2 > queue.length) queue.splice(0, head), (head = 0);
                        if (paused && queue.length - head <= STREAM_BUFFER_CHUNKS / 4) {
                            paused = false;
                            pause?.(false);
                        }
                        yield chunk;
                    }
                    if (finished) break;
                    await new Promise<void>((resolve) => (wake = resolve));
                    wake = undefined;
                }
                await result; // rejects with the generation's error, if any
            } finally {
                if (!finished) controller.abort();
            }
        }
        return {
            result,
            [Symbol.asyncIterator](): AsyncIterator<TokenChunk> {
                if (iterated) {
                    throw new TypeError("This GenerationStream is already being read: a stream can be iterated once. Keep the chunks you read, or await stream.result for the whole text.");
                }
                iterated = true;
                return read();
            },
        };
    }

    #prepare(prompt: string, o: ResolvedGenerateOptions): { engine: NativeEngine; tokens: Int32Array } {
        const { native, engine } = this.#live();
        checkText("prompt", prompt, { allowEmpty: false });
        if (o.grammarTokens && o.grammarTokens.length > 0) checkGbnfTokens(o.grammarTokens, this.#vocab(native));
        let tokens = native.tokenize(prompt, false);
        const contextSize = this.info.runtime.contextSize;
        if (o.truncate === "start") {
            // keep the prompt's end, leaving room for maxTokens (for at least one token when there is no bound)
            const keep = Math.max(1, contextSize - (o.maxTokens > 0 ? o.maxTokens : 1));
            if (tokens.length > keep) tokens = tokens.slice(tokens.length - keep);
        } else if (tokens.length > contextSize) {
            throw new ContextOverflowError(tokens.length, contextSize);
        }
        return { engine, tokens };
    }

    /** The vocabulary, as src/grammar/gbnf.ts checks a grammar's token references against it. */
    #vocab(native: NativeModel): GbnfVocab {
        return {
            size: this.info.vocabSize,
            eog: [native.info().eosToken],
            tokenize: (text) => native.tokenize(text, true),
            hasText: (id) => native.detokenize(Int32Array.of(id), false).length > 0,
        };
    }

    /**
     * The model's raw next-token logits after `prompt` (a string, or token ids): one Float32Array of vocabSize
     * scores, exactly what generate()'s first step samples from. For scoring, tests and reference checks.
     */
    async evaluate(prompt: string | readonly number[], options: { signal?: AbortSignal } = {}): Promise<Float32Array> {
        const caller = new Error();
        const o = resolveGenerateOptions({ maxTokens: 1, signal: options.signal });
        let engine: NativeEngine, tokens: Int32Array;
        if (typeof prompt === "string") ({ engine, tokens } = this.#prepare(prompt, o));
        else {
            engine = this.#live().engine;
            tokens = checkTokens("prompt", prompt, this.info.vocabSize);
            if (tokens.length === 0) throw new PhiRangeError(`"prompt" is empty; pass at least one token`);
            if (tokens.length > this.info.runtime.contextSize) throw new ContextOverflowError(tokens.length, this.info.runtime.contextSize);
        }
        const result = await this.#run(engine, tokens, o, caller, { captureLogits: true });
        return (result as GenerationResult & { logits: Float32Array }).logits;
    }

    #run(engine: NativeEngine, tokens: Int32Array, o: ResolvedGenerateOptions, caller: Error, hooks: RunHooks = {}): Promise<GenerationResult> {
        if (o.signal?.aborted) return Promise.reject(abortError("The generation was aborted before it started", o.signal, caller));
        const captureLogits = hooks.captureLogits ?? false;
        const onToken = o.onToken;
        // logprobs come with the token events: the result's list is collected from them
        const logprobs: GeneratedTokenLogprob[] | undefined = o.logprobs >= 0 ? [] : undefined;
        const promise = new Promise<GenerationResult>((resolve, reject) => {
            let id = -1;
            const onAbort = () => engine.cancel(id);
            const settle = () => o.signal?.removeEventListener("abort", onAbort);
            try {
                id = engine.submit(tokens, {
                maxTokens: o.maxTokens, stream: onToken !== undefined || logprobs !== undefined, temperature: o.temperature, topK: o.topK, topP: o.topP,
                minP: o.minP, repeatPenalty: o.repeatPenalty, presencePenalty: o.presencePenalty,
                frequencyPenalty: o.frequencyPenalty, repeatLastN: o.repeatLastN, seed: o.seed, stop: o.stop, captureLogits,
                logprobs: o.logprobs,
                grammar: o.grammar ?? "",
            }, (kind, payload) => {
                if (kind === "token") {
                    let chunk: TokenChunk = { text: payload.text, token: payload.token };
                    if (logprobs && payload.logprob !== undefined) {
                        const top: TokenLogprob[] = [];
                        const ids = payload.topTokens ?? new Int32Array(0);
                        const lps = payload.topLogprobs ?? new Float32Array(0);
                        for (let i = 0; i < ids.length; i++) top.push({ token: ids[i]!, logprob: lps[i]! });
                        chunk = { text: payload.text, token: payload.token, logprob: payload.logprob, topLogprobs: top };
                        logprobs.push({ token: payload.token, logprob: payload.logprob, topLogprobs: top });
                    }
                    try {
                        onToken?.(chunk);
                    } catch (err) { // a throwing callback cancels the generation and rejects it
                        engine.cancel(id);
                        settle();
                        reject(err);
                    }
                    return;
                }
                settle();
                if (kind === "error") return reject(nativeError(payload.code, payload.message, caller));
                const result = toResult(payload);
                if (logprobs) result.logprobs = logprobs;
                if (o.fromJsonSchema && (result.finishReason === "eos" || result.finishReason === "stop")) {
                    try {
                        result.json = JSON.parse(result.text);
                    } catch (err) { // the grammar guarantees JSON; this would be a bug of the converter
                        return reject(withCallerStack(new PhiAgentError("ERR_GENERATION_FAILED",
                            `the output should be JSON matching jsonSchema but does not parse (${(err as Error).message}); please report this with the schema`, { cause: err }), caller));
                    }
                }
                if (captureLogits) Object.defineProperty(result, "logits", { value: payload.logits ?? new Float32Array(0) });
                if (result.finishReason === "abort" && !o.stopOnAbort) {
                    const err = abortError("The generation was aborted", o.signal, caller);
                    (err as AbortError & { partial?: GenerationResult }).partial = result;
                    return reject(err);
                }
                resolve(result);
            });
            } catch (err) { // the engine refuses new work: closed (ERR_DISPOSED), or its decode loop failed
                const e = err as Error & { code?: unknown };
                return reject(typeof e.code === "string" ? nativeError(e.code, e.message, caller) : err);
            }
            o.signal?.addEventListener("abort", onAbort, { once: true });
            hooks.onSubmit?.((paused) => engine.pause(id, paused));
        });
        const tracked = promise.catch(() => undefined);
        this.#inFlight.add(tracked);
        void tracked.finally(() => this.#inFlight.delete(tracked));
        return promise;
    }

    /**
     * Queue state of the batching engine: active and waiting generate() calls, and the KV cells that only the
     * prompt cache holds (README "Prompt cache"; they are evicted when calls need them).
     */
    stats(): { active: number; waiting: number; cachedCells: number } {
        const { engine } = this.#live();
        const s = engine.stats();
        return { active: s.active, waiting: s.waiting, cachedCells: s.cachedCells };
    }

    /**
     * Frees the model. In-flight generate() calls end with a DisposedError; resolves once the native thread has
     * stopped and the memory is released. Idempotent: later calls return the same promise.
     */
    dispose(): Promise<void> {
        if (this.#disposing) return this.#disposing;
        const native = this.#native;
        const engine = this.#engine;
        this.#disposing = (async () => {
            if (engine) await engine.close();
            await Promise.allSettled([...this.#inFlight]);
            await native?.dispose(); // freed on a worker thread, not on this one
            this.#native = undefined;
            this.#engine = undefined;
        })();
        return this.#disposing;
    }

    [Symbol.asyncDispose](): Promise<void> {
        return this.dispose();
    }
}

function toResult(p: NativeDonePayload): GenerationResult {
    const tokens = Array.from(p.tokens);
    return {
        text: p.text,
        tokens,
        finishReason: p.finishReason,
        usage: {
            promptTokens: p.promptTokens,
            cachedPromptTokens: p.cachedTokens,
            completionTokens: tokens.length,
            promptMs: p.promptMs,
            generationMs: p.generationMs,
        },
    };
}

/** llama.cpp's context failure, with the real cause first when it ran out of memory (its log may lead with a warning). */
function contextFailure(message: string, cells: number, bytes: number): string {
    if (!/insufficient memory|failed to allocate|out of memory/i.test(message)) return message;
    return `Not enough memory for a KV cache of ${cells} cells (about ${(bytes / 2 ** 30).toFixed(2)} GiB): lower "kvCacheSize" ` +
        `(or "contextSize"), or free memory. llama.cpp: ${message}`;
}

/** The llama.cpp release of a node-llama-cpp library folder (its build metadata), else "unknown". */
function libraryRelease(dir: string): string {
    try {
        const meta = JSON.parse(fs.readFileSync(path.join(dir, "_nlcBuildMetadata.json"), "utf8")) as { buildOptions?: { llamaCpp?: { release?: string } } };
        return meta.buildOptions?.llamaCpp?.release ?? "unknown";
    } catch {
        return "unknown";
    }
}
