/**
 * The parts of RusticAI's protocol an agent host needs beyond the envelope: the guild's topic names
 * (`GuildTopics`), the qualified format names of the system messages, the full field set of a Python
 * `Message` (routing slip, history, session state, ...), and Python's naive ISO times.
 * Python references: core/guild/dsl.py GuildTopics, core/messaging/core/message.py, core/guild/agent.py,
 * core/guild/agent_ext/mixins/health.py, core/state/models.py (rustic-ai/rustic-ai).
 */
import type { AgentTag, Message } from "../../messages/message.js";
import { gemstoneParts } from "../../messages/wire/gemstone.js";
import type { WireMessage } from "../../messages/wire/message.js";

/** `GuildTopics` of RusticAI. */
export const GuildTopics = {
    DEFAULT_TOPIC: "default_topic",
    STATE_TOPIC: "state_topic",
    GUILD_STATUS_TOPIC: "guild_status_topic",
    HEARTBEAT_TOPIC: "heartbeat",
    ERROR_TOPIC: "error_topic",
    DEAD_LETTER_QUEUE: "dead_letter_queue",
    AGENT_SELF_INBOX_PREFIX: "agent_self_inbox",
    AGENT_INBOX_PREFIX: "agent_inbox",
} as const;

/** The topics every agent listens to and only essential handlers act on (health.py appends "heartbeat"). */
export const ESSENTIAL_TOPICS: readonly string[] = [GuildTopics.GUILD_STATUS_TOPIC, GuildTopics.STATE_TOPIC, GuildTopics.HEARTBEAT_TOPIC];

export function agentInbox(agentId: string): string {
    return `${GuildTopics.AGENT_INBOX_PREFIX}:${agentId}`;
}

export function agentSelfInbox(agentId: string): string {
    return `${GuildTopics.AGENT_SELF_INBOX_PREFIX}:${agentId}`;
}

/**
 * `AgentSpec.subscribed_topics`: the additional topics, default_topic (unless turned off), the agent's
 * inbox and self inbox, and the essential topics, each once.
 */
export function subscribedTopics(agentId: string, options: { additionalTopics?: readonly string[]; listenToDefaultTopic?: boolean } = {}): string[] {
    const topics: string[] = [];
    const add = (t: string) => { if (!topics.includes(t)) topics.push(t); };
    if (options.listenToDefaultTopic ?? true) add(GuildTopics.DEFAULT_TOPIC);
    add(agentInbox(agentId));
    add(agentSelfInbox(agentId));
    for (const t of ESSENTIAL_TOPICS) add(t);
    for (const t of options.additionalTopics ?? []) add(t);
    return topics;
}

/** Qualified names (`module.ClassName`) of the system payloads. */
export const SystemFormats = {
    SELF_READY: "rustic_ai.core.guild.agent.SelfReadyNotification",
    HEALTH_CHECK_REQUEST: "rustic_ai.core.guild.agent_ext.mixins.health.HealthCheckRequest",
    HEARTBEAT: "rustic_ai.core.guild.agent_ext.mixins.health.Heartbeat",
    STATE_UPDATE_REQUEST: "rustic_ai.core.state.models.StateUpdateRequest",
    STATE_UPDATE_RESPONSE: "rustic_ai.core.state.models.StateUpdateResponse",
    STATE_FETCH_RESPONSE: "rustic_ai.core.state.models.StateFetchResponse",
} as const;

/** The qualified class name of the seed's agent; routing rules match `agent_type` against it. */
export const PYTHON_PHI_AGENT_CLASS = "rustic_ai.huggingface.agents.llm.phi_agent.LLMPhiAgent";

/** `ProcessEntry`: one step of a message's history. Ids are decimal strings, as everywhere in TypeScript. */
export interface ProcessEntry {
    agent: AgentTag;
    origin: string;
    result: string;
    processor: string;
    from_topic: string | null;
    to_topics: string[];
    reason: string[] | null;
}

export interface ForwardHeader {
    origin_message_id: string;
    on_behalf_of: AgentTag;
}

export interface GuildStackEntry {
    guild_id: string;
    saga_id: string | null;
}

export type ProcessStatus = "running" | "error" | "completed";

/** A routing slip as it travels (the rules' fields as Python dumps them; see routing.ts). */
export interface RoutingSlipJSON {
    steps: Record<string, unknown>[];
}

/**
 * A Python `Message`: the envelope plus every field RusticAI has. Messages from a Python guild carry all
 * of them; ours are written with all of them.
 */
export interface RusticMessage<P = Record<string, unknown>> extends Message<P> {
    recipient_list: AgentTag[];
    conversation_id: string | null;
    forward_header: ForwardHeader | null;
    routing_slip: RoutingSlipJSON | null;
    message_history: ProcessEntry[];
    ttl: number | null;
    is_error_message: boolean;
    traceparent: string | null;
    session_state: Record<string, unknown> | null;
    topic_published_to: string | null;
    enrich_with_history: number | null;
    process_status: ProcessStatus | null;
    origin_guild_stack: GuildStackEntry[];
}

const WIRE = Symbol.for("llm-phi-agent.wireMessage");

