/**
 * RusticAI's routing slips (core/messaging/core/message.py RoutingSlip, RoutingRule, RoutingDestination,
 * RoutingOrigin, PayloadTransformer, FunctionalTransformer, StateTransformer), as `ProcessContext.send`
 * applies them to a reply: which steps of the incoming message's slip apply, how each step redirects,
 * tags, forwards or transforms the reply, and which state updates it asks for.
 *
 * JSONata expressions run on the `jsonata` package (the reference implementation that Python's port
 * follows). CEL expressions are not evaluated here: a step that needs one fails with
 * UnsupportedRoutingError (the agent answers it with an ErrorMessage on error_topic).
 */
import jsonata from "jsonata";
import { PhiAgentError } from "../../errors.js";
import { GENERIC_JSON_FORMAT } from "../../messages/format.js";
import type { AgentTag } from "../../messages/message.js";
import { agentTagMatches, type ForwardHeader, type ProcessStatus, type RoutingSlipJSON, type RusticMessage } from "./protocol.js";

/** A routing step needs something this implementation does not run (a CEL expression). */
export class UnsupportedRoutingError extends PhiAgentError {
    constructor(message: string) {
        super("ERR_UNSUPPORTED_ROUTE", message);
        this.name = "UnsupportedRoutingError";
    }
}

/** A routing slip on an incoming message that Python's model would reject. */
export class InvalidRoutingSlipError extends PhiAgentError {
    constructor(message: string) {
        super("ERR_INVALID_ARGUMENT", `Invalid routing_slip: ${message}`);
        this.name = "InvalidRoutingSlipError";
    }
}

export interface RoutingDestination {
    topics: string | string[] | null;
    recipient_list: AgentTag[];
    priority: number | null;
}

export interface RoutingOrigin {
    origin_sender: AgentTag | null;
    origin_topic: string | null;
    origin_message_format: string | null;
}

export interface PayloadTransformer {
    style: "simple" | "content_based_router";
    output_format: string | null;
    expression_type: string | null;
    expression: string | null;
}

export interface FunctionalTransformer {
    style: "simple" | "content_based_router";
    expression_type: string | null;
    handler: string;
}

export interface StateTransformer {
    expression_type: string | null;
    update_format: string;
    state_update: string | null;
}

/** A RoutingRule with every field, in Python's order (what `model_dump()` writes). */
export interface RoutingRule {
    agent: AgentTag | null;
    agent_type: string | null;
    method_name: string | null;
    origin_filter: RoutingOrigin | null;
    message_format: string | null;
    destination: RoutingDestination | null;
    mark_forwarded: boolean;
    route_times: number;
    transformer: PayloadTransformer | FunctionalTransformer | null;
    agent_state_update: StateTransformer | null;
    guild_state_update: StateTransformer | null;
    process_status: ProcessStatus | null;
    reason: string | null;
}

export interface RoutingSlip {
    steps: RoutingRule[];
}

// ---------------------------------------------------------------------------------------------
// Normalization: the rule as Python reads and writes it
// ---------------------------------------------------------------------------------------------

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const str = (v: unknown, what: string): string | null => {
    if (v === undefined || v === null) return null;
    if (typeof v !== "string") throw new InvalidRoutingSlipError(`${what} must be a string or null; got ${JSON.stringify(v)}`);
    return v;
};
const tag = (v: unknown, what: string): AgentTag | null => {
    if (v === undefined || v === null) return null;
    if (!isObj(v)) throw new InvalidRoutingSlipError(`${what} must be an AgentTag {id, name}; got ${JSON.stringify(v)}`);
    return { id: str(v.id, `${what}.id`), name: str(v.name, `${what}.name`) };
};
const intOf = (v: unknown): number | undefined => {
    if (typeof v === "bigint") return Number(v);
    if (typeof v === "number" && Number.isInteger(v)) return v;
    return undefined;
};
const PROCESS_STATUSES = ["running", "error", "completed"];

