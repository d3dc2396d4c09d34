/**
 * The Redis messaging backend, wire-compatible with RusticAI's `rusticai-redis` (redis/messaging/*.py), so TypeScript
 * agents, Python agents and processes on other hosts share one guild:
 *
 * - publish (per topic): `SET msg:{ns}:{id} <json> EX <RUSTIC_AI_REDIS_MSG_TTL|3600>` and `ZADD {ns}:{topic}
 *   <id's ms> <json>` in one pipeline (no MULTI), then `PUBLISH {ns}:{topic} <json>`: the identical JSON,
 *   written as Python's `Message.to_json()` would write it;
 * - subscribe (per client and topic): `SUBSCRIBE {ns}:{topic}` (once per topic and process), `GET
 *   eo:pos:{client}:{ns}:{topic}`, then the backlog (`ZRANGE 0 -1`, or `ZRANGEBYSCORE <ms of the position> +inf`),
 *   delivered in id order; the position is saved (`SET eo:pos:... <id>`, Python's command) as messages are settled;
 * - each client gets its messages one at a time, in order; a handler that throws, and a message that is not a
 *   valid Message, go to `{ns}:dead_letter_queue` as Python writes dead letters, and delivery goes on;
 * - the position is a low watermark: a handler may return `{ settled }` (DeferredSettlement, backend.ts) to say it
 *   handles the message later (an agent host queues a request and answers it later); delivery goes on at once, but
 *   the position only moves past a message once it and every message before it (in (ms, id) order, on that topic,
 *   for that client) is settled. Python saves the position when the handler returns, so a worker killed with
 *   requests queued loses them; here a restarted worker replays them;
 * - after a lost connection (a Redis restart, a network cut), it subscribes again and replays every topic from
 *   its saved position, so nothing published meanwhile is lost (Python's backend loses it); repeats are dropped;
 * - a publish waits for an unreachable Redis at most `publishTimeoutMs` (default MESSAGING_DEFAULTS.publishTimeoutMs,
 *   30 s), then rejects with a MessagingUnavailableError; nothing is queued for Redis meanwhile, so a publish that
 *   timed out is not written later, and one that waited for the reconnect is written once.
 *
 * `RedisMessagingBackend.connect({ url })` (URLs `redis://[user:password@]host:port[/db]` and `rediss://` for
 * TLS). It implements `MessagingBackend` for TypeScript guilds (GuildBuilder.setRedisMessaging), and offers the
 * wire-level calls (`publishWire`, `subscribeWire`) with RusticAI's own message type for hosts of Python-style agents.
 */
import { createHash } from "node:crypto";
import { isIP } from "node:net";
import type { ConnectionOptions } from "node:tls";
import { Redis, type RedisOptions } from "ioredis";
import { MessagingUnavailableError, PhiAgentError, PhiRangeError, PhiTypeError } from "../../errors.js";
import { GemstoneGenerator, decodeGemstoneId, type Priority } from "../../messages/ids.js";
import type { Message } from "../../messages/message.js";
import { buildDeadLetterMessage, deadLetterTopic } from "../../messages/wire/deadLetter.js";
import { gemstoneParts } from "../../messages/wire/gemstone.js";
import { MachineIdLease, type MachineIdLeaseOptions } from "../../messages/wire/machineId.js";
import {
    WireMessageError, cloneWireMessage, parseWireMessage, serializeWireMessage, validateWireMessage, wireTopicsOf,
    type WireMessage,
} from "../../messages/wire/message.js";
import type { PyJson } from "../../messages/wire/json.js";
import { formatFieldErrors } from "../../messages/validation.js";
import { MESSAGING_DEFAULTS, bounded, isDeferredSettlement, type DeferredSettlement, type MessageHandler, type MessagingBackend } from "../backend.js";

/** How long stored messages live (s): RusticAI's `RUSTIC_AI_REDIS_MSG_TTL`, default 3600. */
export const DEFAULT_MESSAGE_TTL_S = 3600;

export interface RedisMessagingBackendOptions {
    /** `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS). Default `redis://127.0.0.1:6379`. */
    url?: string;
    /** TLS settings for `rediss://` (e.g. `{ ca }` for a private CA, `rejectUnauthorized`, client `cert`/`key`). */
    tls?: ConnectionOptions;
    /** Seconds a stored message lives. Default: `RUSTIC_AI_REDIS_MSG_TTL` from the environment, else 3600. */
    messageTtlSeconds?: number;
    /**
     * The guild (namespace) to lease a machine id in right away; `generator` then makes ids with it. A TypeScript
     * guild launched by GuildBuilder.setRedisMessaging passes its id here.
     */
    namespace?: string;
    /** Options of the machine-id lease (range, ttl). */
    machineId?: Omit<MachineIdLeaseOptions, "namespace" | "onChange">;
    /** The name written as `delivery_backend` in dead letters. Default "RedisMessagingBackend". */
    deliveryBackendName?: string;
    /** How long the first connection may take (ms). Default 10000. */
    connectTimeoutMs?: number;
    /**
     * How long a publish may wait for Redis while it is unreachable (ms), counted from the call; then it rejects
     * with a MessagingUnavailableError (code ERR_MESSAGING_UNAVAILABLE). Default MESSAGING_DEFAULTS.publishTimeoutMs.
     */
    publishTimeoutMs?: number;
    /** Reports what the backend cannot throw at anyone: handler failures, dead letters, reconnects, lease moves. */
    onEvent?: (event: RedisBackendEvent) => void;
}