/** A RusticAI message read by the Redis backend (bigint ids) in the TypeScript form (ids as decimal strings). */
export function fromWire(w: WireMessage): RusticMessage {
    const id = (v: bigint) => v.toString();
    const { priority, timestamp } = gemstoneParts(w.id);
    return {
        sender: { id: w.sender.id, name: w.sender.name },
        topics: Array.isArray(w.topics) ? [...w.topics] : w.topics,
        recipient_list: w.recipient_list.map((t) => ({ id: t.id, name: t.name })),
        payload: w.payload as Record<string, unknown>,
        format: w.format,
        in_response_to: w.in_response_to === null ? null : id(w.in_response_to),
        thread: w.thread.map(id),
        conversation_id: w.conversation_id === null ? null : id(w.conversation_id),
        forward_header: w.forward_header && { origin_message_id: id(w.forward_header.origin_message_id), on_behalf_of: { ...w.forward_header.on_behalf_of } },
        routing_slip: w.routing_slip as unknown as RoutingSlipJSON | null,
        message_history: w.message_history.map((e) => ({ ...e, agent: { ...e.agent }, origin: id(e.origin), result: id(e.result), to_topics: [...e.to_topics] })),
        ttl: w.ttl === null ? null : Number(w.ttl),
        is_error_message: w.is_error_message,
        traceparent: w.traceparent,
        session_state: w.session_state as Record<string, unknown> | null,
        topic_published_to: w.topic_published_to,
        enrich_with_history: w.enrich_with_history === null ? null : Number(w.enrich_with_history),
        process_status: w.process_status,
        origin_guild_stack: w.origin_guild_stack.map((g) => ({ ...g })),
        id: id(w.id),
        priority,
        timestamp,
    };
}

/**
 * The full RusticAI message behind `m`: the one a wire backend attached to it (the Redis backend delivers the
 * guild's Message with the RusticAI message it read), else `m` with Python's defaults.
 */
export function rusticMessageOf(m: Message): RusticMessage {
    const wire = (m as { [WIRE]?: WireMessage })[WIRE];
    return wire ? fromWire(wire) : withPythonDefaults(m);
}

/** The optional Python fields of `m` with Python's defaults filled in (a message from our in-memory guild lacks them). */
export function withPythonDefaults<P>(m: Message<P>): RusticMessage<P> {
    const x = m as Partial<RusticMessage<P>> & Message<P>;
    return {
        ...x,
        recipient_list: x.recipient_list ?? [],
        in_response_to: x.in_response_to ?? null,
        thread: x.thread && x.thread.length > 0 ? x.thread : [x.id],
        conversation_id: x.conversation_id ?? null,
        forward_header: x.forward_header ?? null,
        routing_slip: x.routing_slip ?? null,
        message_history: x.message_history ?? [],
        ttl: x.ttl ?? null,
        is_error_message: x.is_error_message ?? false,
        traceparent: x.traceparent ?? null,
        session_state: x.session_state ?? null,
        topic_published_to: x.topic_published_to ?? null,
        enrich_with_history: x.enrich_with_history ?? 0,
        process_status: x.process_status ?? null,
        origin_guild_stack: x.origin_guild_stack ?? [],
    } as RusticMessage<P>;
}

/** AgentTag equality as Python's `AgentTag.__eq__`: a null/empty id or name on `pattern` matches anything. */
export function agentTagMatches(pattern: AgentTag | null | undefined, tag: AgentTag | null | undefined): boolean {
    if (!pattern || !tag) return false;
    if (pattern.id && pattern.id !== tag.id) return false;
    if (pattern.name && pattern.name !== tag.name) return false;
    return true;
}

// ---------------------------------------------------------------------------------------------
// Python's naive ISO datetimes (datetime.now().isoformat(): local time, microseconds, no zone)
// ---------------------------------------------------------------------------------------------

/** A time as Python's `datetime.isoformat()` of a naive local datetime: microseconds, dropped when 0. */
export function naiveIsoTime(epochMs: number = preciseNow()): string {
    const whole = Math.floor(epochMs);
    const micros = Math.round((epochMs - whole) * 1000);
    const d = new Date(whole);
    const p = (n: number, w = 2) => String(n).padStart(w, "0");
    const base = `${p(d.getFullYear(), 4)}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
    const us = d.getMilliseconds() * 1000 + Math.min(micros, 999);
    return us === 0 ? base : `${base}.${p(us, 6)}`;
}

/** ms since 1970 with sub-millisecond digits (performance.timeOrigin + now()). */
export function preciseNow(): number {
    return performance.timeOrigin + performance.now();
}

const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6})\d*)?)?(Z|[+-]\d{2}:?\d{2})?$/;

/**
 * Reads an ISO datetime as pydantic does for a `datetime` field: a naive one is local time. Returns its
 * epoch ms (with sub-ms digits), whether it had a zone, and Python's isoformat() of it; undefined when
 * it is not a datetime.
 */
export function parseIsoTime(text: unknown): { epochMs: number; aware: boolean; iso: string } | undefined {
    if (typeof text !== "string") return undefined;
    const m = ISO_RE.exec(text.trim());
    if (!m) return undefined;
    const [, y, mo, d, h, mi, s = "00", frac = "", zone] = m;
    const us = frac ? Number(frac.padEnd(6, "0")) : 0;
    const fields = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)] as const;
    if (fields[1] > 11 || fields[2] < 1 || fields[2] > 31 || fields[3] > 23 || fields[4] > 59 || fields[5] > 59) return undefined;
    let epochMs: number;
    let zoneText = "";
    if (zone) {
        const offsetMin = zone === "Z" ? 0 : (zone[0] === "-" ? -1 : 1) * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(-2)));
        epochMs = Date.UTC(...fields) - offsetMin * 60000;
        const sign = offsetMin < 0 ? "-" : "+";
        const abs = Math.abs(offsetMin);
        zoneText = `${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
    } else {
        epochMs = new Date(...fields).getTime();
    }
    if (!Number.isFinite(epochMs)) return undefined;
    const base = `${y}-${mo}-${d}T${h}:${mi}:${s}`;
    const iso = (us === 0 ? base : `${base}.${String(us).padStart(6, "0")}`) + zoneText;
    return { epochMs: epochMs + us / 1000, aware: zone !== undefined, iso };
}
