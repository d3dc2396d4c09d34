/**
 * RusticAI's `Message` (core/messaging/core/message.py) exactly as Python writes and reads it.
 *
 * - `parseWireMessage(text)` reads a message as `Message.from_json` does (pydantic, lax mode): the same fields
 *   are required, the same defaults filled in, the same values coerced (`"12"` → 12 in an int field), strings of
 *   the envelope, payload and session_state stripped of surrounding whitespace, unknown top-level keys rejected,
 *   `id`/`priority`/`timestamp`/`current_thread_id`/`root_thread_id` dropped and the id read back through
 *   GemstoneID. It never throws: what Python would reject comes back as `{ ok: false, error }`.
 * - `serializeWireMessage(message)` writes it as `Message.to_json()` does, byte for byte: field order, compact
 *   separators, nested models with all their fields, `timestamp` as a float. It validates first and throws
 *   (WireMessageError) rather than write a message Python could not read.
 *
 * Every id (`id`, `in_response_to`, `thread`, `conversation_id`, `message_history[].origin/result`,
 * `forward_header.origin_message_id`) is a `bigint`; they are mostly ≥ 2^63.
 */
import { PhiAgentError } from "../../errors.js";
import { GENERIC_JSON_FORMAT } from "../format.js";
import { formatFieldErrors, type FieldError } from "../validation.js";
import { GemstoneIdGenerator, Priority, gemstoneParts, normalizeGemstoneId } from "./gemstone.js";
import { clonePyJson, copyJsonMarks, isMarkedFloat, markFloat, parsePyJson, stringifyPyJson, type PyJson, type PyJsonObject } from "./json.js";

/** An int field other than an id: a number when it fits 2^53, else a bigint (Python ints have no limit). */
export type WireInt = number | bigint;

export interface WireAgentTag { id: string | null; name: string | null }

export type WireProcessStatus = "running" | "error" | "completed";
export const WIRE_PROCESS_STATUSES: readonly WireProcessStatus[] = ["running", "error", "completed"];

export interface WireProcessEntry {
    agent: WireAgentTag;
    origin: bigint;
    result: bigint;
    processor: string;
    from_topic: string | null;
    to_topics: string[];
    reason: string[] | null;
}

export interface WireForwardHeader { origin_message_id: bigint; on_behalf_of: WireAgentTag }

export interface WireRoutingOrigin {
    origin_sender: WireAgentTag | null;
    origin_topic: string | null;
    origin_message_format: string | null;
}

export interface WireRoutingDestination {
    topics: string | string[] | null;
    recipient_list: WireAgentTag[];
    priority: Priority | null;
}

export type WireTransformationStyle = "simple" | "content_based_router";

export interface WirePayloadTransformer {
    style: WireTransformationStyle;
    output_format: string | null;
    expression_type: string | null;
    expression: string | null;
}

export interface WireFunctionalTransformer {
    style: WireTransformationStyle;
    expression_type: string | null;
    handler: string;
}

export type WireStateUpdateFormat = "json-patch" | "json-merge-patch";

export interface WireStateTransformer {
    expression_type: string | null;
    update_format: WireStateUpdateFormat;
    state_update: string | null;
}

export interface WireRoutingRule {
    agent: WireAgentTag | null;
    agent_type: string | null;
    method_name: string | null;
    origin_filter: WireRoutingOrigin | null;
    message_format: string | null;
    destination: WireRoutingDestination | null;
    mark_forwarded: boolean;
    /** -1: every time; otherwise how many more times the rule applies. */
    route_times: WireInt;
    transformer: WirePayloadTransformer | WireFunctionalTransformer | null;
    agent_state_update: WireStateTransformer | null;
    guild_state_update: WireStateTransformer | null;
    process_status: WireProcessStatus | null;
    reason: string | null;
}

export interface WireRoutingSlip { steps: WireRoutingRule[] }

export interface WireGuildStackEntry { guild_id: string; saga_id: string | null }

/** A RusticAI Message, every field present (Python's defaults filled in), ids as bigints. */
export interface WireMessage {
    /** The GemstoneID; `priority` and `timestamp` on the wire are read from it. */
    id: bigint;
    sender: WireAgentTag;
    /** Bare topic names; a string stays a string, a list a list. */
    topics: string | string[];
    recipient_list: WireAgentTag[];
    /** At least one key. */
    payload: PyJsonObject;
    format: string;
    in_response_to: bigint | null;
    thread: bigint[];
    conversation_id: bigint | null;
    forward_header: WireForwardHeader | null;
    routing_slip: WireRoutingSlip | null;
    message_history: WireProcessEntry[];
    ttl: WireInt | null;
    is_error_message: boolean;
    traceparent: string | null;
    session_state: PyJsonObject | null;
    topic_published_to: string | null;
    enrich_with_history: WireInt | null;
    process_status: WireProcessStatus | null;
    origin_guild_stack: WireGuildStackEntry[];
}