function normalizeDestination(v: unknown, what: string): RoutingDestination | null {
    if (v === undefined || v === null) return null;
    if (!isObj(v)) throw new InvalidRoutingSlipError(`${what} must be an object; got ${JSON.stringify(v)}`);
    let topics: string | string[] | null = null;
    if (typeof v.topics === "string") topics = v.topics;
    else if (Array.isArray(v.topics)) {
        if (!v.topics.every((t) => typeof t === "string")) throw new InvalidRoutingSlipError(`${what}.topics must be a string or a list of strings`);
        topics = [...v.topics] as string[];
    } else if (v.topics !== undefined && v.topics !== null) throw new InvalidRoutingSlipError(`${what}.topics must be a string or a list of strings`);
    const recipients = v.recipient_list ?? [];
    if (!Array.isArray(recipients)) throw new InvalidRoutingSlipError(`${what}.recipient_list must be a list`);
    let priority: number | null = null;
    if (v.priority !== undefined && v.priority !== null) {
        const p = intOf(v.priority);
        if (p === undefined || p < 0 || p > 7) throw new InvalidRoutingSlipError(`${what}.priority must be 0..7; got ${JSON.stringify(v.priority)}`);
        priority = p;
    }
    return { topics, recipient_list: recipients.map((r, i) => tag(r, `${what}.recipient_list[${i}]`)!), priority };
}

function normalizeTransformer(v: unknown, what: string): PayloadTransformer | FunctionalTransformer | null {
    if (v === undefined || v === null) return null;
    if (!isObj(v)) throw new InvalidRoutingSlipError(`${what} must be an object`);
    const style = v.style ?? "simple";
    if (style !== "simple" && style !== "content_based_router") throw new InvalidRoutingSlipError(`${what}.style must be "simple" or "content_based_router"`);
    const expressionType = v.expression_type === undefined ? "jsonata" : str(v.expression_type, `${what}.expression_type`);
    // pydantic's smart union picks the member with the most fields set: `handler` makes it a FunctionalTransformer
    if (typeof v.handler === "string") return { style, expression_type: expressionType, handler: v.handler };
    return {
        style,
        output_format: v.output_format === undefined ? GENERIC_JSON_FORMAT : str(v.output_format, `${what}.output_format`),
        expression_type: expressionType,
        expression: str(v.expression, `${what}.expression`),
    };
}

function normalizeStateTransformer(v: unknown, what: string): StateTransformer | null {
    if (v === undefined || v === null) return null;
    if (!isObj(v)) throw new InvalidRoutingSlipError(`${what} must be an object`);
    const format = v.update_format ?? "json-merge-patch";
    if (format !== "json-merge-patch" && format !== "json-patch") throw new InvalidRoutingSlipError(`${what}.update_format must be "json-merge-patch" or "json-patch"`);
    return {
        expression_type: v.expression_type === undefined ? "jsonata" : str(v.expression_type, `${what}.expression_type`),
        update_format: format,
        state_update: str(v.state_update, `${what}.state_update`),
    };
}

/** One rule with Python's defaults, checked as pydantic checks it (`agent` or `agent_type` is required). */
export function normalizeRoutingRule(v: unknown, what = "step"): RoutingRule {
    if (!isObj(v)) throw new InvalidRoutingSlipError(`${what} must be an object; got ${JSON.stringify(v)}`);
    if (!v.agent && !v.agent_type) throw new InvalidRoutingSlipError(`${what}: either agent or agent_type must be provided for a routing rule`);
    let originFilter: RoutingOrigin | null = null;
    if (v.origin_filter !== undefined && v.origin_filter !== null) {
        if (!isObj(v.origin_filter)) throw new InvalidRoutingSlipError(`${what}.origin_filter must be an object`);
        originFilter = {
            origin_sender: tag(v.origin_filter.origin_sender, `${what}.origin_filter.origin_sender`),
            origin_topic: str(v.origin_filter.origin_topic, `${what}.origin_filter.origin_topic`),
            origin_message_format: str(v.origin_filter.origin_message_format, `${what}.origin_filter.origin_message_format`),
        };
    }
    const routeTimes = v.route_times === undefined ? 1 : intOf(v.route_times);
    if (routeTimes === undefined) throw new InvalidRoutingSlipError(`${what}.route_times must be an integer`);
    if (v.mark_forwarded !== undefined && typeof v.mark_forwarded !== "boolean") throw new InvalidRoutingSlipError(`${what}.mark_forwarded must be a boolean`);
    const status = v.process_status ?? null;
    if (status !== null && !PROCESS_STATUSES.includes(status as string)) throw new InvalidRoutingSlipError(`${what}.process_status must be one of ${PROCESS_STATUSES.join(", ")}`);
    return {
        agent: tag(v.agent, `${what}.agent`),
        agent_type: str(v.agent_type, `${what}.agent_type`),
        method_name: str(v.method_name, `${what}.method_name`),
        origin_filter: originFilter,
        message_format: str(v.message_format, `${what}.message_format`),
        destination: normalizeDestination(v.destination, `${what}.destination`),
        mark_forwarded: v.mark_forwarded === true,
        route_times: routeTimes,
        transformer: normalizeTransformer(v.transformer, `${what}.transformer`),
        agent_state_update: normalizeStateTransformer(v.agent_state_update, `${what}.agent_state_update`),
        guild_state_update: normalizeStateTransformer(v.guild_state_update, `${what}.guild_state_update`),
        process_status: status as ProcessStatus | null,
        reason: str(v.reason, `${what}.reason`),
    };
}

