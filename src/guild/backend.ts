/**
 * The messaging backend: how messages travel between the members of a guild. Agents and clients
 * only see this interface, so a networked backend (Redis, NATS, ...) can replace the embedded
 * in-memory one without touching them.
 */
import { PhiAgentError, PhiRangeError, PhiTypeError } from "../errors.js";
import type { GemstoneGenerator } from "../messages/ids.js";
import type { Message } from "../messages/message.js";

/**
 * What a handler returns (or resolves with) to say "handled later": the message is settled when `settled`
 * resolves. A backend that keeps positions (the Redis one) moves a subscriber's position past a message only once
 * it is settled, so a process killed meanwhile gets it again from the backlog. `settled` resolving `false` means
 * "not handled here" (e.g. handed back at shutdown): the position stays before it, and the next subscription of
 * the same subscriber replays it. A rejection counts as a failed handler. Delivery does not wait for it: the next
 * message comes as soon as the handler returns.
 */
export interface DeferredSettlement {
    readonly settled: PromiseLike<boolean | void>;
}

/**
 * Receives one message. May return a promise; a rejection is reported, never thrown at the publisher. May return
 * (or resolve with) a DeferredSettlement when the message is only settled later.
 */
export type MessageHandler = (message: Message, info?: DeliveryInfo) => void | DeferredSettlement | Promise<void | DeferredSettlement>;

/** What a backend may tell a handler besides the message. */
export interface DeliveryInfo {
    /**
     * The message came from a replay of the topic's backlog (a subscription starting, or a reconnect), not live:
     * it may be old, and may have been handled already (by this subscriber before it restarted, or by another).
     */
    readonly replayed: boolean;
}

/** Whether a handler's result is a DeferredSettlement. */
export function isDeferredSettlement(value: unknown): value is DeferredSettlement {
    return typeof value === "object" && value !== null && typeof (value as { settled?: { then?: unknown } }).settled?.then === "function";
}

/**
 * `p`, or a rejection saying `why` after `ms`: for a call to a messaging server whose client waits for a lost
 * connection to come back (what it sent may still run later).
 */
export function bounded<T>(p: Promise<T>, ms: number, why: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${why} within ${ms} ms`)), ms); })])
        .finally(() => clearTimeout(timer));
}

/** Defaults of the messaging backends (their one definition). */
export const MESSAGING_DEFAULTS = Object.freeze({
    /**
     * How long a publish may wait for an unreachable messaging server (ms) before it rejects with a
     * MessagingUnavailableError; also how long an agent host keeps retrying a request's answer.
     */
    publishTimeoutMs: 30_000,
});

export interface MessagingBackend {
    /**
     * Delivers `message` to every subscriber of `topic` in `namespace` (a guild's id). Must not call
     * handlers synchronously, and must give each subscriber its own copy.
     */
    publish(namespace: string, topic: string, message: Message): void | Promise<void>;
    /** Registers `handler` as `subscriberId`'s only handler for `topic` (replaces an earlier one). */
    subscribe(namespace: string, topic: string, subscriberId: string, handler: MessageHandler): void | Promise<void>;
    /** Removes `subscriberId`'s handler for `topic`; unknown subscriptions are ignored. */
    unsubscribe(namespace: string, topic: string, subscriberId: string): void | Promise<void>;
    /** Releases the backend; later publishes fail. Idempotent. */
    close(): void | Promise<void>;
    /**
     * Optional: the id generator a guild on this backend uses instead of its own (a networked backend hands out a
     * machine id no other process of the guild uses, e.g. leased in Redis).
     */
    readonly generator?: GemstoneGenerator | undefined;
}

export interface InMemoryMessagingBackendOptions {
    /** Called when a handler throws or rejects. Default: ignored (the guild wraps its handlers itself). */
    onHandlerError?: (error: unknown, context: { namespace: string; topic: string; subscriberId: string; message: Message }) => void;
}

/**
 * The embedded default: one process, no network. Each publish delivers a structured clone of the
 * message to every subscriber, from a later macrotask (setImmediate), in publish order per topic.
 */
export class InMemoryMessagingBackend implements MessagingBackend {
    readonly #subscriptions = new Map<string, Map<string, MessageHandler>>();
    readonly #onHandlerError: InMemoryMessagingBackendOptions["onHandlerError"];
    #closed = false;

    constructor(options: InMemoryMessagingBackendOptions = {}) {
        this.#onHandlerError = options.onHandlerError;
    }

    get closed(): boolean {
        return this.#closed;
    }

    publish(namespace: string, topic: string, message: Message): void {
        this.#assertOpen("publish");
        const subscribers = this.#subscriptions.get(key(namespace, topic));
        if (!subscribers || subscribers.size === 0) return;
        for (const [subscriberId, handler] of [...subscribers]) {
            const copy = structuredClone(message);
            setImmediate(() => {
                // a subscriber that left after the publish no longer receives it
                if (this.#closed || this.#subscriptions.get(key(namespace, topic))?.get(subscriberId) !== handler) return;
                try {
                    const result = handler(copy);
                    if (result && typeof (result as Promise<void>).then === "function") {
                        (result as Promise<void>).catch((err) => this.#report(err, namespace, topic, subscriberId, copy));
                    }
                } catch (err) {
                    this.#report(err, namespace, topic, subscriberId, copy);
                }
            });
        }
    }

    subscribe(namespace: string, topic: string, subscriberId: string, handler: MessageHandler): void {
        this.#assertOpen("subscribe");
        if (typeof handler !== "function") {
            throw new PhiTypeError(`subscribe: handler must be a function; got ${typeof handler}`);
        }
        const k = key(namespace, topic);
        let subscribers = this.#subscriptions.get(k);
        if (!subscribers) this.#subscriptions.set(k, (subscribers = new Map()));
        subscribers.set(subscriberId, handler);
    }

    unsubscribe(namespace: string, topic: string, subscriberId: string): void {
        const k = key(namespace, topic);
        const subscribers = this.#subscriptions.get(k);
        if (!subscribers) return;
        subscribers.delete(subscriberId);
        if (subscribers.size === 0) this.#subscriptions.delete(k);
    }

    /** Subscriber ids of a topic (for tests and diagnostics). */
    subscribers(namespace: string, topic: string): string[] {
        return [...(this.#subscriptions.get(key(namespace, topic))?.keys() ?? [])];
    }

    close(): void {
        this.#closed = true;
        this.#subscriptions.clear();
    }

    #assertOpen(what: string): void {
        if (this.#closed) {
            throw new PhiAgentError("ERR_DISPOSED", `InMemoryMessagingBackend.${what}: the backend is closed (its guild was shut down); launch a new guild`);
        }
    }

    #report(err: unknown, namespace: string, topic: string, subscriberId: string, message: Message): void {
        try {
            this.#onHandlerError?.(err, { namespace, topic, subscriberId, message });
        } catch {
            // a failing error reporter must not break delivery
        }
    }
}

function key(namespace: string, topic: string): string {
    return `${namespace}\u0000${topic}`;
}