/** The top-level keys Python writes, in its order. */
export const WIRE_MESSAGE_KEYS = [
    "sender", "topics", "recipient_list", "payload", "format", "in_response_to", "thread", "conversation_id",
    "forward_header", "routing_slip", "message_history", "ttl", "is_error_message", "traceparent", "session_state",
    "topic_published_to", "enrich_with_history", "process_status", "origin_guild_stack", "id", "priority", "timestamp",
] as const;

/** Keys Python drops before validating (computed from the id or the thread). */
const COMPUTED_KEYS = new Set(["id", "priority", "timestamp", "current_thread_id", "root_thread_id"]);

/**
 * A message Python's `Message` model would reject (or one we refuse to write because Python would):
 * `errors` names each field, `text` is the received JSON when there was one.
 */
export class WireMessageError extends PhiAgentError {
    declare readonly code: "ERR_INVALID_MESSAGE";
    readonly errors: readonly FieldError[];
    /** "json": not JSON; "message": JSON, but not a valid Message. */
    readonly kind: "json" | "message";
    constructor(message: string, errors: readonly FieldError[], kind: "json" | "message", options?: { cause?: unknown }) {
        super("ERR_INVALID_MESSAGE", message, { ...(options?.cause !== undefined ? { cause: options.cause } : {}), details: { errors } });
        this.name = "WireMessageError";
        this.errors = errors;
        this.kind = kind;
    }
    /** The error type name Python would report (`JSONDecodeError` / `ValidationError`), as used in dead letters. */
    get pythonErrorType(): string {
        return this.kind === "json" ? "JSONDecodeError" : "ValidationError";
    }
}

export type WireParseResult =
    | { ok: true; message: WireMessage }
    /** `value`: the parsed JSON when the text was JSON (for dead letters). */
    | { ok: false; error: WireMessageError; value?: PyJson };

// ---------------------------------------------------------------- reading (pydantic lax mode)

/** Unicode White_Space, what pydantic's `str_strip_whitespace` (Rust `str::trim`) removes. */
const WS = "\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const TRIM = new RegExp(`^[${WS}]+|[${WS}]+$`, "g");
const strip = (s: string): string => s.replace(TRIM, "");

class Checker {
    readonly errors: FieldError[] = [];

    fail(path: string, message: string, kind: "type" | "range" = "type"): undefined {
        if (this.errors.length < 50) this.errors.push({ path, message, kind });
        return undefined;
    }

    str(v: unknown, path: string, opts: { strip?: boolean; min?: number } = {}): string | undefined {
        if (typeof v !== "string") return this.fail(path, `must be a string (got ${describe(v)})`);
        const s = opts.strip ? strip(v) : v;
        if (opts.min !== undefined && [...s].length < opts.min) {
            return this.fail(path, `must be at least ${opts.min} character(s) long (got ${JSON.stringify(s)})`, "range");
        }
        return s;
    }

    optStr(v: unknown, path: string, opts: { strip?: boolean } = {}): string | null | undefined {
        return v === null || v === undefined ? null : this.str(v, path, opts);
    }

    /** Python's lax int: ints, integral floats, bools, and strings of digits (with `_` separators). */
    int(v: unknown, path: string): bigint | undefined {
        if (typeof v === "bigint") return v;
        if (typeof v === "boolean") return v ? 1n : 0n;
        if (typeof v === "number") {
            if (!Number.isFinite(v)) return this.fail(path, `must be an integer (got ${v})`, "range");
            if (!Number.isInteger(v)) return this.fail(path, `must be an integer, not a number with a fraction (got ${v})`, "range");
            return BigInt(v);
        }
        if (typeof v === "string") {
            const s = strip(v);
            if (/^[+-]?\d+(_\d+)*$/.test(s)) return BigInt(s.replace(/_/g, ""));
            return this.fail(path, `must be an integer (got ${describe(v)})`);
        }
        return this.fail(path, `must be an integer (got ${describe(v)})`);
    }

    smallInt(v: unknown, path: string): WireInt | undefined {
        const n = this.int(v, path);
        if (n === undefined) return undefined;
        return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
    }

    optSmallInt(v: unknown, path: string): WireInt | null | undefined {
        return v === null ? null : this.smallInt(v, path);
    }

    /** A message id: an int that GemstoneID can read (low 64 bits, machine field ≤ 255). */
    id(v: unknown, path: string): bigint | undefined {
        const n = this.int(v, path);
        if (n === undefined) return undefined;
        return n;
    }

    optId(v: unknown, path: string): bigint | null | undefined {
        return v === null || v === undefined ? null : this.id(v, path);
    }

