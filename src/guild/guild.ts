/**
 * A running guild: agents started from their specs, sharing one messaging backend, and clients to
 * talk to them. Made by `GuildBuilder.launch()`; `shutdown()` stops the agents (each releases what
 * it holds — LLMPhiAgent disposes its model), closes the clients, and closes the backend if the
 * guild created it.
 */
import { PhiAgentError, PhiRangeError, PhiTypeError } from "../errors.js";
import { GemstoneGenerator } from "../messages/ids.js";
import { DEFAULT_TOPIC, topicsOf, type Message } from "../messages/message.js";
import type { Agent, AgentRuntime, AgentSpec } from "./agent.js";
import { InMemoryMessagingBackend, type MessagingBackend } from "./backend.js";
import { GuildClient, ProbeClient, type ClientHost } from "./client.js";
import type { GuildEvent, GuildEventBody, GuildEventListener } from "./events.js";

/** What GuildBuilder.buildSpec() produces. */
export interface GuildSpec {
    readonly id: string;
    readonly name: string;
    readonly description: string;
    readonly agents: readonly AgentSpec<any>[];
}

/** @internal — options of Guild.launch. */
export interface GuildLaunchOptions {
    backend?: MessagingBackend;
    /** Whether shutdown() closes `backend` (default: only a backend the guild created). */
    ownsBackend?: boolean;
    listeners?: readonly GuildEventListener[];
}

export type GuildState = "starting" | "running" | "stopping" | "stopped";

export class Guild {
    readonly id: string;
    readonly name: string;
    readonly description: string;
    readonly spec: GuildSpec;
    readonly #backend: MessagingBackend;
    readonly #ownsBackend: boolean;
    readonly #generator: GemstoneGenerator;
    readonly #agents = new Map<string, Agent<any>>();
    readonly #clients = new Map<string, GuildClient>();
    readonly #listeners = new Set<GuildEventListener>();
    readonly #host: ClientHost;
    #state: GuildState = "starting";
    #shutdown?: Promise<void>;
    #probes = 0;

    private constructor(spec: GuildSpec, options: GuildLaunchOptions) {
        this.spec = spec;
        this.id = spec.id;
        this.name = spec.name;
        this.description = spec.description;
        this.#backend = options.backend ?? new InMemoryMessagingBackend();
        this.#ownsBackend = options.backend === undefined || options.ownsBackend === true;
        this.#generator = this.#backend.generator ?? new GemstoneGenerator();
        for (const l of options.listeners ?? []) this.#listeners.add(l);
        const guild = this;
        this.#host = {
            guildId: this.id,
            backend: this.#backend,
            generator: this.#generator,
            publish: (message) => this.#publish(message),
            emit: (event) => this.#emit(event),
            assertOpen: (what) => this.#assertOpen(what),
            release: (clientId) => { guild.#clients.delete(clientId); },
        };
    }

    /** @internal — use GuildBuilder.launch(). Starts every agent; rejects (after cleaning up) if one fails to start. */
    static async launch(spec: GuildSpec, options: GuildLaunchOptions = {}): Promise<Guild> {
        const guild = new Guild(spec, options);
        await guild.#start();
        return guild;
    }

    get state(): GuildState {
        return this.#state;
    }

