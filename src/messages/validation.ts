/**
 * Turns typebox's `Value.Errors` into messages that name the field, and into the error
 * classes JavaScript users expect: a wrong type is a `TypeError`, a wrong value a `RangeError`
 * (both with `code: "ERR_INVALID_ARGUMENT"`, as Node's own argument errors carry a code).
 */
import { type TSchema } from "@sinclair/typebox";
import { Value, ValueErrorType, type ValueError } from "@sinclair/typebox/value";
import { PhiRangeError, PhiTypeError } from "../errors.js";

/** One problem found in a value, with the field it concerns. */
export interface FieldError {
    /** Dotted path of the field, e.g. "generation_prompt", "stop[2]", "sender.id"; "" for the value itself. */
    path: string;
    /** What is wrong, e.g. "is required (a string)", "must be a number (got string \"hot\")". */
    message: string;
    /** "type": the value has the wrong type or is missing; "range": right type, value not allowed. */
    kind: "type" | "range";
}

const TYPE_NAMES: Partial<Record<ValueErrorType, string>> = {
    [ValueErrorType.String]: "a string",
    [ValueErrorType.Number]: "a number",
    [ValueErrorType.Integer]: "an integer",
    [ValueErrorType.Boolean]: "a boolean",
    [ValueErrorType.Array]: "an array",
    [ValueErrorType.Object]: "an object",
    [ValueErrorType.Null]: "null",
};

/** JSON pointer ("/stop/2") → "stop[2]". */
export function pointerToPath(pointer: string): string {
    if (pointer === "" || pointer === "/") return "";
    let out = "";
    for (const raw of pointer.slice(1).split("/")) {
        const part = raw.replace(/~1/g, "/").replace(/~0/g, "~");
        if (/^\d+$/.test(part)) out += `[${part}]`;
        else if (/^[A-Za-z_$][\w$]*$/.test(part)) out += out === "" ? part : `.${part}`;
        else out += `[${JSON.stringify(part)}]`;
    }
    return out;
}

/** A short, safe rendering of a received value for error messages. */
export function describeValue(value: unknown): string {
    if (value === undefined) return "undefined";
    if (value === null) return "null";
    if (Array.isArray(value)) return `an array of ${value.length}`;
    switch (typeof value) {
        case "string": {
            const shown = value.length > 40 ? `${value.slice(0, 37)}...` : value;
            return `string ${JSON.stringify(shown)}`;
        }
        case "number":
        case "boolean":
        case "bigint":
            return `${typeof value} ${String(value)}${typeof value === "bigint" ? "n" : ""}`;
        case "function":
            return "a function";
        case "symbol":
            return "a symbol";
        default:
            return "an object";
    }
}

function expectedOf(schema: TSchema): string {
    const s = schema as unknown as Record<string, unknown>;
    const custom = s.errorMessage;
    if (typeof custom === "string") return custom;
    if ("const" in s) return JSON.stringify(s.const);
    const kind = s.type;
    if (typeof kind === "string") {
        const names: Record<string, string> = {
            string: "a string", number: "a number", integer: "an integer", boolean: "a boolean",
            array: "an array", object: "an object", null: "null",
        };
        if (names[kind]) return names[kind]!;
    }
    if (Array.isArray(s.anyOf)) {
        return "one of " + (s.anyOf as TSchema[]).map(expectedOf).join(", ");
    }
    return "a valid value";
}

