/**
 * What every generating route shares: admission (model loaded, bounded queue, not shutting down), the context
 * check before any byte is sent, the client-disconnect abort, and the streaming writer (SSE or NDJSON) with
 * backpressure. Routes (openai.ts, ollama.ts) turn requests into a JobSpec and results into their API's shape.
 *
 * A stream's status line and headers are written with its first bytes of output: everything that can go wrong
 * before the first token (a prompt too long for the context, the queue, a failed decode) is still an HTTP error
 * with its status, never a 200 stream that turns out to be an error.
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import type { ServerResponse } from "node:http";
import { performance } from "node:perf_hooks";
import type { PhiModel } from "../model/PhiModel.js";
import type { GenerateOptions, GenerationResult, TokenChunk } from "../model/types.js";
import { ApiError, isOllamaPath, ollamaErrorBody, openAIErrorBody, toApiError } from "./errors.js";
import type { QueueState, ServerMetrics } from "./metrics.js";

/** Streams write at most this often (ms); tokens that arrive faster share a write and one event. */
export const STREAM_FLUSH_MS = 4;

export interface ServingLimits {
    /** Sequence slots of the model (requests decoded together). */
    parallel: number;
    /** Requests admitted beyond the slots, waiting their turn; more are answered 429. */
    maxQueue: number;
    /** A stream whose client reads nothing for this long is aborted (its slot is freed). */
    writeTimeoutMs: number;
}

/** One token's logprob in the API's terms (its text, bytes, and the most likely alternatives). */
export interface LogprobEntry {
    token: string;
    bytes: number[];
    logprob: number;
    top: { token: string; bytes: number[]; logprob: number }[];
}

export interface JobSpec {
    /** The route, for metrics ("/v1/chat/completions"). */
    route: string;
    prompt: string;
    options: Omit<GenerateOptions, "signal" | "onToken" | "stopOnAbort">;
    /** Request fields named in errors. */
    promptParam: string;
    maxTokensParam: string;
    /** Alternatives per token to report with each token's logprob; undefined: no logprobs. */
    logprobs?: number;
}

/** Writes one API's stream format. Each method returns the bytes to write ("" for nothing). */
export interface StreamEncoder {
    contentType: string;
    /** Before the first chunk (OpenAI's role delta). */
    start(): string;
    chunk(text: string, logprobs: LogprobEntry[] | undefined): string;
    end(result: GenerationResult, logprobs: LogprobEntry[] | undefined): string;
    /** An error after the stream started (a native failure mid-generation). */
    error(e: ApiError): string;
}

export interface JobResult {
    result: GenerationResult;
    logprobs?: LogprobEntry[];
    /** Prompt tokens served from the prompt cache (GenerationResult.usage.cachedPromptTokens). */
    cachedTokens?: number;
}

/** Prompt tokens the prompt cache served (usage.cachedPromptTokens; undefined from a PhiModel that does not report it). */
export function cachedTokensOf(result: GenerationResult): number | undefined {
    const cached = (result.usage as { cachedPromptTokens?: unknown }).cachedPromptTokens;
    return typeof cached === "number" ? cached : undefined;
}

/** The error body for a path: Ollama's on /api/*, OpenAI's elsewhere. */
export function errorBody(e: ApiError, url: string): unknown {
    return isOllamaPath(url) ? ollamaErrorBody(e) : openAIErrorBody(e);
}

export class ServingCore {
    model: PhiModel | undefined;
    /** The most UTF-8 bytes one token of the vocabulary stands for (from the GGUF's token list). */
    maxTokenBytes = 256;
    /** Why the model is not there (a failed load), for /health and 503s. */
    loadError: string | undefined;
    #closing = false;
    #admitted = 0;
    readonly #jobs = new Set<AbortController>();
    readonly #idle = new Set<() => void>();
    readonly #tokenText = new Map<number, string>();

    constructor(readonly metrics: ServerMetrics, readonly limits: ServingLimits,
        readonly onGeneration: (e: { route: string; finishReason: string; promptTokens: number; completionTokens: number }) => void = () => undefined,
        readonly onAdmit: (e: { inFlight: number }) => void = () => undefined) {}