/** A slip with every rule normalized; null stays null. */
export function normalizeRoutingSlip(v: unknown): RoutingSlip | null {
    if (v === undefined || v === null) return null;
    if (!isObj(v)) throw new InvalidRoutingSlipError(`must be an object {steps: [...]}; got ${JSON.stringify(v)}`);
    const steps = v.steps ?? [];
    if (!Array.isArray(steps)) throw new InvalidRoutingSlipError("steps must be a list");
    return { steps: steps.map((s, i) => normalizeRoutingRule(s, `steps[${i}]`)) };
}

/** The slip as it goes on the wire (the same object shape; a deep copy). */
export function routingSlipToJSON(slip: RoutingSlip | null): RoutingSlipJSON | null {
    return slip ? (structuredClone(slip) as unknown as RoutingSlipJSON) : null;
}

// ---------------------------------------------------------------------------------------------
// Matching (RoutingRule.is_applicable, RoutingSlip.get_next_steps)
// ---------------------------------------------------------------------------------------------

/** Python's `fnmatch.fnmatchcase(name, pattern)`. */
export function fnmatchcase(name: string, pattern: string): boolean {
    let re = "";
    for (let i = 0; i < pattern.length; i++) {
        const c = pattern[i]!;
        if (c === "*") re += "[\\s\\S]*";
        else if (c === "?") re += "[\\s\\S]";
        else if (c === "[") {
            let j = i + 1;
            if (pattern[j] === "!") j++;
            if (pattern[j] === "]") j++;
            while (j < pattern.length && pattern[j] !== "]") j++;
            if (j >= pattern.length) re += "\\[";
            else {
                let body = pattern.slice(i + 1, j).replace(/\\/g, "\\\\");
                if (body.startsWith("!")) body = "^" + body.slice(1);
                else if (body.startsWith("^")) body = "\\" + body;
                re += `[${body}]`;
                i = j;
            }
        } else re += c.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
    }
    return new RegExp(`^(?:${re})$`).test(name);
}

