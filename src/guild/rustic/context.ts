/**
 * The messages a RusticAI agent writes, built as Python builds them (core/guild/agent.py):
 * `ProcessContext.send` / `send_error` (routing slip, history, session state, ...), `_direct_send`
 * (heartbeats, state update requests) and `Agent._send_dict_to_self` (SelfReadyNotification).
 * Nothing here publishes: each function returns the messages to publish, in Python's order.
 */
import { ErrorMessage } from "../../messages/formats.js";
import type { AgentTag } from "../../messages/message.js";
import { decodeGemstoneId, Priority } from "../../messages/ids.js";
import {
    GuildTopics, SystemFormats, agentSelfInbox, type ProcessEntry, type RoutingSlipJSON, type RusticMessage,
} from "./protocol.js";
import {
    applyStep, getNextSteps, normalizeRoutingRule, normalizeRoutingSlip, routingSlipToJSON, stateUpdateOf,
    type MessageRoutable, type RoutingOrigin, type RoutingRule, type RoutingSlip, type SendingAgent,
} from "./routing.js";

/**
 * Makes message ids: a GemstoneGenerator (`{ id }`), or a generator of bigint ids (one with a machine id
 * leased from Redis).
 */
export interface IdSource {
    next(priority?: Priority): { id: string } | bigint | string;
}

/** A new id from `ids`, as a decimal string. */
export function nextId(ids: IdSource, priority: Priority): string {
    const v = ids.next(priority);
    return typeof v === "object" ? v.id : String(v);
}

/** Who the agent is, as its messages say. */
export interface AgentIdentity {
    guildId: string;
    tag: { id: string; name: string };
    /** The qualified class name (`agent_type` of its ErrorMessages; routing rules match it). */
    agentType: string;
    /** The class's short name (`processor` of its messages to itself is `${className}:self`). */
    className: string;
    /** The guild's routes (`GuildSpec.routes`), attached to direct sends; default: none. */
    guildRoutes?: RoutingSlipJSON;
}

export interface ContextHost {
    identity: AgentIdentity;
    ids: IdSource;
    agentState(): Record<string, unknown>;
    guildState(): Record<string, unknown>;
    log?(message: string): void;
}

export interface SendOptions {
    /** An error reply: routed to error_topic (plus matching slip steps) with is_error_message. */
    error?: boolean;
    reason?: string;
    newThread?: boolean;
    forwarding?: boolean;
}

const EMPTY_ROUTES: RoutingSlipJSON = { steps: [] };

function entry(agent: AgentTag, origin: string, result: string, processor: string, fromTopic: string | null, toTopics: string | string[], reason: string[] | null): ProcessEntry {
    return { agent: { ...agent }, origin, result, processor, from_topic: fromTopic, to_topics: Array.isArray(toTopics) ? [...toTopics] : [toTopics], reason };
}

/** A message with every field in Python's declaration order (what Message.to_json() writes). */
export function rusticMessage(fields: Omit<RusticMessage, "timestamp" | "priority"> & { priority?: number }): RusticMessage {
    const parts = decodeGemstoneId(fields.id);
    return {
        sender: fields.sender,
        topics: fields.topics,
        recipient_list: fields.recipient_list,
        payload: fields.payload,
        format: fields.format,
        in_response_to: fields.in_response_to,
        thread: fields.thread.length > 0 ? fields.thread : [fields.id],
        conversation_id: fields.conversation_id,
        forward_header: fields.forward_header,
        routing_slip: fields.routing_slip,
        message_history: fields.message_history,
        ttl: fields.ttl,
        is_error_message: fields.is_error_message,
        traceparent: fields.traceparent,
        session_state: fields.session_state,
        topic_published_to: fields.topic_published_to,
        enrich_with_history: fields.enrich_with_history,
        process_status: fields.process_status,
        origin_guild_stack: fields.origin_guild_stack,
        id: fields.id,
        priority: parts.priority,
        timestamp: parts.timestamp,
    };
}

/** Python's ProcessContext for one incoming message and one handler (`methodName`). */
export class RusticProcessContext {
    readonly origin: RusticMessage;
    readonly methodName: string;
    readonly #host: ContextHost;
    /** The incoming slip, reduced by each send as Python reduces `origin.routing_slip` in place. */
    readonly #slip: RoutingSlip | null;
    #context: Record<string, unknown>;

