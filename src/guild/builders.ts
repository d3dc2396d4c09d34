/**
 * Builders, after RusticAI's `AgentBuilder` / `GuildBuilder` (set_id → setId, build_spec → buildSpec,
 * add_agent_spec → addAgentSpec, launch → launch). Everything is checked when it is set or built,
 * so a bad value fails there with the field's name, not later inside a running agent.
 */
import { PhiRangeError, PhiTypeError } from "../errors.js";
import { Agent, type AgentClass, type AgentSpec } from "./agent.js";
import type { MessagingBackend } from "./backend.js";
import { RedisMessagingBackend, type RedisMessagingBackendOptions } from "./redis/RedisMessagingBackend.js";
import type { GuildEventListener } from "./events.js";
import { Guild, type GuildSpec } from "./guild.js";

/** The properties type of an agent class. */
export type AgentPropsOf<A> = A extends new (spec: AgentSpec<infer P>) => Agent<any> ? P : never;
/** What AgentBuilder.setProperties accepts for an agent class: its `Props.from` input, else its properties type. */
export type AgentPropsInputOf<A> = A extends { Props: { from(input: infer I): unknown } } ? Exclude<I, undefined> : AgentPropsOf<A>;

const ID_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$/;


function checkId(what: string, id: unknown): string {
    if (typeof id !== "string") throw new PhiTypeError(`${what} must be a string; got ${typeof id}`);
    if (!ID_PATTERN.test(id)) {
        throw new PhiRangeError(`${what} must be letters, digits and _ . : @ - (not starting with a symbol); got ${JSON.stringify(id)}`);
    }
    return id;
}

function checkText(what: string, value: unknown, allowEmpty: boolean): string {
    if (typeof value !== "string") throw new PhiTypeError(`${what} must be a string; got ${typeof value}`);
    if (!allowEmpty && value.trim().length === 0) throw new PhiRangeError(`${what} must not be empty`);
    return value;
}

function slug(text: string): string {
    return text.toLowerCase().replace(/[^a-z0-9]+/g, "_").replace(/^_+|_+$/g, "") || "agent";
}

function randomSuffix(): string {
    return Math.floor(Math.random() * 0x1000000).toString(16).padStart(6, "0");
}

/**
 * Builds an AgentSpec: `new AgentBuilder(LLMPhiAgent).setId(...).setName(...).setDescription(...)
 * .setProperties(new PhiAgentProps({...})).buildSpec()`.
 */
export class AgentBuilder<A extends AgentClass<any>> {
    readonly #agentClass: A;
    #id?: string;
    #name?: string;
    #description = "";
    #properties?: unknown;
    #propertiesSet = false;
    readonly #additionalTopics: string[] = [];
    #listenToDefaultTopic = true;

    constructor(agentClass: A) {
        if (typeof agentClass !== "function" || !(agentClass.prototype instanceof Agent)) {
            throw new PhiTypeError(`AgentBuilder: expected an Agent subclass (e.g. LLMPhiAgent); got ${typeof agentClass === "function" ? `class ${agentClass.name}, which does not extend Agent` : String(agentClass)}`);
        }
        this.#agentClass = agentClass;
    }

    /** The agent's id, unique in its guild. Default: from the name plus a random suffix. */
    setId(id: string): this {
        this.#id = checkId("AgentBuilder.setId: id", id);
        return this;
    }

    setName(name: string): this {
        this.#name = checkText("AgentBuilder.setName: name", name, false);
        return this;
    }

    setDescription(description: string): this {
        this.#description = checkText("AgentBuilder.setDescription: description", description, true);
        return this;
    }

    /** The agent's properties, e.g. `new PhiAgentProps({ modelPath })` or the plain fields; validated by buildSpec(). */
    setProperties(properties: AgentPropsInputOf<A>): this {
        this.#properties = properties;
        this.#propertiesSet = true;
        return this;
    }

