/**
 * PhiServer: an OpenAI- and Ollama-compatible HTTP server (fastify) around one PhiModel, which it owns: it
 * starts listening at once (GET /health answers 503 while the model loads), loads the model, and on close() stops
 * taking requests, lets the ones in flight finish (bounded by shutdownTimeoutMs), and disposes the model.
 *
 * Safe defaults: it binds 127.0.0.1; an API key (Bearer or X-Api-Key, constant-time) guards every route but
 * /health when one is set, and binding another address without one logs a warning; bodies are limited (1 MiB),
 * slow clients time out (headers 10 s, whole request 30 s, a stream nobody reads 60 s); the queue is bounded
 * (429 with Retry-After past it); a client that disconnects aborts its generation and frees its slot; CORS is off
 * unless origins are given. README "Serve over HTTP".
 *
 * Import it from "llm-phi-agent/server" (the package root does not load fastify).
 */
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import Fastify, { type FastifyInstance } from "fastify";
import cors from "@fastify/cors";
import { AbortError, PhiRangeError, PhiTypeError } from "../errors.js";
import { checkPhi2, inspectGGUF, type GGUFSummary } from "../gguf/validate.js";
import { metaString } from "../gguf/reader.js";
import { PhiModel } from "../model/PhiModel.js";
import { LOAD_DEFAULTS, resolveLoadOptions } from "../model/options.js";
import type { LoadOptions } from "../model/types.js";
import { packageRoot } from "../native/binding.js";
import { keyChecker } from "./auth.js";
import { ChatFormatter } from "./chat.js";
import { modelNameChecker, type ServerContext } from "./context.js";
import { ApiError, toApiError } from "./errors.js";
import { errorBody, ServingCore } from "./generation.js";
import { ServerMetrics } from "./metrics.js";
import { registerOllamaRoutes } from "./ollama.js";
import { registerOpenAIRoutes } from "./openai.js";
import { typeboxValidator } from "./schemas.js";
import { registerUtilityRoutes } from "./utility.js";

/** Defaults of PhiServer's options (the CLI's flags show them in `phi-agent serve --help`). */
export const SERVER_DEFAULTS = Object.freeze({
    host: "127.0.0.1",
    port: 8080,
    bodyLimit: 1 << 20,
    headersTimeoutMs: 10_000,
    requestTimeoutMs: 30_000,
    keepAliveTimeoutMs: 5_000,
    writeTimeoutMs: 60_000,
    shutdownTimeoutMs: 30_000,
    maxQueue: 64,
    /** /v1/completions without max_tokens generates this many (OpenAI's default). */
    completionMaxTokens: 16,
});

export interface PhiServerOptions {
    /** The GGUF to serve (loaded after the server starts listening). */
    modelPath: string;
    /** PhiModel.load() options besides the path (`sequences` is the number of requests decoded together). */
    load?: Omit<LoadOptions, "modelPath" | "signal" | "onProgress">;
    /** Address to bind; default 127.0.0.1 (loopback only). */
    host?: string;
    /** Port; default 8080; 0 picks a free one (see `port` after start). */
    port?: number;
    /** Required key for every route but /health (Bearer or X-Api-Key). Default: none. */
    apiKey?: string;
    /** The model's id in /v1/models (and `ID:latest` in /api/tags); default: the file name without .gguf. */
    modelId?: string;
    /** Origins allowed by CORS (e.g. ["https://app.example"], or ["*"]); default: none (CORS off). */
    cors?: string[];
    /** Largest request body in bytes (default 1 MiB): 413 past it. */
    bodyLimit?: number;
    /** A client must send its headers within this (default 10 s): 408 and closed otherwise. */
    headersTimeoutMs?: number;
    /** A client must send its whole request within this (default 30 s). */
    requestTimeoutMs?: number;
    /** Idle keep-alive connections close after this (default 5 s). */
    keepAliveTimeoutMs?: number;
    /** A stream whose client reads nothing for this long is aborted and its slot freed (default 60 s). */
    writeTimeoutMs?: number;
    /** close() lets in-flight responses finish for at most this long, then aborts them (default 30 s). */
    shutdownTimeoutMs?: number;
    /** Requests waiting for a slot beyond the `sequences` decoding (default 64): 429 with Retry-After past it. */
    maxQueue?: number;
    /** max_tokens of /v1/completions when a request has none (default 16, as OpenAI). */
    completionMaxTokens?: number;
    /** Where the server's log lines go (default: stderr). */
    log?: (line: string) => void;
    /** How the model is loaded (default PhiModel.load): e.g. to share one load, or to wrap it. */
    loader?: (options: LoadOptions) => Promise<PhiModel>;
}

