/**
 * One error class with a stable string `code`, plus named subclasses for the cases callers branch on.
 * Argument mistakes are plain `TypeError` / `RangeError` (what JavaScript users expect for bad arguments).
 */
export type PhiErrorCode =
    | "ERR_INVALID_ARGUMENT"
    | "ERR_MODEL_NOT_FOUND"
    | "ERR_INVALID_GGUF"
    | "ERR_UNSUPPORTED_ARCHITECTURE"
    | "ERR_NATIVE_BINDING"
    | "ERR_LIBRARY_NOT_FOUND"
    | "ERR_DEVICE_UNAVAILABLE"
    | "ERR_LOAD_FAILED"
    | "ERR_CONTEXT_OVERFLOW"
    | "ERR_DISPOSED"
    | "ERR_ABORTED"
    | "ERR_GENERATION_FAILED"
    | "ERR_QUANTIZE_FAILED"
    | "ERR_OUTPUT_EXISTS"
    | "ERR_INVALID_OUTPUT";

export class PhiAgentError extends Error {
    readonly code: PhiErrorCode;
    readonly details?: Record<string, unknown>;

    constructor(code: PhiErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
        super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
        this.name = "PhiAgentError";
        this.code = code;
        if (options?.details) this.details = options.details;
    }
}

/** The model (or agent) was disposed; create a new one. */
export class DisposedError extends PhiAgentError {
    constructor(what = "PhiModel") {
        super("ERR_DISPOSED", `${what} has been disposed; load a new one to continue`);
        this.name = "DisposedError";
    }
}

/** The prompt (plus what must be generated) does not fit the context window. */
export class ContextOverflowError extends PhiAgentError {
    constructor(readonly promptTokens: number, readonly contextSize: number) {
        super("ERR_CONTEXT_OVERFLOW",
            `The prompt is ${promptTokens} tokens but the context holds ${contextSize}; ` +
            `shorten the prompt, load the model with a larger contextSize, or pass { truncate: "start" } to keep the prompt's end`,
            { details: { promptTokens, contextSize } });
        this.name = "ContextOverflowError";
    }
}

/** The operation was cancelled through its AbortSignal. */
export class AbortError extends PhiAgentError {
    constructor(message = "The operation was aborted", cause?: unknown) {
        super("ERR_ABORTED", message, cause !== undefined ? { cause } : undefined);
        this.name = "AbortError";
    }
}

/** A GGUF file is malformed or not usable; `message` names the field or section that was wrong. */
export class GGUFError extends PhiAgentError {
    constructor(message: string, readonly path?: string, code: PhiErrorCode = "ERR_INVALID_GGUF") {
        super(code, path ? `${path}: ${message}` : message, path ? { details: { path } } : undefined);
        this.name = "GGUFError";
    }
}

/**
 * An output path that cannot be written as asked: it exists (ERR_OUTPUT_EXISTS; pass `overwrite: true` / --force),
 * or it is a folder, in a folder that does not exist, or the very file being read (ERR_INVALID_OUTPUT).
 */
export class OutputPathError extends PhiAgentError {
    constructor(code: "ERR_OUTPUT_EXISTS" | "ERR_INVALID_OUTPUT", message: string, readonly path: string) {
        super(code, message, { details: { path } });
        this.name = "OutputPathError";
    }
}

export function isAbortError(err: unknown): err is AbortError {
    return err instanceof AbortError;
}
