/**
 * AgentHost: our LLMPhiAgent as a full member of a RusticAI guild, on any MessagingBackend (the Redis one
 * joins a Python guild; the in-memory one is for tests). It behaves as the Python `LLMPhiAgent` does there:
 *
 * - it listens to default_topic, agent_inbox:{id}, agent_self_inbox:{id}, guild_status_topic, state_topic,
 *   heartbeat and any additional topics, with Python's delivery filter (never its own messages, except on
 *   its self inbox) and Python's dispatch (GenerationPromptRequest on normal topics only; health checks and
 *   state responses anywhere; everything else is ignored);
 * - replies are built as `ProcessContext.send` builds them (routing slip, history, session state, ttl,
 *   traceparent, priority, origin_guild_stack; errors to error_topic), see context.ts and routing.ts;
 * - once subscribed it sends a SelfReadyNotification to itself and, when that comes back, a Heartbeat;
 *   it answers each HealthCheckRequest with a Heartbeat;
 * - `enrich_with_history` is honoured when the host is given a way to read stored messages.
 *
 * Generation itself is LLMPhiAgent's (src/agent/LLMPhiAgent.ts): the host delivers each request to it and
 * turns the replies it sends into Python's. With `claims` (claims.ts), several hosts with the same agent
 * id share the requests, each answered once. A replica that loses a request's claim (its lease ran out, e.g.
 * after a stall) aborts that generation at once, freeing the model's slot; another replica answers it.
 *
 * A request is queued when it arrives and answered later, so its handler returns a DeferredSettlement
 * (backend.ts): the Redis backend moves the saved position past a request only once it is settled — answered,
 * answered with an error, dropped, found done or too old, or answered by the replica that holds its claim. A
 * request handed back at stop (or whose answer could not be published) stays unsettled, so a worker killed or
 * stopped with requests queued gets them again from the backlog when it restarts; the claims' done marks keep it
 * from answering twice what was answered already (a lone replica has done marks too).
 */
import { PhiAgentError, PhiRangeError, PhiTypeError, InvalidStateError } from "../../errors.js";
import { LLMPhiAgent } from "../../agent/LLMPhiAgent.js";
import { PhiAgentProps, type PhiAgentPropsInit } from "../../agent/PhiAgentProps.js";
import { ErrorMessage, GenerationPromptRequest } from "../../messages/formats.js";
import { GemstoneGenerator, Priority } from "../../messages/ids.js";
import { topicsOf, type Message } from "../../messages/message.js";
import type { AgentRuntime } from "../agent.js";
import { MESSAGING_DEFAULTS, bounded, type DeferredSettlement, type MessagingBackend } from "../backend.js";
import { AgentBuilder } from "../builders.js";
import type { GuildEvent, GuildEventBody } from "../events.js";
import type { ClaimResult, RequestClaims } from "../claims.js";
import { LOAD_DEFAULTS } from "../../model/options.js";
import {
    ESSENTIAL_TOPICS, GuildTopics, PYTHON_PHI_AGENT_CLASS, SystemFormats, agentSelfInbox, naiveIsoTime, parseIsoTime,
    preciseNow, rusticMessageOf, subscribedTopics, type RoutingSlipJSON, type RusticMessage,
} from "./protocol.js";
import { RusticProcessContext, selfReadyMessage, type AgentIdentity, type IdSource } from "./context.js";

/** The handler names of Python's LLMPhiAgent and its mixins (the `processor` of history entries). */
export const PROCESSORS = {
    GENERATE: "generate_prompt",
    HEARTBEAT: "send_heartbeat",
    FIRST_HEARTBEAT: "send_first_heartbeat",
    STATE_FETCHED: "update_local_state",
    STATE_UPDATED: "update_local_state_on_update",
} as const;

export interface AgentHostOptions {
    backend: MessagingBackend;
    guildId: string;
    /** Default "phi_agent", the seed's id. */
    agentId?: string;
    /** Default "Phi-2 LLM". */
    agentName?: string;
    /** What LLMPhiAgent runs (the model file, device, threads, generation defaults). */
    props: PhiAgentProps | PhiAgentPropsInit;
    /** The qualified class name routing rules match (`agent_type`); default Python's LLMPhiAgent. */
    agentType?: string;
    additionalTopics?: readonly string[];
    listenToDefaultTopic?: boolean;
    /** Message ids (default: a GemstoneGenerator with a random machine id from 128 to 255). */
    ids?: IdSource;
    /** Replicas: how hosts with the same agent id share requests (claims.ts). Default: this host answers all. */
    claims?: RequestClaims;
    /**
     * With claims: publishes a request's answer and marks it done in one atomic step (JoinedRedisGuild.publishAnswer),
     * resolving false when the claim is no longer ours. Without it, the host confirms the claim, publishes, then
     * marks it done (a replica killed in between leaves a request that may be answered twice).
     */
    publishAnswer?: (requestId: string, messages: readonly RusticMessage[]) => Promise<boolean>;
    /** The guild's routes (GuildSpec.routes), attached to heartbeats and self messages as Python does. */
    guildRoutes?: RoutingSlipJSON;
    /**
     * Reads stored messages by id for `enrich_with_history` (Python's `get_messages_by_id`), each as the JSON
     * Python's `model_dump_json(exclude={session_state, ...})` writes; missing ones are left out. Without it,
     * a request asking for history is answered with an ErrorMessage saying so.
     */
    history?: (messageIds: string[]) => Promise<string[]>;
    /** The class to run (a subclass of LLMPhiAgent, e.g. one sharing a loaded model); default LLMPhiAgent. */
    agentClass?: typeof LLMPhiAgent;
    /**
     * With claims: how many requests this host works on at once before it leaves further ones to other replicas
     * (default: the model's `sequences`, what it decodes together).
     */
    capacity?: number;
    /** Called for every event (see AgentHostEvent). */
    onEvent?: (event: AgentHostEvent) => void;
}