/** What the server reports for each finished generation ("generation" event of PhiServer.events). */
export interface GenerationEvent {
    route: string;
    finishReason: string;
    promptTokens: number;
    completionTokens: number;
}

/** The warning for a server others can reach without a key (undefined when there is nothing to warn about). */
export function exposureWarning(host: string, apiKey: string | undefined): string | undefined {
    if (isLoopback(host) || apiKey) return undefined;
    return `listening on ${host} without an API key: anyone who can reach this address can use the model. Pass --api-key KEY (or set PHI_AGENT_API_KEY), or bind 127.0.0.1`;
}

function isLoopback(host: string): boolean {
    if (host === "localhost") return true;
    if (net.isIPv4(host)) return host.startsWith("127.");
    return host === "::1" || host === "0:0:0:0:0:0:0:1";
}

function checkMs(name: string, v: unknown, min: number): number | undefined {
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v)) throw new PhiTypeError(`Expected "${name}" to be an integer number of milliseconds, got ${String(v)}`);
    if (v < min || v > 2 ** 31 - 1) throw new PhiRangeError(`Expected "${name}" to be between ${min} and ${2 ** 31 - 1}, got ${v}`);
    return v;
}

function checkInt(name: string, v: unknown, min: number, max: number): number | undefined {
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v)) throw new PhiTypeError(`Expected "${name}" to be an integer, got ${String(v)}`);
    if (v < min || v > max) throw new PhiRangeError(`Expected "${name}" to be between ${min} and ${max}, got ${v}`);
    return v;
}

export class PhiServer implements AsyncDisposable {
    readonly app: FastifyInstance;
    readonly core: ServingCore;
    /** "generation" (GenerationEvent) after each generation ends, "admitted" ({ inFlight }) when a request is admitted, "ready" (PhiModel) once loaded. */
    readonly events: EventEmitter;
    /** Resolves with the model once it is loaded; rejects when the load fails (the server keeps answering 503). */
    readonly ready: Promise<PhiModel>;
    readonly modelId: string;
    #loadAbort: AbortController;
    #closing: Promise<void> | undefined;
    #log: (line: string) => void;
    #shutdownTimeoutMs: number;

    private constructor(app: FastifyInstance, core: ServingCore, events: EventEmitter, modelId: string, ready: Promise<PhiModel>, log: (line: string) => void, shutdownTimeoutMs: number, loadAbort: AbortController) {
        this.app = app;
        this.events = events;
        this.core = core;
        this.modelId = modelId;
        this.ready = ready;
        this.#log = log;
        this.#shutdownTimeoutMs = shutdownTimeoutMs;
        this.#loadAbort = loadAbort;
    }

    /** The model, once loaded. */
    get model(): PhiModel | undefined {
        return this.core.model;
    }

    /** The port it listens on. */
    get port(): number {
        const a = this.app.server.address();
        return typeof a === "object" && a ? a.port : 0;
    }

    /** http://host:port */
    get url(): string {
        const a = this.app.server.address();
        if (typeof a !== "object" || !a) return "";
        const host = a.family === "IPv6" || a.address.includes(":") ? `[${a.address}]` : a.address;
        return `http://${host}:${a.port}`;
    }