export type RedisBackendEvent =
    | { type: "handler_error"; clientId: string; topic: string; messageId: bigint; error: Error }
    | { type: "invalid_message"; clientId: string; topic: string; error: WireMessageError; text: string }
    | { type: "dead_letter"; clientId: string; topic: string; deadLetterId: bigint; originalId: bigint }
    | { type: "dead_letter_failed"; clientId: string; topic: string; error: Error }
    | { type: "position_failed"; clientId: string; topic: string; error: Error }
    | { type: "replay_failed"; clientId: string; topic: string; error: Error }
    | { type: "disconnected"; error?: Error }
    | { type: "reconnected"; replayed: number }
    | { type: "machine_id"; namespace: string; from?: number; to: number }
    | { type: "error"; error: Error };

/** What a wire-level handler gets besides the message. */
export interface WireDelivery {
    /** The namespaced topic (`{ns}:{topic}`). */
    topic: string;
    /** The JSON exactly as it came. */
    text: string;
    /** true when it came from the backlog (on subscribe or after a reconnect), false when live. */
    replayed: boolean;
}

/**
 * A wire-level handler. It may return (or resolve with) a DeferredSettlement (`{ settled }`) when it handles the
 * message later: the next message comes at once, and the position moves past this one when `settled` resolves.
 */
export type WireHandler = (message: WireMessage, delivery: WireDelivery) => void | DeferredSettlement | Promise<void | DeferredSettlement>;

interface ClientSub {
    clientId: string;
    namespace: string | null;
    topic: string;
    handler: WireHandler;
    /** Ids delivered (or being delivered) to this client on this topic, oldest first. */
    seen: Set<bigint>;
    /** Order keys (orderKey) of the messages queued or being handled and not settled yet. */
    outstanding: Set<bigint>;
    /** Order keys of settled messages the saved position does not cover yet (an earlier one is outstanding), ascending. */
    settled: bigint[];
    /** The order key of the position saved (or loaded) last; 0n for none. */
    savedKey: bigint;
}

interface ClientQueue {
    items: QueueItem[];
    running: boolean;
}

type QueueItem =
    | { kind: "message"; sub: ClientSub; message: WireMessage; text: string; replayed: boolean }
    | { kind: "invalid"; sub: ClientSub; text: string; error: WireMessageError; value?: PyJson };

const SEEN_LIMIT = 10_000;
const ID_BITS = 64n;
const ID_MASK = (1n << ID_BITS) - 1n;

/**
 * A message's place in a topic's order as the replay reads positions: its ms first, then its id (the replay takes
 * what has a later ms, or the same ms and a larger id).
 */
function orderKey(id: bigint): bigint {
    return (BigInt(gemstoneParts(id).timestamp) << ID_BITS) | (id & ID_MASK);
}
const WIRE = Symbol.for("llm-phi-agent.wireMessage");

/** `redis://user:***@host:port` (the password never appears in errors). */
export function maskRedisUrl(url: string): string {
    try {
        const u = new URL(url);
        if (u.password) u.password = "***";
        return u.toString().replace(/\/$/, "");
    } catch {
        return "<unparseable URL>";
    }
}

/** ioredis options from a Redis URL (user, password, db, TLS). Throws a RangeError for a URL that is not redis(s)://. */
export function redisOptionsFromUrl(url: string, tls?: ConnectionOptions): RedisOptions {
    if (typeof url !== "string") throw new PhiTypeError(`Redis URL must be a string; got ${typeof url}`);
    let u: URL;
    try {
        u = new URL(url);
    } catch {
        throw new PhiRangeError(`Redis URL ${JSON.stringify(maskRedisUrl(url))} is not a URL; use redis://[user:password@]host:port[/db] or rediss://... for TLS`);
    }
    if (u.protocol !== "redis:" && u.protocol !== "rediss:") {
        throw new PhiRangeError(`Redis URL must start with redis:// or rediss:// (TLS); got ${JSON.stringify(u.protocol)}`);
    }
    const db = u.pathname && u.pathname !== "/" ? Number(u.pathname.slice(1)) : 0;
    if (!Number.isInteger(db) || db < 0) throw new PhiRangeError(`Redis URL: the database must be a number (/0, /1, ...); got ${JSON.stringify(u.pathname)}`);
    const options: RedisOptions = {
        host: u.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1",
        port: u.port ? Number(u.port) : 6379,
        db,
    };
    if (u.username) options.username = decodeURIComponent(u.username);
    if (u.password) options.password = decodeURIComponent(u.password);
    if (u.protocol === "rediss:") options.tls = { ...(isIP(options.host!) ? {} : { servername: options.host! }), ...(tls ?? {}) };
    return options;
}

function messageTtl(option: number | undefined): number {
    if (option !== undefined) {
        if (!Number.isInteger(option) || option <= 0) throw new PhiRangeError(`messageTtlSeconds must be a positive integer; got ${String(option)}`);
        return option;
    }
    const env = process.env.RUSTIC_AI_REDIS_MSG_TTL;
    if (env === undefined || env === "") return DEFAULT_MESSAGE_TTL_S;
    const n = Number(env);
    if (!Number.isInteger(n) || n <= 0) throw new PhiRangeError(`RUSTIC_AI_REDIS_MSG_TTL must be a positive integer (seconds); got ${JSON.stringify(env)}`);
    return n;
}