/** One request's fate, reported once per request. */
export interface RequestLine {
    type: "request";
    requestId: string;
    sender: string | null;
    topic: string | null;
    /**
     * answered (a GenerationPromptResponse went out), error (an ErrorMessage went out), taken (another replica
     * has it), duplicate (already answered), expired (too old to answer from a replay), handed_back (the host
     * stopped before answering; the claim was released), dropped (a routing transformer dropped the reply, or
     * the claim was lost)
     */
    outcome: "answered" | "error" | "taken" | "duplicate" | "expired" | "handed_back" | "dropped";
    replyIds: string[];
    replyTopics: string[];
    ms: number;
    /** For errors: the ErrorMessage's error_type and message. */
    error?: { type: string; message: string };
    completionTokens?: number;
}

export type AgentHostEvent =
    | RequestLine
    | { type: "ready"; selfReadyId: string; topics: string[] }
    | { type: "heartbeat"; heartbeatId: string; inResponseTo: string; first: boolean }
    | { type: "log"; level: "debug" | "info" | "warn" | "error"; message: string }
    | { type: "agent"; event: GuildEvent };

export type AgentHostState = "created" | "starting" | "running" | "stopping" | "stopped";

interface Pending {
    ctx: RusticProcessContext;
    chain: Promise<void>;
    replyIds: string[];
    replyTopics: Set<string>;
    outcome?: RequestLine["outcome"];
    error?: { type: string; message: string };
    completionTokens?: number;
    handedBack: boolean;
    /** Publishing the answer failed (Redis unreachable): the request is handed back, not answered with an error. */
    publishFailed?: boolean;
    /** The answer went out together with its done mark (publishAnswer). */
    answeredAtomically?: boolean;
    started: number;
    /** Aborts the request's generation (its claim was lost, or never won). */
    abort: AbortController;
    /** Started before its claim came back (speculatively): nothing is published until this says "claimed". */
    claiming?: Promise<ClaimResult | Error>;
}

/** A request started speculatively whose claim did not come back "claimed": what it came back with instead. */
interface Unclaimed {
    unclaimed: Exclude<ClaimResult, "claimed"> | Error;
}

/** A request received and not started yet; `settle` tells the backend it is settled (DeferredSettlement). */
interface Queued {
    m: RusticMessage;
    started: number;
    settle: (handled: boolean) => void;
    /** It came from a replay of the backlog (it may be answered already), not live. */
    replayed: boolean;
}

const SEEN_LIMIT = 8192;

/**
 * With claims, a live request is started while its claim is on its way to Redis (it overlaps the round trip; its
 * answer waits for the claim), unless another replica won or answered a request within this many ms: then each
 * request waits for its claim before its generation starts, so replicas that share requests do not all decode
 * each one. A request from a backlog replay always waits (it is often answered already).
 */
const SPECULATION_COOLDOWN_MS = 30_000;
/** How long the host waits before it claims again after a claim failed (Redis away). */
const CLAIM_RETRY_MS = 500;
/** How long a claim waits for Redis before it counts as failed (and is tried again). */
const CLAIM_WAIT_MS = 5_000;
/** How long stop() waits for Redis to release a claim it hands back (Redis away: the lease runs out instead). */
const STOP_RELEASE_WAIT_MS = 2_000;

function randomMachineId(): number {
    return 128 + Math.floor(Math.random() * 128);
}

export class AgentHost {
    readonly guildId: string;
    readonly agentId: string;
    readonly agentName: string;
    readonly topics: readonly string[];
    readonly identity: AgentIdentity;
    readonly #backend: MessagingBackend;
    readonly #ids: IdSource;
    readonly #claims?: RequestClaims;
    readonly #history?: AgentHostOptions["history"];
    readonly #publishAnswer?: AgentHostOptions["publishAnswer"];
    readonly #onEvent?: AgentHostOptions["onEvent"];
    readonly #agent: LLMPhiAgent;
    readonly #pending = new Map<string, Pending>();
    readonly #inflight = new Set<Promise<void>>();
    /** Requests received and not started yet (with replicas: not claimed yet). */
    readonly #queue: Queued[] = [];
    /** Settle functions of the requests not settled yet (those left at stop are given up unhandled). */
    readonly #unsettled = new Set<(handled: boolean) => void>();
    #queueClosed = false;
    #pumpRun?: Promise<void>;
    #pumping = false;
    /** performance.now() when another replica last won or answered a request this host tried to claim. */
    #contestedAt = Number.NEGATIVE_INFINITY;
    /** performance.now() before which no claim is tried (one failed: Redis is away). */
    #claimRetryAt = 0;
    #claimRetryTimer?: NodeJS.Timeout;
    readonly #capacity: number;
    readonly #seen = new Set<string>();
    readonly #selfReadyIds = new Set<string>();
    #agentState: Record<string, unknown> = {};
    #guildState: Record<string, unknown> = {};
    #state: AgentHostState = "created";
    #stopping?: Promise<StopSummary>;
    #subscribed: string[] = [];

