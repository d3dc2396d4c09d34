/**
 * phi-agent serve: the OpenAI- and Ollama-compatible HTTP server (src/server). The server module is imported
 * only when the command runs, so the other commands never load fastify.
 */
import path from "node:path";
import type { DeviceSpec, LoadOptions } from "../model/types.js";
import { choiceFlag, intFlag, UsageError } from "./args.js";
import { modelPath, parseCommand } from "./command.js";
import { interruptSignal, out } from "./process.js";

export async function serve(argv: string[]): Promise<void> {
    const { values } = parseCommand(argv, serve.usage!, {
        model: { type: "string" }, host: { type: "string" }, port: { type: "string" }, "api-key": { type: "string" },
        parallel: { type: "string" }, device: { type: "string" }, threads: { type: "string" },
        "context-size": { type: "string" }, "kv-cache-size": { type: "string" }, "batch-size": { type: "string" },
        "gpu-layers": { type: "string" }, "flash-attention": { type: "string" }, "no-repack": { type: "boolean" },
        "prompt-cache-size": { type: "string" },
        name: { type: "string" }, cors: { type: "string", multiple: true }, "max-queue": { type: "string" },
        "body-limit": { type: "string" }, "headers-timeout": { type: "string" }, "request-timeout": { type: "string" },
        "shutdown-timeout": { type: "string" }, "completion-max-tokens": { type: "string" },
    });
    const file = modelPath(values.model);
    const apiKey = values["api-key"] ?? (process.env.PHI_AGENT_API_KEY || undefined);
    if (apiKey !== undefined && apiKey.trim() === "") throw new UsageError("--api-key must not be empty");
    const port = intFlag("port", values.port, 0, 65535);
    const ms = (name: string, v: string | undefined) => intFlag(name, v, 0, 2 ** 31 - 1);
    const seconds = (name: string, v: string | undefined) => {
        const n = intFlag(name, v, 0, 86_400);
        return n === undefined ? undefined : n * 1000;
    };
    const load: Omit<LoadOptions, "modelPath"> = {
        device: values.device as DeviceSpec | undefined,
        threads: intFlag("threads", values.threads),
        sequences: intFlag("parallel", values.parallel),
        contextSize: intFlag("context-size", values["context-size"]),
        kvCacheSize: intFlag("kv-cache-size", values["kv-cache-size"]),
        batchSize: intFlag("batch-size", values["batch-size"]),
        gpuLayers: intFlag("gpu-layers", values["gpu-layers"]),
        flashAttention: choiceFlag("flash-attention", values["flash-attention"], ["auto", "on", "off"] as const),
        promptCacheSize: intFlag("prompt-cache-size", values["prompt-cache-size"]),
        ...(values["no-repack"] ? { repack: false } : {}),
    };
    for (const k of Object.keys(load) as (keyof typeof load)[]) if (load[k] === undefined) delete load[k];
    const options = {
        modelPath: file,
        load,
        ...(values.host !== undefined ? { host: values.host } : {}),
        ...(port !== undefined ? { port } : {}),
        ...(apiKey !== undefined ? { apiKey } : {}),
        ...(values.name !== undefined ? { modelId: values.name } : {}),
        ...(values.cors !== undefined ? { cors: values.cors } : {}),
        ...(values["max-queue"] !== undefined ? { maxQueue: intFlag("max-queue", values["max-queue"], 0) } : {}),
        ...(values["body-limit"] !== undefined ? { bodyLimit: intFlag("body-limit", values["body-limit"], 1024) } : {}),
        ...(values["headers-timeout"] !== undefined ? { headersTimeoutMs: ms("headers-timeout", values["headers-timeout"]) } : {}),
        ...(values["request-timeout"] !== undefined ? { requestTimeoutMs: ms("request-timeout", values["request-timeout"]) } : {}),
        ...(values["shutdown-timeout"] !== undefined ? { shutdownTimeoutMs: seconds("shutdown-timeout", values["shutdown-timeout"]) } : {}),
        ...(values["completion-max-tokens"] !== undefined ? { completionMaxTokens: intFlag("completion-max-tokens", values["completion-max-tokens"], 1) } : {}),
    };
    const signal = interruptSignal(); // Ctrl-C: a graceful stop (exit 130); SIGTERM: the same, exit 0
    const stopped = new Promise<string>((resolve) => {
        process.once("SIGTERM", () => resolve("SIGTERM"));
        if (signal.aborted) resolve("SIGINT");
        signal.addEventListener("abort", () => resolve("SIGINT"), { once: true });
    });
    const log = (line: string) => process.stderr.write(`phi-agent serve: ${line}\n`);

    const { PhiServer } = await import("../server/index.js");
    const server = await PhiServer.start(options);
    out(`listening on ${server.url}\n`);
    log(`loading ${path.basename(file)}; GET /health answers 503 until it is ready`);
    const loaded = server.ready.then(() => undefined, (err: unknown) => err ?? new Error("the model failed to load"));
    const first = await Promise.race([stopped.then((s) => ({ stop: s })), loaded.then((err) => ({ err }))]);
    if ("err" in first) {
        if (first.err !== undefined) {
            await server.close();
            throw first.err;
        }
        const info = server.model!.info;
        const rt = info.runtime;
        log(`ready: model "${server.modelId}" (${info.quantization}, ${rt.device}), ${rt.sequences} parallel, context ${rt.contextSize}, ` +
            `${rt.threads} threads${apiKey ? ", API key required" : ""}`);
    }
    const why = "stop" in first ? first.stop : await stopped;
    log(`${why}: finishing the requests in flight, then exiting`);
    await server.close();
}
serve.usage = `serve --model FILE [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--parallel N] [--device D]
                 [--threads N] [--context-size N] [--kv-cache-size N] [--batch-size N] [--gpu-layers N]
                 [--flash-attention auto|on|off] [--no-repack] [--prompt-cache-size N] [--name ID] [--cors ORIGIN]...
                 [--max-queue N]
                 [--body-limit BYTES] [--headers-timeout MS] [--request-timeout MS] [--shutdown-timeout S]
                 [--completion-max-tokens N]

Serves the model over HTTP: OpenAI's /v1/chat/completions, /v1/completions and /v1/models; Ollama's /api/generate,
/api/chat, /api/tags, /api/show, /api/ps and /api/version; GET /health (503 while loading), GET /metrics
(Prometheus), POST /tokenize and /detokenize. Prints "listening on URL" on stdout once it listens (--port 0 picks
a free port); log lines go to stderr.

Security defaults: binds 127.0.0.1; --api-key KEY (or $PHI_AGENT_API_KEY) is then required on every route but
/health, as "Authorization: Bearer KEY" or "X-Api-Key: KEY" (binding another address without a key prints a
warning); bodies up to 1 MiB (--body-limit); headers within 10 s, whole requests within 30 s; --max-queue 64
requests wait beyond the --parallel slots (default 8), more get 429 with Retry-After; a client that disconnects
aborts its generation; CORS is off unless --cors ORIGIN (repeatable, or "*"). --name is the model's id (default:
the file name without .gguf). --prompt-cache-size N: KV cells kept for prompt prefixes that later requests repeat
(README "Prompt cache"; 0 turns it off); usage.prompt_tokens_details.cached_tokens reports the hits. SIGTERM or Ctrl-C stop taking requests, let those in flight finish (at most
--shutdown-timeout seconds, default 30), and exit (0 after SIGTERM, 130 after Ctrl-C).`;