/** Python's `_get_namespaced_topic`: `{ns}:{topic}` unless the topic already starts with `{ns}:`. */
export function namespacedTopic(namespace: string, topic: string): string {
    return topic.startsWith(`${namespace}:`) ? topic : `${namespace}:${topic}`;
}

/** How long unsubscribing waits for Redis to confirm before it goes on without (the connection dropped meanwhile). */
const UNSUBSCRIBE_WAIT_MS = 2_000;

/** `eo:pos:{clientId}:{namespacedTopic}`, the key of a client's position on a topic. */
export function positionKey(clientId: string, topic: string): string {
    return `eo:pos:${clientId}:${topic}`;
}

function asError(err: unknown): Error {
    return err instanceof Error ? err : new Error(String(err));
}

function publishTimeout(option: number | undefined): number {
    if (option === undefined) return MESSAGING_DEFAULTS.publishTimeoutMs;
    if (typeof option !== "number" || !Number.isInteger(option) || option < 1) {
        throw new PhiRangeError(`publishTimeoutMs must be a positive integer (ms); got ${String(option)}`);
    }
    return option;
}

export class RedisMessagingBackend implements MessagingBackend {
    readonly url: string;
    readonly messageTtlSeconds: number;
    /** How long a publish waits for an unreachable Redis (ms). */
    readonly publishTimeoutMs: number;
    readonly #redis: Redis;
    readonly #sub: Redis;
    readonly #onEvent: RedisMessagingBackendOptions["onEvent"];
    readonly #deliveryName: string;
    readonly #leaseOptions: RedisMessagingBackendOptions["machineId"];
    readonly #leases = new Map<string, Promise<MachineIdLease>>();
    #defaultLease?: MachineIdLease;
    #generator?: GemstoneGenerator;
    /** namespaced topic → clientId → subscription */
    readonly #topics = new Map<string, Map<string, ClientSub>>();
    readonly #queues = new Map<string, ClientQueue>();
    /** namespaced topic → its SUBSCRIBE (done or in flight) */
    readonly #subscribed = new Map<string, Promise<unknown>>();
    #publishChain: Promise<unknown> = Promise.resolve();
    #closed = false;
    #closing?: Promise<void>;
    /** Rejects when close() gives up on a Redis that is away: every wait on Redis races it. */
    readonly #abandoned: Promise<never>;
    #abandon!: (err: Error) => void;
    #wasReady = false;
    #reconnecting = false;
    readonly #badSeen = new Set<string>();
    readonly #idle = new Set<() => void>();

