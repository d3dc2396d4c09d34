// Our agent in a RusticAI guild over a real redis-server, talked to as Python talks: raw JSON published with Python's
// command sequence (SET msg EX, ZADD, PUBLISH), replies read back from the channels and checked with the wire codec
// (pydantic-exact parse, byte-for-byte re-serialization) against the golden messages of the Python run.
// Then the worker command (`phi-agent agent`) as real child processes: replicas, kill -9, restart, SIGTERM.
import { expect } from "chai";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import readline from "node:readline";
import type { Redis } from "ioredis";
import { EventEmitter } from "node:events";
import { LLMPhiAgent } from "../src/agent/LLMPhiAgent.js";
import { AbortError } from "../src/errors.js";
import type { PhiModel } from "../src/model/PhiModel.js";
import type { GenerationResult, LoadOptions } from "../src/model/types.js";
import { AgentHost, type AgentHostEvent, type RequestLine } from "../src/guild/rustic/AgentHost.js";
import { PYTHON_PHI_AGENT_CLASS, SystemFormats } from "../src/guild/rustic/protocol.js";
import { joinRedisGuild, type JoinedRedisGuild } from "../src/guild/rustic/join.js";
import { ErrorMessage, GenerationPromptResponse } from "../src/messages/formats.js";
import { GemstoneIdGenerator, Priority, gemstoneParts, parseWireMessage, readWireMessage, serializeWireMessage, type WireMessage } from "../src/messages/wire/index.js";
import { packageRoot } from "../src/native/binding.js";
import { tinyModel } from "./helpers/models.js";
import { startRedisServer, type RedisServer } from "./helpers/redis.js";
import { golden, jsonKeys } from "./helpers/rustic.js";

const CLI = path.join(packageRoot, "dist", "src", "cli", "main.js");
const NAIVE_ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?$/;
const probeIds = new GemstoneIdGenerator(1);

/** Python's RedisMessageStore.store_message: SET msg EX 3600 + ZADD (pipeline), then PUBLISH, the same JSON. */
async function pyPublish(redis: Redis, guild: string, topic: string, json: string, id: bigint): Promise<void> {
    const ns = `${guild}:${topic}`;
    await redis.pipeline().set(`msg:${guild}:${id}`, json, "EX", 3600).zadd(ns, gemstoneParts(id).timestamp, json).exec();
    await redis.publish(ns, json);
}

/** A message like the golden one (`label`), with a new id from the probe's machine id 1 and `changes` applied. */
function pyMessage(label: string, changes: Partial<WireMessage> = {}, priority: Priority = Priority.NORMAL): WireMessage {
    const m = readWireMessage(golden(label));
    const id = probeIds.next(priority);
    return { ...m, id, thread: [id], ...changes };
}

/** Publishes `m` to each of its topics as Python does; returns it. */
async function send(redis: Redis, guild: string, m: WireMessage): Promise<WireMessage> {
    for (const t of Array.isArray(m.topics) ? m.topics : [m.topics]) {
        const json = serializeWireMessage({ ...m, topic_published_to: t });
        await pyPublish(redis, guild, t, json, m.id);
    }
    return m;
}

interface Seen { channel: string; text: string; message: WireMessage }

/** Subscribes to channels of a guild and keeps every message as text and as Python would parse it. */
class Listener {
    readonly seen: Seen[] = [];
    readonly invalid: string[] = [];
    readonly #waits: { pred: (s: Seen) => boolean; resolve: (s: Seen) => void }[] = [];
    private constructor(readonly sub: Redis) {}

