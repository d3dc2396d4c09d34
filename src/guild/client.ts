/**
 * Clients: how code outside the guild talks to its agents (RusticAI's `Client` / `ProbeAgent`).
 * A GuildClient publishes, subscribes and awaits replies; a ProbeClient also collects every message
 * on its topics so tests and scripts can wait for them.
 */
import { PhiAgentError, PhiRangeError, PhiTypeError } from "../errors.js";
import { formatOf } from "../messages/format.js";
import type { GemstoneGenerator, Priority } from "../messages/ids.js";
import { DEFAULT_TOPIC, createMessage, isMessage, parseMessage, type AgentTag, type Message } from "../messages/message.js";
import type { MessagingBackend } from "./backend.js";
import type { GuildEventBody } from "./events.js";
import { assertJsonPayload } from "./json.js";

/** A wait (`request`, `waitFor`) ran out of time: a PhiAgentError with `code` "ERR_TIMEOUT". */
export class GuildTimeoutError extends PhiAgentError {
    declare readonly code: "ERR_TIMEOUT";
    constructor(message: string) {
        super("ERR_TIMEOUT", message);
        this.name = "GuildTimeoutError";
    }
}

export interface PublishOptions {
    /** The payload's format name; default: the one `X.create()` tagged it with (required otherwise). */
    format?: string;
    /** Marks the message as a reply to this id. */
    inResponseTo?: string;
    /** The thread to continue; default: a new thread ([id]). */
    thread?: string[];
    priority?: Priority;
    recipients?: AgentTag[];
}

export interface RequestOptions extends PublishOptions {
    /** How long to wait for the reply (ms). Default 120000. */
    timeoutMs?: number;
}

/** @internal — what a client needs from its guild. */
export interface ClientHost {
    readonly guildId: string;
    readonly backend: MessagingBackend;
    readonly generator: GemstoneGenerator;
    /** Sends `message` to each of its topics; reports (never throws) backend failures. */
    publish(message: Message<unknown>): void;
    emit(event: GuildEventBody): void;
    assertOpen(what: string): void;
    release(clientId: string): void;
}

type Listener = (message: Message) => void;

interface Waiter {
    resolve: (message: Message) => void;
    reject: (error: Error) => void;
}

const DEFAULT_TIMEOUT_MS = 120_000;

export class GuildClient {
    readonly id: string;
    readonly name: string;
    protected readonly host: ClientHost;
    readonly #topics = new Map<string, Set<Listener>>();
    readonly #waiters = new Map<string, Set<Waiter>>();
    readonly #seen = new Set<string>();
    #closed = false;

    /** @internal — use guild.client(id, name). */
    constructor(host: ClientHost, id: string, name: string) {
        this.host = host;
        this.id = id;
        this.name = name;
    }

    get closed(): boolean {
        return this.#closed;
    }

    /** `{ id, name }`, the sender of this client's messages. */
    get tag(): AgentTag {
        return { id: this.id, name: this.name };
    }

    /**
     * Publishes `payload` to `topics` and returns the message sent (its `id` is what replies carry
     * in `in_response_to`). The format comes from `X.create()` (e.g. GenerationPromptRequest.create)
     * or `options.format`. Delivery is asynchronous.
     */
    publish<P extends object>(topics: string | string[], payload: P, options: PublishOptions = {}): Message<P> {
        this.#assertOpen("publish");
        assertTopics(topics, "publish");
        const format = options.format ?? formatOf(payload);
        if (typeof format !== "string" || format.length < 3) {
            throw new PhiTypeError(
                `publish: the payload's format is unknown: build it with its format's create() ` +
                `(e.g. GenerationPromptRequest.create({ generation_prompt: "..." })) or pass { format: "<qualified format name>" }`);
        }
        assertJsonPayload(payload, "payload");
        const message = createMessage({
            sender: this.tag,
            topics,
            format,
            payload,
            ...(options.inResponseTo !== undefined ? { in_response_to: options.inResponseTo } : {}),
            ...(options.thread !== undefined ? { thread: options.thread } : {}),
            ...(options.priority !== undefined ? { priority: options.priority } : {}),
            ...(options.recipients !== undefined ? { recipient_list: options.recipients } : {}),
            generator: this.host.generator,
        });
        this.host.publish(message);
        return message;
    }

    /**
     * Publishes a whole message as it is (e.g. one read from a Python guild with `parseMessage`);
     * its id, sender and thread are kept.
     */
    publishMessage(message: Message<unknown> | string): Message {
        this.#assertOpen("publishMessage");
        const parsed = typeof message === "string" || !isMessage(message) ? parseMessage(message as string | object) : message;
        this.host.publish(parsed);
        return parsed;
    }

