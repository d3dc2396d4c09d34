/**
 * Request bodies of every endpoint, as typebox schemas (fastify's type provider types the handlers from them),
 * and the validator that checks them with typebox's compiler: no coercion ("0.5" is not a number), unknown
 * fields pass (clients send many), and a failure is a 400 whose message names the field, the value and what is
 * allowed. Ranges of generation options come from src/model/limits.ts (OPTION_SCHEMAS); nothing here repeats a
 * number.
 */
import { Kind, Type, type TSchema } from "@sinclair/typebox";
import { TypeCompiler, type ValueError } from "@sinclair/typebox/compiler";
import { MAX_STOP_STRINGS, OPTION_SCHEMAS, optionSchema } from "../model/limits.js";
import { ApiError } from "./errors.js";

/** Most alternatives per token for logprobs (OpenAI's top_logprobs bound; GenerateOptions.logprobs' range). */
export const MAX_TOP_LOGPROBS = OPTION_SCHEMAS.logprobs.maximum!;

const Nullable = <T extends TSchema>(schema: T) => Type.Optional(Type.Union([schema, Type.Null()]));
const open = { additionalProperties: true } as const;

const Stop = Type.Union([
    Type.String({ minLength: 1 }),
    Type.Array(Type.String({ minLength: 1 }), { maxItems: MAX_STOP_STRINGS }),
], { allowed: `a non-empty string, or an array of at most ${MAX_STOP_STRINGS} non-empty strings` });

/** Sampling fields shared by /v1/completions and /v1/chat/completions (OpenAI's names, plus llama.cpp's extras). */
const OpenAISampling = {
    model: Type.String({ minLength: 1, allowed: "the id of a model of GET /v1/models" }),
    max_tokens: Nullable(OPTION_SCHEMAS.maxTokens),
    temperature: Nullable(OPTION_SCHEMAS.temperature),
    top_p: Nullable(OPTION_SCHEMAS.topP),
    top_k: Nullable(OPTION_SCHEMAS.topK),
    min_p: Nullable(OPTION_SCHEMAS.minP),
    seed: Nullable(OPTION_SCHEMAS.seed),
    frequency_penalty: Nullable(OPTION_SCHEMAS.frequencyPenalty),
    presence_penalty: Nullable(OPTION_SCHEMAS.presencePenalty),
    repeat_penalty: Nullable(OPTION_SCHEMAS.repeatPenalty),
    repeat_last_n: Nullable(OPTION_SCHEMAS.repeatLastN),
    stop: Nullable(Stop),
    stream: Nullable(Type.Boolean()),
    stream_options: Nullable(Type.Object({ include_usage: Nullable(Type.Boolean()) }, open)),
    n: Nullable(Type.Integer({ allowed: "1 (one choice per request)" })),
    response_format: Nullable(Type.Object({ type: Type.String() }, open)),
    logit_bias: Nullable(Type.Record(Type.String(), Type.Number())),
    user: Nullable(Type.String()),
};

const ContentPart = Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) }, open);

export const ChatMessageSchema = Type.Object({
    role: Type.String({ allowed: `"system", "developer", "user" or "assistant"` }),
    content: Nullable(Type.Union([Type.String(), Type.Array(ContentPart)], { allowed: "a string, or an array of { type: \"text\", text } parts" })),
    name: Nullable(Type.String()),
}, open);

export const ChatCompletionBody = Type.Object({
    ...OpenAISampling,
    messages: Type.Array(ChatMessageSchema, { minItems: 1, allowed: "a non-empty array of { role, content } messages" }),
    max_completion_tokens: Nullable(OPTION_SCHEMAS.maxTokens),
    logprobs: Nullable(Type.Boolean()),
    top_logprobs: Nullable(Type.Integer({ minimum: 0, maximum: MAX_TOP_LOGPROBS })),
    tools: Nullable(Type.Array(Type.Unknown())),
    tool_choice: Type.Optional(Type.Unknown()),
    functions: Nullable(Type.Array(Type.Unknown())),
    function_call: Type.Optional(Type.Unknown()),
}, open);

