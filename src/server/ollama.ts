/**
 * Ollama's API: POST /api/generate, POST /api/chat (NDJSON streams, on by default as in Ollama; the last object
 * has done: true, done_reason, the token counts and the durations in nanoseconds), GET /api/tags, POST /api/show,
 * GET /api/ps, GET /api/version. Errors here are Ollama's `{"error":"message"}`.
 */
import path from "node:path";
import type { FastifyInstance } from "fastify";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { Static } from "@sinclair/typebox";
import type { GenerateOptions, GenerationResult } from "../model/types.js";
import { ApiError, notSupported } from "./errors.js";
import type { JobSpec, LogprobEntry, StreamEncoder } from "./generation.js";
import { ollamaFormat, responseFormatOptions } from "./responseFormat.js";
import { OllamaChatBody, OllamaGenerateBody, OllamaShowBody } from "./schemas.js";
import type { ServerContext } from "./context.js";
import { PHI2_STOP } from "../prompt/phi2.js";

type OllamaOptionsT = NonNullable<Static<typeof OllamaGenerateBody>["options"]>;

const nn = <T>(v: T | null | undefined): T | undefined => (v === null ? undefined : v);

function doneReason(reason: GenerationResult["finishReason"]): "stop" | "length" {
    return reason === "length" || reason === "context" ? "length" : "stop";
}

/** Ollama's options as generate() options (num_predict -1/-2: no limit; seed -1: random; repeat_last_n -1: the context). */
function ollamaOptions(o: OllamaOptionsT | null | undefined, contextSize: number): Omit<GenerateOptions, "signal" | "onToken" | "stopOnAbort"> {
    const out: Omit<GenerateOptions, "signal" | "onToken" | "stopOnAbort"> = {};
    if (!o) return out;
    const numPredict = nn(o.num_predict);
    if (numPredict === 0) throw new ApiError(400, "invalid_value", `"options.num_predict" is 0; allowed: -1 (no limit), -2 (fill the context) or a positive count`, { param: "options.num_predict" });
    if (numPredict !== undefined && numPredict > 0) out.maxTokens = numPredict;
    const set = <K extends keyof GenerateOptions>(k: K, v: GenerateOptions[K] | null | undefined) => {
        if (v !== undefined && v !== null) (out as GenerateOptions)[k] = v;
    };
    set("temperature", o.temperature);
    set("topK", o.top_k);
    set("topP", o.top_p);
    set("minP", o.min_p);
    const seed = nn(o.seed);
    if (seed !== undefined && seed >= 0) out.seed = seed;
    set("repeatPenalty", o.repeat_penalty);
    const lastN = nn(o.repeat_last_n);
    if (lastN !== undefined) out.repeatLastN = lastN < 0 ? contextSize : lastN;
    set("presencePenalty", o.presence_penalty);
    set("frequencyPenalty", o.frequency_penalty);
    const stop = nn(o.stop);
    if (stop && stop.length) out.stop = [...stop];
    return out;
}

function withStops(options: { stop?: string[] }, stops: readonly string[]): void {
    if (!stops.length) return;
    const have = options.stop ?? [];
    options.stop = [...have, ...stops.filter((s) => !have.includes(s))];
}

const ns = (ms: number) => Math.round(ms * 1e6);

/** Ollama's logprobs: [{ token, logprob, bytes, top_logprobs: [{ token, logprob, bytes }] }]. */
function ollamaLogprobs(entries: LogprobEntry[] | undefined): { logprobs?: unknown[] } {
    if (!entries) return {};
    return { logprobs: entries.map((e) => ({ token: e.token, logprob: e.logprob, bytes: e.bytes, top_logprobs: e.top })) };
}

/** The alternatives per token a request asks for (undefined: no logprobs). */
function logprobsOf(body: { logprobs?: boolean | null; top_logprobs?: number | null }): { logprobs?: number } {
    if (body.logprobs === true) return { logprobs: nn(body.top_logprobs) ?? 0 };
    if (nn(body.top_logprobs)) throw new ApiError(400, "invalid_value", `"top_logprobs" needs "logprobs": true`, { param: "top_logprobs" });
    return {};
}

