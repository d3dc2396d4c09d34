/**
 * OpenAI's API: POST /v1/chat/completions, POST /v1/completions, GET /v1/models (and GET /v1/models/:id).
 * Streams are server-sent events (`data: {chunk}` … `data: [DONE]`).
 */
import { randomBytes } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { Static } from "@sinclair/typebox";
import type { GenerateOptions, GenerationResult } from "../model/types.js";
import { ApiError, notSupported } from "./errors.js";
import type { JobResult, JobSpec, LogprobEntry, ServingCore, StreamEncoder } from "./generation.js";
import { cachedTokensOf } from "./generation.js";
import { responseFormatOptions } from "./responseFormat.js";
import { ChatCompletionBody, CompletionBody } from "./schemas.js";
import type { ServerContext } from "./context.js";

type ChatBody = Static<typeof ChatCompletionBody>;
type CompletionBodyT = Static<typeof CompletionBody>;
type Sampling = Pick<ChatBody, "temperature" | "top_p" | "top_k" | "min_p" | "seed" | "frequency_penalty" | "presence_penalty" |
    "repeat_penalty" | "repeat_last_n" | "stop" | "n" | "logit_bias" | "response_format">;

const nn = <T>(v: T | null | undefined): T | undefined => (v === null ? undefined : v);

/** OpenAI's finish_reason for ours. */
export function openAIFinishReason(reason: GenerationResult["finishReason"]): "stop" | "length" {
    return reason === "length" || reason === "context" ? "length" : "stop";
}

function usageOf(r: GenerationResult, cached: number | undefined) {
    return {
        prompt_tokens: r.usage.promptTokens,
        completion_tokens: r.usage.completionTokens,
        total_tokens: r.usage.promptTokens + r.usage.completionTokens,
        ...(cached !== undefined ? { prompt_tokens_details: { cached_tokens: cached } } : {}),
    };
}

/** The generate() options of the fields both endpoints share; refuses what this server does not do. */
function samplingOptions(body: Sampling): Omit<GenerateOptions, "signal" | "onToken" | "stopOnAbort"> {
    const n = nn(body.n);
    if (n !== undefined && n !== 1) throw notSupported("n", `"n" is ${n}; this server returns one choice per request: leave "n" out, or send ${n} requests`);
    if (body.logit_bias && Object.keys(body.logit_bias).length > 0) throw notSupported("logit_bias", `"logit_bias" is not supported by this server; leave it out`);
    const stop = nn(body.stop);
    const o: Omit<GenerateOptions, "signal" | "onToken" | "stopOnAbort"> = {
        ...responseFormatOptions(nn(body.response_format), "response_format"),
    };
    const set = <K extends keyof GenerateOptions>(k: K, v: GenerateOptions[K] | null | undefined) => {
        if (v !== undefined && v !== null) (o as GenerateOptions)[k] = v;
    };
    set("temperature", body.temperature);
    set("topP", body.top_p);
    set("topK", body.top_k);
    set("minP", body.min_p);
    set("seed", body.seed);
    set("frequencyPenalty", body.frequency_penalty);
    set("presencePenalty", body.presence_penalty);
    set("repeatPenalty", body.repeat_penalty);
    set("repeatLastN", body.repeat_last_n);
    if (stop !== undefined) o.stop = typeof stop === "string" ? [stop] : [...stop];
    return o;
}

const newId = (prefix: string) => `${prefix}-${randomBytes(12).toString("base64url")}`;
const now = () => Math.floor(Date.now() / 1000);
const sse = (obj: unknown) => `data: ${JSON.stringify(obj)}\n\n`;
const DONE = "data: [DONE]\n\n";

/** Chat logprobs: { content: [{ token, logprob, bytes, top_logprobs }] }. */
function chatLogprobs(entries: LogprobEntry[] | undefined) {
    if (!entries) return null;
    return {
        content: entries.map((e) => ({ token: e.token, logprob: e.logprob, bytes: e.bytes, top_logprobs: e.top })),
        refusal: null,
    };
}