export const CompletionBody = Type.Object({
    ...OpenAISampling,
    prompt: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1 })], { allowed: "a string (or an array of one string)" }),
    logprobs: Nullable(Type.Integer({ minimum: 0, maximum: MAX_TOP_LOGPROBS })),
    echo: Nullable(Type.Boolean()),
    suffix: Nullable(Type.String()),
    best_of: Nullable(Type.Integer()),
}, open);

/** Ollama's `options` (the ones that map to ours; others, such as num_ctx or num_thread, are ignored). */
const OllamaOptions = Type.Object({
    num_predict: Nullable(Type.Integer({ minimum: -2, maximum: OPTION_SCHEMAS.maxTokens.maximum, allowed: "-1 (no limit), -2 (fill the context) or a positive count" })),
    temperature: Nullable(OPTION_SCHEMAS.temperature),
    top_k: Nullable(OPTION_SCHEMAS.topK),
    top_p: Nullable(OPTION_SCHEMAS.topP),
    min_p: Nullable(OPTION_SCHEMAS.minP),
    seed: Nullable(Type.Integer({ minimum: -1, maximum: OPTION_SCHEMAS.seed.maximum, allowed: `-1 (random) or 0 to ${OPTION_SCHEMAS.seed.maximum}` })),
    stop: Nullable(Type.Array(Type.String({ minLength: 1 }), { maxItems: MAX_STOP_STRINGS })),
    repeat_penalty: Nullable(OPTION_SCHEMAS.repeatPenalty),
    repeat_last_n: Nullable(Type.Integer({ minimum: -1, maximum: OPTION_SCHEMAS.repeatLastN.maximum, allowed: "-1 (the whole context), 0 (off) or a positive count" })),
    presence_penalty: Nullable(OPTION_SCHEMAS.presencePenalty),
    frequency_penalty: Nullable(OPTION_SCHEMAS.frequencyPenalty),
}, open);

const OllamaCommon = {
    model: Type.String({ minLength: 1, allowed: "the name of a model of GET /api/tags" }),
    stream: Nullable(Type.Boolean()),
    format: Type.Optional(Type.Unknown()),
    options: Nullable(OllamaOptions),
    keep_alive: Type.Optional(Type.Unknown()),
    think: Type.Optional(Type.Unknown()),
    logprobs: Nullable(Type.Boolean()),
    top_logprobs: Nullable(Type.Integer({ minimum: 0, maximum: MAX_TOP_LOGPROBS })),
};

export const OllamaGenerateBody = Type.Object({
    ...OllamaCommon,
    prompt: Nullable(Type.String()),
    suffix: Nullable(Type.String()),
    system: Nullable(Type.String()),
    template: Nullable(Type.String()),
    raw: Nullable(Type.Boolean()),
    images: Nullable(Type.Array(Type.String())),
    context: Nullable(Type.Array(Type.Integer())),
}, open);

export const OllamaChatBody = Type.Object({
    ...OllamaCommon,
    messages: Nullable(Type.Array(Type.Object({
        role: Type.String({ allowed: `"system", "user" or "assistant"` }),
        content: Type.String(),
        images: Nullable(Type.Array(Type.String())),
        tool_calls: Type.Optional(Type.Unknown()),
    }, open))),
    tools: Nullable(Type.Array(Type.Unknown())),
}, open);

export const OllamaShowBody = Type.Object({
    model: Type.Optional(Type.String({ minLength: 1 })),
    name: Type.Optional(Type.String({ minLength: 1 })),
    verbose: Nullable(Type.Boolean()),
}, open);

export const TokenizeBody = Type.Object({
    content: Type.String({ allowed: "the text to tokenize" }),
    add_special: Nullable(Type.Boolean()),
    parse_special: Nullable(Type.Boolean()),
    with_pieces: Nullable(Type.Boolean()),
}, open);

export const DetokenizeBody = Type.Object({
    tokens: Type.Array(Type.Integer({ minimum: 0 }), { allowed: "an array of token ids" }),
}, open);

// ---------------------------------------------------------------------------------------------------------------
// Validation messages