export function registerOllamaRoutes(app: FastifyInstance, ctx: ServerContext): void {
    const f = app.withTypeProvider<TypeBoxTypeProvider>();
    const core = ctx.core;
    const name = `${ctx.modelId}:latest`;
    const details = () => ({
        parent_model: "",
        format: "gguf",
        family: ctx.summary.architecture ?? "phi2",
        families: [ctx.summary.architecture ?? "phi2"],
        parameter_size: `${(ctx.summary.parameterCount / 1e9).toFixed(1)}B`,
        quantization_level: ctx.summary.fileType ?? "unknown",
    });
    const stats = (r: GenerationResult, started: bigint) => ({
        done_reason: doneReason(r.finishReason),
        total_duration: Number(process.hrtime.bigint() - started),
        load_duration: 0,
        prompt_eval_count: r.usage.promptTokens,
        prompt_eval_duration: ns(r.usage.promptMs),
        eval_count: r.usage.completionTokens,
        eval_duration: ns(r.usage.generationMs),
    });
    const common = (body: { images?: unknown; think?: unknown; format?: unknown; options?: OllamaOptionsT | null }) => {
        if (body.think !== undefined && body.think !== null && body.think !== false) throw notSupported("think", `"think": Phi-2 has no thinking mode; leave "think" out`);
        const contextSize = core.model?.info.runtime.contextSize ?? 0;
        return { ...responseFormatOptions(ollamaFormat(body.format), "format"), ...ollamaOptions(body.options, contextSize) };
    };

    f.get("/", async (_request, reply) => reply.type("text/plain").send("phi-agent is running"));
    f.get("/api/version", async () => ({ version: ctx.version }));
    f.get("/api/tags", async () => ({
        models: [{ name, model: name, modified_at: ctx.file.modified.toISOString(), size: ctx.file.size, digest: ctx.file.digest, details: details() }],
    }));
    f.get("/api/ps", async () => ({
        models: core.model ? [{ name, model: name, size: ctx.file.size, digest: ctx.file.digest, details: details(), expires_at: "0001-01-01T00:00:00Z", size_vram: 0 }] : [],
    }));
    f.post("/api/show", { schema: { body: OllamaShowBody } }, async (request) => {
        const which = request.body.model ?? request.body.name;
        if (which === undefined) throw new ApiError(400, "missing_field", `"model" is required: the name of a model of GET /api/tags`, { param: "model" });
        ctx.checkModel(which, "model");
        const s = ctx.summary;
        const arch = s.architecture ?? "phi2";
        const template = ctx.chatTemplate ?? "{{ if .System }}{{ .System }}\n{{ end }}Instruct: {{ .Prompt }}\nOutput:";
        return {
            modelfile: `FROM ${path.basename(s.path)}\nTEMPLATE """${template}"""\n${PHI2_STOP.map((x) => `PARAMETER stop ${JSON.stringify(x)}`).join("\n")}\n`,
            parameters: ctx.chatTemplate ? "" : PHI2_STOP.map((x) => `stop ${JSON.stringify(x)}`).join("\n"),
            template,
            details: details(),
            model_info: {
                "general.architecture": arch,
                "general.name": s.name ?? ctx.modelId,
                "general.parameter_count": s.parameterCount,
                "general.file_type": s.fileTypeId,
                [`${arch}.context_length`]: s.contextLength,
                [`${arch}.embedding_length`]: s.embeddingLength,
                [`${arch}.feed_forward_length`]: s.feedForwardLength,
                [`${arch}.block_count`]: s.layers,
                [`${arch}.attention.head_count`]: s.heads,
                [`${arch}.attention.head_count_kv`]: s.headsKV,
                [`${arch}.rope.dimension_count`]: s.ropeDimensionCount,
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.vocab_size": s.vocabSize,
            },
            capabilities: ["completion"],
            modified_at: ctx.file.modified.toISOString(),
        };
    });

    f.post("/api/generate", { schema: { body: OllamaGenerateBody } }, async (request, reply) => {
        const started = process.hrtime.bigint();
        const body = request.body;
        ctx.checkModel(body.model, "model");
        if (body.images && body.images.length) throw notSupported("images", `"images": Phi-2 reads text only; images are not supported`);
        if (body.context && body.context.length) throw notSupported("context", `"context" (a previous reply's token context) is not supported; send the whole conversation to /api/chat instead`);
        if (nn(body.suffix)) throw notSupported("suffix", `"suffix" (fill-in-the-middle) is not supported by this server; leave it out`);
        if (nn(body.template)) throw notSupported("template", `"template" (a Go template) is not supported; send "raw": true with a prompt you formatted yourself`);
        const options = common(body);
        const prompt = nn(body.prompt) ?? "";
        const createdAt = () => new Date().toISOString();
        if (prompt === "") { // Ollama: an empty prompt only loads the model
            core.readyModel();
            return { model: name, created_at: createdAt(), response: "", done: true, done_reason: "load" };
        }
        let text = prompt;
        if (body.raw !== true) {
            const messages = [...(nn(body.system) ? [{ role: "system", content: body.system! }] : []), { role: "user", content: prompt }];
            const chat = ctx.chat.format(messages, "prompt");
            text = chat.prompt;
            withStops(options, chat.stop);
        }
        const spec: JobSpec = { route: "/api/generate", prompt: text, options, promptParam: "prompt", maxTokensParam: "options.num_predict", ...logprobsOf(body) };
        if (body.stream !== false) {
            const encoder: StreamEncoder = {
                contentType: "application/x-ndjson",
                start: () => "",
                chunk: (t, lp) => JSON.stringify({ model: name, created_at: createdAt(), response: t, done: false, ...ollamaLogprobs(lp) }) + "\n",
                end: (r, lp) => JSON.stringify({ model: name, created_at: createdAt(), response: "", done: true, ...stats(r, started), ...(lp?.length ? ollamaLogprobs(lp) : {}) }) + "\n",
                error: (e) => JSON.stringify(ctx.errorBody(e, request.url)) + "\n",
            };
            await core.stream(request, reply, spec, encoder);
            return reply;
        }
        const { result, logprobs } = await core.complete(reply, spec);
        return { model: name, created_at: createdAt(), response: result.text, done: true, ...stats(result, started), ...ollamaLogprobs(logprobs) };
    });

    f.post("/api/chat", { schema: { body: OllamaChatBody } }, async (request, reply) => {
        const started = process.hrtime.bigint();
        const body = request.body;
        ctx.checkModel(body.model, "model");
        if (body.tools && body.tools.length) throw notSupported("tools", `"tools": tool calling is not supported by this server; leave "tools" out`);
        const options = common(body);
        const messages = nn(body.messages) ?? [];
        const createdAt = () => new Date().toISOString();
        if (messages.length === 0) { // Ollama: no messages only loads the model
            core.readyModel();
            return { model: name, created_at: createdAt(), message: { role: "assistant", content: "" }, done_reason: "load", done: true };
        }
        const chat = ctx.chat.format(messages);
        withStops(options, chat.stop);
        const spec: JobSpec = { route: "/api/chat", prompt: chat.prompt, options, promptParam: "messages", maxTokensParam: "options.num_predict", ...logprobsOf(body) };
        if (body.stream !== false) {
            const encoder: StreamEncoder = {
                contentType: "application/x-ndjson",
                start: () => "",
                chunk: (t, lp) => JSON.stringify({ model: name, created_at: createdAt(), message: { role: "assistant", content: t }, done: false, ...ollamaLogprobs(lp) }) + "\n",
                end: (r, lp) => JSON.stringify({ model: name, created_at: createdAt(), message: { role: "assistant", content: "" }, done: true, ...stats(r, started), ...(lp?.length ? ollamaLogprobs(lp) : {}) }) + "\n",
                error: (e) => JSON.stringify(ctx.errorBody(e, request.url)) + "\n",
            };
            await core.stream(request, reply, spec, encoder);
            return reply;
        }
        const { result, logprobs } = await core.complete(reply, spec);
        return { model: name, created_at: createdAt(), message: { role: "assistant", content: result.text }, done: true, ...stats(result, started), ...ollamaLogprobs(logprobs) };
    });
}