    static async start(server: RedisServer, guild: string, topics: string[]): Promise<Listener> {
        const sub = await server.client();
        const l = new Listener(sub);
        sub.on("message", (channel: string, text: string) => l.#add(channel, text));
        await sub.subscribe(...topics.map((t) => `${guild}:${t}`));
        return l;
    }

    #add(channel: string, text: string): void {
        const r = parseWireMessage(text);
        if (!r.ok) { this.invalid.push(text); return; }
        const s = { channel, text, message: r.message };
        this.seen.push(s);
        for (const w of [...this.#waits]) if (w.pred(s)) { this.#waits.splice(this.#waits.indexOf(w), 1); w.resolve(s); }
    }

    next(pred: (s: Seen) => boolean, from = 0): Promise<Seen> {
        const found = this.seen.slice(from).find(pred);
        return found ? Promise.resolve(found) : new Promise((resolve) => this.#waits.push({ pred, resolve }));
    }

    replyTo(id: bigint, channelEnd?: string): Promise<Seen> {
        return this.next((s) => s.message.in_response_to === id && s.message.format !== SystemFormats.HEARTBEAT && (channelEnd === undefined || s.channel.endsWith(`:${channelEnd}`)));
    }

    answersTo(id: bigint): Seen[] {
        return this.seen.filter((s) => s.message.in_response_to === id && s.message.format !== SystemFormats.HEARTBEAT);
    }
}

/** What Python would accept: its Message model parses it, and writing it back gives the same bytes. */
function expectPythonReadable(s: Seen): void {
    const r = parseWireMessage(s.text);
    expect(r.ok, s.text).to.equal(true);
    if (r.ok) expect(serializeWireMessage(r.message)).to.equal(s.text);
}

describe("phi agent in a RusticAI guild over Redis (real redis-server, tiny model)", function () {
    this.timeout(180000);
    let server: RedisServer;
    let redis: Redis;
    let modelPath: string;

    before(async () => {
        server = await startRedisServer({ persist: true });
        redis = await server.client();
        modelPath = await tinyModel("q8_0");
    });
    after(async () => {
        await server?.stop();
    });

    describe("AgentHost on the Redis backend", () => {
        const GUILD = "probe-6199e82dae";
        let joined: JoinedRedisGuild;
        let host: AgentHost;
        let listener: Listener;
        const events: AgentHostEvent[] = [];

        before(async () => {
            listener = await Listener.start(server, GUILD, ["default_topic", "error_topic", "heartbeat", "agent_self_inbox:phi_agent", "user_outbox:u1", "state_topic"]);
            joined = await joinRedisGuild({ url: server.url, guildId: GUILD, agentId: "phi_agent" });
            host = new AgentHost({
                backend: joined.backend, guildId: GUILD, props: { modelPath, device: "cpu", threads: 1, contextSize: 256, maxNewTokens: 3 },
                ids: joined.ids, claims: joined.claims, history: joined.history, publishAnswer: joined.publishAnswer, onEvent: (e) => events.push(e),
            });
            await host.start();
        });
        after(async () => {
            await host?.stop();
            await joined?.close();
        });

        it("announces itself: SelfReadyNotification on its self inbox, then a Heartbeat, both as Python writes them", async () => {
            const ready = await listener.next((s) => s.message.format === SystemFormats.SELF_READY);
            const hb = await listener.next((s) => s.message.format === SystemFormats.HEARTBEAT && s.message.in_response_to === ready.message.id);
            expect(ready.channel).to.equal(`${GUILD}:agent_self_inbox:phi_agent`);
            for (const s of [ready, hb]) expectPythonReadable(s);
            expect(jsonKeys(ready.text)).to.deep.equal(jsonKeys(golden("self_ready")));
            expect(hb.message.message_history.map((e) => e.processor)).to.deep.equal(["LLMPhiAgent:self", "send_first_heartbeat"]);
            expect(listener.seen.indexOf(ready)).to.be.lessThan(listener.seen.indexOf(hb));
            // a machine id of its own, leased in the guild (not Python's 1..n)
            expect(gemstoneParts(ready.message.id).machineId).to.be.within(128, 255);
            expect(await redis.get(`machine:${GUILD}:${gemstoneParts(ready.message.id).machineId}`)).to.be.a("string");
        });

        it("answers the seed's GenerationPromptRequest with a reply Python accepts (golden shape, exact 64-bit ids)", async () => {
            const req = await send(redis, GUILD, pyMessage("request"));
            const reply = await listener.replyTo(req.id);
            expectPythonReadable(reply);
            expect(reply.channel).to.equal(`${GUILD}:default_topic`);
            expect(jsonKeys(reply.text)).to.deep.equal(jsonKeys(golden("reply")));
            const g = readWireMessage(golden("reply"));
            const m = reply.message;
            expect(m.format).to.equal(GenerationPromptResponse.format);
            expect(m.topics).to.equal("default_topic");
            expect(m.in_response_to).to.equal(req.id);
            expect(m.thread).to.deep.equal([req.id]);
            expect(m.message_history).to.deep.equal([{ agent: g.sender, origin: req.id, result: m.id, processor: "generate_prompt",
                from_topic: "default_topic", to_topics: ["default_topic"], reason: null }]);
            expect(m.session_state).to.deep.equal({});
            expect(m.sender).to.deep.equal(g.sender);
            expect(req.id > 2n ** 63n && m.id > 2n ** 63n).to.equal(true);
            expect(String(m.payload.generated_response).startsWith(String(req.payload.generation_prompt))).to.equal(true);
            // the reply's Redis trail is Python's: msg:{guild}:{id} with expiry, in the topic's ZSET with the id's ms
            expect(await redis.get(`msg:${GUILD}:${m.id}`)).to.equal(reply.text);
            expect(await redis.ttl(`msg:${GUILD}:${m.id}`)).to.be.within(3500, 3600);
            expect(await redis.zscore(`${GUILD}:default_topic`, reply.text)).to.equal(String(gemstoneParts(m.id).timestamp));
        });

        it("answers malformed requests with ErrorMessages on error_topic", async () => {
            for (const label of ["malformed_request", "wrong_type_request"]) {
                const req = await send(redis, GUILD, pyMessage(label));
                const err = await listener.replyTo(req.id);
                expectPythonReadable(err);
                expect(err.channel).to.equal(`${GUILD}:error_topic`);
                expect(jsonKeys(err.text)).to.deep.equal(jsonKeys(golden("malformed_error")));
                expect(err.message.is_error_message).to.equal(true);
                expect(err.message.topics).to.deep.equal(["error_topic"]);
                expect(ErrorMessage.parse(err.message.payload).agent_type).to.equal(PYTHON_PHI_AGENT_CLASS);
            }
        });

        it("answers health checks on heartbeat and guild_status_topic with Heartbeats (naive ISO times, replica in checkmeta)", async () => {
            for (const label of ["health_check_heartbeat_topic", "health_check_status_topic"]) {
                const hc = await send(redis, GUILD, pyMessage(label));
                const hb = await listener.next((s) => s.message.format === SystemFormats.HEARTBEAT && s.message.in_response_to === hc.id);
                expectPythonReadable(hb);
                expect(jsonKeys(hb.text)).to.deep.equal(jsonKeys(golden("heartbeat")));
                expect(hb.channel).to.equal(`${GUILD}:heartbeat`);
                expect(gemstoneParts(hb.message.id).priority).to.equal(Priority.HIGH);
                const p = hb.message.payload as Record<string, unknown>;
                expect(p.checktime).to.equal((hc.payload as { checktime: string }).checktime);
                expect(p.responsetime).to.match(NAIVE_ISO);
                expect(p.checkstatus).to.equal("ok");
                expect((p.checkmeta as { replica_id?: string }).replica_id).to.equal(joined.claims.replicaId);
            }
        });

        it("routes replies by the request's routing slip", async () => {
            const req = await send(redis, GUILD, pyMessage("request", {
                routing_slip: readWireMessage(JSON.stringify({ ...JSON.parse(golden("request")), routing_slip: { steps: [
                    { agent_type: PYTHON_PHI_AGENT_CLASS, destination: { topics: "user_outbox:u1" }, agent_state_update: { state_update: "{\"n\": 1}" } },
                ] } })).routing_slip,
            }));
            const reply = await listener.replyTo(req.id, "user_outbox:u1");
            expectPythonReadable(reply);
            expect(reply.message.topics).to.equal("user_outbox:u1");
            expect(reply.message.routing_slip).to.deep.equal({ steps: [] });
            const update = await listener.next((s) => s.channel.endsWith(":state_topic") && s.message.in_response_to === req.id);
            expectPythonReadable(update);
            expect(update.message.format).to.equal(SystemFormats.STATE_UPDATE_REQUEST);
        });

        it("answers only GenerationPromptRequest; malformed JSON on its topics is dead-lettered and never stops it", async () => {
            await redis.publish(`${GUILD}:default_topic`, "{\"not\":\"a message\"}");
            await redis.publish(`${GUILD}:default_topic`, "not json at all");
            await redis.publish(`${GUILD}:agent_inbox:phi_agent`, "{\"sender\":{\"id\":\"x\"},\"topics\":\"agent_inbox:phi_agent\",\"payload\":{},\"id\":1}");
            const other = await send(redis, GUILD, pyMessage("request", { format: "some.other.Format", payload: { x: 1 } }));
            const own = await send(redis, GUILD, pyMessage("request", { sender: { id: "phi_agent", name: "Phi-2 LLM" } }));
            const req = await send(redis, GUILD, pyMessage("request"));
            await listener.replyTo(req.id);
            const junk = new Set(["{\"not\":\"a message\"}", "not json at all"]);
            expect(listener.invalid.filter((t) => !junk.has(t))).to.deep.equal([]); // we never wrote what Python cannot read
            expect(listener.answersTo(other.id)).to.deep.equal([]);
            expect(listener.answersTo(own.id)).to.deep.equal([]);
            const dead = await redis.zrange(`${GUILD}:dead_letter_queue`, "0", "-1");
            expect(dead.length).to.be.at.least(3);
        });

        it("fills enriched_history from the guild's message store for enrich_with_history", async () => {
            const first = await send(redis, GUILD, pyMessage("request"));
            const r1 = await listener.replyTo(first.id);
            const req = await send(redis, GUILD, pyMessage("request", { enrich_with_history: 1, message_history: r1.message.message_history }));
            const reply = await listener.replyTo(req.id);
            expectPythonReadable(reply);
            const enriched = (reply.message.session_state as { enriched_history: string[] }).enriched_history;
            expect(enriched).to.have.length(1);
            const prev = JSON.parse(enriched[0]!.replace(/:(\d{16,})/g, ":\"$1\"")) as Record<string, unknown>;
            expect(prev).to.not.have.property("session_state");
            expect(prev.id).to.equal(String(first.id));
        });
    });

    describe("AgentHost over Redis: a claim lost mid-generation", () => {
        const GUILD = "claim-lost";
        let joined: JoinedRedisGuild;
        let host: AgentHost;
        const events: AgentHostEvent[] = [];
        const lines = new EventEmitter();
        /** What each generate() of the model ended with, in order. */
        const ended: ({ result: GenerationResult } | { error: unknown })[] = [];
        const generation = new EventEmitter();

        /** The real model, with generate() watched: "generating" after 8 tokens, and how it ended. */
        class WatchedAgent extends LLMPhiAgent {
            protected override async loadModel(options: LoadOptions): Promise<PhiModel> {
                const model = await super.loadModel(options);
                const generate = model.generate.bind(model);
                model.generate = async (prompt, o = {}) => {
                    let tokens = 0;
                    try {
                        const result = await generate(prompt, { ...o, onToken: (c) => { o.onToken?.(c); if (++tokens === 8) generation.emit("generating"); } });
                        ended.push({ result });
                        return result;
                    } catch (error) {
                        ended.push({ error });
                        throw error;
                    }
                };
                return model;
            }
        }

        before(async () => {
            joined = await joinRedisGuild({ url: server.url, guildId: GUILD, agentId: "phi_agent", claimLeaseMs: 300 });
            host = new AgentHost({
                backend: joined.backend, guildId: GUILD, props: { modelPath, device: "cpu", threads: 1, contextSize: 2048 },
                agentClass: WatchedAgent, ids: joined.ids, claims: joined.claims, history: joined.history, publishAnswer: joined.publishAnswer,
                onEvent: (e) => {
                    events.push(e);
                    if (e.type === "request") lines.emit(e.requestId, e);
                },
            });
            await host.start();
        });
        after(async () => {
            await host?.stop();
            await joined?.close();
        });

        it("stops the generation at once when the claim is lost (another replica holds it now): its tokens stop, nothing is published", async () => {
            const maxTokens = 1500;
            const generating = once(generation, "generating");
            const req = await send(redis, GUILD, pyMessage("request", { payload: { generation_prompt: "Once upon a time", max_tokens: maxTokens } }));
            const line = once(lines, String(req.id)) as Promise<[RequestLine]>;
            await generating;
            // what a takeover after a stall leaves: the lease ran out and another replica claimed the request
            const key = joined.claims.key(String(req.id));
            expect(await redis.get(key)).to.equal(joined.claims.replicaId);
            await redis.set(key, "other-replica", "PX", 60_000);
            const [l] = await line;
            expect(l.outcome).to.equal("dropped");
            expect(l.replyIds).to.deep.equal([]);
            expect(ended).to.have.length(1);
            const end = ended[0]!;
            expect("error" in end, `the generation ran on to its end: ${JSON.stringify("result" in end ? end.result.usage : null)}`).to.equal(true);
            const error = (end as { error: AbortError & { partial?: GenerationResult } }).error;
            expect(error).to.be.instanceOf(AbortError);
            expect(error.code).to.equal("ERR_ABORTED");
            expect(error.message).to.match(/claim on request \d+ was lost/);
            expect(error.partial?.finishReason).to.equal("abort");
            expect(error.partial!.usage.completionTokens).to.be.within(8, maxTokens / 2);
            // the claim is no longer held, and no answer (nor an error) went out
            expect(joined.claims.held).to.deep.equal([]);
            expect(events.some((e) => e.type === "log" && /lost the claim on request/.test(e.message))).to.equal(true);
            for (const topic of ["default_topic", "error_topic"]) {
                const stored = (await redis.zrange(`${GUILD}:${topic}`, "0", "-1")).map((t) => readWireMessage(t));
                expect(stored.filter((m) => m.in_response_to === req.id), topic).to.deep.equal([]);
            }
            expect(await redis.get(key)).to.equal("other-replica");
        });
    });

    describe("AgentHost over Redis: a request started while its claim is on its way", () => {
        const GUILD = "speculative";
        const CLAIM_DELAY_MS = 250;
        let joined: JoinedRedisGuild;
        let host: AgentHost;
        const lines = new EventEmitter();
        /** Each generate() of the model: its prompt, when it began (performance.now()) and how it ended. */
        const generations: { prompt: string; at: number; error?: unknown }[] = [];
        /** When each claim's answer reached the host (performance.now()), by request id. */
        const claimedAt = new Map<string, { at: number; result: string }>();
        let backlog: WireMessage;

        class WatchedAgent extends LLMPhiAgent {
            protected override async loadModel(options: LoadOptions): Promise<PhiModel> {
                const model = await super.loadModel(options);
                const generate = model.generate.bind(model);
                model.generate = async (prompt, o = {}) => {
                    const g: { prompt: string; at: number; error?: unknown } = { prompt, at: performance.now() };
                    generations.push(g);
                    try {
                        return await generate(prompt, o);
                    } catch (error) {
                        g.error = error;
                        throw error;
                    }
                };
                return model;
            }
        }

        const generationsOf = (prompt: string) => generations.filter((g) => g.prompt === prompt);
        const request = (prompt: string, maxTokens = 4) => pyMessage("request", { payload: { generation_prompt: prompt, max_tokens: maxTokens } });

        before(async () => {
            joined = await joinRedisGuild({ url: server.url, guildId: GUILD, agentId: "phi_agent" });
            // the real claims, with each claim's answer held back a while, as a far Redis would
            const real = joined.claims;
            const claims = new Proxy(real, {
                get(target, key) {
                    if (key === "claim") {
                        return async (id: string) => {
                            const result = await target.claim(id);
                            await new Promise((r) => setTimeout(r, CLAIM_DELAY_MS));
                            claimedAt.set(id, { at: performance.now(), result });
                            return result;
                        };
                    }
                    const v = Reflect.get(target, key, target) as unknown;
                    return typeof v === "function" ? v.bind(target) : v;
                },
                set(target, key, value) {
                    return Reflect.set(target, key, value, target);
                },
            });
            // published before the host subscribes: it comes from the backlog replay
            backlog = await send(redis, GUILD, request("From the backlog"));
            host = new AgentHost({
                backend: joined.backend, guildId: GUILD, props: { modelPath, device: "cpu", threads: 1, contextSize: 2048 },
                agentClass: WatchedAgent, ids: joined.ids, claims, history: joined.history, publishAnswer: joined.publishAnswer,
                onEvent: (e) => { if (e.type === "request") lines.emit(e.requestId, e); },
            });
            const backlogLine = once(lines, String(backlog.id)) as Promise<[RequestLine]>;
            await host.start();
            expect((await backlogLine)[0].outcome).to.equal("answered");
        });
        after(async () => {
            await host?.stop();
            await joined?.close();
        });

        it("a request from the backlog replay waits for its claim before it generates", () => {
            const [g, ...more] = generationsOf("From the backlog");
            expect(more).to.deep.equal([]);
            expect(g!.at).to.be.greaterThan(claimedAt.get(String(backlog.id))!.at);
        });

        it("a live request generates while its claim is on its way; its answer goes out only once the claim came back", async () => {
            const l = await Listener.start(server, GUILD, ["default_topic"]);
            const req = await send(redis, GUILD, request("Live and alone"));
            const reply = await l.replyTo(req.id);
            const repliedAt = performance.now();
            const claim = claimedAt.get(String(req.id))!;
            expect(claim.result).to.equal("claimed");
            const [g, ...more] = generationsOf("Live and alone");
            expect(more).to.deep.equal([]);
            expect(g!.at, "the generation began after the claim came back").to.be.lessThan(claim.at);
            expect(repliedAt).to.be.greaterThan(claim.at);
            expect(reply.message.format).to.equal(GenerationPromptResponse.format);
            await new Promise((r) => setTimeout(r, 100));
            expect(l.answersTo(req.id)).to.have.length(1);
            expect(await redis.get(joined.claims.key(String(req.id)))).to.match(/^done:/);
            await l.sub.quit();
        });

        it("a live request another replica holds: its generation stops when the claim comes back taken, nothing goes out; then claims come first, and the request is answered once when freed", async () => {
            const l = await Listener.start(server, GUILD, ["default_topic", "error_topic"]);
            const a = request("Held by another", 600); // generates for longer than the claim takes to come back
            await redis.set(joined.claims.key(String(a.id)), "other-replica", "PX", 60_000);
            const aLine = once(lines, String(a.id)) as Promise<[RequestLine]>;
            await send(redis, GUILD, a);
            expect((await aLine)[0].outcome).to.equal("taken");
            const [ga, ...moreA] = generationsOf("Held by another");
            expect(moreA).to.deep.equal([]);
            expect(ga!.at).to.be.lessThan(claimedAt.get(String(a.id))!.at);
            expect(ga!.error, "the speculative generation was stopped").to.be.instanceOf(AbortError);
            expect((ga!.error as Error).message).to.match(/was not claimed by this replica \(taken\)/);
            expect(l.answersTo(a.id)).to.deep.equal([]);
            // another replica is at work: the next live request waits for its claim
            const b = request("Contended");
            await redis.set(joined.claims.key(String(b.id)), "other-replica", "PX", 60_000);
            const bLine = once(lines, String(b.id)) as Promise<[RequestLine]>;
            await send(redis, GUILD, b);
            expect((await bLine)[0].outcome).to.equal("taken");
            expect(generationsOf("Contended"), "no generation for a request another replica holds").to.deep.equal([]);
            // the other replica hands `a` back (as its RELEASE does): this host claims it, then answers it, once
            await redis.del(joined.claims.key(String(a.id)));
            await redis.publish(`claim:${GUILD}:phi_agent`, String(a.id));
            const reply = await l.replyTo(a.id);
            expect(reply.message.format).to.equal(GenerationPromptResponse.format);
            const [, again, ...rest] = generationsOf("Held by another");
            expect(rest).to.deep.equal([]);
            expect(again!.at, "after the contention, the generation waits for the claim").to.be.greaterThan(claimedAt.get(String(a.id))!.at);
            await new Promise((r) => setTimeout(r, 100));
            expect(l.answersTo(a.id)).to.have.length(1);
            expect(l.answersTo(b.id)).to.deep.equal([]);
            await l.sub.quit();
        });
    });

    describe("phi-agent agent (worker processes)", () => {
        interface Worker { child: ChildProcess; replica: string; lines: Record<string, unknown>[]; stderr: string; exit: Promise<[number | null, string | null]> }
        const workers: Worker[] = [];

        function startWorker(guild: string, replica: string, extra: string[] = [], url = server.url): Worker {
            const child = spawn(process.execPath, [CLI, "agent", "--redis", url, "--guild", guild, "--model", modelPath,
                "--device", "cpu", "--threads", "1", "--context-size", "2048", "--max-new-tokens", "2", "--replica-id", replica,
                "--claim-lease-ms", "1500", "--json", ...extra], { stdio: ["ignore", "pipe", "pipe"] });
            const w: Worker = { child, replica, lines: [], stderr: "", exit: once(child, "exit") as Promise<[number | null, string | null]> };
            readline.createInterface({ input: child.stdout! }).on("line", (l) => w.lines.push(JSON.parse(l) as Record<string, unknown>));
            child.stderr!.on("data", (c: Buffer) => { w.stderr += c.toString(); });
            workers.push(w);
            return w;
        }

        /** Resolves when the worker's first Heartbeat (after `from`) is on the guild's heartbeat topic (its readiness signal). */
        function ready(l: Listener, w: Worker, from = l.seen.length): Promise<Seen> {
            return l.next((s) => s.message.format === SystemFormats.HEARTBEAT
                && (s.message.payload.checkmeta as { replica_id?: string } | undefined)?.replica_id === w.replica
                && s.message.message_history.at(-1)?.processor === "send_first_heartbeat", from);
        }

        async function stopAll(): Promise<void> {
            for (const w of workers.splice(0)) {
                if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill("SIGTERM");
                await w.exit;
            }
        }
        afterEach(stopAll);

        it("3 replicas share the requests: each of 60 is answered exactly once", async () => {
            const guild = "replicas-60";
            const l = await Listener.start(server, guild, ["default_topic", "heartbeat"]);
            const ws = ["r1", "r2", "r3"].map((r) => startWorker(guild, r));
            await Promise.all(ws.map((w) => ready(l, w)));
            const reqs: WireMessage[] = [];
            for (let i = 0; i < 60; i++) reqs.push(await send(redis, guild, pyMessage("request", { payload: { generation_prompt: `Request ${i}:` } })));
            const replies = await Promise.all(reqs.map((r) => l.replyTo(r.id)));
            for (const r of replies) expectPythonReadable(r);
            // every worker stops gracefully (exit 0): nothing more can come from them after that
            for (const w of ws) w.child.kill("SIGTERM");
            const codes = await Promise.all(ws.map((w) => w.exit));
            expect(codes.map(([c]) => c), ws.map((w) => w.stderr).join("\n")).to.deep.equal([0, 0, 0]);
            for (const r of reqs) expect(l.answersTo(r.id), `answers to ${r.id}`).to.have.length(1);
            const answered = ws.map((w) => w.lines.filter((x) => x.outcome === "answered").length);
            expect(answered.reduce((a, b) => a + b)).to.equal(60);
            expect(answered.filter((n) => n > 0).length, `answered per replica: ${answered}`).to.be.at.least(2);
            for (const r of reqs) expect(await redis.get(`claim:${guild}:phi_agent:${r.id}`)).to.match(/^done:r[123]:\d+$/);
            await l.sub.quit();
        });

        it("a replica killed (kill -9) mid-request: another answers once its lease runs out; the restarted one answers nothing twice", async () => {
            const guild = "replicas-kill";
            const l = await Listener.start(server, guild, ["default_topic", "heartbeat"]);
            const monitor = await server.monitor();
            const a = startWorker(guild, "ka");
            await ready(l, a);
            const b = startWorker(guild, "kb");
            await ready(l, b);
            // a long request (1000 tokens): whoever claims it is killed while it generates
            const long = await send(redis, guild, pyMessage("request", { payload: { generation_prompt: "Once upon a time", max_tokens: 1000 } }));
            const claim = await monitor.waitFor((c) => c.args[0] === "SET" && c.args[1] === `claim:${guild}:phi_agent:${long.id}` && c.args.includes("NX"));
            const [victim, survivor] = claim.args[2] === "ka" ? [a, b] : [b, a];
            victim.child.kill("SIGKILL");
            expect((await victim.exit)[1]).to.equal("SIGKILL");
            const reply = await l.replyTo(long.id);
            expectPythonReadable(reply);
            // marked done right after the reply went out
            await monitor.waitFor((c) => c.args[0] === "EVAL" && c.args.includes(`claim:${guild}:phi_agent:${long.id}`) && c.args.some((a) => a.startsWith("done:")));
            expect(await redis.get(`claim:${guild}:phi_agent:${long.id}`)).to.match(new RegExp(`^done:${survivor.replica}:${reply.message.id}$`));
            // the killed replica comes back with no saved position (a new replica would have none either), so it
            // replays the whole topic: the done marks keep it from answering anything again
            const posKey = `eo:pos:${guild}$phi_agent:${guild}:default_topic`;
            await monitor.waitFor((c) => c.args[0] === "SET" && c.args[1] === posKey && c.args[2] === String(reply.message.id));
            for (const k of await redis.keys(`eo:pos:${guild}$phi_agent:*`)) await redis.del(k);
            const from = l.seen.length;
            const again = startWorker(guild, victim.replica);
            await ready(l, again, from);
            const next = await send(redis, guild, pyMessage("request"));
            await l.replyTo(next.id);
            for (const w of [survivor, again]) w.child.kill("SIGTERM");
            for (const w of [survivor, again]) expect(await w.exit, `${w.replica}: ${w.stderr}`).to.deep.equal([0, null]);
            expect(l.answersTo(long.id)).to.have.length(1);
            expect(l.answersTo(next.id)).to.have.length(1);
            const replayed = again.lines.filter((x) => x.requestId === String(long.id));
            expect(replayed.map((x) => x.outcome)).to.deep.equal(["duplicate"]);
            await monitor.stop();
            await l.sub.quit();
        });

        it("a lone worker killed (kill -9) with requests in flight and queued: restarted, it answers each exactly once", async () => {
            const guild = "lone-kill";
            const l = await Listener.start(server, guild, ["default_topic", "heartbeat"]);
            const monitor = await server.monitor();
            // in the backlog before the worker starts (its subscription replays them): a short one, a long one
            // (1000 tokens: the worker is killed while it generates), three more queued behind it (--sequences 1)
            const reqs: WireMessage[] = [await send(redis, guild, pyMessage("request", { payload: { generation_prompt: "Request 0:" } }))];
            reqs.push(await send(redis, guild, pyMessage("request", { payload: { generation_prompt: "Once upon a time", max_tokens: 1000 } })));
            for (let i = 2; i < 5; i++) reqs.push(await send(redis, guild, pyMessage("request", { payload: { generation_prompt: `Request ${i}:` } })));
            const w = startWorker(guild, "lone", ["--sequences", "1"]);
            await l.replyTo(reqs[0]!.id);
            await monitor.waitFor((c) => c.args[0] === "SET" && c.args[1] === `claim:${guild}:phi_agent:${reqs[1]!.id}` && c.args.includes("NX"));
            w.child.kill("SIGKILL");
            expect((await w.exit)[1]).to.equal("SIGKILL");
            expect(l.answersTo(reqs[1]!.id)).to.deep.equal([]);
            // the same worker again: it replays what it had not settled, and the done marks keep it from answering twice
            const from = l.seen.length;
            const again = startWorker(guild, "lone", ["--sequences", "1"]);
            await ready(l, again, from);
            // with one sequence, requests start in order: the one sent now is answered after every replayed one
            const last = await send(redis, guild, pyMessage("request", { payload: { generation_prompt: "Request 5:" } }));
            await l.replyTo(last.id);
            again.child.kill("SIGTERM");
            expect(await again.exit, again.stderr).to.deep.equal([0, null]);
            for (const r of [...reqs, last]) expect(l.answersTo(r.id), `answers to request ${reqs.indexOf(r)} (${r.id})`).to.have.length(1);
            const outcomes = (r: WireMessage) => again.lines.filter((x) => x.requestId === String(r.id)).map((x) => x.outcome);
            expect([[], ["duplicate"]].map((x) => JSON.stringify(x))).to.include(JSON.stringify(outcomes(reqs[0]!)));
            for (const r of [...reqs.slice(1), last]) expect(outcomes(r), `request ${r.id}`).to.deep.equal(["answered"]);
            await monitor.stop();
            await l.sub.quit();
        });

        it("200 requests over 3 replicas, one killed (kill -9) mid-run and Redis restarted mid-run: 200 answers, 0 duplicates, 0 lost", async function () {
            this.timeout(400_000);
            const guild = "replicas-200";
            const l = await Listener.start(server, guild, ["default_topic", "heartbeat"]);
            const ws = ["m1", "m2", "m3"].map((r) => startWorker(guild, r));
            await Promise.all(ws.map((w) => ready(l, w)));
            const reqs: WireMessage[] = [];
            for (let i = 0; i < 200; i++) reqs.push(await send(redis, guild, pyMessage("request", { payload: { generation_prompt: `Request ${i}:` } })));
            const ids = new Set(reqs.map((r) => r.id));
            // answered = seen on the channel, or logged by a worker (a reply published while our listener reconnected)
            const answered = () => {
                const got = new Set<string>();
                for (const s of l.seen) if (s.message.in_response_to !== null && ids.has(s.message.in_response_to) && s.message.format !== SystemFormats.HEARTBEAT) got.add(String(s.message.in_response_to));
                for (const w of ws) for (const x of w.lines) if (x.outcome === "answered") got.add(String(x.requestId));
                return got.size;
            };
            const reach = (n: number) => new Promise<void>((resolve) => {
                let done = false;
                const check = () => { if (!done && answered() >= n) { done = true; resolve(); } };
                // re-checked on every message and worker line (the listener and the workers' stdout are the events)
                l.sub.on("message", check);
                for (const w of ws) w.child.stdout!.on("data", () => setImmediate(check));
                check();
            });
            await reach(40);
            ws[0]!.child.kill("SIGKILL");
            await ws[0]!.exit;
            await reach(100);
            await server.restart(); // AOF, fsync always: the guild's data survives
            await reach(200);
            for (const w of ws.slice(1)) w.child.kill("SIGTERM");
            for (const w of ws.slice(1)) expect(await w.exit, `${w.replica}: ${w.stderr}`).to.deep.equal([0, null]);
            // the guild's own record: every reply stored in the topic's ZSET, exactly one per request
            const admin = await server.client();
            const stored = (await admin.zrange(`${guild}:default_topic`, "0", "-1")).map((t) => parseWireMessage(t)).filter((r) => r.ok).map((r) => (r as { message: WireMessage }).message);
            const per = new Map<bigint, number>();
            for (const m of stored) if (m.in_response_to !== null && ids.has(m.in_response_to)) per.set(m.in_response_to, (per.get(m.in_response_to) ?? 0) + 1);
            expect(per.size, "answered requests").to.equal(200);
            const dups = [...per.entries()].filter(([, n]) => n > 1).map(([id]) => ({
                id: String(id),
                replies: stored.filter((m) => m.in_response_to === id).map((m) => ({ id: String(m.id), machine: gemstoneParts(m.id).machineId })),
                lines: ws.map((w) => [w.replica, w.lines.filter((x) => x.requestId === String(id)).map((x) => x.outcome)]),
                claim: undefined as unknown,
            }));
            for (const d of dups) d.claim = await admin.get(`claim:${guild}:phi_agent:${d.id}`);
            expect(dups, "duplicates").to.deep.equal([]);
            await l.sub.quit();
        });

        it("SIGTERM: stops taking requests, finishes the one in flight, exits 0", async () => {
            const guild = "sigterm";
            const l = await Listener.start(server, guild, ["default_topic", "heartbeat"]);
            const monitor = await server.monitor();
            const w = startWorker(guild, "s1");
            await ready(l, w);
            const long = await send(redis, guild, pyMessage("request", { payload: { generation_prompt: "Once upon a time", max_tokens: 600 } }));
            await monitor.waitFor((c) => c.args[0] === "SET" && c.args[1] === `claim:${guild}:phi_agent:${long.id}`);
            w.child.kill("SIGTERM");
            const [code] = await w.exit;
            expect(code, w.stderr).to.equal(0);
            const reply = await l.replyTo(long.id);
            expectPythonReadable(reply);
            expect(w.lines.map((x) => [x.requestId, x.outcome])).to.deep.equal([[String(long.id), "answered"]]);
            expect(w.stderr).to.match(/stopped: 1 finished, 0 handed back/);
            await monitor.stop();
            await l.sub.quit();
        });

        it("SIGTERM while Redis is down: exits 0 at once, waiting for nothing from Redis", async function () {
            this.timeout(60_000); // the old worker waited here until Redis came back
            const own = await startRedisServer({ persist: false });
            try {
                const l = await Listener.start(own, "sigterm-down", ["heartbeat"]);
                const w = startWorker("sigterm-down", "d1", [], own.url);
                await ready(l, w);
                await l.sub.quit();
                await own.stop();
                w.child.kill("SIGTERM");
                const [code] = await w.exit;
                expect(code, w.stderr).to.equal(0);
                expect(w.stderr).to.match(/stopped: 0 finished, 0 handed back/);
            } finally {
                await own.stop();
            }
        });

        it("--help works without Redis; a missing --redis is a usage error", async () => {
            const help = spawn(process.execPath, [CLI, "agent", "--help"], { stdio: ["ignore", "pipe", "pipe"] });
            let out = "";
            help.stdout!.on("data", (c: Buffer) => { out += c.toString(); });
            expect((await once(help, "exit"))[0]).to.equal(0);
            expect(out).to.contain("phi-agent agent --redis URL --guild GUILD_ID --model FILE");
            const bad = spawn(process.execPath, [CLI, "agent", "--guild", "g", "--model", modelPath], { stdio: ["ignore", "pipe", "pipe"] });
            let err = "";
            bad.stderr!.on("data", (c: Buffer) => { err += c.toString(); });
            expect((await once(bad, "exit"))[0]).to.equal(2);
            expect(err).to.contain("--redis URL is required");
        });
    });
});