    /** Also listen to `topic` (RusticAI's add_additional_topic). */
    addAdditionalTopic(topic: string): this {
        const t = checkText("AgentBuilder.addAdditionalTopic: topic", topic, false);
        if (!this.#additionalTopics.includes(t)) this.#additionalTopics.push(t);
        return this;
    }

    /** Alias of addAdditionalTopic. */
    addSubscription(topic: string): this {
        return this.addAdditionalTopic(topic);
    }

    /** Whether to listen to "default_topic" (default true). */
    listenToDefaultTopic(listen: boolean): this {
        if (typeof listen !== "boolean") throw new PhiTypeError(`AgentBuilder.listenToDefaultTopic: expected a boolean; got ${typeof listen}`);
        this.#listenToDefaultTopic = listen;
        return this;
    }

    /**
     * The spec. Validates the properties through the class's `Props` (PhiAgentProps for
     * LLMPhiAgent): a bad value throws here — TypeError (wrong type / missing) or RangeError
     * (value not allowed), naming the field — not later in the guild.
     */
    buildSpec(): AgentSpec<AgentPropsOf<A>> {
        const cls = this.#agentClass;
        if (this.#name === undefined) {
            throw new PhiTypeError(`AgentBuilder(${cls.name}).buildSpec: name is required; call setName("...")`);
        }
        const parser = cls.Props;
        let properties: unknown;
        if (parser && typeof parser.from === "function") {
            properties = parser.from(this.#propertiesSet ? this.#properties : undefined);
        } else {
            properties = this.#propertiesSet ? this.#properties : {};
        }
        const id = this.#id ?? `${slug(this.#name)}_${randomSuffix()}`;
        const spec: AgentSpec<AgentPropsOf<A>> = {
            id,
            name: this.#name,
            description: this.#description,
            className: cls.name,
            agentClass: cls as unknown as AgentSpec<AgentPropsOf<A>>["agentClass"],
            properties: properties as AgentPropsOf<A>,
            additionalTopics: Object.freeze([...this.#additionalTopics]),
            listenToDefaultTopic: this.#listenToDefaultTopic,
        };
        return Object.freeze(spec);
    }
}

/** An AgentSpec as plain JSON, with RusticAI's field names. */
export function agentSpecToJSON<P>(spec: AgentSpec<P>): Record<string, unknown> {
    const props = spec.properties as { toJSON?: () => unknown } | undefined;
    return {
        id: spec.id,
        name: spec.name,
        description: spec.description,
        class_name: spec.className,
        additional_topics: [...spec.additionalTopics],
        listen_to_default_topic: spec.listenToDefaultTopic,
        properties: props && typeof props.toJSON === "function" ? props.toJSON() : JSON.parse(JSON.stringify(props ?? {})),
    };
}

/**
 * Builds and launches a guild: `await new GuildBuilder("demo").addAgentSpec(spec).launch()`.
 * The first argument is the guild's id (and default name).
 */
export class GuildBuilder {
    #id: string;
    #name: string;
    #description = "";
    readonly #agents: AgentSpec<any>[] = [];
    #backend?: MessagingBackend;
    #redis?: Omit<RedisMessagingBackendOptions, "namespace">;
    readonly #listeners: GuildEventListener[] = [];

    constructor(id?: string, name?: string, description?: string) {
        this.#id = id === undefined ? `guild_${randomSuffix()}` : checkId("GuildBuilder: id", id);
        this.#name = name === undefined ? this.#id : checkText("GuildBuilder: name", name, false);
        if (description !== undefined) this.#description = checkText("GuildBuilder: description", description, true);
    }

    setId(id: string): this {
        this.#id = checkId("GuildBuilder.setId: id", id);
        return this;
    }

    setName(name: string): this {
        this.#name = checkText("GuildBuilder.setName: name", name, false);
        return this;
    }

    setDescription(description: string): this {
        this.#description = checkText("GuildBuilder.setDescription: description", description, true);
        return this;
    }

    /** Adds an agent (from AgentBuilder.buildSpec()). Agent ids must be unique in the guild. */
    addAgentSpec(spec: AgentSpec<any>): this {
        if (!spec || typeof spec !== "object" || typeof spec.agentClass !== "function" || typeof spec.id !== "string") {
            throw new PhiTypeError(`GuildBuilder.addAgentSpec: expected an AgentSpec from new AgentBuilder(...).buildSpec(); got ${spec === null ? "null" : typeof spec}`);
        }
        if (this.#agents.some((s) => s.id === spec.id)) {
            throw new PhiRangeError(`GuildBuilder.addAgentSpec: an agent with id "${spec.id}" is already in guild "${this.#id}"; give each agent its own id (AgentBuilder.setId)`);
        }
        this.#agents.push(spec);
        return this;
    }

    /** Replaces the embedded in-memory backend. The guild does not close a backend it was given. */
    setMessagingBackend(backend: MessagingBackend): this {
        for (const m of ["publish", "subscribe", "unsubscribe", "close"] as const) {
            if (!backend || typeof (backend as unknown as Record<string, unknown>)[m] !== "function") {
                throw new PhiTypeError(`GuildBuilder.setMessagingBackend: the backend must implement MessagingBackend (missing ${m}())`);
            }
        }
        this.#backend = backend;
        this.#redis = undefined;
        return this;
    }

    /**
     * Messaging through Redis, wire-compatible with RusticAI's Redis backend, so the guild's agents can live in
     * several processes (each launching its own agents under the same guild id and URL) and talk with Python
     * agents of the same guild. launch() connects (rejecting with ERR_MESSAGING_UNAVAILABLE when it cannot),
     * leases a machine id for the guild's message ids, and shutdown() closes the connection.
     * `url`: `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS (then `options.tls`, e.g. `{ ca }`).
     */
    setRedisMessaging(url: string, options: Omit<RedisMessagingBackendOptions, "namespace" | "url"> = {}): this {
        if (typeof url !== "string" || url.length === 0) throw new PhiTypeError(`GuildBuilder.setRedisMessaging: url must be a redis:// or rediss:// URL; got ${JSON.stringify(url)}`);
        if (options === null || typeof options !== "object") throw new PhiTypeError(`GuildBuilder.setRedisMessaging: options must be an object; got ${options === null ? "null" : typeof options}`);
        if (!/^rediss?:\/\//.test(url)) throw new PhiRangeError(`GuildBuilder.setRedisMessaging: url must start with redis:// or rediss:// (TLS); got ${JSON.stringify(url.replace(/:[^:@/]*@/, ":***@"))}`);
        this.#redis = { ...options, url };
        this.#backend = undefined;
        return this;
    }

    /** Listens to the guild's events from the start (agent lifecycle, agent-defined events, errors). */
    onEvent(listener: GuildEventListener): this {
        if (typeof listener !== "function") throw new PhiTypeError(`GuildBuilder.onEvent: listener must be a function; got ${typeof listener}`);
        this.#listeners.push(listener);
        return this;
    }

    buildSpec(): GuildSpec {
        return Object.freeze({ id: this.#id, name: this.#name, description: this.#description, agents: Object.freeze([...this.#agents]) });
    }

    /**
     * Starts every agent (LLMPhiAgent loads its model here) and resolves with the running guild.
     * Rejects, after stopping what had started, if an agent fails to start.
     */
    async launch(): Promise<Guild> {
        const spec = this.buildSpec();
        if (this.#redis) {
            const backend = await RedisMessagingBackend.connect({ ...this.#redis, namespace: spec.id });
            return Guild.launch(spec, { backend, ownsBackend: true, listeners: [...this.#listeners] });
        }
        return Guild.launch(spec, {
            ...(this.#backend ? { backend: this.#backend } : {}),
            listeners: [...this.#listeners],
        });
    }
}
