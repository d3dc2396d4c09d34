/**
 * What a guild reports while it runs (`GuildBuilder.onEvent` / `Guild.onEvent`). The guild knows agents, messages
 * and clients, not what an agent does: an agent's own events (LLMPhiAgent's model loading, for one) are
 * `agent_event`s whose `name` and `data` the agent defines.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";

export type GuildEventBody =
    /** An agent's start() began / finished / failed; stop() finished. */
    | { type: "agent_starting"; agentId: string }
    | { type: "agent_started"; agentId: string }
    | { type: "agent_start_failed"; agentId: string; error: Error }
    | { type: "agent_stopped"; agentId: string }
    /**
     * An event the agent defines (Agent.emitAgentEvent): `name` says which (e.g. "index_ready"), `data` is the
     * agent's payload, `text` the one-line description formatGuildEvent prints, `error` set when it reports a failure.
     */
    | { type: "agent_event"; agentId: string; name: string; data: Readonly<Record<string, unknown>>; text?: string; error?: Error }
    /** A handler threw (the request still got an ErrorMessage reply unless it had already been answered). */
    | { type: "handler_error"; agentId: string; messageId: string; format: string; error: Error }
    /** The messaging backend refused a message or a handler of a client threw. */
    | { type: "delivery_error"; subscriberId: string; messageId: string; error: Error }
    /** Free-form log line from an agent or the guild. */
    | { type: "log"; agentId?: string; level: LogLevel; message: string; data?: Record<string, unknown> };

/** A guild event: the body plus the guild's id and when it happened (ms since the epoch). */
export type GuildEvent = GuildEventBody & { guildId: string; time: number };

/** An agent-defined event (`type: "agent_event"`). */
export type AgentEvent = Extract<GuildEvent, { type: "agent_event" }>;

export type GuildEventListener = (event: GuildEvent) => void;

/** One line of text for an event, for logs and CLIs. */
export function formatGuildEvent(event: GuildEvent): string {
    const who = "agentId" in event && event.agentId ? `[${event.agentId}] ` : "";
    switch (event.type) {
        case "agent_starting": return `${who}starting`;
        case "agent_started": return `${who}started`;
        case "agent_start_failed": return `${who}failed to start: ${event.error.message}`;
        case "agent_stopped": return `${who}stopped`;
        case "agent_event": return `${who}${event.text ?? event.name}${event.error && !event.text ? `: ${event.error.message}` : ""}`;
        case "handler_error": return `${who}handler for ${event.format} failed on message ${event.messageId}: ${event.error.message}`;
        case "delivery_error": return `[${event.subscriberId}] delivery of message ${event.messageId} failed: ${event.error.message}`;
        case "log": return `${who}${event.level}: ${event.message}`;
    }
}
