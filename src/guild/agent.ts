/**
 * Agents: the base class, its spec and the context a handler gets, after RusticAI's `Agent`,
 * `AgentSpec` and `ProcessContext`. An agent declares the formats it handles (`this.handle(Format,
 * fn)` in its constructor); messages of other formats are ignored. A payload that does not match
 * the declared format's schema never reaches the handler: the sender gets an ErrorMessage naming
 * the field. A handler that throws before replying also produces an ErrorMessage, so every handled
 * request gets a reply. `ctx.signal` is aborted when the agent stops, or when the one who delivered the message
 * cancels it (`deliver(message, topic, { signal })`: an agent host whose claim on the request was lost).
 */
import { setMaxListeners } from "node:events";
import type { Static, TObject } from "@sinclair/typebox";
import { InvalidStateError, PhiAgentError, PhiRangeError, PhiTypeError } from "../errors.js";
import { GENERIC_JSON_FORMAT, formatOf, type MessageFormat } from "../messages/format.js";
import { ErrorMessage, errorMessageFromError } from "../messages/formats.js";
import { GemstoneGenerator, type Priority } from "../messages/ids.js";
import { DEFAULT_TOPIC, createMessage, type AgentTag, type Message } from "../messages/message.js";
import { formatFieldErrors } from "../messages/validation.js";
import { assertJsonPayload } from "./json.js";
import type { GuildEventBody, LogLevel } from "./events.js";

/** What AgentBuilder.buildSpec() produces and GuildBuilder.addAgentSpec() takes (RusticAI's AgentSpec). */
export interface AgentSpec<P = unknown> {
    readonly id: string;
    readonly name: string;
    readonly description: string;
    /** The agent class's name, e.g. "LLMPhiAgent" (RusticAI's class_name). */
    readonly className: string;
    readonly agentClass: AgentClass<P>;
    /** Validated properties (e.g. a PhiAgentProps). */
    readonly properties: P;
    /** Topics listened to besides the default one. */
    readonly additionalTopics: readonly string[];
    /** Whether the agent listens to "default_topic" (default true). */
    readonly listenToDefaultTopic: boolean;
}

/** Validates and normalizes an agent class's properties (a static `Props` member of the class). */
export interface PropsParser<P, I = P> {
    from(input: I | P | undefined): P;
}

/** An Agent subclass. `Props`, when present, validates the properties in AgentBuilder.buildSpec(). */
export interface AgentClass<P = unknown> {
    new (spec: AgentSpec<P>): Agent<P>;
    readonly name: string;
    readonly prototype: Agent<P>;
    readonly Props?: PropsParser<P, unknown>;
}

/** The guild's side of an agent: how it publishes and reports. Supplied by the Guild at start. */
export interface AgentRuntime {
    readonly guildId: string;
    readonly generator: GemstoneGenerator;
    /** Sends `message` to each of its topics. */
    publish(message: Message<unknown>): void;
    /** Reports an event (the guild adds its id and the time). */
    emit(event: GuildEventBody): void;
}

export type AgentState = "created" | "starting" | "running" | "stopping" | "stopped";

export interface SendOptions {
    /** The payload's format; default: the one `X.create()` tagged it with. */
    format?: string;
    /** Where to send; default: the topic the request came in on. */
    topics?: string | string[];
    /** Default: the request's priority. */
    priority?: Priority;
}

type Handler = (ctx: ProcessContext<any>) => unknown;

interface HandlerEntry {
    format: string;
    schema?: MessageFormat<TObject>;
    handler: Handler;
}

/** What a handler gets: the message, its payload, and ways to reply. */
export class ProcessContext<P = Record<string, unknown>> {
    readonly #agent: Agent<any>;
    readonly #runtime: AgentRuntime;
    #replies = 0;

    /** @internal — created by Agent for each handled message. */
    constructor(agent: Agent<any>, runtime: AgentRuntime,
        readonly message: Message<P>, readonly topic: string, readonly signal: AbortSignal) {
        this.#agent = agent;
        this.#runtime = runtime;
    }

    get payload(): P {
        return this.message.payload;
    }