    get closing(): boolean {
        return this.#closing;
    }

    queueState(): QueueState {
        const active = this.model && !this.model.disposed ? this.model.stats().active : 0;
        return { active, waiting: Math.max(0, this.#admitted - active) };
    }

    /** Requests admitted and not finished. */
    get inFlight(): number {
        return this.#admitted;
    }

    /** Stops admitting (503 shutting_down). */
    beginClose(): void {
        this.#closing = true;
    }

    /** Resolves when no admitted request is left. */
    idle(): Promise<void> {
        if (this.#admitted === 0) return Promise.resolve();
        return new Promise((resolve) => this.#idle.add(resolve));
    }

    /** Aborts every admitted request (the end of a bounded shutdown). */
    abortAll(reason: string): void {
        for (const ac of this.#jobs) ac.abort(new Error(reason));
    }

    /** The model, if requests can be served now; else the 503 that says why. */
    readyModel(): PhiModel {
        if (this.#closing) throw new ApiError(503, "shutting_down", "The server is shutting down; send the request to another instance", { retryAfter: 5 });
        if (!this.model) {
            if (this.loadError) throw new ApiError(503, "model_unavailable", `The model failed to load: ${this.loadError}`);
            throw new ApiError(503, "model_loading", "The model is still loading; retry shortly", { retryAfter: 1 });
        }
        return this.model;
    }

    #admit(): { model: PhiModel; release: () => void } {
        const model = this.readyModel();
        const capacity = this.limits.parallel + this.limits.maxQueue;
        if (this.#admitted >= capacity) {
            throw new ApiError(429, "queue_full",
                `The server is busy: ${this.limits.parallel} requests are generating and ${this.limits.maxQueue} are waiting (--max-queue); retry later`,
                { retryAfter: 1 });
        }
        this.#admitted++;
        this.onAdmit({ inFlight: this.#admitted });
        let released = false;
        return {
            model,
            release: () => {
                if (released) return;
                released = true;
                this.#admitted--;
                if (this.#admitted === 0) {
                    for (const wake of this.#idle) wake();
                    this.#idle.clear();
                }
            },
        };
    }

    /** Refuses, as a 400 before anything is generated, a prompt that leaves no room in the context. */
    #checkContext(model: PhiModel, spec: JobSpec): void {
        const ctx = model.info.runtime.contextSize;
        const want = spec.options.maxTokens;
        // Phi-2's byte-level BPE makes at least one UTF-8 byte of every token: a prompt of fewer bytes than the room
        // left fits without tokenizing it here (PhiModel tokenizes it once, for the generation).
        const bytes = Buffer.byteLength(spec.prompt, "utf8");
        if (bytes + (want ?? 1) <= ctx) return;
        // and no token is longer than maxTokenBytes: a prompt far too long is refused without tokenizing it on the
        // event loop (a 1 MiB body would hold it up for every stream)
        const atLeast = Math.ceil(bytes / this.maxTokenBytes);
        const n = atLeast >= ctx ? atLeast : model.tokenize(spec.prompt).length;
        const what = atLeast >= ctx ? `at least ${n}` : `${n}`;
        if (n >= ctx || (want !== undefined && n + want > ctx)) {
            const more = want !== undefined ? ` and "${spec.maxTokensParam}" asks for ${want} more` : "";
            throw new ApiError(400, "context_length_exceeded",
                `This model's context holds ${ctx} tokens; the prompt is ${what} tokens${more}. Shorten "${spec.promptParam}"` +
                (want !== undefined ? ` or lower "${spec.maxTokensParam}"` : "") + ` (the context size is set with --context-size)`,
                { param: n >= ctx ? spec.promptParam : spec.maxTokensParam });
        }
    }

    #text(model: PhiModel, token: number): string {
        let t = this.#tokenText.get(token);
        if (t === undefined) {
            t = model.detokenize([token], { special: true });
            this.#tokenText.set(token, t);
        }
        return t;
    }

    #logprobEntry(model: PhiModel, chunk: TokenChunk): LogprobEntry | undefined {
        if (chunk.token < 0 || chunk.logprob === undefined) return undefined;
        const entry = (token: number, logprob: number) => {
            const text = this.#text(model, token);
            return { token: text, bytes: [...Buffer.from(text, "utf8")], logprob };
        };
        return { ...entry(chunk.token, chunk.logprob), top: (chunk.topLogprobs ?? []).map((t) => entry(t.token, t.logprob)) };
    }

    #observe(spec: JobSpec, result: GenerationResult): void {
        const m = this.metrics;
        m.generations.inc({ finish_reason: result.finishReason });
        m.promptTokens.inc(result.usage.promptTokens);
        m.completionTokens.inc(result.usage.completionTokens);
        if (result.usage.completionTokens > 0) m.timeToFirstToken.observe(result.usage.promptMs / 1000);
        if (result.usage.completionTokens > 1 && result.usage.generationMs > 0) {
            m.decodeRate.set(((result.usage.completionTokens - 1) * 1000) / result.usage.generationMs);
        }
        this.onGeneration({ route: spec.route, finishReason: result.finishReason, promptTokens: result.usage.promptTokens, completionTokens: result.usage.completionTokens });
    }

    /** An AbortController that fires when the client goes away (or at a bounded shutdown's end). */
    #watch(reply: FastifyReply): { ac: AbortController; done: () => void } {
        const ac = new AbortController();
        const res = reply.raw;
        const onClose = () => {
            if (!res.writableFinished) ac.abort(new Error("the client closed the connection"));
        };
        res.on("close", onClose);
        if (res.destroyed || reply.request.raw.socket.destroyed) ac.abort(new Error("the client closed the connection"));
        this.#jobs.add(ac);
        return { ac, done: () => { res.off("close", onClose); this.#jobs.delete(ac); } };
    }

    /** A whole generation, for a non-streaming response. */
    async complete(reply: FastifyReply, spec: JobSpec): Promise<JobResult> {
        const { model, release } = this.#admit();
        const { ac, done } = this.#watch(reply);
        try {
            this.#checkContext(model, spec);
            const logprobs: LogprobEntry[] | undefined = spec.logprobs !== undefined ? [] : undefined;
            const result = await model.generate(spec.prompt, {
                ...spec.options, signal: ac.signal, stopOnAbort: true,
                ...(logprobs ? {
                    logprobs: spec.logprobs,
                    onToken: (chunk: TokenChunk) => {
                        const e = this.#logprobEntry(model, chunk);
                        if (e) logprobs.push(e);
                    },
                } : {}),
            });
            this.#observe(spec, result);
            if (result.finishReason === "abort") throw new ApiError(499, "client_closed_request", "The client closed the connection");
            const cachedTokens = cachedTokensOf(result);
            return { result, ...(logprobs ? { logprobs } : {}), ...(cachedTokens !== undefined ? { cachedTokens } : {}) };
        } catch (err) {
            throw toApiError(err, { prompt: spec.promptParam });
        } finally {
            done();
            release();
        }
    }

    /**
     * A streamed generation: writes the whole response itself (the reply is hijacked once the generation has
     * started). Errors before the first byte are thrown (the route's error handler answers them).
     */
    async stream(request: FastifyRequest, reply: FastifyReply, spec: JobSpec, encoder: StreamEncoder): Promise<void> {
        const { model, release } = this.#admit();
        const { ac, done } = this.#watch(reply);
        let started = false;
        let flushRest = () => "";
        try {
            this.#checkContext(model, spec);
            const gen = model.stream(spec.prompt, { ...spec.options, signal: ac.signal, stopOnAbort: true, ...(spec.logprobs !== undefined ? { logprobs: spec.logprobs } : {}) });
            const res = reply.raw;
            const pendingLogprobs: LogprobEntry[] = [];
            const allLogprobs: LogprobEntry[] | undefined = spec.logprobs !== undefined ? [] : undefined;
            let head: Record<string, string | number | string[]> | undefined;
            // Writes are coalesced: the first goes out at once, later ones at most every STREAM_FLUSH_MS. Tokens
            // that come faster share one write *and one event* (their text and logprobs in one chunk): fewer
            // syscalls, less JSON to build here and to parse in the client; slower ones are not delayed.
            let text = "";
            let lps: LogprobEntry[] | undefined;
            let lastFlush = 0;
            let timer: NodeJS.Timeout | undefined;
            let draining: Promise<void> | undefined;
            /** The event for the text and logprobs not written yet ("" for none). */
            const take = () => {
                clearTimeout(timer);
                timer = undefined;
                if (!text) return "";
                const out = encoder.chunk(text, lps);
                text = "";
                lps = undefined;
                return out;
            };
            const flush = (prefix = "") => {
                const out = prefix + take();
                if (!out || res.destroyed) return;
                lastFlush = performance.now();
                if (!res.write(out)) draining = drain(res, ac, this.limits.writeTimeoutMs).finally(() => (draining = undefined));
            };
            const write = async (chunkText: string, lp: LogprobEntry[] | undefined) => {
                if (!chunkText || res.destroyed) return;
                text += chunkText;
                if (lp) (lps ??= []).push(...lp);
                if (!started) {
                    started = true;
                    head = this.#headers(reply, encoder.contentType);
                    reply.hijack();
                    res.writeHead(200, head);
                    flush(encoder.start());
                } else if (!timer && !draining) {
                    const wait = lastFlush + STREAM_FLUSH_MS - performance.now();
                    if (wait <= 0) flush();
                    else timer = setTimeout(flush, wait);
                }
                if (draining) { // backpressure: PhiModel's stream pauses the request natively while we wait
                    await draining;
                    if (!timer) flush();
                }
            };
            flushRest = take;
            let failure: unknown;
            try {
                for await (const chunk of gen) {
                    if (allLogprobs) {
                        const e = this.#logprobEntry(model, chunk);
                        if (e) { pendingLogprobs.push(e); allLogprobs.push(e); }
                    }
                    if (chunk.text === "") continue;
                    await write(chunk.text, allLogprobs ? pendingLogprobs.splice(0) : undefined);
                }
            } catch (err) {
                failure = err;
            }
            const result = failure === undefined ? await gen.result : undefined;
            if (result) this.#observe(spec, result);
            if (!result || result.finishReason === "abort") {
                take();
                if (ac.signal.aborted || res.destroyed) { // the client went away (or a bounded shutdown ended it)
                    if (started) res.destroy();
                    this.metrics.requests.inc({ route: spec.route, status: "499" }); // no 'finish': onResponse does not count it
                    if (!started) reply.hijack();
                    return;
                }
                throw failure ?? new ApiError(500, "generation_failed", "The generation ended without a result");
            }
            if (!started) {
                started = true;
                reply.hijack();
                res.writeHead(200, this.#headers(reply, encoder.contentType));
                res.write(encoder.start());
            }
            res.end(take() + encoder.end(result, allLogprobs ? pendingLogprobs.splice(0) : undefined));
        } catch (err) {
            const e = toApiError(err, { prompt: spec.promptParam });
            if (!started) throw e; // before any byte: an HTTP error with its status
            this.metrics.errors.inc({ type: e.type, code: e.code });
            const res = reply.raw;
            if (!res.destroyed) res.end(flushRest() + encoder.error(e));
        } finally {
            done();
            release();
            void request;
        }
    }

    #headers(reply: FastifyReply, contentType: string): Record<string, string | number | string[]> {
        const head: Record<string, string | number | string[]> = {};
        for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) head[k] = v as string | number | string[];
        head["content-type"] = contentType;
        head["cache-control"] = "no-cache";
        head["x-accel-buffering"] = "no";
        return head;
    }
}

/** Waits for the response to drain; aborts the generation when the client reads nothing for `ms` or goes away. */
function drain(res: ServerResponse, ac: AbortController, ms: number): Promise<void> {
    return new Promise((resolve) => {
        const finish = () => {
            clearTimeout(timer);
            res.off("drain", finish);
            res.off("close", finish);
            resolve();
        };
        const timer = setTimeout(() => {
            ac.abort(new Error(`the client read nothing for ${ms} ms`));
            res.destroy();
            finish();
        }, ms);
        res.on("drain", finish);
        res.on("close", finish);
    });
}