    /**
     * Calls `handler` for each message on `topic` (not this client's own). Returns a function that
     * unsubscribes. Messages published before the returned promise resolves may be missed.
     */
    async subscribe(topic: string, handler: (message: Message) => void): Promise<() => Promise<void>> {
        this.#assertOpen("subscribe");
        assertTopics(topic, "subscribe");
        if (typeof handler !== "function") {
            throw new PhiTypeError(`subscribe: handler must be a function; got ${typeof handler}`);
        }
        await this.#addListener(topic, handler);
        let done = false;
        return async () => {
            if (done) return;
            done = true;
            await this.#removeListener(topic, handler);
        };
    }

    /**
     * Publishes `payload` and resolves with the first reply to it (a message whose `in_response_to`
     * is its id) on the topics it was sent to — a GenerationPromptResponse, or an ErrorMessage.
     * Rejects with GuildTimeoutError after `timeoutMs`.
     */
    async request<P extends object>(topics: string | string[], payload: P, options: RequestOptions = {}): Promise<Message> {
        this.#assertOpen("request");
        assertTopics(topics, "request");
        const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
        assertTimeout(timeoutMs, "request");
        const list = Array.isArray(topics) ? topics : [topics];
        const keepalive: Listener = () => undefined;
        for (const t of list) await this.#addListener(t, keepalive);
        try {
            let sent: Message<P> | undefined;
            return await new Promise<Message>((resolve, reject) => {
                sent = this.publish(topics, payload, options);
                const waiter: Waiter = { resolve, reject };
                let set = this.#waiters.get(sent.id);
                if (!set) this.#waiters.set(sent.id, (set = new Set()));
                set.add(waiter);
                const timer = setTimeout(() => {
                    set!.delete(waiter);
                    reject(new GuildTimeoutError(`No reply to message ${sent!.id} (${sent!.format}) on ${list.join(", ")} within ${timeoutMs} ms; ` +
                        `is an agent that handles this format listening on that topic?`));
                }, timeoutMs);
                const settle = <T>(fn: (v: T) => void) => (v: T) => { clearTimeout(timer); set!.delete(waiter); fn(v); };
                waiter.resolve = settle(resolve);
                waiter.reject = settle(reject);
            });
        } finally {
            for (const t of list) await this.#removeListener(t, keepalive).catch(() => undefined);
        }
    }