    bool(v: unknown, path: string): boolean | undefined {
        if (typeof v === "boolean") return v;
        if (v === 0 || v === 1 || v === 0n || v === 1n) return v === 1 || v === 1n;
        if (typeof v === "string") {
            const s = v.toLowerCase();
            if (["1", "on", "t", "true", "y", "yes"].includes(s)) return true;
            if (["0", "off", "f", "false", "n", "no"].includes(s)) return false;
        }
        return this.fail(path, `must be a boolean (got ${describe(v)})`);
    }

    list<T>(v: unknown, path: string, item: (x: unknown, p: string) => T | undefined): T[] | undefined {
        if (!Array.isArray(v)) return this.fail(path, `must be a list (got ${describe(v)})`);
        const before = this.errors.length;
        const out = v.map((x, i) => item(x, `${path}[${i}]`));
        return this.errors.length === before ? (out as T[]) : undefined;
    }

    obj(v: unknown, path: string): Record<string, unknown> | undefined {
        if (!isPlainObject(v)) return this.fail(path, `must be an object (got ${describe(v)})`);
        return v;
    }

    /** `AgentTag` (extra keys ignored, as pydantic's default does). */
    tag(v: unknown, path: string): WireAgentTag | undefined {
        const o = this.obj(v, path);
        if (!o) return undefined;
        const id = this.optStr(o.id, `${path}.id`);
        const name = this.optStr(o.name, `${path}.name`);
        return id === undefined || name === undefined ? undefined : { id, name };
    }

    optTag(v: unknown, path: string): WireAgentTag | null | undefined {
        return v === null || v === undefined ? null : this.tag(v, path);
    }

    topics(v: unknown, path: string, opts: { strip: boolean; min1: boolean }): string | string[] | undefined {
        if (typeof v === "string") {
            const s = opts.strip ? strip(v) : v;
            if (opts.min1 && s.length === 0) return this.fail(path, "must not be empty", "range");
            return s;
        }
        if (Array.isArray(v)) {
            const list = this.list(v, path, (x, p) => this.str(x, p, { strip: opts.strip }));
            if (list && opts.min1 && list.length === 0) return this.fail(path, "must have at least 1 topic", "range");
            return list;
        }
        return this.fail(path, `must be a topic name or a list of them (got ${describe(v)})`);
    }

    /** pydantic's `JsonValue` under `str_strip_whitespace`: every string and key stripped; floats keep their marks. */
    json(v: unknown, path: string, stripStrings: boolean): PyJson | undefined {
        switch (typeof v) {
            case "string": return stripStrings ? strip(v) : v;
            case "boolean": case "bigint": return v;
            case "number":
                if (!Number.isFinite(v)) return this.fail(path, `must be a finite number (got ${v})`, "range");
                return v;
            case "object": {
                if (v === null) return null;
                if (Array.isArray(v)) {
                    const out: PyJson[] = [];
                    v.forEach((x, i) => {
                        if (x === undefined) { this.fail(`${path}[${i}]`, "is undefined (use null)"); return; }
                        const r = this.json(x, `${path}[${i}]`, stripStrings);
                        if (r !== undefined) out.push(r);
                    });
                    copyJsonMarks(v, out);
                    return out;
                }
                if (!isPlainObject(v)) return this.fail(path, `must be plain JSON data (got ${describe(v)})`);
                return this.jsonObject(v, path, stripStrings);
            }
            default:
                return this.fail(path, `must be JSON data (got ${describe(v)})`);
        }
    }

    jsonObject(v: Record<string, unknown>, path: string, stripStrings: boolean): PyJsonObject | undefined {
        const key = stripStrings ? strip : (k: string) => k;
        const out: PyJsonObject = {};
        for (const [k, x] of Object.entries(v)) {
            if (x === undefined) continue;
            const r = this.json(x, childPath(path, k), stripStrings);
            if (r !== undefined) out[key(k)] = r;
        }
        copyJsonMarks(v, out, key);
        return out;
    }
}

function childPath(path: string, key: string): string {
    return /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
    const proto = Object.getPrototypeOf(v);
    return proto === Object.prototype || proto === null;
}