/** Legacy completions logprobs: { tokens, token_logprobs, top_logprobs, text_offset }. */
function completionLogprobs(entries: LogprobEntry[] | undefined, offset: number) {
    if (!entries) return null;
    const text_offset: number[] = [];
    let at = offset;
    for (const e of entries) {
        text_offset.push(at);
        at += e.token.length;
    }
    return {
        tokens: entries.map((e) => e.token),
        token_logprobs: entries.map((e) => e.logprob),
        top_logprobs: entries.map((e) => Object.fromEntries(e.top.map((t) => [t.token, t.logprob]))),
        text_offset,
    };
}

export function registerOpenAIRoutes(app: FastifyInstance, ctx: ServerContext): void {
    const f = app.withTypeProvider<TypeBoxTypeProvider>();
    const core: ServingCore = ctx.core;

    const modelObject = () => ({ id: ctx.modelId, object: "model", created: ctx.created, owned_by: "llm-phi-agent" });
    f.get("/v1/models", async () => ({ object: "list", data: [modelObject()] }));
    f.get<{ Params: { id: string } }>("/v1/models/:id", async (request) => {
        ctx.checkModel(request.params.id, "model");
        return modelObject();
    });

    f.post("/v1/chat/completions", { schema: { body: ChatCompletionBody } }, async (request, reply) => {
        const body = request.body;
        ctx.checkModel(body.model, "model");
        if (body.tools && body.tools.length > 0) throw notSupported("tools", `"tools": tool calling is not supported by this server; leave "tools" out`);
        if (body.functions && body.functions.length > 0) throw notSupported("functions", `"functions": function calling is not supported by this server; leave it out`);
        if (body.tool_choice !== undefined && body.tool_choice !== null && body.tool_choice !== "none" && body.tool_choice !== "auto") {
            throw notSupported("tool_choice", `"tool_choice": tool calling is not supported by this server; leave it out`);
        }
        const options = samplingOptions(body);
        const maxTokens = nn(body.max_completion_tokens) ?? nn(body.max_tokens);
        if (maxTokens !== undefined) options.maxTokens = maxTokens;
        const chat = ctx.chat.format(body.messages);
        if (chat.stop.length) options.stop = [...(options.stop ?? []), ...chat.stop.filter((s) => !options.stop?.includes(s))];
        const logprobs = body.logprobs === true ? nn(body.top_logprobs) ?? 0 : undefined;
        if (body.logprobs !== true && nn(body.top_logprobs) !== undefined && body.top_logprobs! > 0) {
            throw new ApiError(400, "invalid_value", `"top_logprobs" needs "logprobs": true`, { param: "top_logprobs" });
        }
        const spec: JobSpec = {
            route: "/v1/chat/completions", prompt: chat.prompt, options, promptParam: "messages",
            maxTokensParam: body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens",
            ...(logprobs !== undefined ? { logprobs } : {}),
        };
        const id = newId("chatcmpl");
        const created = now();
        const base = { id, object: "chat.completion", created, model: ctx.modelId, system_fingerprint: ctx.fingerprint };
        if (body.stream === true) {
            const includeUsage = body.stream_options?.include_usage === true;
            const usageField = includeUsage ? { usage: null } : {};
            const chunk = { ...base, object: "chat.completion.chunk" };
            // the fixed parts of every content chunk, around the JSON string of its text
            const head = `data: ${JSON.stringify(chunk).slice(0, -1)},"choices":[{"index":0,"delta":{"content":`;
            const tail = `},"logprobs":null,"finish_reason":null}]${includeUsage ? ',"usage":null' : ""}}\n\n`;
            const encoder: StreamEncoder = {
                contentType: "text/event-stream; charset=utf-8",
                start: () => sse({ ...chunk, choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }], ...usageField }),
                chunk: (text, lp) => lp
                    ? sse({ ...chunk, choices: [{ index: 0, delta: { content: text }, logprobs: chatLogprobs(lp), finish_reason: null }], ...usageField })
                    : head + JSON.stringify(text) + tail,
                end: (result, lp) => {
                    let out = "";
                    if (lp && lp.length) out += sse({ ...chunk, choices: [{ index: 0, delta: { content: "" }, logprobs: chatLogprobs(lp), finish_reason: null }], ...usageField });
                    out += sse({ ...chunk, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: openAIFinishReason(result.finishReason) }], ...usageField });
                    if (includeUsage) out += sse({ ...chunk, choices: [], usage: usageOf(result, cachedTokensOf(result)) });
                    return out + DONE;
                },
                error: (e) => sse(ctx.errorBody(e, request.url)) + DONE,
            };
            await core.stream(request, reply, spec, encoder);
            return reply;
        }
        const done: JobResult = await core.complete(reply, spec);
        return {
            ...base,
            choices: [{
                index: 0,
                message: { role: "assistant", content: done.result.text, refusal: null },
                logprobs: chatLogprobs(done.logprobs),
                finish_reason: openAIFinishReason(done.result.finishReason),
            }],
            usage: usageOf(done.result, done.cachedTokens),
        };
    });

    f.post("/v1/completions", { schema: { body: CompletionBody } }, async (request: FastifyRequest<{ Body: CompletionBodyT }>, reply: FastifyReply) => {
        const body = request.body;
        ctx.checkModel(body.model, "model");
        if (Array.isArray(body.prompt) && body.prompt.length !== 1) {
            throw notSupported("prompt", `"prompt" is an array of ${body.prompt.length} prompts; this server completes one prompt per request: send a string`);
        }
        const prompt = Array.isArray(body.prompt) ? body.prompt[0]! : body.prompt;
        if (nn(body.suffix)) throw notSupported("suffix", `"suffix" (fill-in-the-middle) is not supported by this server; leave it out`);
        const bestOf = nn(body.best_of);
        if (bestOf !== undefined && bestOf !== 1) throw notSupported("best_of", `"best_of" is ${bestOf}; this server generates one completion per request: leave it out`);
        const options = samplingOptions(body);
        options.maxTokens = nn(body.max_tokens) ?? ctx.completionDefaultMaxTokens;
        const logprobs = nn(body.logprobs);
        const echo = body.echo === true;
        if (echo && logprobs !== undefined) throw notSupported("echo", `"echo" with "logprobs" (prompt logprobs) is not supported; leave one of them out`);
        const spec: JobSpec = {
            route: "/v1/completions", prompt, options, promptParam: "prompt", maxTokensParam: "max_tokens",
            ...(logprobs !== undefined ? { logprobs } : {}),
        };
        const id = newId("cmpl");
        const created = now();
        const base = { id, object: "text_completion", created, model: ctx.modelId, system_fingerprint: ctx.fingerprint };
        if (body.stream === true) {
            const includeUsage = body.stream_options?.include_usage === true;
            const usageField = includeUsage ? { usage: null } : {};
            let offset = echo ? prompt.length : 0;
            const head = `data: ${JSON.stringify(base).slice(0, -1)},"choices":[{"text":`;
            const tail = `,"index":0,"logprobs":null,"finish_reason":null}]${includeUsage ? ',"usage":null' : ""}}\n\n`;
            const encoder: StreamEncoder = {
                contentType: "text/event-stream; charset=utf-8",
                start: () => (echo ? head + JSON.stringify(prompt) + tail : ""),
                chunk: (text, lp) => {
                    if (!lp) return head + JSON.stringify(text) + tail;
                    const out = sse({ ...base, choices: [{ text, index: 0, logprobs: completionLogprobs(lp, offset), finish_reason: null }], ...usageField });
                    offset += text.length;
                    return out;
                },
                end: (result, lp) => {
                    let out = sse({ ...base, choices: [{ text: "", index: 0, logprobs: lp && lp.length ? completionLogprobs(lp, offset) : null, finish_reason: openAIFinishReason(result.finishReason) }], ...usageField });
                    if (includeUsage) out += sse({ ...base, choices: [], usage: usageOf(result, cachedTokensOf(result)) });
                    return out + DONE;
                },
                error: (e) => sse(ctx.errorBody(e, request.url)) + DONE,
            };
            await core.stream(request, reply, spec, encoder);
            return reply;
        }
        const done = await core.complete(reply, spec);
        return {
            ...base,
            choices: [{
                text: (echo ? prompt : "") + done.result.text,
                index: 0,
                logprobs: completionLogprobs(done.logprobs, echo ? prompt.length : 0),
                finish_reason: openAIFinishReason(done.result.finishReason),
            }],
            usage: usageOf(done.result, done.cachedTokens),
        };
    });
}