    /**
     * Checks the options and the model file's header, starts listening, and starts loading the model (`ready`
     * settles when it is loaded). Throws for bad options, a file that is not a usable GGUF, or an address in use.
     */
    static async start(options: PhiServerOptions): Promise<PhiServer> {
        if (typeof options !== "object" || options === null) throw new PhiTypeError(`PhiServer.start() expects an options object such as { modelPath: "model.gguf" }`);
        if (typeof options.modelPath !== "string" || !options.modelPath) throw new PhiTypeError(`Expected "modelPath" to be the path of a GGUF file, got ${String(options.modelPath)}`);
        const d = SERVER_DEFAULTS;
        const host = options.host ?? d.host;
        if (typeof host !== "string" || !host) throw new PhiTypeError(`Expected "host" to be an address such as "127.0.0.1", got ${String(host)}`);
        const port = checkInt("port", options.port, 0, 65535) ?? d.port;
        if (options.apiKey !== undefined && (typeof options.apiKey !== "string" || options.apiKey.length === 0)) throw new PhiTypeError(`Expected "apiKey" to be a non-empty string`);
        const bodyLimit = checkInt("bodyLimit", options.bodyLimit, 1024, 2 ** 30) ?? d.bodyLimit;
        const headersTimeoutMs = checkMs("headersTimeoutMs", options.headersTimeoutMs, 1) ?? d.headersTimeoutMs;
        const requestTimeoutMs = checkMs("requestTimeoutMs", options.requestTimeoutMs, 1) ?? Math.max(d.requestTimeoutMs, headersTimeoutMs);
        if (headersTimeoutMs > requestTimeoutMs) throw new PhiRangeError(`"headersTimeoutMs" (${headersTimeoutMs}) must not exceed "requestTimeoutMs" (${requestTimeoutMs})`);
        const keepAliveTimeoutMs = checkMs("keepAliveTimeoutMs", options.keepAliveTimeoutMs, 1) ?? d.keepAliveTimeoutMs;
        const writeTimeoutMs = checkMs("writeTimeoutMs", options.writeTimeoutMs, 1) ?? d.writeTimeoutMs;
        const shutdownTimeoutMs = checkMs("shutdownTimeoutMs", options.shutdownTimeoutMs, 0) ?? d.shutdownTimeoutMs;
        const maxQueue = checkInt("maxQueue", options.maxQueue, 0, 1_000_000) ?? d.maxQueue;
        const completionMaxTokens = checkInt("completionMaxTokens", options.completionMaxTokens, 1, 1 << 20) ?? d.completionMaxTokens;
        if (options.cors !== undefined && (!Array.isArray(options.cors) || options.cors.some((o) => typeof o !== "string" || !o))) {
            throw new PhiTypeError(`Expected "cors" to be an array of origins such as ["https://app.example"]`);
        }
        const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
        const load = options.load ?? {};
        resolveLoadOptions({ ...load, modelPath: options.modelPath }); // bad load options fail here, before anything listens
        const parallel = load.sequences ?? LOAD_DEFAULTS.sequences;

        // The header first: a missing or unusable file fails here, before anything listens.
        const { header, summary } = await inspectGGUF(options.modelPath);
        checkPhi2(header); // the GGUFError PhiModel.load would throw, before anything listens
        const stat = await fs.promises.stat(options.modelPath);
        const modelId = options.modelId ?? path.basename(options.modelPath).replace(/\.gguf$/i, "");
        if (typeof modelId !== "string" || !modelId) throw new PhiTypeError(`Expected "modelId" to be a non-empty string`);
        const chatTemplate = metaString(header, "tokenizer.chat_template");
        const tokens = header.metadata["tokenizer.ggml.tokens"];
        const tokenString = (key: string) => {
            const id = header.metadata[key];
            return Array.isArray(tokens) && typeof id === "number" && typeof tokens[id] === "string" ? (tokens[id] as string) : undefined;
        };
        const chat = new ChatFormatter(chatTemplate, { bos: tokenString("tokenizer.ggml.bos_token_id"), eos: tokenString("tokenizer.ggml.eos_token_id") });
        if (chat.problem) log(`phi-agent serve: warning: ${chat.problem}`);
        const version = (JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { version: string }).version;

        const events = new EventEmitter();
        let core!: ServingCore;
        const metrics = new ServerMetrics(() => core.queueState());
        core = new ServingCore(metrics, { parallel, maxQueue, writeTimeoutMs }, (e) => events.emit("generation", e), (e) => events.emit("admitted", e));
        if (Array.isArray(tokens)) {
            // GPT-2's byte-level BPE writes one character per byte in the token list
            let longest = 1;
            for (const t of tokens) if (typeof t === "string" && t.length > longest) longest = t.length;
            core.maxTokenBytes = longest;
        }
        const ctx: ServerContext = {
            core,
            modelId,
            created: Math.floor(stat.mtimeMs / 1000),
            fingerprint: `llm-phi-agent-${version}`,
            version,
            chat,
            summary: summary as GGUFSummary,
            chatTemplate: chat.source === "gguf" ? chatTemplate : undefined,
            file: {
                size: stat.size, modified: stat.mtime,
                digest: "sha256:" + createHash("sha256").update(`${path.resolve(options.modelPath)}\0${stat.size}\0${stat.mtimeMs}`).digest("hex"),
            },
            completionDefaultMaxTokens: completionMaxTokens,
            checkModel: modelNameChecker(modelId),
            errorBody,
        };

        const app = Fastify({
            logger: false,
            bodyLimit,
            requestTimeout: requestTimeoutMs,
            keepAliveTimeout: keepAliveTimeoutMs,
            return503OnClosing: false,
            forceCloseConnections: "idle",
            http: {
                headersTimeout: headersTimeoutMs,
                requestTimeout: requestTimeoutMs,
                // how often node checks the two timeouts above (its default, 30 s, would let a slow client stay that much longer)
                connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(headersTimeoutMs / 4))),
            },
            clientErrorHandler: (err, socket) => {
                const e = err as Error & { code?: string };
                const [status, reason, code] = e.code === "ERR_HTTP_REQUEST_TIMEOUT" ? [408, "Request Timeout", "request_timeout"]
                    : e.code === "HPE_HEADER_OVERFLOW" ? [431, "Request Header Fields Too Large", "headers_too_large"]
                        : [400, "Bad Request", "malformed_request"];
                metrics.errors.inc({ type: "invalid_request_error", code });
                if (socket.writable && !(socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) {
                    const body = JSON.stringify({ error: { message: status === 408 ? "The request took too long to arrive" : status === 431 ? "The request headers are too large" : "The request is not valid HTTP", type: "invalid_request_error", param: null, code } });
                    socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
                }
                socket.destroy();
            },
        });
        app.setValidatorCompiler(typeboxValidator);
        if (options.cors && options.cors.length > 0) {
            const origins = options.cors;
            await app.register(cors, {
                origin: origins.includes("*") ? "*" : origins,
                methods: ["GET", "POST", "OPTIONS"],
                allowedHeaders: ["Authorization", "X-Api-Key", "Content-Type"],
                maxAge: 600,
            });
        }
        const checkKey = options.apiKey !== undefined ? keyChecker(options.apiKey) : undefined;
        app.addHook("onRequest", async (request) => {
            if (request.method === "OPTIONS" && options.cors?.length) return; // CORS preflight carries no key
            if (core.closing && request.url !== "/health") throw new ApiError(503, "shutting_down", "The server is shutting down; send the request to another instance", { retryAfter: 5 });
            if (checkKey && request.url !== "/health" && !request.url.startsWith("/health?")) checkKey(request.headers);
        });
        app.addHook("onResponse", async (request, reply) => {
            metrics.requests.inc({ route: request.routeOptions.url ?? "unmatched", status: String(reply.statusCode) });
        });
        app.setErrorHandler(async (err, request, reply) => {
            const e = toApiError(err);
            metrics.errors.inc({ type: e.type, code: e.code });
            if (e.retryAfter !== undefined) void reply.header("retry-after", String(e.retryAfter));
            if (e.status === 401) void reply.header("www-authenticate", "Bearer");
            return reply.code(e.status).send(errorBody(e, request.url));
        });
        app.setNotFoundHandler(async (request, reply) => {
            const e = new ApiError(404, "route_not_found", `No route ${request.method} ${request.url.split("?")[0]}; see README "Serve over HTTP" for the endpoints`);
            metrics.errors.inc({ type: e.type, code: e.code });
            return reply.code(404).send(errorBody(e, request.url));
        });
        registerOpenAIRoutes(app, ctx);
        registerOllamaRoutes(app, ctx);
        registerUtilityRoutes(app, ctx);