function show(value: unknown): string {
    if (value === undefined) return "missing";
    try {
        const s = JSON.stringify(value);
        return s.length > 60 ? `${s.slice(0, 57)}...` : s;
    } catch {
        return String(value);
    }
}

/** What a schema allows, in words: its `allowed` text, else one made from its type and bounds. */
export function describeSchema(schema: TSchema): string {
    const s = schema as TSchema & Record<string, unknown>;
    if (typeof s.allowed === "string") return s.allowed;
    const kind = s[Kind];
    if (kind === "Union") {
        const isNull = (x: TSchema) => (x as unknown as Record<symbol, unknown>)[Kind] === "Null";
        const parts = (s.anyOf as TSchema[]).filter((x) => !isNull(x)).map(describeSchema);
        const nullable = (s.anyOf as TSchema[]).some(isNull);
        return parts.join(", or ") + (nullable ? " (or null)" : "");
    }
    if (kind === "Integer" || kind === "Number") {
        const what = kind === "Integer" ? "an integer" : "a number";
        const min = s.minimum ?? s.exclusiveMinimum;
        const above = s.exclusiveMinimum !== undefined;
        let text = what;
        if (min !== undefined && s.maximum !== undefined) text = above ? `${what} above ${min} and at most ${s.maximum}` : `${what} from ${min} to ${s.maximum}`;
        else if (min !== undefined) text = `${what} ${above ? "above" : "of at least"} ${min}`;
        else if (s.maximum !== undefined) text = `${what} of at most ${s.maximum}`;
        return typeof s.description === "string" ? `${text} (${s.description.replace(/\.$/, "")})` : text;
    }
    if (kind === "String") return typeof s.minLength === "number" && s.minLength > 0 ? "a non-empty string" : "a string";
    if (kind === "Boolean") return "true or false";
    if (kind === "Array") return `an array${typeof s.maxItems === "number" ? ` of at most ${s.maxItems} items` : ""}${typeof s.minItems === "number" && s.minItems > 0 ? " (not empty)" : ""}`;
    if (kind === "Object" || kind === "Record") return "an object";
    if (kind === "Null") return "null";
    return "a valid value";
}

/** "/messages/0/role" → "messages[0].role" (OpenAI's param style). */
export function pathToParam(path: string): string {
    let out = "";
    for (const part of path.split("/").slice(1)) {
        const key = part.replace(/~1/g, "/").replace(/~0/g, "~");
        out += /^\d+$/.test(key) ? `[${key}]` : out ? `.${key}` : key;
    }
    return out;
}

/** Under a failed union (a nullable field, say), the deepest error of its variants: the field that was wrong. */
function deepest(error: ValueError | undefined): ValueError | undefined {
    if (!error) return undefined;
    let best = error;
    for (const variant of error.errors ?? []) {
        const inner = deepest(variant.First());
        if (inner && inner.path.length > best.path.length) best = inner;
    }
    return best;
}

/**
 * fastify's validatorCompiler: typebox's compiled check; the first error (the deepest one under a union that
 * failed) becomes an ApiError 400 naming the field and what it allows.
 */
export function typeboxValidator({ schema }: { schema: unknown }): (data: unknown) => { value: unknown } | { error: Error } {
    const check = TypeCompiler.Compile(schema as TSchema);
    return (data) => {
        if (check.Check(data)) return { value: data };
        if (typeof data !== "object" || data === null || Array.isArray(data)) {
            return { error: new ApiError(400, "invalid_request", `The request body must be a JSON object, got ${Array.isArray(data) ? "an array" : show(data)}`) };
        }
        const first = deepest(check.Errors(data).First());
        const path = first?.path ?? "";
        const param = pathToParam(path) || null;
        const missing = first?.value === undefined;
        const allowed = first ? describeSchema(first.schema) : "a valid request";
        const message = param
            ? missing ? `"${param}" is required: ${allowed}` : `"${param}" is ${show(first!.value)}; allowed: ${allowed}`
            : `The request body is not valid: ${first?.message ?? "unknown problem"}`;
        return { error: new ApiError(400, missing ? "missing_field" : "invalid_value", message, { param }) };
    };
}