function toFieldError(error: ValueError, requiredPaths: Set<string>): FieldError | undefined {
    const path = pointerToPath(error.path);
    const schema = error.schema;
    const s = schema as unknown as Record<string, unknown>;
    const custom = s.errorMessage;
    const got = describeValue(error.value);
    switch (error.type) {
        case ValueErrorType.ObjectRequiredProperty:
            requiredPaths.add(path);
            return { path, message: `is required (${expectedOf(schema)})`, kind: "type" };
        case ValueErrorType.String:
        case ValueErrorType.Number:
        case ValueErrorType.Boolean:
        case ValueErrorType.Array:
        case ValueErrorType.Object:
        case ValueErrorType.Null:
            if (error.value === undefined && requiredPaths.has(path)) return undefined;
            return { path, message: `must be ${TYPE_NAMES[error.type]} (got ${got})`, kind: "type" };
        case ValueErrorType.Integer:
            if (error.value === undefined && requiredPaths.has(path)) return undefined;
            return {
                path, message: `must be an integer (got ${got})`,
                kind: typeof error.value === "number" ? "range" : "type",
            };
        case ValueErrorType.Union:
        case ValueErrorType.Literal:
        case ValueErrorType.StringPattern:
            if (error.value === undefined && requiredPaths.has(path)) return undefined;
            return {
                path,
                message: typeof custom === "string" ? `must be ${custom} (got ${got})` : `must be ${expectedOf(schema)} (got ${got})`,
                kind: typeof error.value === "string" || typeof error.value === "number" ? "range" : "type",
            };
        case ValueErrorType.NumberMinimum:
        case ValueErrorType.IntegerMinimum:
            return { path, message: `must be >= ${s.minimum} (got ${got})`, kind: "range" };
        case ValueErrorType.NumberMaximum:
        case ValueErrorType.IntegerMaximum:
            return { path, message: `must be <= ${s.maximum} (got ${got})`, kind: "range" };
        case ValueErrorType.NumberExclusiveMinimum:
        case ValueErrorType.IntegerExclusiveMinimum:
            return { path, message: `must be > ${s.exclusiveMinimum} (got ${got})`, kind: "range" };
        case ValueErrorType.NumberExclusiveMaximum:
        case ValueErrorType.IntegerExclusiveMaximum:
            return { path, message: `must be < ${s.exclusiveMaximum} (got ${got})`, kind: "range" };
        case ValueErrorType.StringMinLength: {
            const min = s.minLength;
            return { path, message: min === 1 ? "must not be empty" : `must be at least ${min} characters long (got ${got})`, kind: "range" };
        }
        case ValueErrorType.StringMaxLength:
            return { path, message: `must be at most ${s.maxLength} characters long (got ${String(error.value).length})`, kind: "range" };
        case ValueErrorType.ArrayMinItems:
            return { path, message: `must have at least ${s.minItems} item(s)`, kind: "range" };
        case ValueErrorType.ArrayMaxItems:
            return { path, message: `must have at most ${s.maxItems} item(s) (got ${(error.value as unknown[]).length})`, kind: "range" };
        case ValueErrorType.ObjectAdditionalProperties:
            return { path, message: "is not a known field", kind: "range" };
        default:
            return { path, message: typeof custom === "string" ? `must be ${custom}` : error.message, kind: "type" };
    }
}

/**
 * Every problem of `value` against `schema`, one per field (the first found), in document order.
 * An empty array means the value is valid.
 */
export function fieldErrors(schema: TSchema, value: unknown, limit = 20): FieldError[] {
    const out: FieldError[] = [];
    const seen = new Set<string>();
    const required = new Set<string>();
    for (const error of Value.Errors(schema, value)) {
        const fe = toFieldError(error, required);
        if (!fe || seen.has(fe.path)) continue;
        seen.add(fe.path);
        out.push(fe);
        if (out.length >= limit) break;
    }
    return out;
}

/** "generation_prompt is required (a string); temperature must be >= 0 (got number -1)" */
export function formatFieldErrors(errors: readonly FieldError[]): string {
    return errors.map((e) => (e.path === "" ? `the value ${e.message}` : `${e.path} ${e.message}`)).join("; ");
}

/** A `TypeError` (PhiTypeError) carrying the field errors; `code` is "ERR_INVALID_ARGUMENT". */
export class ValidationTypeError extends PhiTypeError {
    constructor(message: string, readonly errors: readonly FieldError[], readonly what: string) {
        super(message);
        this.name = "ValidationTypeError";
    }
}

/** A `RangeError` (PhiRangeError) carrying the field errors; `code` is "ERR_INVALID_ARGUMENT". */
export class ValidationRangeError extends PhiRangeError {
    constructor(message: string, readonly errors: readonly FieldError[], readonly what: string) {
        super(message);
        this.name = "ValidationRangeError";
    }
}

/** Whether `err` is one of the two validation errors thrown by `assertValid` / `invalid`. */
export function isValidationError(err: unknown): err is ValidationTypeError | ValidationRangeError {
    return err instanceof ValidationTypeError || err instanceof ValidationRangeError;
}

/**
 * The error for `errors` found in `what` (e.g. "GenerationPromptRequest", "PhiAgentProps"):
 * a TypeError when any field has the wrong type or is missing, otherwise a RangeError.
 * `hint` is appended to tell the user what to do.
 */
export function invalid(what: string, errors: readonly FieldError[], hint?: string): ValidationTypeError | ValidationRangeError {
    const message = `Invalid ${what}: ${formatFieldErrors(errors)}${hint ? `. ${hint}` : ""}`;
    return errors.some((e) => e.kind === "type")
        ? new ValidationTypeError(message, errors, what)
        : new ValidationRangeError(message, errors, what);
}

/** Throws `invalid(what, ...)` unless `value` matches `schema`. */
export function assertValid(schema: TSchema, value: unknown, what: string, hint?: string): void {
    if (Value.Check(schema, value)) return;
    const errors = fieldErrors(schema, value);
    throw invalid(what, errors.length > 0 ? errors : [{ path: "", message: "is not valid", kind: "type" }], hint);
}
