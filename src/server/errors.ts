/**
 * The server's errors: one ApiError class with an HTTP status and OpenAI's error fields, the mapping from our
 * PhiAgentError codes (src/errors.ts) and fastify's own errors to it, and the two bodies it is sent as:
 * OpenAI's `{"error":{"message","type","param","code"}}` everywhere but /api/*, Ollama's `{"error":"message"}`
 * on /api/* (what the Ollama clients read; the status is the same).
 */
import { PhiAgentError, isArgumentError, type PhiErrorCode } from "../errors.js";

export type ApiErrorType =
    | "invalid_request_error"
    | "authentication_error"
    | "not_found_error"
    | "rate_limit_error"
    | "unavailable_error"
    | "server_error";

export class ApiError extends Error {
    readonly status: number;
    readonly type: ApiErrorType;
    readonly code: string;
    readonly param: string | null;
    /** Seconds, sent as Retry-After (429 and 503). */
    readonly retryAfter?: number;

    constructor(status: number, code: string, message: string, options: { type?: ApiErrorType; param?: string | null; retryAfter?: number; cause?: unknown } = {}) {
        super(message, options.cause !== undefined ? { cause: options.cause } : undefined);
        this.name = "ApiError";
        this.status = status;
        this.code = code;
        this.type = options.type ?? defaultType(status);
        this.param = options.param ?? null;
        if (options.retryAfter !== undefined) this.retryAfter = options.retryAfter;
    }
}

function defaultType(status: number): ApiErrorType {
    if (status === 401) return "authentication_error";
    if (status === 404) return "not_found_error";
    if (status === 429) return "rate_limit_error";
    if (status === 503) return "unavailable_error";
    if (status >= 500) return "server_error";
    return "invalid_request_error";
}

/** 400 for a request feature this server does not implement (yet). */
export function notSupported(param: string, message: string): ApiError {
    return new ApiError(400, "not_supported", message, { param });
}

/** 400 for a field with a value that is not allowed; `message` names the field and what is allowed. */
export function invalidValue(param: string, message: string): ApiError {
    return new ApiError(400, "invalid_value", message, { param });
}

/** The option name a PhiModel argument error is about ("temperature" in `Expected "temperature" to be ...`). */
function argumentName(message: string): string | null {
    return /"([A-Za-z_][\w.[\]]*)"/.exec(message)?.[1] ?? null;
}

const STATUS_OF_CODE: Partial<Record<PhiErrorCode, [number, string]>> = {
    ERR_INVALID_ARGUMENT: [400, "invalid_value"],
    ERR_CONTEXT_OVERFLOW: [400, "context_length_exceeded"],
    ERR_DISPOSED: [503, "shutting_down"],
    ERR_ABORTED: [499, "client_closed_request"],
    ERR_TIMEOUT: [504, "timeout"],
};

/**
 * Any error thrown while serving a request, as an ApiError: ours as they are; PhiAgentError by its code
 * (argument errors and context overflow are the caller's 400s, the rest 5xx); fastify's own (invalid JSON, body
 * too large, bad content type) by their status; anything else a 500 that does not leak internals.
 */
export function toApiError(err: unknown, names: { prompt?: string } = {}): ApiError {
    if (err instanceof ApiError) return err;
    if (err instanceof PhiAgentError || isArgumentError(err)) {
        const e = err as PhiAgentError;
        const [status, code] = STATUS_OF_CODE[e.code] ?? [500, e.code.replace(/^ERR_/, "").toLowerCase()];
        const param = e.code === "ERR_CONTEXT_OVERFLOW" ? names.prompt ?? "prompt" : e.code === "ERR_INVALID_ARGUMENT" ? argumentName(e.message) : null;
        return new ApiError(status, code, e.message, { param, cause: err, ...(status === 503 ? { retryAfter: 1 } : {}) });
    }
    const f = err as { code?: unknown; statusCode?: unknown; message?: unknown } | null;
    const fcode = typeof f?.code === "string" ? f.code : "";
    const status = typeof f?.statusCode === "number" ? f.statusCode : 500;
    const message = typeof f?.message === "string" ? f.message : String(err);
    if (fcode === "FST_ERR_CTP_BODY_TOO_LARGE" || status === 413) {
        return new ApiError(413, "body_too_large", `The request body is larger than this server accepts; send less (the limit is set with --body-limit)`);
    }
    if (fcode === "FST_ERR_CTP_INVALID_MEDIA_TYPE" || status === 415) {
        return new ApiError(415, "unsupported_media_type", `Send the request body as JSON with "Content-Type: application/json"`);
    }
    if (fcode === "FST_ERR_CTP_EMPTY_JSON_BODY") return new ApiError(400, "invalid_json", "The request body is empty; send a JSON object");
    if (fcode === "FST_ERR_CTP_INVALID_CONTENT_LENGTH") return new ApiError(400, "invalid_request", "The Content-Length header does not match the body");
    if (err instanceof SyntaxError || fcode === "FST_ERR_CTP_INVALID_JSON_BODY") {
        return new ApiError(400, "invalid_json", `The request body is not valid JSON (${message}); send one JSON object`);
    }
    if (status >= 400 && status < 500) return new ApiError(status, fcode ? fcode.toLowerCase() : "invalid_request", message);
    return new ApiError(500, "internal_error", "The server failed to handle this request", { cause: err });
}

/** OpenAI's error body. */
export function openAIErrorBody(e: ApiError): { error: { message: string; type: string; param: string | null; code: string } } {
    return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

/** Ollama's error body (its clients read `error` as the message). */
export function ollamaErrorBody(e: ApiError): { error: string } {
    return { error: e.message };
}

/** Whether a request path is one of the Ollama API's (errors there use Ollama's body). */
export function isOllamaPath(url: string): boolean {
    return url === "/api" || url.startsWith("/api/") || url.startsWith("/api?");
}
