/**
 * RusticAI's common message formats (`rustic_ai.core.agents.commons.message_formats`), with the same
 * wire field names and format names, so a payload from a Python guild is valid here and back.
 * The optional extras (per-request sampling options; finish reason and token usage in the response)
 * are ignored by a Python receiver, whose models accept unknown fields.
 */
import { Type, type Static } from "@sinclair/typebox";
import { MAX_STOP_STRINGS, optionSchema, outputSchema } from "../model/limits.js";
import { defineMessageFormat } from "./format.js";

/** RusticAI's module holding these formats; format names are `${module}.${ClassName}`. */
export const RUSTIC_MESSAGE_FORMATS_MODULE = "rustic_ai.core.agents.commons.message_formats";

// ---------------------------------------------------------------------------------------------
// GenerationPromptRequest
// ---------------------------------------------------------------------------------------------

export const GenerationPromptRequestSchema = Type.Object({
    generation_prompt: Type.String({ description: "The text the model continues." }),
    max_tokens: Type.Optional(optionSchema("maxTokens", "Max tokens to generate for this request (overrides the agent's maxLength budget).")),
    temperature: Type.Optional(optionSchema("temperature", "0 = greedy (the default).")),
    seed: Type.Optional(optionSchema("seed")),
    stop: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
        maxItems: MAX_STOP_STRINGS, description: "Generation stops before the first of these strings.",
    })),
    top_k: Type.Optional(optionSchema("topK")),
    top_p: Type.Optional(optionSchema("topP")),
    json_schema: Type.Optional(outputSchema("jsonSchema",
        "A JSON Schema the response must match (this library's extension; Python senders omit it): generated_response is then the JSON text alone.")),
}, { description: "A text generation request." });

/** A text generation request: `generation_prompt`, plus optional per-request options. */
export type GenerationPromptRequest = Static<typeof GenerationPromptRequestSchema>;
/** Schema, format name and `create()` for GenerationPromptRequest. */
export const GenerationPromptRequest = defineMessageFormat(
    `${RUSTIC_MESSAGE_FORMATS_MODULE}.GenerationPromptRequest`, GenerationPromptRequestSchema);

// ---------------------------------------------------------------------------------------------
// GenerationPromptResponse
// ---------------------------------------------------------------------------------------------

export const FinishReasonSchema = Type.Union([
    Type.Literal("eos"), Type.Literal("stop"), Type.Literal("length"), Type.Literal("context"), Type.Literal("abort"),
], { description: "Why generation ended: end-of-text token, a stop string, the token budget, the context's end, or cancellation." });

export const GenerationUsageSchema = Type.Object({
    prompt_tokens: Type.Integer({ minimum: 0 }),
    completion_tokens: Type.Integer({ minimum: 0 }),
    total_tokens: Type.Integer({ minimum: 0 }),
    prompt_ms: Type.Optional(Type.Number({ minimum: 0 })),
    generation_ms: Type.Optional(Type.Number({ minimum: 0 })),
});
export type GenerationUsagePayload = Static<typeof GenerationUsageSchema>;

export const GenerationPromptResponseSchema = Type.Object({
    generation_prompt: Type.String({ description: "The request's prompt." }),
    generated_response: Type.String({ description: "The generated text (by default, the prompt followed by its continuation)." }),
    finish_reason: Type.Optional(FinishReasonSchema),
    usage: Type.Optional(GenerationUsageSchema),
}, { description: "A text generation response." });

/** A text generation response: `generation_prompt` and `generated_response`, plus optional finish reason and usage. */
export type GenerationPromptResponse = Static<typeof GenerationPromptResponseSchema>;
/** Schema, format name and `create()` for GenerationPromptResponse. */
export const GenerationPromptResponse = defineMessageFormat(
    `${RUSTIC_MESSAGE_FORMATS_MODULE}.GenerationPromptResponse`, GenerationPromptResponseSchema);

// ---------------------------------------------------------------------------------------------
// ErrorMessage
// ---------------------------------------------------------------------------------------------

export const ErrorMessageSchema = Type.Object({
    agent_type: Type.String({ description: "The agent class that failed, e.g. \"LLMPhiAgent\"." }),
    error_type: Type.String({ description: "The kind of error, e.g. \"ValidationError\", \"ContextOverflowError\"." }),
    error_message: Type.String({ description: "What went wrong and what to do about it." }),
    code: Type.Optional(Type.String({ description: "A stable error code, e.g. \"ERR_CONTEXT_OVERFLOW\"." })),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
}, { description: "An error reply." });

/** An error reply: `agent_type`, `error_type`, `error_message`, plus an optional stable `code` and `details`. */
export type ErrorMessage = Static<typeof ErrorMessageSchema>;
/** Schema, format name and `create()` for ErrorMessage. */
export const ErrorMessage = defineMessageFormat(`${RUSTIC_MESSAGE_FORMATS_MODULE}.ErrorMessage`, ErrorMessageSchema);

/**
 * The ErrorMessage payload for a thrown error: `error_type` is its name ("ContextOverflowError",
 * "TypeError", ...), `error_message` its message, `code` its `code` when it has a string one.
 */
export function errorMessageFromError(agentType: string, err: unknown, errorType?: string): ErrorMessage {
    const e = err instanceof Error ? err : new Error(String(err));
    const code = (e as { code?: unknown }).code;
    const details = (e as { details?: unknown }).details;
    const payload: ErrorMessage = {
        agent_type: agentType,
        error_type: errorType ?? (e.name || "Error"),
        error_message: e.message || String(err),
    };
    if (typeof code === "string") payload.code = code;
    if (details && typeof details === "object" && !Array.isArray(details)) {
        try {
            payload.details = JSON.parse(JSON.stringify(details)) as Record<string, unknown>;
        } catch {
            // details that are not JSON stay out of the message
        }
    }
    return ErrorMessage.create(payload);
}