function matchesAgentType(rule: string, agentType: string): boolean {
    return /[*?[]/.test(rule) ? fnmatchcase(agentType, rule) : rule === agentType;
}

/** Who is sending, and what triggered it (ProcessContext.routing_origin). */
export interface SendingAgent {
    tag: AgentTag;
    /** The agent's qualified class name. */
    agentType: string;
    /** The handler's name (`generate_prompt`). */
    methodName: string;
}

export function isApplicable(rule: RoutingRule, agent: SendingAgent, origin: RoutingOrigin, messageFormat: string): boolean {
    if (rule.agent && !agentTagMatches(rule.agent, agent.tag)) return false;
    if (rule.agent_type && !matchesAgentType(rule.agent_type, agent.agentType)) return false;
    if (rule.method_name && rule.method_name !== agent.methodName) return false;
    const f = rule.origin_filter;
    if (f) {
        if (f.origin_sender && !agentTagMatches(f.origin_sender, origin.origin_sender)) return false;
        if (f.origin_topic && f.origin_topic !== origin.origin_topic) return false;
        if (f.origin_message_format && f.origin_message_format !== origin.origin_message_format) return false;
    }
    if (rule.message_format && rule.message_format !== messageFormat) return false;
    return true;
}

/**
 * `RoutingSlip.get_next_steps`: the applicable steps; each one's route_times is decremented (when not 0;
 * -1 goes on forever) and the steps at 0 are removed from `slip` (in place, as Python does).
 */
export function getNextSteps(slip: RoutingSlip, agent: SendingAgent, origin: RoutingOrigin, messageFormat: string): RoutingRule[] {
    const next = slip.steps.filter((s) => isApplicable(s, agent, origin, messageFormat));
    for (const s of next) if (s.route_times) s.route_times -= 1;
    slip.steps = slip.steps.filter((s) => s.route_times !== 0);
    return next;
}

// ---------------------------------------------------------------------------------------------
// Applying a step (RoutingRule.apply and the transformers)
// ---------------------------------------------------------------------------------------------

/** `MessageRoutable`: the fields of the reply a step may change. */
export interface MessageRoutable {
    topics: string | string[];
    priority: number;
    recipient_list: AgentTag[];
    payload: Record<string, unknown>;
    format: string;
    forward_header: ForwardHeader | null;
    context: Record<string, unknown> | null;
    enrich_with_history: number | null;
    process_status: ProcessStatus | null;
}

/** What a transformer sees besides the reply: the incoming message and the agent's and guild's state. */
export interface RouteInputs {
    origin: RusticMessage;
    agentState: Record<string, unknown>;
    guildState: Record<string, unknown>;
    /** Called with what went wrong when a transformer fails (Python logs it and drops the message). */
    log?: (message: string) => void;
}

const compiled = new Map<string, ReturnType<typeof jsonata>>();

function compile(expression: string): ReturnType<typeof jsonata> {
    let expr = compiled.get(expression);
    if (!expr) {
        expr = jsonata(expression);
        if (compiled.size > 256) compiled.clear();
        compiled.set(expression, expr);
    }
    return expr;
}

/** JSON for an expression: ids (bigints) become numbers, as Python hands ints to JSONata. */
function plain(value: unknown): unknown {
    if (typeof value === "bigint") return Number(value);
    if (Array.isArray(value)) return value.map(plain);
    if (isObj(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
    return value;
}

/** The result of an expression as plain JSON (JSONata's sequences become arrays); undefined/null → null. */
function result(value: unknown): unknown {
    if (value === undefined || value === null) return null;
    return JSON.parse(JSON.stringify(value)) as unknown;
}

async function evaluate(expressionType: string | null, expression: string, input: unknown, what: string): Promise<unknown> {
    if (expressionType === "cel") {
        throw new UnsupportedRoutingError(`${what} is a CEL expression, which this agent does not evaluate; write it in JSONata (expression_type "jsonata")`);
    }
    if (expressionType !== "jsonata") {
        throw new Error(`${what}: expression_type not found! Please set expression_type as 'jsonata' or 'cel'`);
    }
    return result(await compile(expression).evaluate(plain(input)));
}

function originDump(origin: RusticMessage): Record<string, unknown> {
    // Python: origin.model_dump(include={"id", "sender", "topic", "recipient_list", "payload", "format"}), in field order
    return { sender: origin.sender, recipient_list: origin.recipient_list, payload: origin.payload, format: origin.format, id: origin.id };
}

function routableDump(r: MessageRoutable): Record<string, unknown> {
    return {
        topics: r.topics, priority: r.priority, recipient_list: r.recipient_list, payload: r.payload, format: r.format,
        forward_header: r.forward_header, context: r.context, enrich_with_history: r.enrich_with_history, process_status: r.process_status,
    };
}

/** `MessageRoutable.model_validate`: undefined when Python's model would reject it. */
function validateRoutable(v: unknown): MessageRoutable | undefined {
    if (!isObj(v)) return undefined;
    const topicsOk = (typeof v.topics === "string") || (Array.isArray(v.topics) && v.topics.every((t) => typeof t === "string"));
    const priority = intOf(v.priority);
    if (!topicsOk || priority === undefined || priority < 0 || priority > 7) return undefined;
    if (!isObj(v.payload) || Object.keys(v.payload).length === 0) return undefined;
    const format = v.format ?? GENERIC_JSON_FORMAT;
    if (typeof format !== "string" || format.length < 3) return undefined;
    const recipients = v.recipient_list ?? [];
    if (!Array.isArray(recipients) || !recipients.every(isObj)) return undefined;
    if (v.context !== undefined && v.context !== null && !isObj(v.context)) return undefined;
    const status = v.process_status ?? null;
    if (status !== null && !PROCESS_STATUSES.includes(status as string)) return undefined;
    const enrich = v.enrich_with_history === undefined ? 0 : v.enrich_with_history === null ? null : intOf(v.enrich_with_history);
    if (enrich === undefined) return undefined;
    let fh: ForwardHeader | null = null;
    if (v.forward_header !== undefined && v.forward_header !== null) {
        const f = v.forward_header;
        if (!isObj(f) || !isObj(f.on_behalf_of) || intOf(f.origin_message_id) === undefined && typeof f.origin_message_id !== "string") return undefined;
        fh = { origin_message_id: String(f.origin_message_id), on_behalf_of: f.on_behalf_of as AgentTag };
    }
    return {
        topics: v.topics as string | string[], priority, recipient_list: recipients as AgentTag[], payload: v.payload,
        format, forward_header: fh, context: (v.context as Record<string, unknown> | null | undefined) ?? null,
        enrich_with_history: enrich, process_status: status as ProcessStatus | null,
    };
}

/**
 * `RoutingRule.apply`: destination, forwarding and the transformer. Resolves with the routed reply, or
 * null when the transformer dropped it (Python: a transformer that returns null or fails).
 */
export async function applyStep(rule: RoutingRule, routable: MessageRoutable, forwarding: boolean, inputs: RouteInputs): Promise<MessageRoutable | null> {
    const dest = rule.destination;
    if (dest) {
        if (dest.topics && dest.topics.length > 0) routable.topics = Array.isArray(dest.topics) ? [...dest.topics] : dest.topics;
        if (dest.priority) routable.priority = dest.priority; // Python tests truthiness: URGENT (0) does not override
        if (dest.recipient_list.length > 0) routable.recipient_list = dest.recipient_list.map((t) => ({ ...t }));
    }
    if (forwarding || rule.mark_forwarded) {
        const o = inputs.origin;
        routable.forward_header = o.forward_header ? structuredClone(o.forward_header) : { origin_message_id: o.id, on_behalf_of: { ...o.sender } };
    }
    const t = rule.transformer;
    if (!t) return routable;
    if ("handler" in t) {
        // FunctionalTransformer: the expression sees origin, states and the routable; its result is merged in
        let transformed: unknown;
        try {
            transformed = await evaluate(t.expression_type, t.handler, {
                origin: originDump(inputs.origin), agent_state: inputs.agentState, guild_state: inputs.guildState, ...routableDump(routable),
            }, "the routing step's transformer.handler");
        } catch (err) {
            if (err instanceof UnsupportedRoutingError) throw err;
            inputs.log?.(`Error in transformer: ${(err as Error).message ?? String(err)}`);
            return null;
        }
        if (transformed === null) return null;
        if (!isObj(transformed)) {
            inputs.log?.(`Error in transformer: its result is not an object: ${JSON.stringify(transformed)}`);
            return null;
        }
        const routed = validateRoutable({ ...routableDump(routable), ...transformed });
        if (!routed) inputs.log?.(`Error in transformer: its result is not a valid MessageRoutable: ${JSON.stringify(transformed)}`);
        return routed ?? null;
    }
    // PayloadTransformer: the expression sees the payload only; it replaces it (and the format)
    if (!t.expression) {
        inputs.log?.("Error in transformer: expression_type not found! Please set expression_type as 'jsonata' or 'cel'");
        return null;
    }
    let evaluated: unknown;
    try {
        evaluated = await evaluate(t.expression_type, t.expression, routable.payload, "the routing step's transformer.expression");
    } catch (err) {
        if (err instanceof UnsupportedRoutingError) throw err;
        inputs.log?.(`Error in transformer: ${(err as Error).message ?? String(err)}`);
        return null;
    }
    if (evaluated === null) return null;
    if (!isObj(evaluated) || Object.keys(evaluated).length === 0) {
        // Python assigns it and then fails building the Message (payload must be a non-empty object)
        throw new InvalidRoutingSlipError(`the routing step's transformer produced a payload that is not a non-empty object: ${JSON.stringify(evaluated)}`);
    }
    routable.payload = evaluated;
    if (t.output_format) routable.format = t.output_format;
    return routable;
}

/** A state update a step asks for (`StateUpdate`). */
export interface StateUpdate {
    update_format: string;
    state_update: Record<string, unknown>;
}

/** `StateTransformer.transform`: null when the step asks for none (or its expression fails, as Python logs and skips). */
export async function stateUpdateOf(t: StateTransformer | null, routed: MessageRoutable, untransformed: MessageRoutable, inputs: RouteInputs): Promise<StateUpdate | null> {
    if (!t || !t.state_update) return null;
    let value: unknown;
    try {
        value = await evaluate(t.expression_type, t.state_update, {
            origin: originDump(inputs.origin), agent_state: inputs.agentState, guild_state: inputs.guildState,
            untransformed: routableDump(untransformed), ...routableDump(routed),
        }, "the routing step's state_update");
    } catch (err) {
        if (err instanceof UnsupportedRoutingError) throw err;
        inputs.log?.(`Error in transformer: ${(err as Error).message ?? String(err)}`);
        return null;
    }
    if (value === null || !isObj(value)) return null;
    return { update_format: t.update_format, state_update: value };
}