    /** The agents, in the order their specs were added. */
    get agents(): Agent<any>[] {
        return [...this.#agents.values()];
    }

    /** The agent with this id, if any. */
    agent<A extends Agent<any> = Agent<any>>(id: string): A | undefined {
        return this.#agents.get(id) as A | undefined;
    }

    /** The messaging backend (the embedded in-memory one unless GuildBuilder.setMessagingBackend was used). */
    get backend(): MessagingBackend {
        return this.#backend;
    }

    /** A client with this id (unique among the guild's agents and open clients). */
    client(id: string, name: string = id): GuildClient {
        this.#assertOpen("client");
        this.#claimId(id, "client");
        const client = new GuildClient(this.#host, id, name);
        this.#clients.set(id, client);
        return client;
    }

    /**
     * A probe: a client that collects every message on `topics` (default "default_topic").
     * Resolves once it is subscribed.
     */
    async probe(id?: string, topics: readonly string[] = [DEFAULT_TOPIC]): Promise<ProbeClient> {
        this.#assertOpen("probe");
        if (id === undefined) {
            do id = `probe${this.#probes++ === 0 ? "" : `_${this.#probes}`}`; while (this.#agents.has(id) || this.#clients.has(id));
        }
        this.#claimId(id, "probe");
        const probe = new ProbeClient(this.#host, id, id);
        this.#clients.set(id, probe);
        try {
            return await probe.listen(topics);
        } catch (err) {
            await probe.close();
            throw err;
        }
    }

    /** Calls `listener` for every event (agent lifecycle, agent-defined events such as model loading, handler errors, logs). Returns a function that removes it. */
    onEvent(listener: GuildEventListener): () => void {
        if (typeof listener !== "function") {
            throw new PhiTypeError(`onEvent: listener must be a function; got ${typeof listener}`);
        }
        this.#listeners.add(listener);
        return () => { this.#listeners.delete(listener); };
    }

    /**
     * Stops the agents (in-flight requests are cancelled and still answered), closes the clients,
     * then closes the backend if the guild created it. Idempotent; rejects with an AggregateError
     * naming the agents whose stop failed, after everything else was released.
     */
    shutdown(): Promise<void> {
        this.#shutdown ??= this.#stop();
        return this.#shutdown;
    }

    async [Symbol.asyncDispose](): Promise<void> {
        await this.shutdown();
    }

    async #start(): Promise<void> {
        try {
            for (const spec of this.spec.agents) {
                const agent = new spec.agentClass(spec);
                this.#agents.set(spec.id, agent);
            }
            const starts = this.agents.map(async (agent) => {
                const runtime: AgentRuntime = {
                    guildId: this.id,
                    generator: this.#generator,
                    publish: (message) => this.#publish(message),
                    emit: (event) => this.#emit(event),
                };
                const running = agent.start(runtime);
                for (const topic of agent.topics) {
                    await this.#backend.subscribe(this.id, topic, agent.id, (message) => {
                        void agent.deliver(message, topic);
                    });
                }
                try {
                    await running;
                } catch (err) {
                    const cause = err instanceof Error ? err : new Error(String(err));
                    throw Object.assign(new Error(`Agent "${agent.id}" (${agent.constructor.name}) failed to start: ${cause.message}`, { cause }),
                        { agentId: agent.id, code: (cause as { code?: unknown }).code });
                }
            });
            const results = await Promise.allSettled(starts);
            const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
            if (failed) throw failed.reason;
            this.#state = "running";
        } catch (err) {
            this.#state = "running"; // let shutdown run
            await this.shutdown().catch(() => undefined);
            throw err;
        }
    }

    async #stop(): Promise<void> {
        this.#state = "stopping";
        const failures: Error[] = [];
        await Promise.all(this.agents.map(async (agent) => {
            try {
                await agent.stop();
            } catch (err) {
                failures.push(Object.assign(new Error(`Agent "${agent.id}" failed to stop: ${(err as Error)?.message ?? String(err)}`), { cause: err }));
            }
            for (const topic of agent.topics) {
                try {
                    await this.#backend.unsubscribe(this.id, topic, agent.id);
                } catch {
                    // a closed backend has no subscriptions left
                }
            }
        }));
        // let the last replies (e.g. of cancelled requests) reach the clients before they close
        for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
        for (const client of [...this.#clients.values()]) await client.close().catch(() => undefined);
        this.#clients.clear();
        if (this.#ownsBackend) {
            try {
                await this.#backend.close();
            } catch (err) {
                failures.push(Object.assign(new Error(`The messaging backend failed to close: ${(err as Error)?.message ?? String(err)}`), { cause: err }));
            }
        }
        this.#state = "stopped";
        if (failures.length > 0) throw new AggregateError(failures, `Guild "${this.id}" shut down with ${failures.length} error(s): ${failures.map((f) => f.message).join("; ")}`);
    }

    #publish(message: Message<unknown>): void {
        for (const topic of topicsOf(message)) {
            const copy = { ...message, topic_published_to: topic } as Message;
            const result = this.#backend.publish(this.id, topic, copy);
            if (result && typeof (result as Promise<void>).then === "function") {
                (result as Promise<void>).catch((err: unknown) => this.#emit({
                    type: "delivery_error", subscriberId: message.sender?.id ?? "", messageId: message.id,
                    error: err instanceof Error ? err : new Error(String(err)),
                }));
            }
        }
    }

    #emit(body: GuildEventBody): void {
        const event = { ...body, guildId: this.id, time: Date.now() } as GuildEvent;
        for (const listener of [...this.#listeners]) {
            try {
                listener(event);
            } catch {
                // a listener's failure must not break the guild
            }
        }
    }

    #assertOpen(what: string): void {
        if (this.#state === "stopping" || this.#state === "stopped") {
            throw new PhiAgentError("ERR_DISPOSED", `Guild "${this.id}": ${what} after shutdown(); launch a new guild with GuildBuilder`);
        }
    }

    #claimId(id: unknown, what: string): asserts id is string {
        if (typeof id !== "string" || id.trim().length === 0) {
            throw new PhiTypeError(`${what}: id must be a non-empty string; got ${JSON.stringify(id)}`);
        }
        if (this.#agents.has(id) || this.#clients.has(id)) {
            throw new PhiRangeError(`${what}: id "${id}" is already used by an ${this.#agents.has(id) ? "agent" : "open client"} of guild "${this.id}"; pick another id`);
        }
    }
}