    constructor(options: AgentHostOptions) {
        if (!options || typeof options !== "object") throw new PhiTypeError("AgentHost: expected options { backend, guildId, props }");
        const { backend, guildId } = options;
        if (!backend || typeof backend.subscribe !== "function" || typeof backend.publish !== "function") {
            throw new PhiTypeError("AgentHost: backend must be a MessagingBackend (e.g. a RedisMessagingBackend)");
        }
        if (typeof guildId !== "string" || guildId.length === 0) throw new PhiTypeError("AgentHost: guildId must be a non-empty string");
        this.#backend = backend;
        this.guildId = guildId;
        this.agentId = options.agentId ?? "phi_agent";
        this.agentName = options.agentName ?? "Phi-2 LLM";
        const agentType = options.agentType ?? PYTHON_PHI_AGENT_CLASS;
        if (typeof agentType !== "string" || agentType.length === 0) throw new PhiTypeError("AgentHost: agentType must be a non-empty string");
        const Base = options.agentClass ?? LLMPhiAgent;
        // the ErrorMessages' agent_type is the qualified class name, as Python writes it
        const Hosted = class extends Base { static override readonly agentType = agentType; };
        Object.defineProperty(Hosted, "name", { value: Base.name });
        const spec = new AgentBuilder(Hosted).setId(this.agentId).setName(this.agentName)
            .setProperties(options.props instanceof PhiAgentProps ? options.props : new PhiAgentProps(options.props)).buildSpec();
        this.#agent = new Hosted(spec);
        this.identity = {
            guildId, tag: { id: this.agentId, name: this.agentName }, agentType,
            className: agentType.slice(agentType.lastIndexOf(".") + 1),
            ...(options.guildRoutes ? { guildRoutes: structuredClone(options.guildRoutes) } : {}),
        };
        this.#ids = options.ids ?? new GemstoneGenerator(randomMachineId());
        this.#claims = options.claims;
        this.#capacity = options.capacity ?? spec.properties.sequences ?? LOAD_DEFAULTS.sequences;
        if (!Number.isInteger(this.#capacity) || this.#capacity < 1) throw new PhiRangeError(`AgentHost: capacity must be an integer >= 1; got ${String(options.capacity)}`);
        this.#history = options.history;
        this.#publishAnswer = options.publishAnswer;
        this.#onEvent = options.onEvent;
        this.topics = Object.freeze(subscribedTopics(this.agentId, {
            ...(options.additionalTopics ? { additionalTopics: options.additionalTopics } : {}),
            ...(options.listenToDefaultTopic !== undefined ? { listenToDefaultTopic: options.listenToDefaultTopic } : {}),
        }));
        if (this.#claims) {
            this.#claims.onLost = (id) => {
                const p = this.#pending.get(id);
                if (p && !p.handedBack) {
                    p.handedBack = true;
                    p.outcome = "dropped";
                    this.#log("warn", `lost the claim on request ${id} (its lease ran out); its generation is stopped, another replica answers it`);
                    p.abort.abort(new PhiAgentError("ERR_CLAIM_LOST", `the claim on request ${id} was lost (its lease ran out); another replica answers it`));
                }
            };
        }
    }

    get state(): AgentHostState {
        return this.#state;
    }

    /** The hosted agent (its model, once started). */
    get agent(): LLMPhiAgent {
        return this.#agent;
    }

    /** Requests being worked on now. */
    get inflight(): number {
        return this.#inflight.size;
    }

    /** Requests received and waiting to be started (with replicas: for room to claim them). */
    get queued(): number {
        return this.#queue.length;
    }

    /** The agent's and the guild's state, as the last StateFetchResponse/StateUpdateResponse said. */
    get agentState(): Record<string, unknown> { return this.#agentState; }
    get guildState(): Record<string, unknown> { return this.#guildState; }

    /**
     * Loads the model, subscribes to the agent's topics, then announces itself (SelfReadyNotification; the
     * first Heartbeat follows when it comes back). Rejects when the model cannot be loaded or a subscription fails.
     */
    async start(): Promise<void> {
        if (this.#state !== "created") throw new InvalidStateError(`AgentHost "${this.agentId}": start() was already called (state ${this.#state})`);
        this.#state = "starting";
        const runtime: AgentRuntime = {
            guildId: this.guildId,
            generator: new GemstoneGenerator(0),
            publish: (message) => this.#fromAgent(message),
            emit: (event) => this.#agentEvent(event),
        };
        try {
            await this.#agent.start(runtime);
            await this.#agent.ready(); // a model that cannot load fails the start, not each request
            for (const topic of this.topics) {
                await this.#backend.subscribe(this.guildId, topic, this.agentId, (m, info) => this.#receive(m, topic, info?.replayed === true));
                this.#subscribed.push(topic);
            }
        } catch (err) {
            this.#state = "running";
            await this.stop({ drainMs: 0 }).catch(() => undefined);
            throw err;
        }
        this.#state = "running";
        const ready = selfReadyMessage(this.identity, this.#ids);
        this.#selfReadyIds.add(ready.id);
        await this.#publish(ready);
        this.#emit({ type: "ready", selfReadyId: ready.id, topics: [...this.topics] });
    }

    /**
     * Stops taking requests (unsubscribes), lets the ones in flight finish for up to `drainMs` (default: as
     * long as they take), then hands the rest back (their claims are released, so another replica answers
     * them; their replies are not sent) and stops the agent (disposing the model). Idempotent.
     */
    stop(options: { drainMs?: number } = {}): Promise<StopSummary> {
        this.#stopping ??= this.#stop(options.drainMs ?? Number.POSITIVE_INFINITY);
        return this.#stopping;
    }

    async [Symbol.asyncDispose](): Promise<void> {
        await this.stop();
    }

    async #stop(drainMs: number): Promise<StopSummary> {
        const wasRunning = this.#state === "running";
        this.#state = "stopping";
        this.#claims?.unwatchAll();
        for (const topic of this.#subscribed.splice(0)) {
            try {
                await this.#backend.unsubscribe(this.guildId, topic, this.agentId);
            } catch {
                // a closed backend has no subscriptions left
            }
        }
        const before = this.#inflight.size + this.#queue.length;
        // what was received before: finish it (queued ones too), for at most drainMs
        const deadline = Date.now() + drainMs;
        while ((this.#inflight.size > 0 || this.#queue.length > 0) && Date.now() < deadline) {
            let timer: NodeJS.Timeout | undefined;
            const waits: Promise<unknown>[] = [this.#inflight.size > 0 ? Promise.allSettled([...this.#inflight]) : this.#pump()];
            if (Number.isFinite(drainMs)) waits.push(new Promise((r) => { timer = setTimeout(r, Math.max(0, deadline - Date.now())); }));
            await Promise.race(waits);
            clearTimeout(timer);
            if (this.#inflight.size === 0 && this.#queue.length > 0 && this.#claims && !this.#pumping) {
                // claims fail (Redis is away): what is queued is left to the other replicas and the next
                // subscription's replay, not waited for until Redis comes back
                if (performance.now() < this.#claimRetryAt) break;
                await new Promise((r) => setTimeout(r, 20));
            }
        }
        this.#queueClosed = true;
        const leftOver = this.#queue.splice(0);
        for (const q of leftOver) q.settle(false); // not answered here: replayed when a worker subscribes again
        const left = leftOver.length;
        let handedBack = 0;
        for (const [id, p] of this.#pending) {
            if (p.handedBack || p.replyIds.length > 0) continue;
            // started while its claim was on its way: hand back what the claim took, once it took it
            if (p.claiming && ((await p.claiming) !== "claimed" || p.handedBack || p.replyIds.length > 0)) continue;
            p.handedBack = true;
            p.outcome = "handed_back";
            handedBack++;
            try {
                if (this.#claims) await bounded(this.#claims.release(id), STOP_RELEASE_WAIT_MS, "Redis did not answer");
            } catch (err) {
                this.#log("warn", `could not release the claim on request ${id}: ${(err as Error).message}; it is taken over when its lease runs out`);
            }
        }
        await this.#agent.stop();
        await Promise.allSettled([...this.#inflight]);
        // watched requests that another replica held, and anything else not settled: given up unhandled
        for (const settle of [...this.#unsettled]) settle(false);
        await this.#claims?.close();
        this.#state = "stopped";
        return { finished: wasRunning ? Math.max(0, before - handedBack - left) : 0, handedBack, left };
    }

    // -----------------------------------------------------------------------------------------
    // Receiving
    // -----------------------------------------------------------------------------------------

    /** Taking messages: from the first subscription (backlog replays arrive while subscribing) until stop(). */
    get #taking(): boolean {
        return this.#state === "starting" || this.#state === "running";
    }

    #receive(raw: Message, subscribedTopic: string, replayed: boolean): Promise<void | DeferredSettlement> {
        if (!this.#taking) return Promise.resolve({ settled: Promise.resolve(false) });
        const work = this.#dispatch(raw, subscribedTopic, replayed).catch((err: unknown) => {
            this.#log("error", `message ${raw?.id} on ${subscribedTopic}: ${(err as Error)?.message ?? String(err)}`);
        });
        return work;
    }

    async #dispatch(raw: Message, subscribedTopic: string, replayed: boolean): Promise<void | DeferredSettlement> {
        const m = rusticMessageOf(raw);
        const tp = m.topic_published_to ?? subscribedTopic;
        m.topic_published_to = tp;
        const selfInbox = agentSelfInbox(this.agentId);
        // Python's MessagingInterface._should_deliver_to
        const fromMe = m.sender?.id === this.agentId;
        const onSelfInbox = tp.startsWith(GuildTopics.AGENT_SELF_INBOX_PREFIX);
        if (fromMe !== onSelfInbox) return;
        // Python's Agent._get_applicable_processors
        const normal = !ESSENTIAL_TOPICS.includes(tp) && !tp.startsWith(`${GuildTopics.AGENT_SELF_INBOX_PREFIX}:`);
        const essential = ESSENTIAL_TOPICS.includes(tp) || tp === selfInbox;
        if (!normal && !essential) return;
        switch (m.format) {
            case GenerationPromptRequest.format:
                if (normal) return this.#request(m, replayed);
                return;
            case SystemFormats.HEALTH_CHECK_REQUEST:
                await this.#healthCheck(m);
                return;
            case SystemFormats.SELF_READY:
                // send_first_heartbeat's predicate: from this agent, on its self inbox; and per replica: our own
                if (fromMe && tp === selfInbox && this.#selfReadyIds.delete(m.id)) await this.#firstHeartbeat(m);
                return;
            case SystemFormats.STATE_FETCH_RESPONSE:
            case SystemFormats.STATE_UPDATE_RESPONSE:
                await this.#stateResponse(m);
                return;
            default:
                return; // no handler for the format: nothing, as in Python
        }
    }

    #request(m: RusticMessage, replayed: boolean): DeferredSettlement | undefined {
        if (this.#seen.has(m.id)) return undefined; // the same request on two of our topics (settled on the first)
        this.#seen.add(m.id);
        if (this.#seen.size > SEEN_LIMIT) this.#seen.delete(this.#seen.values().next().value!);
        return this.#take(m, replayed);
    }

    /**
     * Queues the request and returns at once, not when it is answered: a backend that hands a client its
     * messages one at a time (the Redis one, as Python's) goes on delivering meanwhile, so requests are generated
     * together and health checks are answered at once. What it returns settles when the request does (the
     * Redis backend saves the position then).
     */
    #take(m: RusticMessage, replayed: boolean): DeferredSettlement {
        if (!this.#taking) return { settled: Promise.resolve(false) };
        let resolve!: (handled: boolean) => void;
        const settled = new Promise<boolean>((r) => { resolve = r; });
        const settle = (handled: boolean) => {
            if (this.#unsettled.delete(settle)) resolve(handled);
        };
        this.#unsettled.add(settle);
        this.#queue.push({ m, started: Date.now(), settle, replayed });
        void this.#pump();
        return { settled };
    }

    /**
     * Starts queued requests. With replicas, a request is claimed only when this host has room for it (fewer
     * than `capacity` in flight: what its model decodes together), so a busy replica leaves the next request to
     * an idle one; a request another replica claimed is watched, and queued again if it is freed unanswered.
     * A live request starts while its claim is on its way, unless replicas contend (SPECULATION_COOLDOWN_MS).
     */
    #pump(): Promise<void> {
        // #pumping is set and cleared synchronously (a run without an await finishes inside this call)
        if (this.#pumping) return this.#pumpRun ?? Promise.resolve();
        this.#pumping = true;
        const run = (async () => {
            try {
                while (this.#queue.length > 0 && !this.#queueClosed && (!this.#claims || this.#inflight.size < this.#capacity)) {
                    if (this.#claims && performance.now() < this.#claimRetryAt) {
                        this.#retryClaimsLater();
                        return;
                    }
                    const entry = this.#queue.shift()!;
                    if (!this.#claims) {
                        this.#start(entry);
                        continue;
                    }
                    if (!entry.replayed && performance.now() - this.#contestedAt >= SPECULATION_COOLDOWN_MS) {
                        // the claim goes out right after the generation was handed to the engine (a macrotask
                        // later): its socket write is then off the way from the request to its first decode
                        const claims = this.#claims;
                        const claiming = new Promise<void>((resolve) => setImmediate(resolve))
                            .then(() => this.#claim(claims, entry.m.id))
                            .catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))));
                        this.#start(entry, claiming);
                        continue;
                    }
                    let claim: ClaimResult;
                    try {
                        claim = await this.#claim(this.#claims, entry.m.id);
                    } catch (err) {
                        this.#claimFailed(entry, err as Error);
                        return;
                    }
                    if (claim !== "claimed") {
                        this.#unclaimed(entry, claim);
                        continue;
                    }
                    if (this.#queueClosed) {
                        await bounded(this.#claims.release(entry.m.id), STOP_RELEASE_WAIT_MS, "Redis did not answer").catch(() => undefined);
                        entry.settle(false);
                        continue;
                    }
                    this.#start(entry);
                }
            } finally {
                this.#pumping = false;
            }
        })();
        this.#pumpRun = run;
        return run;
    }

    /**
     * Claims a request, waiting at most CLAIM_WAIT_MS for Redis (a client waits for a lost connection to come back;
     * past it the claim counts as failed and is tried again, and a late SET that lands holds the request for this
     * replica, which finds it its own on the retry).
     */
    #claim(claims: RequestClaims, requestId: string): Promise<ClaimResult> {
        return bounded(claims.claim(requestId), CLAIM_WAIT_MS, "Redis did not answer the claim");
    }

    /** Works on a request (claimed, or being claimed: `claiming`) and settles it when it is done. */
    #start(entry: Queued, claiming?: Promise<ClaimResult | Error>): void {
        const { m, started, settle } = entry;
        const work: Promise<void> = this.#work(m, started, claiming)
            .then((outcome) => {
                if (typeof outcome !== "object") return settle(outcome !== "handed_back");
                if (outcome.unclaimed instanceof Error) this.#claimFailed(entry, outcome.unclaimed);
                else this.#unclaimed(entry, outcome.unclaimed);
            }, (err: unknown) => {
                this.#log("error", `request ${m.id}: ${(err as Error)?.message ?? String(err)}`);
                settle(false);
            })
            .finally(() => {
                this.#inflight.delete(work);
                void this.#pump();
            });
        this.#inflight.add(work);
    }

    /** A claim that came back other than "claimed": the request is another replica's, done, or too old. */
    #unclaimed(entry: Queued, claim: Exclude<ClaimResult, "claimed">): void {
        const { m, started, settle } = entry;
        // another replica holds it, or answered it while it was live: replicas contend, so claims come first
        if (claim === "taken" || (claim === "done" && !entry.replayed)) this.#contestedAt = performance.now();
        if (claim === "taken") {
            // settled once its holder answers it, or once this host does after it was freed
            this.#claims!.watch(m.id, () => {
                if (!this.#taking) return settle(false);
                this.#queue.unshift(entry);
                void this.#pump();
            }, () => settle(true));
        } else {
            settle(true); // done, or too old to answer from a replay
        }
        this.#line(m, claim === "done" ? "duplicate" : claim, [], [], started);
    }

    /** A claim that could not be sent or answered (Redis is away): queued again, claims resume in a moment. */
    #claimFailed(entry: Queued, err: Error): void {
        this.#queue.unshift(entry);
        this.#log("warn", `request ${entry.m.id}: could not claim it (${err.message}); retrying`);
        this.#claimRetryAt = performance.now() + CLAIM_RETRY_MS;
        this.#retryClaimsLater();
    }

    #retryClaimsLater(): void {
        if (this.#claimRetryTimer) return;
        this.#claimRetryTimer = setTimeout(() => {
            this.#claimRetryTimer = undefined;
            void this.#pump();
        }, Math.max(1, this.#claimRetryAt - performance.now()));
        this.#claimRetryTimer.unref();
    }

    /** Generates and answers a claimed (or being claimed) request; resolves with its outcome. */
    async #work(m: RusticMessage, started: number, claiming?: Promise<ClaimResult | Error>): Promise<RequestLine["outcome"] | Unclaimed> {
        let ctx: RusticProcessContext;
        try {
            ctx = new RusticProcessContext(this.#contextHost(), m, PROCESSORS.GENERATE);
        } catch (err) {
            // the routing slip is not one Python could have sent: answer on error_topic, skipping the slip
            const bare = new RusticProcessContext(this.#contextHost(), { ...m, routing_slip: null }, PROCESSORS.GENERATE);
            return this.#finish(m, bare, started, claiming, async (p) => { await this.#publishReplies(p, [bare.sendErrorDirect(this.#errorPayload(err))]); });
        }
        return this.#finish(m, ctx, started, claiming, async (p) => {
            if ((m.enrich_with_history ?? 0) > 0) await this.#enrich(m, ctx);
            // the agent validates, generates and replies through #fromAgent; a lost claim aborts the generation.
            // `repeat`: the host keeps repeats out itself (#seen), and hands the agent again a request whose
            // first try it stopped (started while its claim was on its way, claimed after another replica freed it)
            await this.#agent.deliver(this.#forAgent(m), m.topic_published_to ?? GuildTopics.DEFAULT_TOPIC, { signal: p.abort.signal, repeat: true });
            await p.chain;
        });
    }

    /**
     * Runs `body` for a claimed request, then completes or releases its claim and reports it; resolves with its
     * outcome. Started while its claim is on its way (`claiming`): a claim that does not come back "claimed"
     * aborts the generation at once, and nothing is published or reported (the caller deals with the request).
     */
    async #finish(m: RusticMessage, ctx: RusticProcessContext, started: number, claiming: Promise<ClaimResult | Error> | undefined,
        body: (p: Pending) => Promise<void>): Promise<RequestLine["outcome"] | Unclaimed> {
        const p: Pending = { ctx, chain: Promise.resolve(), replyIds: [], replyTopics: new Set(), handedBack: false, started, abort: new AbortController() };
        if (claiming) {
            p.claiming = claiming;
            void claiming.then((r) => {
                if (r === "claimed" || p.handedBack) return;
                p.handedBack = true;
                p.abort.abort(new PhiAgentError("ERR_CLAIM_LOST", `request ${m.id} was not claimed by this replica (${r instanceof Error ? r.message : r}); it is not answered here`));
            });
        }
        this.#pending.set(m.id, p);
        try {
            await body(p);
        } catch (err) {
            if (p.publishFailed) {
                p.outcome = "handed_back";
                this.#log("error", `request ${m.id}: the answer could not be published (${(err as Error)?.message}); handed back to the other replicas`);
            } else if (!p.handedBack && p.replyIds.length === 0) {
                await this.#publishReplies(p, [ctx.sendErrorDirect(this.#errorPayload(err))]).catch(() => undefined);
            }
        } finally {
            this.#pending.delete(m.id);
        }
        if (claiming) {
            const r = await claiming;
            if (r !== "claimed") return { unclaimed: r };
        }
        if (this.#claims && !p.answeredAtomically && (p.replyIds.length > 0 || !p.handedBack)) {
            try {
                // an answer that went out is marked done even when stop() began handing the request back meanwhile
                if (p.replyIds.length > 0) await this.#claims.complete(m.id, p.replyIds);
                else await this.#claims.release(m.id);
            } catch (err) {
                this.#log("warn", `request ${m.id}: could not mark it answered: ${(err as Error).message}`);
            }
        }
        const outcome = p.outcome ?? (p.replyIds.length === 0 ? "dropped" : "answered");
        this.#line(m, outcome, p.replyIds, [...p.replyTopics], started, p);
        return outcome;
    }

    /** The request as LLMPhiAgent reads it. */
    #forAgent(m: RusticMessage): Message {
        return {
            id: m.id, sender: m.sender, topics: m.topics, format: m.format, payload: m.payload,
            in_response_to: m.in_response_to ?? null, thread: m.thread, timestamp: m.timestamp, priority: m.priority,
            topic_published_to: m.topic_published_to,
        };
    }

    /** A reply LLMPhiAgent sent (through its ProcessContext): routed and published as Python would. */
    #fromAgent(message: Message<unknown>): void {
        const requestId = message.in_response_to;
        const p = requestId ? this.#pending.get(requestId) : undefined;
        if (!p) {
            this.#log("warn", `the agent sent a message that answers no pending request (in_response_to ${String(requestId)}); not published`);
            return;
        }
        const payload = message.payload as Record<string, unknown>;
        const isError = message.is_error_message === true;
        // handed back or claim lost: nothing goes out, and the outcome stays what it says (e.g. the AbortError of a
        // generation stopped for a lost claim is not the request's answer)
        if (p.handedBack) return;
        if (isError) {
            p.outcome = "error";
            p.error = { type: String(payload.error_type), message: String(payload.error_message) };
        } else if (typeof (payload.usage as { completion_tokens?: unknown } | undefined)?.completion_tokens === "number") {
            p.completionTokens = (payload.usage as { completion_tokens: number }).completion_tokens;
        }
        p.chain = p.chain.then(async () => {
            if (p.handedBack) return;
            let replies: RusticMessage[];
            try {
                replies = await p.ctx.send(payload, message.format, { error: isError });
            } catch (err) {
                p.outcome = "error";
                const e = this.#errorPayload(err);
                p.error = { type: e.error_type, message: e.error_message };
                replies = [p.ctx.sendErrorDirect(e)];
            }
            await this.#publishReplies(p, replies);
        });
    }