    /** Unsubscribes everything; pending request()s reject. Idempotent. */
    async close(): Promise<void> {
        if (this.#closed) return;
        this.#closed = true;
        const error = new PhiAgentError("ERR_DISPOSED", `Client "${this.id}" was closed (or its guild shut down) while waiting for a reply`);
        for (const set of this.#waiters.values()) for (const w of [...set]) w.reject(error);
        this.#waiters.clear();
        for (const topic of this.#topics.keys()) {
            try {
                await this.host.backend.unsubscribe(this.host.guildId, topic, this.id);
            } catch {
                // the backend may already be closed
            }
        }
        this.#topics.clear();
        this.onClose();
        this.host.release(this.id);
    }

    async [Symbol.asyncDispose](): Promise<void> {
        await this.close();
    }

    /** Hook for subclasses: every message received on any subscribed topic (once per id). */
    protected onMessage(message: Message): void {
        void message;
    }

    /** Hook for subclasses: the client is closing. */
    protected onClose(): void {}

    /** Subscribes to `topic` with a listener (internal; used by subscribe/request/ProbeClient). */
    protected async addTopic(topic: string): Promise<void> {
        await this.#addListener(topic, () => undefined);
    }

    async #addListener(topic: string, listener: Listener): Promise<void> {
        let set = this.#topics.get(topic);
        if (set) {
            set.add(listener);
            return;
        }
        this.#topics.set(topic, (set = new Set([listener])));
        try {
            await this.host.backend.subscribe(this.host.guildId, topic, this.id, (m) => this.#receive(m, topic));
        } catch (err) {
            this.#topics.delete(topic);
            throw err;
        }
    }

    async #removeListener(topic: string, listener: Listener): Promise<void> {
        const set = this.#topics.get(topic);
        if (!set) return;
        set.delete(listener);
        if (set.size === 0) {
            this.#topics.delete(topic);
            if (!this.#closed) await this.host.backend.unsubscribe(this.host.guildId, topic, this.id);
        }
    }

    #receive(message: Message, topic: string): void {
        if (this.#closed || message.sender?.id === this.id) return;
        const listeners = this.#topics.get(topic);
        if (!listeners) return;
        // a message sent to several of our topics is seen once per topic; handle it once
        const first = !this.#seen.has(message.id);
        if (first) {
            this.#seen.add(message.id);
            if (this.#seen.size > 4096) this.#seen.delete(this.#seen.values().next().value!);
        }
        for (const listener of [...listeners]) {
            if (!first) continue;
            try {
                listener(message);
            } catch (err) {
                this.host.emit({ type: "delivery_error", subscriberId: this.id, messageId: message.id, error: err instanceof Error ? err : new Error(String(err)) });
            }
        }
        if (!first) return;
        this.onMessage(message);
        const replyTo = message.in_response_to;
        if (typeof replyTo === "string") {
            const waiters = this.#waiters.get(replyTo);
            if (waiters) {
                for (const w of [...waiters]) w.resolve(message);
                if (waiters.size === 0) this.#waiters.delete(replyTo);
            }
        }
    }

    #assertOpen(what: string): void {
        if (this.#closed) throw new PhiAgentError("ERR_DISPOSED", `Client "${this.id}".${what}: the client is closed; get a new one with guild.client()`);
        this.host.assertOpen(`client "${this.id}".${what}`);
    }
}

/**
 * A client that records every message on its topics (default: "default_topic"), other than its
 * own, in arrival order — RusticAI's ProbeAgent. Get one with `await guild.probe()`.
 */
export class ProbeClient extends GuildClient {
    readonly #messages: Message[] = [];
    readonly #watchers = new Set<() => void>();

    /** @internal — use guild.probe(). */
    constructor(host: ClientHost, id: string, name: string) {
        super(host, id, name);
    }

    /** @internal */
    async listen(topics: readonly string[] = [DEFAULT_TOPIC]): Promise<this> {
        for (const t of topics) await this.addTopic(t);
        return this;
    }

    /** The messages collected so far (a copy). */
    get messages(): Message[] {
        return [...this.#messages];
    }

    getMessages(): Message[] {
        return this.messages;
    }

    /** Forgets the messages collected so far. */
    clearMessages(): void {
        this.#messages.length = 0;
    }

    /** The replies collected to the message with id `id` (or to `message`). */
    repliesTo(idOrMessage: string | Pick<Message<unknown>, "id">): Message[] {
        const id = typeof idOrMessage === "string" ? idOrMessage : idOrMessage.id;
        return this.#messages.filter((m) => m.in_response_to === id);
    }

    /**
     * Resolves with the first `count` messages collected once there are that many, or (with a
     * predicate) with the first collected message matching it. Rejects with GuildTimeoutError.
     */
    waitFor(count: number, timeoutMs?: number): Promise<Message[]>;
    waitFor(predicate: (message: Message) => boolean, timeoutMs?: number): Promise<Message>;
    waitFor(what: number | ((message: Message) => boolean), timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Message[] | Message> {
        assertTimeout(timeoutMs, "waitFor");
        if (typeof what === "number") {
            if (!Number.isInteger(what) || what < 1) {
                return Promise.reject(new PhiRangeError(`waitFor: count must be a positive integer; got ${what}`));
            }
            return this.#wait(() => (this.#messages.length >= what ? this.#messages.slice(0, what) : undefined), timeoutMs,
                () => `${what} message(s) (got ${this.#messages.length})`);
        }
        if (typeof what !== "function") {
            return Promise.reject(new PhiTypeError(`waitFor: expected a count or a predicate function; got ${typeof what}`));
        }
        return this.#wait(() => this.#messages.find(what), timeoutMs, () => `a message matching the predicate (collected ${this.#messages.length})`);
    }

    /** The first reply to `idOrMessage`, waiting for it if needed. */
    waitForReply(idOrMessage: string | Pick<Message<unknown>, "id">, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Message> {
        const id = typeof idOrMessage === "string" ? idOrMessage : idOrMessage.id;
        return this.waitFor((m) => m.in_response_to === id, timeoutMs);
    }

    protected override onMessage(message: Message): void {
        this.#messages.push(message);
        for (const w of [...this.#watchers]) w();
    }

    protected override onClose(): void {
        for (const w of [...this.#watchers]) w();
    }

    #wait<T>(probe: () => T | undefined, timeoutMs: number, describe: () => string): Promise<T> {
        const now = probe();
        if (now !== undefined) return Promise.resolve(now);
        return new Promise<T>((resolve, reject) => {
            const check = () => {
                if (this.closed) {
                    done();
                    reject(new PhiAgentError("ERR_DISPOSED", `Probe "${this.id}" was closed while waiting for ${describe()}`));
                    return;
                }
                const v = probe();
                if (v !== undefined) {
                    done();
                    resolve(v);
                }
            };
            const timer = setTimeout(() => {
                done();
                reject(new GuildTimeoutError(`Probe "${this.id}" waited ${timeoutMs} ms for ${describe()}`));
            }, timeoutMs);
            const done = () => {
                clearTimeout(timer);
                this.#watchers.delete(check);
            };
            this.#watchers.add(check);
        });
    }
}

function assertTopics(topics: unknown, what: string): void {
    const list = Array.isArray(topics) ? topics : [topics];
    if (list.length === 0 || list.some((t) => typeof t !== "string" || t.length === 0)) {
        throw new PhiTypeError(`${what}: topics must be a non-empty topic name or a non-empty array of them (e.g. "default_topic"); got ${JSON.stringify(topics)}`);
    }
}

function assertTimeout(timeoutMs: unknown, what: string): void {
    if (typeof timeoutMs !== "number" || !(timeoutMs > 0) || !Number.isFinite(timeoutMs)) {
        throw new PhiRangeError(`${what}: timeoutMs must be a positive number of milliseconds; got ${String(timeoutMs)}`);
    }
}
