/**
 * The message envelope, shaped like RusticAI's `Message` (same field names), so messages can be
 * exchanged with a Python guild as JSON: ids are bare 64-bit integers on the wire and decimal
 * strings in TypeScript (`messageToJSON` / `parseMessage` convert between the two losslessly).
 */
import { Type, type Static } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { GemstoneGenerator, Priority, decodeGemstoneId } from "./ids.js";
import { GENERIC_JSON_FORMAT } from "./format.js";
import { fieldErrors, invalid } from "./validation.js";

/** The topic agents listen to unless told otherwise, as in RusticAI. */
export const DEFAULT_TOPIC = "default_topic";

export const MessageIdSchema = Type.String({
    pattern: "^[0-9]{1,20}$",
    errorMessage: "a message id (a 64-bit unsigned integer as a decimal string)",
    description: "A GemstoneID: priority, time, machine and sequence packed in a 64-bit unsigned integer.",
});

export const AgentTagSchema = Type.Object({
    id: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    name: Type.Optional(Type.Union([Type.String(), Type.Null()])),
});
/** Who sent a message (RusticAI's `AgentTag`). */
export type AgentTag = Static<typeof AgentTagSchema>;

export const MessageSchema = Type.Object({
    id: MessageIdSchema,
    sender: AgentTagSchema,
    topics: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })], {
        errorMessage: "a topic name or a non-empty array of them",
    }),
    recipient_list: Type.Optional(Type.Array(AgentTagSchema)),
    format: Type.String({ minLength: 3 }),
    payload: Type.Record(Type.String(), Type.Unknown(), { errorMessage: "an object" }),
    in_response_to: Type.Optional(Type.Union([MessageIdSchema, Type.Null()], { errorMessage: "a message id or null" })),
    thread: Type.Array(MessageIdSchema),
    conversation_id: Type.Optional(Type.Union([MessageIdSchema, Type.Null()], { errorMessage: "a message id or null" })),
    timestamp: Type.Number({ description: "ms since the Unix epoch (from the id)." }),
    priority: Type.Integer({ minimum: 0, maximum: 7 }),
    is_error_message: Type.Optional(Type.Boolean()),
    topic_published_to: Type.Optional(Type.Union([Type.String(), Type.Null()])),
}, { description: "A message on the guild's bus (RusticAI's Message)." });

type MessageBase = Static<typeof MessageSchema>;
/** A message on the guild's bus. `P` is the payload type. */
export type Message<P = Record<string, unknown>> = Omit<MessageBase, "payload"> & { payload: P };

/** Fields that hold message ids (bare integers on the wire). */
const ID_FIELDS = new Set(["id", "in_response_to", "conversation_id", "thread", "origin_message_id", "origin", "result"]);

const defaultGenerator = new GemstoneGenerator();

export interface CreateMessageInit<P> {
    sender: AgentTag;
    topics: string | string[];
    payload: P;
    format?: string;
    in_response_to?: string | null;
    thread?: string[];
    priority?: Priority;
    recipient_list?: AgentTag[];
    conversation_id?: string | null;
    is_error_message?: boolean;
    /** Id generator to use (one per guild). Default: a process-wide one. */
    generator?: GemstoneGenerator;
}

/**
 * A new message with a fresh id; `timestamp` and `priority` come from the id, and `thread`
 * defaults to `[id]` (a new thread), as in RusticAI.
 */
export function createMessage<P extends object>(init: CreateMessageInit<P>): Message<P> {
    const { id, timestamp, priority } = (init.generator ?? defaultGenerator).next(init.priority ?? Priority.NORMAL);
    const message: Message<P> = {
        id,
        sender: { ...init.sender },
        topics: Array.isArray(init.topics) ? [...init.topics] : init.topics,
        format: init.format ?? GENERIC_JSON_FORMAT,
        payload: init.payload,
        in_response_to: init.in_response_to ?? null,
        thread: init.thread && init.thread.length > 0 ? [...init.thread] : [id],
        timestamp,
        priority,
    };
    if (init.recipient_list) message.recipient_list = init.recipient_list.map((t) => ({ ...t }));
    if (init.conversation_id !== undefined) message.conversation_id = init.conversation_id;
    if (init.is_error_message) message.is_error_message = true;
    return message;
}

/** The topics of a message as an array. */
export function topicsOf(message: Pick<Message<unknown>, "topics">): string[] {
    return Array.isArray(message.topics) ? [...message.topics] : [message.topics];
}

/** Whether `value` is a valid message envelope (ids as decimal strings). */
export function isMessage(value: unknown): value is Message {
    return Value.Check(MessageSchema, value);
}

/**
 * Reads a message from JSON text (ids may be bare 64-bit integers, as Python writes them) or from
 * an object. Ids given as numbers are turned into decimal strings (numbers above 2^53 in an object
 * have already lost digits: pass the JSON text instead). RusticAI's computed fields
 * (`current_thread_id`, `root_thread_id`) are dropped; `timestamp` and `priority` default from the
 * id. Throws a TypeError/RangeError naming the field when the envelope is invalid.
 */
