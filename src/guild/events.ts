/** What a guild reports while it runs (`GuildBuilder.onEvent` / `Guild.onEvent`). */
import type { ModelInfo } from "../model/types.js";

export type LogLevel = "debug" | "info" | "warn" | "error";

export type GuildEventBody =
    /** An agent's start() began / finished / failed; stop() finished. */
    | { type: "agent_starting"; agentId: string }
    | { type: "agent_started"; agentId: string }
    | { type: "agent_start_failed"; agentId: string; error: Error }
    | { type: "agent_stopped"; agentId: string }
    /** Model load progress of an agent, 0..1. */
    | { type: "model_load_progress"; agentId: string; progress: number }
    | { type: "model_loaded"; agentId: string; info: ModelInfo; loadMs: number }
    | { type: "model_load_failed"; agentId: string; error: Error }
    | { type: "model_disposed"; agentId: string }
    /** A handler threw (the request still got an ErrorMessage reply unless it had already been answered). */
    | { type: "handler_error"; agentId: string; messageId: string; format: string; error: Error }
    /** The messaging backend refused a message or a handler of a client threw. */
    | { type: "delivery_error"; subscriberId: string; messageId: string; error: Error }
    /** Free-form log line from an agent or the guild. */
    | { type: "log"; agentId?: string; level: LogLevel; message: string; data?: Record<string, unknown> };

/** A guild event: the body plus the guild's id and when it happened (ms since the epoch). */
export type GuildEvent = GuildEventBody & { guildId: string; time: number };

export type GuildEventListener = (event: GuildEvent) => void;

/** One line of text for an event, for logs and CLIs. */
export function formatGuildEvent(event: GuildEvent): string {
    const who = "agentId" in event && event.agentId ? `[${event.agentId}] ` : "";
    switch (event.type) {
        case "agent_starting": return `${who}starting`;
        case "agent_started": return `${who}started`;
        case "agent_start_failed": return `${who}failed to start: ${event.error.message}`;
        case "agent_stopped": return `${who}stopped`;
        case "model_load_progress": return `${who}loading model: ${Math.round(event.progress * 100)}%`;
        case "model_loaded":
            return `${who}model loaded in ${event.loadMs} ms: ${event.info.name || event.info.architecture} ` +
                `(${event.info.quantization}) on ${event.info.runtime.device}, context ${event.info.runtime.contextSize}`;
        case "model_load_failed": return `${who}model failed to load: ${event.error.message}`;
        case "model_disposed": return `${who}model disposed`;
        case "handler_error": return `${who}handler for ${event.format} failed on message ${event.messageId}: ${event.error.message}`;
        case "delivery_error": return `[${event.subscriberId}] delivery of message ${event.messageId} failed: ${event.error.message}`;
        case "log": return `${who}${event.level}: ${event.message}`;
    }
}