    /** How many replies were sent so far. */
    get replies(): number {
        return this.#replies;
    }

    /**
     * Replies to the message: `in_response_to` is its id, `thread` its thread, the topic the one it
     * came in on. The format comes from `X.create()` or `options.format`.
     */
    send<Q extends object>(payload: Q, options: SendOptions = {}): Message<Q> {
        const format = options.format ?? formatOf(payload);
        if (!format) {
            throw new PhiTypeError(`${this.#agent.agentType}.send: the payload has no format: build it with e.g. ` +
                `GenerationPromptResponse.create({...}) or pass { format: "..." }`);
        }
        assertJsonPayload(payload, "payload");
        return this.#send(payload, format, options, false);
    }

    /**
     * Replies with an ErrorMessage: pass an ErrorMessage payload, or an error (its name becomes
     * `error_type` unless `errorType` is given).
     */
    sendError(error: ErrorMessage | unknown, errorType?: string, options: Omit<SendOptions, "format"> = {}): Message<ErrorMessage> {
        const payload = ErrorMessage.check(error) && !(error instanceof Error)
            ? ErrorMessage.create(error)
            : errorMessageFromError(this.#agent.agentType, error, errorType);
        return this.#send(payload, ErrorMessage.format, options, true);
    }

    #send<Q>(payload: Q, format: string, options: SendOptions, isError: boolean): Message<Q> {
        const message = createMessage({
            sender: this.#agent.tag,
            topics: options.topics ?? this.topic,
            format,
            payload: payload as object,
            in_response_to: this.message.id,
            thread: this.message.thread,
            priority: options.priority ?? (this.message.priority as Priority),
            is_error_message: isError,
            generator: this.#runtime.generator,
        }) as Message<Q>;
        this.#replies++;
        this.#runtime.publish(message);
        return message;
    }
}

const SEEN_LIMIT = 4096;

/**
 * Base class of agents. Subclasses register handlers in their constructor and may override
 * `onStart()` (e.g. load a model) and `onStop()` (release it). The guild calls `start()` and
 * `stop()`; handlers run concurrently (nothing is serialized behind a lock).
 */
export abstract class Agent<P = Record<string, never>> {
    /** Overrides the `agent_type` of ErrorMessages; default: the class name. */
    static readonly agentType?: string;

    readonly spec: AgentSpec<P>;
    readonly #handlers = new Map<string, HandlerEntry>();
    readonly #inflight = new Set<Promise<void>>();
    readonly #seen = new Set<string>();
    #runtime?: AgentRuntime;
    #state: AgentState = "created";
    #abort = new AbortController();
    #started?: Promise<void>;
    #stopping?: Promise<void>;