    /** Throws InvalidRoutingSlipError when the message's routing slip is not one Python could have written. */
    constructor(host: ContextHost, origin: RusticMessage, methodName: string) {
        this.#host = host;
        this.origin = origin;
        this.methodName = methodName;
        this.#slip = normalizeRoutingSlip(origin.routing_slip);
        this.#context = origin.session_state && Object.keys(origin.session_state).length > 0 ? structuredClone(origin.session_state) : {};
    }

    /** Replaces the session state replies start from (after `enrich_with_history` filled it in). */
    setSessionState(state: Record<string, unknown> | null): void {
        this.#context = state && Object.keys(state).length > 0 ? structuredClone(state) : {};
    }

    get #agent(): SendingAgent {
        const { tag, agentType } = this.#host.identity;
        return { tag, agentType, methodName: this.methodName };
    }

    get #routingOrigin(): RoutingOrigin {
        return { origin_sender: this.origin.sender, origin_topic: this.origin.topic_published_to, origin_message_format: this.origin.format };
    }

    /**
     * `send_dict`: the messages to publish for one reply payload: per routing step, the state update
     * requests it asks for, then the reply (none for a step whose transformer dropped it).
     * Rejects with UnsupportedRoutingError / InvalidRoutingSlipError when a step cannot be applied.
     */
    async send(payload: Record<string, unknown>, format: string, options: SendOptions = {}): Promise<RusticMessage[]> {
        const error = options.error === true;
        let steps: RoutingRule[] = this.#slip ? getNextSteps(this.#slip, this.#agent, this.#routingOrigin, format) : [];
        const { tag } = this.#host.identity;
        if (steps.length === 0 && !error) steps = [normalizeRoutingRule({ agent: tag, method_name: this.methodName, message_format: format })];
        if (error) {
            steps = [...steps, normalizeRoutingRule({
                agent: tag, method_name: this.methodName, message_format: format,
                destination: { topics: [GuildTopics.ERROR_TOPIC] }, reason: options.reason ?? null,
            })];
        }
        const out: RusticMessage[] = [];
        for (const step of steps) out.push(...await this.#prepare(payload, format, options, error, step));
        return out;
    }

    /**
     * An error reply that skips the routing slip's steps: straight to error_topic. For failures of the
     * routing itself, so that a step that cannot be applied is not applied again to its own error.
     */
    sendErrorDirect(payload: ErrorMessage, reason?: string): RusticMessage {
        const rule = normalizeRoutingRule({
            agent: this.#host.identity.tag, method_name: this.methodName, message_format: ErrorMessage.format,
            destination: { topics: [GuildTopics.ERROR_TOPIC] }, reason: reason ?? null,
        });
        const routable = this.#routable(payload as unknown as Record<string, unknown>, ErrorMessage.format, rule);
        routable.topics = [GuildTopics.ERROR_TOPIC];
        return this.#message(routable, rule, true, reason, false);
    }

    #routable(payload: Record<string, unknown>, format: string, step: RoutingRule): MessageRoutable {
        const o = this.origin;
        return {
            topics: Array.isArray(o.topics) ? [...o.topics] : o.topics,
            priority: o.priority,
            recipient_list: [],
            payload: structuredClone(payload),
            format,
            forward_header: null,
            context: structuredClone(this.#context),
            enrich_with_history: 0,
            process_status: step.process_status ?? o.process_status,
        };
    }

    async #prepare(payload: Record<string, unknown>, format: string, options: SendOptions, error: boolean, step: RoutingRule): Promise<RusticMessage[]> {
        const routable = this.#routable(payload, format, step);
        const inputs = {
            origin: this.origin, agentState: this.#host.agentState(), guildState: this.#host.guildState(),
            ...(this.#host.log ? { log: this.#host.log } : {}),
        };
        const routed = await applyStep(step, routable, options.forwarding === true, inputs);
        if (!routed) return [];
        // as in Python: the routable after the destination (a PayloadTransformer changed it in place, a
        // FunctionalTransformer made a new one)
        const untransformed = routable;
        const out: RusticMessage[] = [];
        const guildUpdate = await stateUpdateOf(step.guild_state_update, routed, untransformed, inputs);
        if (guildUpdate) {
            out.push(this.directSend({
                priority: Priority.HIGH, topics: [GuildTopics.STATE_TOPIC], format: SystemFormats.STATE_UPDATE_REQUEST,
                payload: {
                    state_owner: "guild", guild_id: this.#host.identity.guildId, agent_id: null, update_format: guildUpdate.update_format,
                    state_update: guildUpdate.state_update, update_path: null, update_version: null, update_timestamp: null,
                },
                ...(options.reason !== undefined ? { reason: options.reason } : {}),
            }));
        }
        const agentUpdate = await stateUpdateOf(step.agent_state_update, routed, untransformed, inputs);
        if (agentUpdate) {
            out.push(this.directSend({
                priority: Priority.HIGH, topics: [GuildTopics.STATE_TOPIC], format: SystemFormats.STATE_UPDATE_REQUEST,
                payload: {
                    state_owner: "agent", guild_id: this.#host.identity.guildId, agent_id: this.#host.identity.tag.id, update_format: agentUpdate.update_format,
                    state_update: agentUpdate.state_update, update_path: null, update_version: null, update_timestamp: null,
                },
                ...(options.reason !== undefined ? { reason: options.reason } : {}),
            }));
        }
        out.push(this.#message(routed, step, error, options.reason, options.newThread === true));
        return out;
    }

    #message(routed: MessageRoutable, step: RoutingRule, error: boolean, reason: string | undefined, newThread: boolean): RusticMessage {
        const o = this.origin;
        const { tag } = this.#host.identity;
        const id = nextId(this.#host.ids, routed.priority as Priority);
        const thread = [...o.thread];
        if (newThread) thread.push(id);
        const reasons = reason ? [reason] : [];
        if (step.reason) reasons.push(step.reason);
        const history = [...o.message_history.map((e) => structuredClone(e)),
            entry(tag, o.id, id, this.methodName, o.topic_published_to, routed.topics, reasons.length > 0 ? reasons : null)];
        return rusticMessage({
            id,
            sender: { ...tag },
            topics: routed.topics,
            recipient_list: routed.recipient_list,
            payload: routed.payload,
            format: routed.format,
            in_response_to: o.id,
            thread,
            conversation_id: null,
            forward_header: routed.forward_header,
            routing_slip: routingSlipToJSON(this.#slip),
            message_history: history,
            ttl: o.ttl,
            is_error_message: error,
            traceparent: o.traceparent,
            session_state: { ...structuredClone(this.#context), ...(routed.context ?? {}) },
            topic_published_to: null,
            enrich_with_history: routed.enrich_with_history,
            process_status: routed.process_status,
            origin_guild_stack: o.origin_guild_stack.map((e) => ({ ...e })),
        });
    }

    /** `_direct_send` with its defaults: the guild's routes, no session state, no ttl, the origin's thread. */
    directSend(init: { priority: Priority; topics: string[]; payload: Record<string, unknown>; format: string; reason?: string }): RusticMessage {
        const o = this.origin;
        const { tag, guildRoutes } = this.#host.identity;
        const id = nextId(this.#host.ids, init.priority);
        const history = [...o.message_history.map((e) => structuredClone(e)),
            entry(tag, o.id, id, this.methodName, null, [], init.reason ? [init.reason] : null)];
        return rusticMessage({
            id,
            sender: { ...tag },
            topics: [...init.topics],
            recipient_list: [],
            payload: init.payload,
            format: init.format,
            in_response_to: o.id,
            thread: [...o.thread],
            conversation_id: null,
            forward_header: null,
            routing_slip: structuredClone(guildRoutes ?? EMPTY_ROUTES),
            message_history: history,
            ttl: null,
            is_error_message: false,
            traceparent: o.traceparent,
            session_state: null,
            topic_published_to: null,
            enrich_with_history: 0,
            process_status: null,
            origin_guild_stack: o.origin_guild_stack.map((e) => ({ ...e })),
        });
    }
}

/** `Agent._notify_ready`: the SelfReadyNotification an agent sends to its own self inbox once subscribed. */
export function selfReadyMessage(identity: AgentIdentity, ids: IdSource): RusticMessage {
    const id = nextId(ids, Priority.NORMAL);
    const inbox = agentSelfInbox(identity.tag.id);
    return rusticMessage({
        id,
        sender: { ...identity.tag },
        topics: [inbox],
        recipient_list: [],
        payload: { message: "Agent is ready" },
        format: SystemFormats.SELF_READY,
        in_response_to: null,
        thread: [id],
        conversation_id: null,
        forward_header: null,
        routing_slip: structuredClone(identity.guildRoutes ?? EMPTY_ROUTES),
        message_history: [entry(identity.tag, "0", id, `${identity.className}:self`, null, [inbox], null)],
        ttl: null,
        is_error_message: false,
        traceparent: null,
        session_state: null,
        topic_published_to: null,
        enrich_with_history: 0,
        process_status: null,
        origin_guild_stack: [],
    });
}
