/**
 * The error taxonomy. Every error the library throws on purpose carries a stable string `code` (PhiErrorCode):
 * - argument mistakes are `PhiTypeError` (wrong type, missing) / `PhiRangeError` (value not allowed): still
 *   `instanceof TypeError` / `RangeError`, as JavaScript users expect of argument checks, with
 *   `code: "ERR_INVALID_ARGUMENT"`;
 * - everything else is a `PhiAgentError` (or a named subclass for the cases callers branch on);
 * - `err instanceof PhiAgentError` is true for all of them (argument errors included), so one check catches
 *   every library error, and `err.code` tells them apart.
 */
export type PhiErrorCode =
    /** A bad argument, option, field or payload (PhiTypeError / PhiRangeError). */
    | "ERR_INVALID_ARGUMENT"
    /** The call is not allowed in the object's current state (not started, already started, not running). */
    | "ERR_INVALID_STATE"
    /** A wait ran out of time (GuildTimeoutError). */
    | "ERR_TIMEOUT"
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
    | "ERR_INVALID_OUTPUT"
    /** A message on the wire that RusticAI's `Message` model would reject (WireMessageError). */
    | "ERR_INVALID_MESSAGE"
    /** The messaging service (Redis) cannot be reached, refused the login, or the backend was closed (MessagingUnavailableError). */
    | "ERR_MESSAGING_UNAVAILABLE"
    /** A routing slip step needs something the agent host does not run (a CEL expression). */
    | "ERR_UNSUPPORTED_ROUTE"
    /** A replica's claim on a request was lost (its lease ran out, or Redis forgot it) before it answered, or never won (a request started while its claim was on its way). */
    | "ERR_CLAIM_LOST"
    /** Typed output (a JSON schema) cut short by the token budget or the context before the document was complete. */
    | "ERR_OUTPUT_INCOMPLETE";

export class PhiAgentError extends Error {
    readonly code: PhiErrorCode;
    readonly details?: Record<string, unknown>;

    /** `x instanceof PhiAgentError` also holds for the argument errors (PhiTypeError, PhiRangeError). */
    static override [Symbol.hasInstance](value: unknown): boolean {
        if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
        return this === PhiAgentError && (value instanceof PhiTypeError || value instanceof PhiRangeError);
    }

    constructor(code: PhiErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
        super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
        this.name = "PhiAgentError";
        this.code = code;
        if (options?.details) this.details = options.details;
    }
}

/** A bad argument's type (or a missing one). `instanceof TypeError`; `code` is "ERR_INVALID_ARGUMENT". */
export class PhiTypeError extends TypeError {
    readonly code = "ERR_INVALID_ARGUMENT" as const;
    readonly details?: Record<string, unknown>;
    constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
        super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
        this.name = "TypeError";
        if (options?.details) this.details = options.details;
    }
}

/** A bad argument's value. `instanceof RangeError`; `code` is "ERR_INVALID_ARGUMENT". */
export class PhiRangeError extends RangeError {
    readonly code = "ERR_INVALID_ARGUMENT" as const;
    readonly details?: Record<string, unknown>;
    constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
        super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
        this.name = "RangeError";
        if (options?.details) this.details = options.details;
    }
}

/**
 * Why a GBNF grammar is refused (GrammarError.kind). "syntax", "undefined-rule", "no-root", "empty" and
 * "left-recursion" are refused by llama.cpp's parser too; the others are what it would accept but then abort on,
 * hang on or never finish (README "Typed output").
 */
export type GrammarErrorKind =
    | "syntax" | "undefined-rule" | "no-root" | "empty" | "left-recursion" | "repetition"
    | "hidden-left-recursion" | "limit" | "unfinishable" | "character" | "token";

/**
 * A GBNF grammar that cannot be used: `message` names the line and column, the rule and the fix. A RangeError
 * with code ERR_INVALID_ARGUMENT, thrown before anything reaches llama.cpp.
 */
export class GrammarError extends PhiRangeError {
    readonly kind: GrammarErrorKind;
    readonly line?: number;
    readonly column?: number;
    constructor(kind: GrammarErrorKind, message: string, where: { line?: number; column?: number; rule?: string } = {}) {
        super(message, { details: { kind, ...where } });
        this.name = "GrammarError";
        this.kind = kind;
        if (where.line !== undefined) this.line = where.line;
        if (where.column !== undefined) this.column = where.column;
    }
}

/**
 * A JSON Schema that cannot be turned into a grammar: a keyword this library does not support, a broken or
 * unsatisfiable schema. `pointer` is the JSON pointer of the schema part at fault ("" for the root), `keyword`
 * the keyword. A RangeError with code ERR_INVALID_ARGUMENT, thrown before anything reaches llama.cpp.
 */
export class JsonSchemaError extends PhiRangeError {
    constructor(message: string, readonly pointer: string, readonly keyword?: string) {
        super(message, { details: keyword === undefined ? { pointer } : { pointer, keyword } });
        this.name = "JsonSchemaError";
    }
}

/** Whether `err` is an argument error of this library (PhiTypeError / PhiRangeError, code ERR_INVALID_ARGUMENT). */
export function isArgumentError(err: unknown): err is PhiTypeError | PhiRangeError {
    return err instanceof PhiTypeError || err instanceof PhiRangeError;
}

/** The call is not allowed in the current state (e.g. an agent used before its guild started it). */
export class InvalidStateError extends PhiAgentError {
    constructor(message: string) {
        super("ERR_INVALID_STATE", message);
        this.name = "InvalidStateError";
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

    /**
     * An AbortError for `what` that names the signal's reason in its message; `cause` is the reason, unless a
     * lower-level cause is given (llama.cpp's own ERR_ABORTED, say).
     */
    static fromSignal(what: string, signal: AbortSignal | undefined, cause: unknown = signal?.reason): AbortError {
        const reason: unknown = signal?.reason;
        const why = reason instanceof Error ? reason.message : typeof reason === "string" ? reason : undefined;
        return new AbortError(why ? `${what}: ${why}` : what, cause);
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

/**
 * The messaging backend cannot do what was asked: the server (Redis) is unreachable or refused the connection or
 * the login, or the backend is closed. `details.url` is the server's address with any password masked.
 */
export class MessagingUnavailableError extends PhiAgentError {
    declare readonly code: "ERR_MESSAGING_UNAVAILABLE";
    constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
        super("ERR_MESSAGING_UNAVAILABLE", message, options);
        this.name = "MessagingUnavailableError";
    }
}