    constructor(spec: AgentSpec<P>) {
        if (!spec || typeof spec !== "object" || typeof spec.id !== "string") {
            throw new PhiTypeError(`${new.target.name}: expected an AgentSpec (from new AgentBuilder(${new.target.name})...buildSpec()); got ${String(spec)}`);
        }
        this.spec = spec;
        // every in-flight request listens to this one signal
        setMaxListeners(0, this.#abort.signal);
    }

    get id(): string { return this.spec.id; }
    get name(): string { return this.spec.name; }
    get description(): string { return this.spec.description; }
    /** The validated properties (RusticAI's `self.config`). */
    get props(): P { return this.spec.properties; }
    get state(): AgentState { return this.#state; }
    /** `{ id, name }`, the sender of this agent's messages. */
    get tag(): AgentTag { return { id: this.id, name: this.name }; }
    /** The `agent_type` of this agent's ErrorMessages. */
    get agentType(): string {
        return (this.constructor as { agentType?: string }).agentType ?? this.constructor.name;
    }
    /** The format names this agent handles. */
    get handledFormats(): string[] { return [...this.#handlers.keys()]; }
    /** The topics this agent listens to. */
    get topics(): string[] {
        const topics = this.spec.listenToDefaultTopic ? [DEFAULT_TOPIC] : [];
        for (const t of this.spec.additionalTopics) if (!topics.includes(t)) topics.push(t);
        return topics;
    }
    /** Requests being handled right now. */
    get inflight(): number { return this.#inflight.size; }

    /**
     * Registers the handler of a format. With a MessageFormat, payloads are checked against its
     * schema first (invalid ones are answered with an ErrorMessage naming the field); with a
     * format name, the handler gets the payload as it came.
     */
    protected handle<S extends TObject>(format: MessageFormat<S>, handler: (ctx: ProcessContext<Static<S>>) => unknown): void;
    protected handle(format: string, handler: (ctx: ProcessContext<Record<string, unknown>>) => unknown): void;
    protected handle(format: MessageFormat<TObject> | string, handler: Handler): void {
        const name = typeof format === "string" ? format : format?.format;
        if (typeof name !== "string" || name.length < 3) {
            throw new PhiTypeError(`${this.constructor.name}.handle: format must be a MessageFormat (e.g. GenerationPromptRequest) or a format name; got ${String(format)}`);
        }
        if (typeof handler !== "function") {
            throw new PhiTypeError(`${this.constructor.name}.handle(${name}): handler must be a function; got ${typeof handler}`);
        }
        if (this.#handlers.has(name)) {
            throw new PhiRangeError(`${this.constructor.name}.handle: ${name} already has a handler`);
        }
        this.#handlers.set(name, { format: name, schema: typeof format === "string" ? undefined : format, handler });
    }

    /** Called once by start(), before messages are handled. Throwing fails the guild's launch. */
    protected onStart(): void | Promise<void> {}

    /** Called once by stop(), after in-flight handlers have finished. */
    protected onStop(): void | Promise<void> {}

    /** Reports an event to the guild (its listeners). */
    protected emitEvent(event: GuildEventBody): void {
        this.#runtime?.emit(event);
    }

    /**
     * Reports an event this agent defines (`type: "agent_event"`): `name` says which, `data` is its payload,
     * `text` the line formatGuildEvent prints (default: the name).
     */
    protected emitAgentEvent(name: string, data: Record<string, unknown> = {}, options: { text?: string; error?: Error } = {}): void {
        const event: GuildEventBody = { type: "agent_event", agentId: this.id, name, data: Object.freeze({ ...data }) };
        if (options.text !== undefined) event.text = options.text;
        if (options.error !== undefined) event.error = options.error;
        this.emitEvent(event);
    }

    /** Logs through the guild's events. */
    protected log(level: LogLevel, message: string, data?: Record<string, unknown>): void {
        this.emitEvent(data ? { type: "log", agentId: this.id, level, message, data } : { type: "log", agentId: this.id, level, message });
    }

    /** Publishes a new message (not a reply) from this agent. */
    protected publish<Q extends object>(topics: string | string[], payload: Q, options: Omit<SendOptions, "topics"> = {}): Message<Q> {
        const runtime = this.#requireRuntime("publish");
        const format = options.format ?? formatOf(payload) ?? GENERIC_JSON_FORMAT;
        assertJsonPayload(payload, "payload");
        const message = createMessage({
            sender: this.tag, topics, format, payload,
            ...(options.priority !== undefined ? { priority: options.priority } : {}),
            generator: runtime.generator,
        });
        runtime.publish(message);
        return message;
    }

    /** Aborted when the agent stops; handlers pass it on to cancellable work (ctx.signal). */
    protected get stopSignal(): AbortSignal {
        return this.#abort.signal;
    }

    /** Called by the Guild: binds the agent to it and runs onStart(). */
    async start(runtime: AgentRuntime): Promise<void> {
        if (this.#state !== "created") {
            throw new InvalidStateError(`Agent "${this.id}" was already started (state: ${this.#state}); an agent instance runs once`);
        }
        this.#runtime = runtime;
        this.#state = "starting";
        this.emitEvent({ type: "agent_starting", agentId: this.id });
        this.#started = (async () => { await this.onStart(); })();
        try {
            await this.#started;
        } catch (err) {
            this.#state = "stopped";
            const error = err instanceof Error ? err : new Error(String(err));
            this.emitEvent({ type: "agent_start_failed", agentId: this.id, error });
            throw error;
        }
        // stop() may have been called while onStart() ran
        if (this.#state !== "starting") return;
        this.#state = "running";
        this.emitEvent({ type: "agent_started", agentId: this.id });
    }

    /**
     * Called by the Guild: stops taking messages, aborts `ctx.signal` of in-flight handlers and
     * waits for them (they still reply), then runs onStop(). Idempotent.
     */
    stop(): Promise<void> {
        if (this.#stopping) return this.#stopping;
        if (this.#state === "stopped" || this.#state === "created") {
            this.#state = "stopped";
            return Promise.resolve();
        }
        this.#stopping = this.#stop();
        return this.#stopping;
    }

    async #stop(): Promise<void> {
        this.#state = "stopping";
        this.#abort.abort(new PhiAgentError("ERR_ABORTED", `Agent "${this.id}" is stopping; the request was cancelled`));
        await this.#started?.catch(() => undefined);
        await Promise.allSettled([...this.#inflight]);
        try {
            await this.onStop();
        } finally {
            this.#state = "stopped";
            this.emitEvent({ type: "agent_stopped", agentId: this.id });
        }
    }

    /**
     * Called by the Guild for each message on one of the agent's topics. Ignores the agent's own
     * messages, repeats (same id on two topics) and formats it does not handle.
     * Returns when the handler is done (the guild does not wait for it). `options.signal` cancels this one
     * message's handling (its `ctx.signal` is aborted with it, as with the agent's stop). `options.repeat`
     * delivers a message again on purpose (a host that stopped its first handling, e.g. a request started while
     * its claim was on its way and claimed later, after another replica gave it back).
     */
    deliver(message: Message, topic: string, options: { signal?: AbortSignal; repeat?: boolean } = {}): Promise<void> {
        if (message.sender?.id === this.id) return Promise.resolve();
        const entry = this.#handlers.get(message.format);
        if (!entry) return Promise.resolve();
        if (this.#state === "stopping" || this.#state === "stopped") return Promise.resolve();
        if (this.#seen.has(message.id) && options.repeat !== true) return Promise.resolve();
        this.#seen.add(message.id);
        if (this.#seen.size > SEEN_LIMIT) this.#seen.delete(this.#seen.values().next().value!);
        const runtime = this.#requireRuntime("deliver");
        // counted as in flight before the handler starts, so it sees itself in `inflight`
        let finished!: () => void;
        const done = new Promise<void>((resolve) => { finished = resolve; });
        this.#inflight.add(done);
        return this.#run(entry, message, topic, runtime, options.signal).finally(() => {
            this.#inflight.delete(done);
            finished();
        });
    }

    async #run(entry: HandlerEntry, message: Message, topic: string, runtime: AgentRuntime, signal?: AbortSignal): Promise<void> {
        // messages that arrive while onStart() runs wait for it
        if (this.#state === "starting") await this.#started?.catch(() => undefined);
        const ctx = new ProcessContext<any>(this, runtime, message, topic, signal ? AbortSignal.any([this.#abort.signal, signal]) : this.#abort.signal);
        try {
            if (entry.schema) {
                const errors = entry.schema.errors(message.payload);
                if (errors.length > 0) {
                    ctx.sendError(ErrorMessage.create({
                        agent_type: this.agentType,
                        error_type: "ValidationError",
                        error_message: `Invalid ${entry.schema.name}: ${formatFieldErrors(errors)}`,
                        code: "ERR_INVALID_ARGUMENT",
                        details: { errors: errors.map((e) => ({ path: e.path, message: e.message })) },
                    }));
                    return;
                }
            }
            await entry.handler(ctx);
        } catch (err) {
            const error = err instanceof Error ? err : new Error(String(err));
            this.emitEvent({ type: "handler_error", agentId: this.id, messageId: message.id, format: message.format, error });
            if (ctx.replies === 0) {
                try {
                    ctx.sendError(error);
                } catch {
                    // the guild is gone; nothing left to tell
                }
            }
        }
    }

    #requireRuntime(what: string): AgentRuntime {
        if (!this.#runtime) {
            throw new InvalidStateError(`Agent "${this.id}".${what}: the agent is not running in a guild; add its spec to a GuildBuilder and launch()`);
        }
        return this.#runtime;
    }
}
