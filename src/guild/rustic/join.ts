/**
 * What an agent host needs to join a RusticAI guild over Redis: the Redis messaging backend, a GemstoneID
 * machine id leased in the guild (no other process, on any host, makes the same ids), the replica claims, and
 * the message store for `enrich_with_history`.
 */
import { RedisRequestClaims, type RedisRequestClaimsOptions, type StoredCopy } from "../claims.js";
import { RedisMessagingBackend, messageToWire, namespacedTopic, type RedisBackendEvent } from "../redis/RedisMessagingBackend.js";
import { topicsOf, type Message } from "../../messages/message.js";
import { gemstoneParts } from "../../messages/wire/gemstone.js";
import { serializeWireMessage } from "../../messages/wire/message.js";
import type { RusticMessage } from "./protocol.js";
import type { MachineIdLease } from "../../messages/wire/machineId.js";
import { wireMessageToDict } from "../../messages/wire/message.js";
import { stringifyPyJson } from "../../messages/wire/json.js";

export interface JoinRedisGuildOptions {
    url: string;
    guildId: string;
    agentId: string;
    replicaId?: string;
    /** The claims' lease (ms); see claims.ts. */
    claimLeaseMs?: number;
    claimDoneTtlMs?: number;
    /** How long a publish waits for an unreachable Redis (ms); default MESSAGING_DEFAULTS.publishTimeoutMs (backend.ts). */
    publishTimeoutMs?: number;
    /** Messages of the backend worth a line (reconnects, dead letters, lease moves). */
    onLog?: (level: "info" | "warn" | "error", message: string) => void;
}

export interface JoinedRedisGuild {
    backend: RedisMessagingBackend;
    lease: MachineIdLease;
    /** The machine id leased for this process. */
    readonly machineId: number;
    /** Message ids with the leased machine id. */
    ids: { next(priority?: number): bigint };
    claims: RedisRequestClaims;
    /** `enrich_with_history`: the stored messages as Python's model_dump_json(exclude={session_state}) writes them. */
    history: (ids: string[]) => Promise<string[]>;
    /** A claimed request's answer, published (as Python's store writes it) and marked done in one atomic step. */
    publishAnswer: (requestId: string, messages: readonly RusticMessage[]) => Promise<boolean>;
    /** Releases the machine id, closes the claims and the backend. Idempotent. */
    close(): Promise<void>;
}

function describe(e: RedisBackendEvent): [("info" | "warn" | "error"), string] | undefined {
    switch (e.type) {
        case "disconnected": return ["warn", `lost the connection to Redis${e.error ? ` (${e.error.message})` : ""}; reconnecting`];
        case "reconnected": return ["info", `reconnected to Redis; replayed ${e.replayed} message(s) published meanwhile`];
        case "invalid_message": return ["warn", `a message on ${e.topic} is not a valid RusticAI Message (${e.error.message}); skipped and dead-lettered`];
        case "dead_letter_failed": return ["error", `could not write a dead letter for ${e.topic}: ${e.error.message}`];
        case "handler_error": return ["error", `handler failed on ${e.topic} (message ${e.messageId}): ${e.error.message}`];
        case "machine_id": return e.from !== undefined ? ["warn", `machine id moved from ${e.from} to ${e.to} (the lease was lost)`] : undefined;
        case "error": return ["error", e.error.message];
        default: return undefined;
    }
}

/** Connects to Redis and leases a machine id in the guild. Rejects with MessagingUnavailableError when Redis cannot be reached. */
export async function joinRedisGuild(options: JoinRedisGuildOptions): Promise<JoinedRedisGuild> {
    const backend = await RedisMessagingBackend.connect({
        url: options.url,
        ...(options.publishTimeoutMs !== undefined ? { publishTimeoutMs: options.publishTimeoutMs } : {}),
        onEvent: (e) => {
            const line = describe(e);
            if (line) options.onLog?.(...line);
        },
    });
    let lease: MachineIdLease;
    try {
        lease = await backend.lease(options.guildId);
    } catch (err) {
        await backend.close();
        throw err;
    }
    const claimOptions: RedisRequestClaimsOptions = { guildId: options.guildId, agentId: options.agentId };
    if (options.replicaId !== undefined) claimOptions.replicaId = options.replicaId;
    if (options.claimLeaseMs !== undefined) claimOptions.leaseMs = options.claimLeaseMs;
    if (options.claimDoneTtlMs !== undefined) claimOptions.doneTtlMs = options.claimDoneTtlMs;
    const claims = new RedisRequestClaims(backend.redis, claimOptions);
    let closing: Promise<void> | undefined;
    return {
        backend,
        lease,
        get machineId() { return lease.machineId; },
        ids: { next: (priority?: number) => lease.next(priority as never) },
        claims,
        history: async (ids) => {
            const found = await backend.getMessagesById(options.guildId, ids.map((id) => BigInt(id)));
            return found.map((m) => {
                const dict = wireMessageToDict(m);
                delete dict.session_state;
                return stringifyPyJson(dict);
            });
        },
        publishAnswer: async (requestId, messages) => {
            const copies: StoredCopy[] = [];
            for (const m of messages) {
                for (const topic of topicsOf(m)) {
                    const wire = messageToWire({ ...m, topic_published_to: topic } as Message);
                    copies.push({
                        msgKey: `msg:${options.guildId}:${wire.id}`, json: serializeWireMessage(wire), ttlSeconds: backend.messageTtlSeconds,
                        topicKey: namespacedTopic(options.guildId, topic), score: gemstoneParts(wire.id).timestamp,
                    });
                }
            }
            return claims.publishAnswer(requestId, copies, messages.map((m) => m.id));
        },
        close() {
            closing ??= (async () => {
                await claims.close();
                await backend.close(); // releases the machine-id lease too
            })();
            return closing;
        },
    };
}