export function parseMessage(input: string | object): Message {
    let value: unknown;
    if (typeof input === "string") {
        try {
            value = JSON.parse(quoteLongIntegers(input));
        } catch (err) {
            throw Object.assign(new SyntaxError(`Message JSON could not be parsed: ${(err as Error).message}`), { cause: err });
        }
    } else {
        value = structuredClone(input);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
        throw invalid("Message", [{ path: "", message: "must be an object", kind: "type" }]);
    }
    const obj = value as Record<string, unknown>;
    for (const key of ["id", "in_response_to", "conversation_id"]) if (key in obj) obj[key] = idToString(obj[key], key);
    if (Array.isArray(obj.thread)) obj.thread = obj.thread.map((t, i) => idToString(t, `thread[${i}]`));
    delete obj.current_thread_id;
    delete obj.root_thread_id;
    if (obj.thread === undefined && typeof obj.id === "string") obj.thread = [obj.id];
    if (obj.in_response_to === undefined) obj.in_response_to = null;
    if (typeof obj.id === "string" && /^\d{1,20}$/.test(obj.id)) {
        const parts = decodeGemstoneId(obj.id);
        if (obj.timestamp === undefined) obj.timestamp = parts.timestamp;
        if (obj.priority === undefined) obj.priority = parts.priority;
    }
    if (obj.format === undefined) obj.format = GENERIC_JSON_FORMAT;
    if (!Value.Check(MessageSchema, obj)) {
        throw invalid("Message", fieldErrors(MessageSchema, obj));
    }
    return obj as Message;
}

function idToString(value: unknown, field: string): unknown {
    if (typeof value === "number") {
        if (!Number.isSafeInteger(value) || value < 0) {
            throw invalid("Message", [{
                path: field, kind: "range",
                message: `is the number ${value}, which has lost digits (ids are 64-bit): pass the message as JSON text or the id as a decimal string`,
            }]);
        }
        return String(value);
    }
    if (typeof value === "bigint") return value.toString();
    return value;
}

/**
 * The message as JSON, with ids as bare integers like RusticAI's `Message.to_json()`, so a Python
 * guild can read it. `space` is passed to JSON.stringify.
 */
export function messageToJSON(message: Message<unknown>, space?: number | string): string {
    const marker = "\u0000id:";
    const text = JSON.stringify(message, function (this: unknown, key: string, value: unknown) {
        if (this === message && ID_FIELDS.has(key)) {
            if (typeof value === "string" && /^\d{1,20}$/.test(value)) return marker + value;
            if (Array.isArray(value)) return value.map((v) => (typeof v === "string" && /^\d{1,20}$/.test(v) ? marker + v : v));
        }
        return value;
    }, space);
    return text.replace(/"\\u0000id:(\d{1,20})"/g, "$1");
}

/**
 * Wraps integer literals of id fields (`id`, `in_response_to`, `thread`, ... outside `payload`)
 * in quotes, so JSON.parse keeps all 64 bits of them. Everything else is left as it is.
 */
function quoteLongIntegers(text: string): string {
    let out = "";
    let i = 0;
    const n = text.length;
    // containers open around the cursor, with the key each sits under
    const stack: { array: boolean; key: string | null }[] = [];
    let lastKey: string | null = null;
    const inPayload = () => stack.some((c) => c.key === "payload");
    while (i < n) {
        const c = text[i]!;
        if (c === "\"") {
            let j = i + 1;
            while (j < n && text[j] !== "\"") j += text[j] === "\\" ? 2 : 1;
            const literal = text.slice(i, j + 1);
            out += literal;
            i = j + 1;
            let k = i;
            while (k < n && /\s/.test(text[k]!)) k++;
            if (text[k] === ":" && stack.length > 0 && !stack[stack.length - 1]!.array) {
                try { lastKey = JSON.parse(literal) as string; } catch { lastKey = null; }
            }
        } else if (c === "{" || c === "[") {
            const parent = stack[stack.length - 1];
            stack.push({ array: c === "[", key: parent === undefined ? null : parent.array ? parent.key : lastKey });
            out += c;
            i++;
        } else if (c === "}" || c === "]") {
            stack.pop();
            out += c;
            i++;
        } else if ((c >= "0" && c <= "9") || c === "-") {
            let j = i + 1;
            while (j < n && /[0-9.eE+-]/.test(text[j]!)) j++;
            const literal = text.slice(i, j);
            const top = stack[stack.length - 1];
            const key = top === undefined ? null : top.array ? top.key : lastKey;
            const isId = key !== null && ID_FIELDS.has(key) && !inPayload();
            out += isId && /^\d{16,}$/.test(literal) ? `"${literal}"` : literal;
            i = j;
        } else {
            out += c;
            i++;
        }
    }
    return out;
}
