/**
 * A message format: a typebox schema plus RusticAI's qualified name for it, with helpers to create,
 * check and parse payloads. `create()` tags the payload (with a non-enumerable symbol, invisible to
 * JSON) so `client.publish(topic, payload)` and `ctx.send(payload)` know its format, like Python's
 * pydantic classes do.
 */
import { type Static, type TObject } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { assertValid, fieldErrors, type FieldError, invalid } from "./validation.js";

const FORMAT_TAG: unique symbol = Symbol.for("llm-phi-agent.messageFormat");

/** RusticAI's format name for payloads without a declared model (`MessageConstants.RAW_JSON_FORMAT`). */
export const GENERIC_JSON_FORMAT = "generic_json";

export interface MessageFormat<S extends TObject = TObject> {
    /** The qualified name carried in `Message.format`, e.g. "rustic_ai.core.agents.commons.message_formats.GenerationPromptRequest". */
    readonly format: string;
    /** The short name, e.g. "GenerationPromptRequest". */
    readonly name: string;
    /** The typebox schema of the payload. */
    readonly schema: S;
    /** The payload's JSON Schema (plain JSON, with `$id` set to the format name). */
    readonly jsonSchema: Record<string, unknown>;
    /** Validates `data` and returns a copy tagged with this format. Throws a TypeError/RangeError naming the field. */
    create(data: Static<S>): Static<S>;
    /** Whether `value` is a valid payload of this format. */
    check(value: unknown): value is Static<S>;
    /** The problems of `value` as a payload of this format, one per field; empty when valid. */
    errors(value: unknown): FieldError[];
    /** Returns `value` typed when valid, else throws like `create`. */
    parse(value: unknown): Static<S>;
}

/** Defines a format; `format` is the qualified name used on the wire. */
export function defineMessageFormat<S extends TObject>(format: string, schema: S): MessageFormat<S> {
    const name = format.slice(format.lastIndexOf(".") + 1);
    const jsonSchema = { $id: format, title: name, ...(JSON.parse(JSON.stringify(schema)) as Record<string, unknown>) };
    const parse = (value: unknown): Static<S> => {
        assertValid(schema, value, name);
        return value as Static<S>;
    };
    const def: MessageFormat<S> = {
        format,
        name,
        schema,
        jsonSchema,
        create(data) {
            if (typeof data !== "object" || data === null || Array.isArray(data)) {
                throw invalid(name, [{ path: "", message: "must be an object", kind: "type" }],
                    `Pass the fields, e.g. ${name}.create({ ... })`);
            }
            parse(data);
            return tagFormat({ ...data }, format);
        },
        check: (value): value is Static<S> => Value.Check(schema, value),
        errors: (value) => fieldErrors(schema, value),
        parse,
    };
    return Object.freeze(def);
}

/** Marks `payload` as being of `format` (returns the same object). */
export function tagFormat<T extends object>(payload: T, format: string): T {
    Object.defineProperty(payload, FORMAT_TAG, { value: format, enumerable: false, configurable: true });
    return payload;
}

/** The format a payload was created with (`X.create()` / `tagFormat`), if any. */
export function formatOf(payload: unknown): string | undefined {
    if (typeof payload !== "object" || payload === null) return undefined;
    const tag = (payload as { [FORMAT_TAG]?: unknown })[FORMAT_TAG];
    return typeof tag === "string" ? tag : undefined;
}