    async #publishReplies(p: Pending, replies: RusticMessage[]): Promise<void> {
        if (replies.length === 0) return;
        if (p.claiming && (await p.claiming) !== "claimed") return; // not ours: nothing goes out
        if (p.handedBack) return;
        if (this.#claims && this.#publishAnswer) {
            let ok: boolean;
            try {
                ok = await this.#answerAtomically(p.ctx.origin.id, replies);
            } catch (err) {
                p.publishFailed = true;
                throw err;
            }
            if (!ok) {
                p.handedBack = true;
                p.outcome = "dropped";
                this.#log("warn", `request ${p.ctx.origin.id}: the claim is no longer ours (its lease ran out, or it was answered); reply not sent`);
                return;
            }
            p.answeredAtomically = true;
            for (const r of replies) {
                p.replyIds.push(r.id);
                for (const t of topicsOf(r)) p.replyTopics.add(t);
            }
            return;
        }
        if (this.#claims && !(await this.#claims.confirm(p.ctx.origin.id))) {
            p.handedBack = true;
            p.outcome = "dropped";
            this.#log("warn", `request ${p.ctx.origin.id}: the claim is no longer ours (its lease ran out, or it was answered); reply not sent`);
            return;
        }
        for (const r of replies) {
            await this.#publish(r);
            p.replyIds.push(r.id);
            for (const t of topicsOf(r)) p.replyTopics.add(t);
        }
    }

    /**
     * publishAnswer, sent again while Redis is away (a restart, a cut link): the script is idempotent, so a retry
     * after a lost reply writes nothing twice. Gives up after MESSAGING_DEFAULTS.publishTimeoutMs (30 s), the
     * bound of every publish (the claim's lease has run out by then and another replica answers).
     */
    async #answerAtomically(requestId: string, replies: RusticMessage[]): Promise<boolean> {
        const deadline = Date.now() + MESSAGING_DEFAULTS.publishTimeoutMs;
        for (let attempt = 0; ; attempt++) {
            try {
                return await this.#publishAnswer!(requestId, replies);
            } catch (err) {
                if (Date.now() >= deadline || this.#state === "stopped") throw err;
                if (attempt === 0) this.#log("warn", `request ${requestId}: could not publish the answer (${(err as Error).message}); retrying`);
                await new Promise((r) => setTimeout(r, Math.min(1000, 100 * 2 ** attempt)));
            }
        }
    }

    #errorPayload(err: unknown): ErrorMessage {
        const e = err instanceof Error ? err : new Error(String(err));
        const code = (e as { code?: unknown }).code;
        return ErrorMessage.create({
            agent_type: this.identity.agentType,
            error_type: e.name && e.name !== "Error" ? e.name : "UNHANDLED_EXCEPTION",
            error_message: e.message || String(err),
            ...(typeof code === "string" ? { code } : {}),
        });
    }

    /** `MessagingInterface._enrich_message`: the last N history entries' origins, read from the store, into session_state. */
    async #enrich(m: RusticMessage, ctx: RusticProcessContext): Promise<void> {
        const n = Math.min(m.enrich_with_history ?? 0, m.message_history.length);
        if (!this.#history) {
            throw Object.assign(new Error(`the request asks for enrich_with_history=${m.enrich_with_history}, but this agent host has no message store to read history from (run it on the Redis backend)`),
                { name: "UnsupportedEnrichmentError", code: "ERR_UNSUPPORTED_ROUTE" });
        }
        const ids = n > 0 ? m.message_history.slice(-n).map((e) => String(e.origin)) : [];
        const previous = ids.length > 0 ? await this.#history(ids) : [];
        const state = { ...(m.session_state ?? {}), enriched_history: previous };
        m.session_state = state;
        ctx.setSessionState(state);
    }

    // -----------------------------------------------------------------------------------------
    // Health and state (the Python mixins)
    // -----------------------------------------------------------------------------------------

    #heartbeatPayload(checktime: { epochMs: number; iso: string }): Record<string, unknown> {
        const now = preciseNow();
        const latency = Math.round((now - checktime.epochMs) * 1000) / 1000;
        return {
            checktime: checktime.iso,
            checkstatus: "ok",
            responsetime: naiveIsoTime(now),
            checkmeta: { qos_latency: null, observed_latency: latency, ...(this.#claims ? { replica_id: this.#claims.replicaId } : {}) },
        };
    }

    async #healthCheck(m: RusticMessage): Promise<void> {
        const ctx = new RusticProcessContext(this.#contextHost(), { ...m, routing_slip: null }, PROCESSORS.HEARTBEAT);
        const raw = (m.payload as { checktime?: unknown }).checktime;
        const checktime = raw === undefined ? { epochMs: preciseNow(), iso: naiveIsoTime() } : parseIsoTime(raw);
        if (!checktime) {
            // Python: reading ctx.payload fails validation inside the handler → send_error
            const ectx = new RusticProcessContext(this.#contextHost(), m, PROCESSORS.HEARTBEAT);
            await this.#publishAll(await ectx.send(ErrorMessage.create({
                agent_type: this.identity.agentType, error_type: "UNHANDLED_EXCEPTION",
                error_message: `1 validation error for HealthCheckRequest\nchecktime\n  Input should be a valid datetime; got ${JSON.stringify(raw)}`,
            }) as unknown as Record<string, unknown>, ErrorMessage.format, { error: true }).catch((err: unknown) => [ectx.sendErrorDirect(this.#errorPayload(err))]));
            return;
        }
        const hb = ctx.directSend({ priority: Priority.HIGH, topics: [GuildTopics.HEARTBEAT_TOPIC], payload: this.#heartbeatPayload(checktime), format: SystemFormats.HEARTBEAT });
        await this.#publish(hb);
        this.#emit({ type: "heartbeat", heartbeatId: hb.id, inResponseTo: m.id, first: false });
    }

    async #firstHeartbeat(m: RusticMessage): Promise<void> {
        const ctx = new RusticProcessContext(this.#contextHost(), { ...m, routing_slip: null }, PROCESSORS.FIRST_HEARTBEAT);
        const now = preciseNow();
        const hb = ctx.directSend({
            priority: Priority.HIGH, topics: [GuildTopics.HEARTBEAT_TOPIC], format: SystemFormats.HEARTBEAT,
            payload: this.#heartbeatPayload({ epochMs: now, iso: naiveIsoTime(now) }),
        });
        await this.#publish(hb);
        this.#emit({ type: "heartbeat", heartbeatId: hb.id, inResponseTo: m.id, first: true });
    }

    async #stateResponse(m: RusticMessage): Promise<void> {
        const p = m.payload as Record<string, unknown>;
        const ok = (p.state_owner === "guild" || p.state_owner === "agent") && typeof p.guild_id === "string"
            && (p.state === undefined || (typeof p.state === "object" && p.state !== null && !Array.isArray(p.state)));
        if (!ok) return; // Python would answer with a validation error; a state service never sends these
        const state = (p.state ?? {}) as Record<string, unknown>;
        if (p.state_owner === "guild") this.#guildState = state;
        else if (p.agent_id === this.agentId) this.#agentState = state;
    }

    // -----------------------------------------------------------------------------------------

    #contextHost() {
        return {
            identity: this.identity,
            ids: this.#ids,
            agentState: () => this.#agentState,
            guildState: () => this.#guildState,
            log: (message: string) => this.#log("warn", message),
        };
    }

    async #publishAll(messages: RusticMessage[]): Promise<void> {
        for (const m of messages) await this.#publish(m);
    }

    /** Python's MessagingInterface.publish: one copy per topic, with topic_published_to set. */
    async #publish(message: RusticMessage): Promise<void> {
        for (const topic of topicsOf(message)) {
            await this.#backend.publish(this.guildId, topic, { ...message, topic_published_to: topic } as Message);
        }
    }

    #line(m: RusticMessage, outcome: RequestLine["outcome"], replyIds: string[], replyTopics: string[], started: number, p?: Pending): void {
        const line: RequestLine = {
            type: "request", requestId: m.id, sender: m.sender?.id ?? null, topic: m.topic_published_to, outcome,
            replyIds: [...replyIds], replyTopics, ms: Date.now() - started,
        };
        if (p?.error) line.error = p.error;
        if (p?.completionTokens !== undefined) line.completionTokens = p.completionTokens;
        this.#emit(line);
    }

    #agentEvent(body: GuildEventBody): void {
        this.#emit({ type: "agent", event: { ...body, guildId: this.guildId, time: Date.now() } as GuildEvent });
    }

    #log(level: "debug" | "info" | "warn" | "error", message: string): void {
        this.#emit({ type: "log", level, message });
    }

    #emit(event: AgentHostEvent): void {
        try {
            this.#onEvent?.(event);
        } catch {
            // a failing listener must not break the host
        }
    }
}

/** What stop() did with the requests in flight. */
export interface StopSummary {
    /** Requests that were in flight when stop() began and were answered. */
    finished: number;
    /** Requests handed back unanswered (their claims released). */
    handedBack: number;
    /** Requests received but not started when the drain time ran out (other replicas have them too). */
    left: number;
}