        await app.listen({ host, port });
        const loadAbort = new AbortController();
        const loader = options.loader ?? ((o: LoadOptions) => PhiModel.load(o));
        const ready = Promise.resolve().then(() => loader({ ...load, modelPath: options.modelPath, signal: loadAbort.signal })).then((model) => {
            if (core.closing) {
                void model.dispose();
                throw new AbortError("The server closed while the model was loading");
            }
            core.model = model;
            events.emit("ready", model);
            return model;
        }, (err: unknown) => {
            core.loadError = (err as Error)?.message ?? String(err);
            throw err;
        });
        ready.catch(() => undefined); // the CLI (or the caller) awaits it; the server keeps answering 503 meanwhile
        const server = new PhiServer(app, core, events, modelId, ready, log, shutdownTimeoutMs, loadAbort);
        const warning = exposureWarning(host, options.apiKey);
        if (warning) log(`phi-agent serve: warning: ${warning}`);
        return server;
    }

    /**
     * Stops taking requests (503 shutting_down), lets those in flight finish for at most shutdownTimeoutMs, then
     * aborts the rest, closes every connection and disposes the model. Idempotent.
     */
    close(): Promise<void> {
        if (this.#closing) return this.#closing;
        this.#closing = (async () => {
            this.core.beginClose();
            this.#loadAbort.abort(new Error("the server is closing"));
            const closed = this.app.close();
            let timer: NodeJS.Timeout | undefined;
            const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), this.#shutdownTimeoutMs)));
            const finished = await Promise.race([this.core.idle().then(() => false), timedOut]);
            clearTimeout(timer);
            if (finished) {
                this.#log(`phi-agent serve: ${this.core.inFlight} request(s) still running after ${this.#shutdownTimeoutMs} ms; aborting them`);
                this.core.abortAll("the server shut down");
                await this.core.idle();
                this.app.server.closeAllConnections();
            }
            await closed;
            await this.ready.then((m) => m.dispose(), () => undefined);
        })();
        return this.#closing;
    }

    [Symbol.asyncDispose](): Promise<void> {
        return this.close();
    }
}