function describe(v: unknown): string {
    if (v === null) return "null";
    if (v === undefined) return "nothing";
    if (Array.isArray(v)) return "a list";
    if (typeof v === "string") return `string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 37)}...` : v)}`;
    if (typeof v === "object") return "an object";
    return `${typeof v} ${String(v)}`;
}

function processStatus(c: Checker, v: unknown, path: string): WireProcessStatus | null | undefined {
    if (v === null || v === undefined) return null;
    if (typeof v === "string" && (WIRE_PROCESS_STATUSES as readonly string[]).includes(v)) return v as WireProcessStatus;
    return c.fail(path, `must be one of "running", "error", "completed" or null (got ${describe(v)})`, "range");
}

function processEntry(c: Checker, v: unknown, path: string): WireProcessEntry | undefined {
    const o = c.obj(v, path);
    if (!o) return undefined;
    const before = c.errors.length;
    const agent = o.agent === undefined ? c.fail(`${path}.agent`, "is required (an AgentTag)") : c.tag(o.agent, `${path}.agent`);
    const origin = o.origin === undefined ? c.fail(`${path}.origin`, "is required (a message id)") : c.id(o.origin, `${path}.origin`);
    const result = o.result === undefined ? c.fail(`${path}.result`, "is required (a message id)") : c.id(o.result, `${path}.result`);
    const processor = o.processor === undefined ? c.fail(`${path}.processor`, "is required (a string)") : c.str(o.processor, `${path}.processor`);
    const from_topic = c.optStr(o.from_topic, `${path}.from_topic`);
    const to_topics = o.to_topics === undefined ? [] : c.list(o.to_topics, `${path}.to_topics`, (x, p) => c.str(x, p));
    const reason = o.reason === null || o.reason === undefined ? null : c.list(o.reason, `${path}.reason`, (x, p) => c.str(x, p));
    if (c.errors.length !== before) return undefined;
    return { agent: agent!, origin: origin!, result: result!, processor: processor!, from_topic: from_topic!, to_topics: to_topics!, reason: reason! };
}

function forwardHeader(c: Checker, v: unknown, path: string): WireForwardHeader | null | undefined {
    if (v === null || v === undefined) return null;
    const o = c.obj(v, path);
    if (!o) return undefined;
    const before = c.errors.length;
    const id = o.origin_message_id === undefined ? c.fail(`${path}.origin_message_id`, "is required (a message id)") : c.id(o.origin_message_id, `${path}.origin_message_id`);
    const tag = o.on_behalf_of === undefined ? c.fail(`${path}.on_behalf_of`, "is required (an AgentTag)") : c.tag(o.on_behalf_of, `${path}.on_behalf_of`);
    return c.errors.length === before ? { origin_message_id: id!, on_behalf_of: tag! } : undefined;
}

function style(c: Checker, v: unknown, path: string): WireTransformationStyle | undefined {
    if (v === undefined) return "simple";
    if (v === "simple" || v === "content_based_router") return v;
    return c.fail(path, `must be "simple" or "content_based_router" (got ${describe(v)})`, "range");
}

const PAYLOAD_TRANSFORMER_KEYS = ["style", "output_format", "expression_type", "expression"];
const FUNCTIONAL_TRANSFORMER_KEYS = ["style", "expression_type", "handler"];

function transformer(c: Checker, v: unknown, path: string): WirePayloadTransformer | WireFunctionalTransformer | null | undefined {
    if (v === null || v === undefined) return null;
    const o = c.obj(v, path);
    if (!o) return undefined;
    // pydantic's smart union: the member that validates with the most fields set wins; ties go to the first
    const asPayload = (): WirePayloadTransformer | undefined => {
        const t = new Checker();
        const r = {
            style: style(t, o.style, `${path}.style`)!,
            output_format: o.output_format === undefined ? GENERIC_JSON_FORMAT : t.optStr(o.output_format, `${path}.output_format`)!,
            expression_type: o.expression_type === undefined ? "jsonata" : t.optStr(o.expression_type, `${path}.expression_type`)!,
            expression: t.optStr(o.expression, `${path}.expression`)!,
        };
        return t.errors.length === 0 ? r : (payloadErrors = t.errors, undefined);
    };
    const asFunctional = (): WireFunctionalTransformer | undefined => {
        const t = new Checker();
        const handler = o.handler === undefined ? t.fail(`${path}.handler`, "is required (a string)") : t.str(o.handler, `${path}.handler`);
        const r = {
            style: style(t, o.style, `${path}.style`)!,
            expression_type: o.expression_type === undefined ? "jsonata" : t.optStr(o.expression_type, `${path}.expression_type`)!,
            handler: handler!,
        };
        return t.errors.length === 0 ? r : undefined;
    };
    let payloadErrors: FieldError[] = [];
    const p = asPayload();
    const f = asFunctional();
    const setCount = (keys: string[]) => keys.filter((k) => k in o).length;
    if (p && f) return setCount(FUNCTIONAL_TRANSFORMER_KEYS) > setCount(PAYLOAD_TRANSFORMER_KEYS) ? f : p;
    if (p) return p;
    if (f) return f;
    for (const e of payloadErrors) c.fail(e.path, e.message, e.kind);
    if (payloadErrors.length === 0) c.fail(path, "must be a PayloadTransformer or a FunctionalTransformer");
    return undefined;
}

function stateTransformer(c: Checker, v: unknown, path: string): WireStateTransformer | null | undefined {
    if (v === null || v === undefined) return null;
    const o = c.obj(v, path);
    if (!o) return undefined;
    const before = c.errors.length;
    let update_format: WireStateUpdateFormat | undefined = "json-merge-patch";
    if (o.update_format !== undefined) {
        if (o.update_format === "json-patch" || o.update_format === "json-merge-patch") update_format = o.update_format;
        else update_format = c.fail(`${path}.update_format`, `must be "json-patch" or "json-merge-patch" (got ${describe(o.update_format)})`, "range");
    }
    const r = {
        expression_type: o.expression_type === undefined ? "jsonata" : c.optStr(o.expression_type, `${path}.expression_type`)!,
        update_format: update_format!,
        state_update: c.optStr(o.state_update, `${path}.state_update`)!,
    };
    return c.errors.length === before ? r : undefined;
}

function routingRule(c: Checker, v: unknown, path: string): WireRoutingRule | undefined {
    const o = c.obj(v, path);
    if (!o) return undefined;
    const truthy = (x: unknown) => !(x === undefined || x === null || x === "" || x === false || x === 0 ||
        (Array.isArray(x) && x.length === 0) || (isPlainObject(x) && Object.keys(x).length === 0));
    if (!truthy(o.agent) && !truthy(o.agent_type)) {
        return c.fail(path, "needs agent or agent_type (Either agent or agent_type must be provided for a routing rule)", "range");
    }
    const before = c.errors.length;
    let origin_filter: WireRoutingOrigin | null | undefined = null;
    if (o.origin_filter !== undefined && o.origin_filter !== null) {
        const f = c.obj(o.origin_filter, `${path}.origin_filter`);
        if (f) {
            origin_filter = {
                origin_sender: c.optTag(f.origin_sender, `${path}.origin_filter.origin_sender`)!,
                origin_topic: c.optStr(f.origin_topic, `${path}.origin_filter.origin_topic`)!,
                origin_message_format: c.optStr(f.origin_message_format, `${path}.origin_filter.origin_message_format`)!,
            };
        }
    }
    let destination: WireRoutingDestination | null | undefined = null;
    if (o.destination !== undefined && o.destination !== null) {
        const d = c.obj(o.destination, `${path}.destination`);
        if (d) {
            const dp = `${path}.destination`;
            const topics = d.topics === undefined || d.topics === null ? null : c.topics(d.topics, `${dp}.topics`, { strip: false, min1: false });
            const recipient_list = d.recipient_list === undefined ? [] : c.list(d.recipient_list, `${dp}.recipient_list`, (x, p) => c.tag(x, p));
            let priority: Priority | null | undefined = null;
            if (d.priority !== undefined && d.priority !== null) {
                const n = c.smallInt(d.priority, `${dp}.priority`);
                if (n !== undefined) {
                    priority = typeof n === "number" && n >= 0 && n <= 7 ? (n as Priority)
                        : c.fail(`${dp}.priority`, `must be a priority from 0 (URGENT) to 7 (LOWEST) (got ${String(n)})`, "range");
                }
            }
            destination = { topics: topics!, recipient_list: recipient_list!, priority: priority! };
        }
    }
    const rule: WireRoutingRule = {
        agent: c.optTag(o.agent, `${path}.agent`)!,
        agent_type: c.optStr(o.agent_type, `${path}.agent_type`)!,
        method_name: c.optStr(o.method_name, `${path}.method_name`)!,
        origin_filter: origin_filter!,
        message_format: c.optStr(o.message_format, `${path}.message_format`)!,
        destination: destination!,
        mark_forwarded: o.mark_forwarded === undefined ? false : c.bool(o.mark_forwarded, `${path}.mark_forwarded`)!,
        route_times: o.route_times === undefined ? 1 : c.smallInt(o.route_times, `${path}.route_times`)!,
        transformer: transformer(c, o.transformer, `${path}.transformer`)!,
        agent_state_update: stateTransformer(c, o.agent_state_update, `${path}.agent_state_update`)!,
        guild_state_update: stateTransformer(c, o.guild_state_update, `${path}.guild_state_update`)!,
        process_status: processStatus(c, o.process_status, `${path}.process_status`)!,
        reason: c.optStr(o.reason, `${path}.reason`)!,
    };
    return c.errors.length === before ? rule : undefined;
}

function routingSlip(c: Checker, v: unknown, path: string): WireRoutingSlip | null | undefined {
    if (v === null || v === undefined) return null;
    const o = c.obj(v, path);
    if (!o) return undefined;
    const steps = o.steps === undefined ? [] : c.list(o.steps, `${path}.steps`, (x, p) => routingRule(c, x, p));
    return steps === undefined ? undefined : { steps };
}

function guildStackEntry(c: Checker, v: unknown, path: string): WireGuildStackEntry | undefined {
    const o = c.obj(v, path);
    if (!o) return undefined;
    const before = c.errors.length;
    const guild_id = o.guild_id === undefined ? c.fail(`${path}.guild_id`, "is required (a string)") : c.str(o.guild_id, `${path}.guild_id`);
    const saga_id = c.optStr(o.saga_id, `${path}.saga_id`);
    return c.errors.length === before ? { guild_id: guild_id!, saga_id: saga_id! } : undefined;
}

const KNOWN_KEYS = new Set<string>(WIRE_MESSAGE_KEYS);

/**
 * Validates a parsed message dict as `Message._from_dict` does (`id` required; computed keys dropped; unknown
 * keys rejected) and returns it with Python's defaults filled in.
 */
export function validateWireMessage(value: unknown): { message: WireMessage; errors: [] } | { message?: undefined; errors: FieldError[] } {
    const c = new Checker();
    if (!isPlainObject(value)) return { errors: [{ path: "", message: `must be a JSON object (got ${describe(value)})`, kind: "type" }] };
    const o = value;
    if (!("id" in o) || o.id === undefined) return { errors: [{ path: "id", message: "is required (Message JSON must contain an id field)", kind: "type" }] };
    let id: bigint | undefined;
    if (typeof o.id !== "bigint" && (typeof o.id !== "number" || !Number.isInteger(o.id) || isMarkedFloat(o, "id"))) {
        // Python shifts the raw value (`id >> 61`): only an int works there (not a string, not even 1.0)
        c.fail("id", `must be an integer (got ${typeof o.id === "number" ? `the float ${o.id}` : describe(o.id)})`);
    } else {
        try {
            id = normalizeGemstoneId(BigInt(o.id as number | bigint));
        } catch (err) {
            c.fail("id", (err as Error).message, "range");
        }
    }
    for (const k of Object.keys(o)) {
        if (!KNOWN_KEYS.has(k) && !COMPUTED_KEYS.has(k) && o[k] !== undefined) c.fail(k, "is not a field of Message (extra keys are forbidden)", "range");
    }
    const req = (k: string, what: string) => (o[k] === undefined ? c.fail(k, `is required (${what})`) : o[k]);
    const sender = req("sender", "an AgentTag") === undefined ? undefined : c.tag(o.sender, "sender");
    const topics = req("topics", "a topic name or a list of them") === undefined ? undefined : c.topics(o.topics, "topics", { strip: true, min1: true });
    const recipient_list = o.recipient_list === undefined ? [] : c.list(o.recipient_list, "recipient_list", (x, p) => c.tag(x, p));
    let payload: PyJsonObject | undefined;
    if (req("payload", "an object with at least one key") !== undefined) {
        const p = c.obj(o.payload, "payload");
        if (p) {
            payload = c.jsonObject(p, "payload", true);
            if (payload && Object.keys(payload).length === 0) payload = c.fail("payload", "must have at least one key", "range");
        }
    }
    const format = o.format === undefined ? GENERIC_JSON_FORMAT : c.str(o.format, "format", { strip: true, min: 3 });
    const in_response_to = c.optId(o.in_response_to, "in_response_to");
    const thread = o.thread === undefined ? [] : c.list(o.thread, "thread", (x, p) => c.id(x, p));
    const conversation_id = c.optId(o.conversation_id, "conversation_id");
    const forward_header = forwardHeader(c, o.forward_header, "forward_header");
    const routing_slip = routingSlip(c, o.routing_slip, "routing_slip");
    const message_history = o.message_history === undefined ? [] : c.list(o.message_history, "message_history", (x, p) => processEntry(c, x, p));
    const ttl = o.ttl === undefined ? null : c.optSmallInt(o.ttl, "ttl");
    const is_error_message = o.is_error_message === undefined ? false : c.bool(o.is_error_message, "is_error_message");
    const traceparent = c.optStr(o.traceparent, "traceparent", { strip: true });
    let session_state: PyJsonObject | null | undefined = null;
    if (o.session_state !== undefined && o.session_state !== null) {
        const s = c.obj(o.session_state, "session_state");
        if (s) session_state = c.jsonObject(s, "session_state", true);
    }
    const topic_published_to = c.optStr(o.topic_published_to, "topic_published_to", { strip: true });
    const enrich_with_history = o.enrich_with_history === undefined ? 0 : c.optSmallInt(o.enrich_with_history, "enrich_with_history");
    const process_status = processStatus(c, o.process_status, "process_status");
    const origin_guild_stack = o.origin_guild_stack === undefined ? [] : c.list(o.origin_guild_stack, "origin_guild_stack", (x, p) => guildStackEntry(c, x, p));
    if (c.errors.length > 0) return { errors: c.errors };
    const message: WireMessage = {
        id: id!, sender: sender!, topics: topics!, recipient_list: recipient_list!, payload: payload!, format: format!,
        in_response_to: in_response_to!, thread: thread!.length > 0 ? thread! : [id!], conversation_id: conversation_id!,
        forward_header: forward_header!, routing_slip: routing_slip!, message_history: message_history!, ttl: ttl!,
        is_error_message: is_error_message!, traceparent: traceparent!, session_state: session_state!,
        topic_published_to: topic_published_to!, enrich_with_history: enrich_with_history!, process_status: process_status!,
        origin_guild_stack: origin_guild_stack!,
    };
    return { message, errors: [] };
}

/**
 * Reads one message as Python's `Message.from_json` does. Never throws: JSON that is not a valid Message comes
 * back as `{ ok: false, error }` (with the parsed JSON in `value` when it was JSON at all).
 */
export function parseWireMessage(text: string | Buffer): WireParseResult {
    const s = typeof text === "string" ? text : text.toString("utf8");
    let value: PyJson;
    try {
        value = parsePyJson(s);
    } catch (err) {
        const msg = (err as Error)?.message ?? String(err);
        return { ok: false, error: new WireMessageError(`Not JSON: ${msg}`, [{ path: "", message: `is not JSON (${msg})`, kind: "type" }], "json", { cause: err }) };
    }
    const r = validateWireMessage(value);
    if (r.message) return { ok: true, message: r.message };
    return { ok: false, error: new WireMessageError(`Invalid Message: ${formatFieldErrors(r.errors)}`, r.errors, "message"), value };
}

/** Like parseWireMessage, but throws the WireMessageError. */
export function readWireMessage(text: string | Buffer): WireMessage {
    const r = parseWireMessage(text);
    if (!r.ok) throw r.error;
    return r.message;
}

// ---------------------------------------------------------------- writing (model_dump_json)

const tagOut = (t: WireAgentTag) => ({ id: t.id, name: t.name });

function ruleOut(r: WireRoutingRule): Record<string, unknown> {
    const t = r.transformer;
    return {
        agent: r.agent && tagOut(r.agent),
        agent_type: r.agent_type,
        method_name: r.method_name,
        origin_filter: r.origin_filter && {
            origin_sender: r.origin_filter.origin_sender && tagOut(r.origin_filter.origin_sender),
            origin_topic: r.origin_filter.origin_topic,
            origin_message_format: r.origin_filter.origin_message_format,
        },
        message_format: r.message_format,
        destination: r.destination && {
            topics: r.destination.topics,
            recipient_list: r.destination.recipient_list.map(tagOut),
            priority: r.destination.priority,
        },
        mark_forwarded: r.mark_forwarded,
        route_times: r.route_times,
        transformer: t === null ? null : "handler" in t
            ? { style: t.style, expression_type: t.expression_type, handler: t.handler }
            : { style: t.style, output_format: t.output_format, expression_type: t.expression_type, expression: t.expression },
        agent_state_update: r.agent_state_update && stateOut(r.agent_state_update),
        guild_state_update: r.guild_state_update && stateOut(r.guild_state_update),
        process_status: r.process_status,
        reason: r.reason,
    };
}

const stateOut = (s: WireStateTransformer) => ({ expression_type: s.expression_type, update_format: s.update_format, state_update: s.state_update });

/**
 * The message as the plain object `model_dump(mode="json")` gives (without `current_thread_id`/`root_thread_id`
 * unless `computed` is true), in Python's key order; `timestamp` is marked as a float.
 */
export function wireMessageToDict(m: WireMessage, options: { computed?: boolean } = {}): PyJsonObject {
    const parts = gemstoneParts(m.id);
    const out: Record<string, unknown> = {
        sender: tagOut(m.sender),
        topics: m.topics,
        recipient_list: m.recipient_list.map(tagOut),
        payload: m.payload,
        format: m.format,
        in_response_to: m.in_response_to,
        thread: m.thread,
        conversation_id: m.conversation_id,
        forward_header: m.forward_header && { origin_message_id: m.forward_header.origin_message_id, on_behalf_of: tagOut(m.forward_header.on_behalf_of) },
        routing_slip: m.routing_slip && { steps: m.routing_slip.steps.map(ruleOut) },
        message_history: m.message_history.map((e) => ({
            agent: tagOut(e.agent), origin: e.origin, result: e.result, processor: e.processor,
            from_topic: e.from_topic, to_topics: e.to_topics, reason: e.reason,
        })),
        ttl: m.ttl,
        is_error_message: m.is_error_message,
        traceparent: m.traceparent,
        session_state: m.session_state,
        topic_published_to: m.topic_published_to,
        enrich_with_history: m.enrich_with_history,
        process_status: m.process_status,
        origin_guild_stack: m.origin_guild_stack.map((g) => ({ guild_id: g.guild_id, saga_id: g.saga_id })),
        id: BigInt.asUintN(64, m.id),
        priority: parts.priority,
        timestamp: parts.timestamp,
    };
    if (options.computed) {
        out.current_thread_id = m.thread[m.thread.length - 1] ?? m.id;
        out.root_thread_id = m.thread[0] ?? m.id;
    }
    markFloat(out, "timestamp");
    return out as PyJsonObject;
}

/**
 * Writes `message` exactly as Python's `Message.to_json()` would (after Python's own validation: strings
 * stripped, defaults filled in). Throws a WireMessageError (code ERR_INVALID_MESSAGE) naming the field for a
 * message Python could not read (empty payload, null list, id out of range, ...), so none is ever published.
 */
export function serializeWireMessage(message: WireMessage): string {
    const dict = wireMessageToDict(assertWritable(message));
    return stringifyPyJson(dict);
}

function assertWritable(message: WireMessage): WireMessage {
    if (!isPlainObject(message)) {
        throw new WireMessageError(`serializeWireMessage: expected a WireMessage; got ${describe(message)}`, [{ path: "", message: "must be a WireMessage", kind: "type" }], "message");
    }
    if (typeof message.id !== "bigint") {
        throw new WireMessageError(`serializeWireMessage: id must be a bigint (got ${describe(message.id)})`, [{ path: "id", message: "must be a bigint", kind: "type" }], "message");
    }
    const candidate: Record<string, unknown> = { ...message };
    // Python only writes what its model holds; validating the same dict gives the normalized message
    const r = validateWireMessage(candidate);
    if (!r.message) throw new WireMessageError(`Refusing to write a Message Python cannot read: ${formatFieldErrors(r.errors)}`, r.errors, "message");
    if (BigInt.asUintN(64, message.id) !== message.id) {
        throw new WireMessageError(`Refusing to write id ${message.id}: a GemstoneID is an unsigned 64-bit integer`, [{ path: "id", message: "must be from 0 to 2^64-1", kind: "range" }], "message");
    }
    return r.message;
}

// ---------------------------------------------------------------- creating

export interface CreateWireMessageInit {
    /** The id generator (one per process, with its leased machine id). */
    generator: GemstoneIdGenerator;
    priority?: Priority;
    sender: WireAgentTag | { id?: string | null; name?: string | null };
    topics: string | string[];
    payload: PyJsonObject | object;
    format?: string;
    recipient_list?: WireAgentTag[];
    in_response_to?: bigint | null;
    /** Default: `[id]` (a new thread), as Python does for an empty thread. */
    thread?: bigint[];
    conversation_id?: bigint | null;
    forward_header?: WireForwardHeader | null;
    routing_slip?: WireRoutingSlip | null;
    message_history?: WireProcessEntry[];
    ttl?: WireInt | null;
    is_error_message?: boolean;
    traceparent?: string | null;
    session_state?: PyJsonObject | null;
    topic_published_to?: string | null;
    enrich_with_history?: WireInt | null;
    process_status?: WireProcessStatus | null;
    origin_guild_stack?: WireGuildStackEntry[];
}

/**
 * A new message with a fresh id, every field at Python's default unless given, validated like Python's
 * `Message(...)` (throws a WireMessageError naming the field otherwise).
 */
export function createWireMessage(init: CreateWireMessageInit): WireMessage {
    const id = init.generator.next(init.priority ?? Priority.NORMAL);
    const draft: Record<string, unknown> = {
        id,
        sender: { id: init.sender.id ?? null, name: init.sender.name ?? null },
        topics: init.topics,
        recipient_list: init.recipient_list ?? [],
        payload: init.payload,
        format: init.format ?? GENERIC_JSON_FORMAT,
        in_response_to: init.in_response_to ?? null,
        thread: init.thread ?? [],
        conversation_id: init.conversation_id ?? null,
        forward_header: init.forward_header ?? null,
        routing_slip: init.routing_slip ?? null,
        message_history: init.message_history ?? [],
        ttl: init.ttl ?? null,
        is_error_message: init.is_error_message ?? false,
        traceparent: init.traceparent ?? null,
        session_state: init.session_state ?? null,
        topic_published_to: init.topic_published_to ?? null,
        enrich_with_history: init.enrich_with_history === undefined ? 0 : init.enrich_with_history,
        process_status: init.process_status ?? null,
        origin_guild_stack: init.origin_guild_stack ?? [],
    };
    const r = validateWireMessage(draft);
    if (!r.message) throw new WireMessageError(`createWireMessage: ${formatFieldErrors(r.errors)}`, r.errors, "message");
    return r.message;
}

/** A deep copy (float marks and key orders of payloads kept), e.g. one per topic before setting topic_published_to. */
export function cloneWireMessage(message: WireMessage): WireMessage {
    return clonePyJson(message as unknown as PyJsonObject) as unknown as WireMessage;
}

/** The topics as a list (a string topic is one topic). */
export function wireTopicsOf(message: Pick<WireMessage, "topics">): string[] {
    return typeof message.topics === "string" ? [message.topics] : [...message.topics];
}

/** The message's priority and timestamp (ms since 1970), read from its id. */
export function wireMessageTime(message: Pick<WireMessage, "id">): { priority: Priority; timestamp: number } {
    const { priority, timestamp } = gemstoneParts(message.id);
    return { priority, timestamp };
}