    private constructor(options: RedisMessagingBackendOptions, redis: Redis, sub: Redis) {
        this.url = maskRedisUrl(options.url ?? "redis://127.0.0.1:6379");
        this.messageTtlSeconds = messageTtl(options.messageTtlSeconds);
        this.publishTimeoutMs = publishTimeout(options.publishTimeoutMs);
        this.#redis = redis;
        this.#sub = sub;
        this.#onEvent = options.onEvent;
        this.#deliveryName = options.deliveryBackendName ?? "RedisMessagingBackend";
        this.#leaseOptions = options.machineId;
        this.#abandoned = new Promise<never>((_, reject) => { this.#abandon = reject; });
        this.#abandoned.catch(() => undefined);
        sub.on("message", (channel: string, text: string) => this.#onPubSub(channel, text));
        sub.on("ready", () => {
            if (this.#wasReady) void this.#resume();
            this.#wasReady = true;
        });
        sub.on("close", () => { if (!this.#closed && this.#wasReady) this.#emit({ type: "disconnected" }); });
        for (const c of [redis, sub]) c.on("error", (err: Error) => { if (!this.#closed) this.#emit({ type: "error", error: err }); });
    }

    /**
     * Connects (two connections: commands and pub/sub) and, with `namespace`, leases a machine id there. Rejects
     * with a MessagingUnavailableError (code ERR_MESSAGING_UNAVAILABLE) when Redis cannot be reached or refuses
     * the login, and with a RangeError for a bad URL or option.
     */
    static async connect(options: RedisMessagingBackendOptions = {}): Promise<RedisMessagingBackend> {
        if (options === null || typeof options !== "object") throw new PhiTypeError(`RedisMessagingBackend.connect: options must be an object; got ${options === null ? "null" : typeof options}`);
        const url = options.url ?? "redis://127.0.0.1:6379";
        messageTtl(options.messageTtlSeconds);
        publishTimeout(options.publishTimeoutMs);
        const base: RedisOptions = {
            ...redisOptionsFromUrl(url, options.tls),
            lazyConnect: true,
            connectTimeout: options.connectTimeoutMs ?? 10_000,
            // keep reconnecting while the backend is open (a restart, a network cut); commands wait meanwhile
            retryStrategy: (times) => Math.min(50 * times, 1000),
            maxRetriesPerRequest: null,
            autoResubscribe: false,
            enableReadyCheck: true,
        };
        const redis = new Redis(base);
        const sub = new Redis(base);
        // the error events say why (WRONGPASS, NOAUTH, a certificate); connect() itself only says "closed"
        let cause: Error | undefined;
        const remember = (err: Error) => { cause ??= err; };
        redis.on("error", remember);
        sub.on("error", remember);
        const first = async (c: Redis) => {
            try {
                await c.connect();
            } catch (err) {
                const why = (cause ?? asError(err)).message.replace(/\.+$/, "");
                throw new MessagingUnavailableError(`Cannot connect to Redis at ${maskRedisUrl(url)}: ${why}. ` +
                    `Check that redis-server runs there, the user and password in the URL, and rediss:// for a TLS port`,
                { cause: cause ?? err, details: { url: maskRedisUrl(url) } });
            }
        };
        try {
            await first(redis);
            await first(sub);
        } catch (err) {
            redis.disconnect();
            sub.disconnect();
            throw err;
        }
        redis.off("error", remember);
        sub.off("error", remember);
        const backend = new RedisMessagingBackend(options, redis, sub);
        backend.#wasReady = true;
        if (options.namespace !== undefined) {
            try {
                backend.#defaultLease = await backend.lease(options.namespace);
            } catch (err) {
                await backend.close();
                throw err;
            }
        }
        return backend;
    }

    get closed(): boolean {
        return this.#closed;
    }

    /** The command connection (for other Redis work, e.g. claims); do not close it. */
    get redis(): Redis {
        return this.#redis;
    }

    /**
     * This process's machine-id lease in `namespace` (one per namespace, made on first use): its `next()` makes
     * GemstoneIDs that no other process of the guild makes.
     */
    lease(namespace: string): Promise<MachineIdLease> {
        this.#assertOpen("lease");
        let p = this.#leases.get(namespace);
        if (!p) {
            p = MachineIdLease.acquire(this.#redis, {
                ...(this.#leaseOptions ?? {}),
                namespace,
                onChange: (e) => {
                    if (e.type === "moved") this.#emit({ type: "machine_id", namespace, from: e.from, to: e.to });
                },
            });
            this.#leases.set(namespace, p);
            p.then((l) => this.#emit({ type: "machine_id", namespace, to: l.machineId }), () => this.#leases.delete(namespace));
        }
        return p;
    }

    /**
     * Ids for a TypeScript guild in the namespace given to connect(): the leased machine id (a Guild uses this
     * instead of its own random one). Undefined when connect() had no namespace.
     */
    get generator(): GemstoneGenerator | undefined {
        if (!this.#defaultLease) return undefined;
        this.#generator ??= new LeasedGemstoneGenerator(this.#defaultLease);
        return this.#generator;
    }

    // ------------------------------------------------------------------ publishing

    /**
     * Stores and publishes `message` on one topic exactly as RusticAI's `RedisMessageStore.store_message`:
     * SET msg:... EX, ZADD (score: the id's ms) in a pipeline, then PUBLISH, all with the same JSON. The message is
     * written as it is (set `topic_published_to` first, or use publishToTopics). Publishes of one backend go out
     * in call order. Rejects with a WireMessageError for a message Python could not read (nothing is written), or
     * a MessagingUnavailableError once the backend is closed, or when Redis stayed unreachable for
     * `publishTimeoutMs` (then nothing is written, unless the commands had gone out before the connection broke:
     * the error's `details.sent` says so). A publish that waited for a reconnect within the bound is written once.
     */
    publishWire(namespace: string, topic: string, message: WireMessage): Promise<void> {
        this.#assertOpen("publish");
        const json = serializeWireMessage(message);
        const { timestamp } = gemstoneParts(message.id);
        return this.#store(namespace, namespacedTopic(namespace, topic), message.id, timestamp, json);
    }

    /**
     * Publishes to each of the message's topics as Python's `MessagingInterface.publish`: a copy per topic with
     * `topic_published_to` set to that (bare) topic.
     */
    async publishToTopics(namespace: string, message: WireMessage): Promise<void> {
        for (const topic of wireTopicsOf(message)) {
            const copy = cloneWireMessage(message);
            copy.topic_published_to = topic;
            await this.publishWire(namespace, topic, copy);
        }
    }

    #store(namespace: string, nsTopic: string, id: bigint, timestamp: number, json: string): Promise<void> {
        // the bound counts from the call (a publish queued behind a waiting one waits no longer)
        const deadline = performance.now() + this.publishTimeoutMs;
        const run = async () => {
            const sent = { value: false };
            try {
                // nothing goes to ioredis's offline queue: what timed out must not be written when Redis comes back
                await this.#whenReady(deadline, nsTopic, sent);
                sent.value = true;
                const results = await this.#bounded(this.#redis.pipeline()
                    .set(`msg:${namespace}:${id}`, json, "EX", this.messageTtlSeconds)
                    .zadd(nsTopic, timestamp, json)
                    .exec(), deadline, nsTopic, sent);
                const failed = results?.find(([err]) => err);
                if (failed) throw failed[0];
                await this.#bounded(this.#redis.publish(nsTopic, json), deadline, nsTopic, sent);
            } catch (err) {
                throw this.#unavailable(`publish to ${nsTopic}`, err);
            }
        };
        const p = this.#publishChain.then(run, run);
        this.#publishChain = p.catch(() => undefined);
        return p;
    }

    /** Resolves when the command connection is ready; rejects once `deadline` (performance.now()) has passed. */
    #whenReady(deadline: number, nsTopic: string, sent: { value: boolean }): Promise<void> {
        if (this.#redis.status === "ready") return Promise.resolve();
        let onReady!: () => void;
        const ready = new Promise<void>((resolve) => {
            onReady = resolve;
            this.#redis.once("ready", onReady);
        });
        return this.#bounded(ready, deadline, nsTopic, sent).finally(() => this.#redis.off("ready", onReady));
    }

    /** `p`, raced with the publish's deadline and with close() giving up. */
    #bounded<T>(p: Promise<T>, deadline: number, nsTopic: string, sent: { value: boolean }): Promise<T> {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(this.#publishTimedOut(nsTopic, sent.value)), Math.max(0, deadline - performance.now()));
        });
        return Promise.race([p, timeout, this.#abandoned]).finally(() => clearTimeout(timer));
    }

    #publishTimedOut(nsTopic: string, sent: boolean): MessagingUnavailableError {
        return new MessagingUnavailableError(
            `Redis at ${this.url} was unreachable for ${this.publishTimeoutMs} ms, so the publish to ${nsTopic} gave up ` +
            (sent
                ? "after its commands had gone out (it may still be applied when Redis is back). "
                : "(nothing was written). ") +
            "Check that redis-server runs there and is reachable, then publish again; or raise publishTimeoutMs",
            { details: { url: this.url, topic: nsTopic, timeoutMs: this.publishTimeoutMs, sent } });
    }

    /** The stored messages with these ids (`GET msg:{ns}:{id}`, for `enrich_with_history`); missing ones are left out. */
    async getMessagesById(namespace: string, ids: readonly bigint[]): Promise<WireMessage[]> {
        this.#assertOpen("getMessagesById");
        if (ids.length === 0) return [];
        const pipe = this.#redis.pipeline();
        for (const id of ids) pipe.get(`msg:${namespace}:${id}`);
        const results = (await this.#guard(pipe.exec())) ?? [];
        const out: WireMessage[] = [];
        for (const [err, text] of results) {
            if (err || typeof text !== "string") continue;
            const r = parseWireMessage(text);
            if (r.ok) out.push(r.message);
        }
        return out;
    }

    // ------------------------------------------------------------------ subscribing

    /**
     * Subscribes `clientId` to `topic` in `namespace` with Python's per-client delivery: SUBSCRIBE (first client of
     * the topic here), GET its position, replay the backlog after it, then live messages, one at a time, in order;
     * the position is saved after each. Resolves once subscribed and the backlog is queued. A second subscribe of
     * the same client and topic replaces the handler. The position moves past a message once it is settled: when
     * the handler returns, or, when it returns `{ settled }`, when that resolves (WireHandler).
     */
    async subscribeWire(namespace: string, topic: string, clientId: string, handler: WireHandler): Promise<void> {
        this.#assertOpen("subscribe");
        if (typeof handler !== "function") throw new PhiTypeError(`subscribe: handler must be a function; got ${typeof handler}`);
        if (typeof clientId !== "string" || clientId.length === 0) throw new PhiTypeError(`subscribe: clientId must be a non-empty string; got ${JSON.stringify(clientId)}`);
        const nsTopic = namespacedTopic(namespace, topic);
        let clients = this.#topics.get(nsTopic);
        const first = !clients;
        if (!clients) this.#topics.set(nsTopic, (clients = new Map()));
        const existing = clients.get(clientId);
        if (existing) {
            existing.handler = handler;
            return;
        }
        const sub: ClientSub = { clientId, namespace, topic: nsTopic, handler, seen: new Set(), outstanding: new Set(), settled: [], savedKey: 0n };
        clients.set(clientId, sub);
        try {
            if (first) this.#subscribed.set(nsTopic, this.#sub.subscribe(nsTopic));
            await this.#guard(this.#subscribed.get(nsTopic)!);
            await this.#replay(sub);
        } catch (err) {
            clients.delete(clientId);
            if (clients.size === 0) {
                this.#topics.delete(nsTopic);
                this.#subscribed.delete(nsTopic);
            }
            throw this.#unavailable(`subscribe to ${nsTopic}`, err);
        }
    }

    /** Removes a client's subscription; UNSUBSCRIBE when it was the topic's last client here. */
    async unsubscribeWire(namespace: string, topic: string, clientId: string): Promise<void> {
        const nsTopic = namespacedTopic(namespace, topic);
        const clients = this.#topics.get(nsTopic);
        if (!clients || !clients.delete(clientId)) return;
        if (clients.size === 0) {
            this.#topics.delete(nsTopic);
            this.#subscribed.delete(nsTopic);
            // with Redis away, an UNSUBSCRIBE would wait for it: the connection it would cancel is gone, and the
            // one that comes back subscribes only to what is still wanted (#resume). A connection that drops while
            // it is on its way is waited for a moment at most.
            if (!this.#closed && this.#sub.status === "ready") {
                await bounded(this.#sub.unsubscribe(nsTopic), UNSUBSCRIBE_WAIT_MS, "Redis did not confirm the UNSUBSCRIBE").catch(() => undefined);
            }
        }
    }

    /** Loads the position and queues the backlog after it (Python's `_replay_backlog`). Returns how many were queued. */
    async #replay(sub: ClientSub): Promise<number> {
        const raw = await this.#guard(this.#redis.get(positionKey(sub.clientId, sub.topic)));
        const last = raw !== null && /^\d+$/.test(raw) ? BigInt(raw) : 0n;
        if (last !== 0n && orderKey(last) > sub.savedKey) sub.savedKey = orderKey(last);
        const texts = await this.#guard(last === 0n
            ? this.#redis.zrange(sub.topic, "0", "-1")
            : this.#redis.zrangebyscore(sub.topic, String(gemstoneParts(last).timestamp), "+inf"));
        const lastTs = last === 0n ? -1 : gemstoneParts(last).timestamp;
        const good: { message: WireMessage; text: string }[] = [];
        for (const text of texts) {
            const r = parseWireMessage(text);
            if (!r.ok) {
                this.#enqueue({ kind: "invalid", sub, text, error: r.error, ...(r.value !== undefined ? { value: r.value } : {}) });
                continue;
            }
            // after the position: later ms, or the same ms and a larger id (Python filters on the id alone, which
            // drops urgent messages sent after a normal one)
            const ts = gemstoneParts(r.message.id).timestamp;
            if (last !== 0n && !(ts > lastTs || r.message.id > last)) continue;
            good.push({ message: r.message, text });
        }
        good.sort((a, b) => (a.message.id < b.message.id ? -1 : a.message.id > b.message.id ? 1 : 0));
        for (const g of good) this.#enqueue({ kind: "message", sub, message: g.message, text: g.text, replayed: true });
        return good.length;
    }

    /** After a reconnect: subscribe again to every topic, then replay each client from its saved position. */
    async #resume(): Promise<void> {
        if (this.#closed || this.#reconnecting) return;
        this.#reconnecting = true;
        let replayed = 0;
        try {
            const topics = [...this.#topics.keys()];
            if (topics.length > 0) await this.#sub.subscribe(...topics);
            for (const clients of [...this.#topics.values()]) {
                for (const sub of [...clients.values()]) {
                    try {
                        replayed += await this.#replay(sub);
                    } catch (err) {
                        this.#emit({ type: "replay_failed", clientId: sub.clientId, topic: sub.topic, error: asError(err) });
                    }
                }
            }
            this.#emit({ type: "reconnected", replayed });
        } catch (err) {
            this.#emit({ type: "error", error: asError(err) });
        } finally {
            this.#reconnecting = false;
        }
    }

    #onPubSub(channel: string, text: string): void {
        const clients = this.#topics.get(channel);
        if (!clients || clients.size === 0) return;
        const r = parseWireMessage(text);
        for (const sub of clients.values()) {
            if (r.ok) this.#enqueue({ kind: "message", sub, message: clients.size > 1 ? cloneWireMessage(r.message) : r.message, text, replayed: false });
            else this.#enqueue({ kind: "invalid", sub, text, error: r.error, ...(r.value !== undefined ? { value: r.value } : {}) });
        }
    }

    #enqueue(item: QueueItem): void {
        if (item.kind === "message") {
            // the same message can come live and from a replay: deliver it once
            if (item.sub.seen.has(item.message.id)) return;
            item.sub.seen.add(item.message.id);
            if (item.sub.seen.size > SEEN_LIMIT) item.sub.seen.delete(item.sub.seen.values().next().value!);
            item.sub.outstanding.add(orderKey(item.message.id));
        }
        let q = this.#queues.get(item.sub.clientId);
        if (!q) this.#queues.set(item.sub.clientId, (q = { items: [], running: false }));
        q.items.push(item);
        if (!q.running) void this.#drain(item.sub.clientId, q);
    }

    async #drain(clientId: string, q: ClientQueue): Promise<void> {
        q.running = true;
        try {
            while (q.items.length > 0 && !this.#closed) {
                const item = q.items.shift()!;
                // a client that left does not get what was queued for it
                if (this.#topics.get(item.sub.topic)?.get(item.sub.clientId) !== item.sub) continue;
                if (item.kind === "message") await this.#deliver(item);
                else await this.#invalid(item);
            }
        } finally {
            q.running = false;
            if (q.items.length === 0) this.#queues.delete(clientId);
            if (this.#queues.size === 0) for (const f of [...this.#idle]) f();
        }
    }

    async #deliver(item: Extract<QueueItem, { kind: "message" }>): Promise<void> {
        const { sub, message } = item;
        let result: unknown;
        try {
            result = await sub.handler(message, { topic: sub.topic, text: item.text, replayed: item.replayed });
        } catch (err) {
            await this.#handlerFailed(sub, message, err);
            result = undefined;
        }
        if (isDeferredSettlement(result)) {
            // settled later: delivery goes on now; the position moves when it settles (and all before it have)
            Promise.resolve(result.settled).then(
                (ok) => this.#settle(sub, message.id, ok !== false),
                async (err: unknown) => {
                    await this.#handlerFailed(sub, message, err);
                    await this.#settle(sub, message.id, true);
                });
            return;
        }
        await this.#settle(sub, message.id, true);
    }

    async #handlerFailed(sub: ClientSub, message: WireMessage, err: unknown): Promise<void> {
        const error = asError(err);
        this.#emit({ type: "handler_error", clientId: sub.clientId, topic: sub.topic, messageId: message.id, error });
        await this.#deadLetter(sub, message, error.name || error.constructor?.name || "Error", error.message);
    }

    /**
     * A message is settled (`handled`), or given up unhandled (`handled` false: the position never moves past it
     * while this subscription lasts, so the next one replays it). Saves the new low watermark, if it moved: the
     * largest settled message such that none before it (in the replay's order) is outstanding.
     */
    async #settle(sub: ClientSub, id: bigint, handled: boolean): Promise<void> {
        const key = orderKey(id);
        if (!handled) return; // it stays outstanding
        if (!sub.outstanding.delete(key)) return;
        if (key > sub.savedKey) {
            let i = sub.settled.length;
            while (i > 0 && sub.settled[i - 1]! > key) i--;
            sub.settled.splice(i, 0, key);
        }
        let low: bigint | undefined;
        for (const k of sub.outstanding) if (low === undefined || k < low) low = k;
        let n = 0;
        while (n < sub.settled.length && (low === undefined || sub.settled[n]! < low)) n++;
        if (n === 0) return;
        const position = sub.settled[n - 1]!;
        sub.settled.splice(0, n);
        if (position <= sub.savedKey || this.#closed) return;
        // a client that subscribed again has a newer record of its own: an old one's late settlement leaves it be
        const current = this.#topics.get(sub.topic)?.get(sub.clientId);
        if (current !== undefined && current !== sub) return;
        sub.savedKey = position;
        try {
            await this.#guard(this.#redis.set(positionKey(sub.clientId, sub.topic), (position & ID_MASK).toString()));
        } catch (err) {
            this.#emit({ type: "position_failed", clientId: sub.clientId, topic: sub.topic, error: asError(err) });
        }
    }

    async #invalid(item: Extract<QueueItem, { kind: "invalid" }>): Promise<void> {
        const { sub } = item;
        this.#emit({ type: "invalid_message", clientId: sub.clientId, topic: sub.topic, error: item.error, text: item.text });
        // once per client, topic and text (a bad ZSET member is seen again on every replay)
        const key = createHash("sha1").update(`${sub.clientId}\u0000${sub.topic}\u0000${item.text}`).digest("hex");
        if (this.#badSeen.has(key)) return;
        this.#badSeen.add(key);
        if (this.#badSeen.size > SEEN_LIMIT) this.#badSeen.delete(this.#badSeen.values().next().value!);
        await this.#deadLetter(sub, { text: item.text, ...(item.value !== undefined ? { value: item.value } : {}) },
            item.error.pythonErrorType, formatFieldErrors(item.error.errors));
    }

    async #deadLetter(sub: ClientSub, original: WireMessage | { text: string; value?: PyJson }, errorType: string, errorMessage: string): Promise<void> {
        const dlTopic = deadLetterTopic(sub.topic, sub.namespace);
        if (dlTopic === sub.topic) return; // a failing dead-letter handler: no dead letter of a dead letter
        const dlNamespace = sub.namespace ?? (sub.topic.includes(":") ? sub.topic.slice(0, sub.topic.indexOf(":")) : "__dead_letter__");
        try {
            const lease = await this.lease(dlNamespace);
            const dl = buildDeadLetterMessage({
                generator: lease.generator, deliveryBackend: this.#deliveryName, clientId: sub.clientId,
                originalTopic: sub.topic, original, errorType, errorMessage,
            });
            await this.#store(dlNamespace, dlTopic, dl.id, gemstoneParts(dl.id).timestamp, serializeWireMessage(dl));
            this.#emit({ type: "dead_letter", clientId: sub.clientId, topic: sub.topic, deadLetterId: dl.id, originalId: dl.in_response_to ?? 0n });
        } catch (err) {
            this.#emit({ type: "dead_letter_failed", clientId: sub.clientId, topic: sub.topic, error: asError(err) });
        }
    }

    /** Resolves when every queued delivery has been handled (for tests and orderly shutdown). */
    idle(): Promise<void> {
        if (this.#queues.size === 0) return Promise.resolve();
        return new Promise((resolve) => {
            const done = () => { this.#idle.delete(done); resolve(); };
            this.#idle.add(done);
        });
    }

    // ------------------------------------------------------------------ MessagingBackend (TypeScript guilds)

    /** MessagingBackend.publish: the guild's Message, written as a RusticAI Message (its ids must be GemstoneIDs). */
    publish(namespace: string, topic: string, message: Message): Promise<void> {
        this.#assertOpen("publish");
        return this.publishWire(namespace, topic, messageToWire(message));
    }

    /** MessagingBackend.subscribe: client id `{namespace}${subscriberId}`, as a Python agent's. */
    subscribe(namespace: string, topic: string, subscriberId: string, handler: MessageHandler): Promise<void> {
        if (typeof handler !== "function") throw new PhiTypeError(`subscribe: handler must be a function; got ${typeof handler}`);
        return this.subscribeWire(namespace, topic, `${namespace}$${subscriberId}`, (m, info) => handler(wireToMessage(m), { replayed: info.replayed }));
    }

    unsubscribe(namespace: string, topic: string, subscriberId: string): Promise<void> {
        return this.unsubscribeWire(namespace, topic, `${namespace}$${subscriberId}`);
    }

    /**
     * Unsubscribes everything, waits for pending publishes, releases the machine-id leases and closes both
     * connections. Idempotent; never rejects. Later calls fail with a MessagingUnavailableError.
     */
    close(): Promise<void> {
        this.#closing ??= this.#close();
        return this.#closing;
    }

    async [Symbol.asyncDispose](): Promise<void> {
        await this.close();
    }

    async #close(): Promise<void> {
        const topics = [...this.#topics.keys()];
        this.#closed = true;
        this.#topics.clear();
        for (const f of [...this.#idle]) f();
        const quick = this.#redis.status === "ready" && this.#sub.status === "ready";
        if (!quick) {
            // Redis is away: what waits for it would wait forever; reject it now, and drop the connections
            this.#abandon(new MessagingUnavailableError(`RedisMessagingBackend at ${this.url} was closed while Redis was unreachable; the operation did not complete`, { details: { url: this.url } }));
            for (const c of [this.#sub, this.#redis]) c.disconnect();
        }
        await this.#publishChain.catch(() => undefined);
        if (quick) {
            for (const t of topics) await this.#sub.unsubscribe(t).catch(() => undefined);
        }
        for (const p of [...this.#leases.values()]) {
            const lease = await p.catch(() => undefined);
            if (lease && quick) await lease.release();
        }
        this.#leases.clear();
        if (quick) for (const c of [this.#sub, this.#redis]) await c.quit().catch(() => c.disconnect());
    }

    /** `p`, or the rejection of a close() that gave up on an unreachable Redis. */
    #guard<T>(p: Promise<T>): Promise<T> {
        return Promise.race([p, this.#abandoned]);
    }

    #assertOpen(what: string): void {
        if (this.#closed) {
            throw new MessagingUnavailableError(`RedisMessagingBackend.${what}: the backend is closed; connect a new one`, { details: { url: this.url } });
        }
    }

    #unavailable(what: string, err: unknown): Error {
        if (err instanceof PhiAgentError || err instanceof PhiTypeError || err instanceof PhiRangeError) return err;
        return new MessagingUnavailableError(`Redis at ${this.url}: ${what} failed: ${asError(err).message}`, { cause: err, details: { url: this.url } });
    }

    #emit(event: RedisBackendEvent): void {
        try {
            this.#onEvent?.(event);
        } catch {
            // a failing listener must not break delivery
        }
    }
}

/** Ids of a TypeScript guild made with a leased machine id (the string form the guild's Message uses). */
class LeasedGemstoneGenerator extends GemstoneGenerator {
    readonly #lease: MachineIdLease;
    constructor(lease: MachineIdLease) {
        super(lease.machineId);
        this.#lease = lease;
        Object.defineProperty(this, "machineId", { get: () => lease.machineId, enumerable: true });
    }
    override next(priority?: Priority): ReturnType<GemstoneGenerator["next"]> {
        const id = this.#lease.next(priority);
        return { id: id.toString(), ...decodeGemstoneId(id.toString()) };
    }
}

/**
 * The guild's Message as a RusticAI Message: ids to bigints, Python's defaults for the fields it lacks, and any
 * RusticAI fields it carries (e.g. a `routing_slip` of a message that came from Python) kept. Throws a
 * WireMessageError naming the field when Python could not read it.
 */
export function messageToWire(message: Message<unknown>): WireMessage {
    const original = (message as { [WIRE]?: WireMessage })[WIRE];
    const draft: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(message)) {
        if (k === "timestamp" || k === "priority") continue;
        draft[k] = v;
    }
    const toId = (v: unknown) => (typeof v === "string" && /^\d+$/.test(v) ? BigInt(v) : v);
    draft.id = toId(message.id);
    if (Array.isArray(draft.thread)) draft.thread = draft.thread.map(toId);
    for (const k of ["in_response_to", "conversation_id"]) if (draft[k] !== undefined) draft[k] = toId(draft[k]);
    if (original) {
        // fields the guild's Message does not model come back from the RusticAI message it was read from
        for (const k of ["forward_header", "routing_slip", "message_history", "ttl", "traceparent", "session_state", "enrich_with_history", "process_status", "origin_guild_stack"] as const) {
            if (!(k in message)) draft[k] = original[k];
        }
    }
    const r = validateWireMessage(draft);
    if (!r.message) throw new WireMessageError(`Cannot write this message for RusticAI: ${formatFieldErrors(r.errors)}`, r.errors, "message");
    return r.message;
}

/** A RusticAI Message as the guild's Message (ids as decimal strings); the full RusticAI message stays attached. */
export function wireToMessage(wire: WireMessage): Message {
    const { priority, timestamp } = gemstoneParts(wire.id);
    const m: Message = {
        id: wire.id.toString(),
        sender: { id: wire.sender.id, name: wire.sender.name },
        topics: wire.topics,
        recipient_list: wire.recipient_list.map((t) => ({ id: t.id, name: t.name })),
        format: wire.format,
        payload: wire.payload as Record<string, unknown>,
        in_response_to: wire.in_response_to === null ? null : wire.in_response_to.toString(),
        thread: wire.thread.map((t) => t.toString()),
        conversation_id: wire.conversation_id === null ? null : wire.conversation_id.toString(),
        timestamp,
        priority,
        is_error_message: wire.is_error_message,
        topic_published_to: wire.topic_published_to,
    };
    Object.defineProperty(m, WIRE, { value: wire, enumerable: false });
    return m;
}

/** The RusticAI message a guild Message was read from (wireToMessage), if any. */
export function wireMessageOf(message: Message<unknown>): WireMessage | undefined {
    return (message as { [WIRE]?: WireMessage })[WIRE];
}
