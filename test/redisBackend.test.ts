// RedisMessagingBackend against a real redis-server (started here on a free loopback port): Python's command
// sequence (compared with the recorded golden run), backlog replay, positions, a Redis restart and a cut
// connection with nothing lost, malformed messages dead-lettered without stopping delivery, machine-id leases,
// auth and TLS URLs, and a TypeScript guild spanning two processes.
import { expect } from "chai";
import { spawn } from "node:child_process";
import { EventEmitter, once } from "node:events";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import {
    AgentBuilder, GuildBuilder, InMemoryMessagingBackend, MESSAGING_DEFAULTS, MachineIdLease, MessagingUnavailableError, RedisMessagingBackend, machineIdKey,
    createWireMessage, gemstoneParts, parseWireMessage, readWireMessage, serializeWireMessage,
    type RedisBackendEvent, type WireMessage,
} from "../src/index.js";
import { goldenCommands, goldenMessages } from "./helpers/golden.js";
import { startRedisServer, type CommandLog, type MonitoredCommand, type RedisServer } from "./helpers/redis.js";
import { Ping, PingAgent, Pong } from "./helpers/redisGuildChild.js";

const GUILD = "probe-6199e82dae";
/** Commands a client sends to set up its connection (not part of the messaging work). */
const SETUP = new Set(["HELLO", "INFO", "CLIENT", "AUTH", "SELECT", "PING", "QUIT"]);

/** Collects what a wire subscription delivers; waitFor(n) resolves when n have come. */
function collector() {
    const messages: WireMessage[] = [];
    const events = new EventEmitter();
    return {
        messages,
        handler: (m: WireMessage) => { messages.push(m); events.emit("message"); },
        async waitFor(n: number): Promise<WireMessage[]> {
            while (messages.length < n) await once(events, "message");
            return messages;
        },
    };
}

/** A backend whose events can be awaited. */
async function connect(server: RedisServer, options: Parameters<typeof RedisMessagingBackend.connect>[0] = {}) {
    const events = new EventEmitter();
    const backend = await RedisMessagingBackend.connect({
        url: server.url, ...options,
        onEvent: (e: RedisBackendEvent) => { events.emit(e.type, e); options.onEvent?.(e); },
    });
    return { backend, events };
}

const work = (log: CommandLog) => log.commands.filter((c) => !SETUP.has(c.args[0]!) && !c.args[1]?.startsWith("machine:") && c.args[0] !== "EVAL");
const line = (c: MonitoredCommand) => c.args.join(" ");

describe("RedisMessagingBackend (real redis-server)", function () {
    this.timeout(60_000);
    let server: RedisServer;
    const open: RedisMessagingBackend[] = [];
    const track = <T extends { backend: RedisMessagingBackend }>(x: T): T => { open.push(x.backend); return x; };

    before(async function () {
        server = await startRedisServer();
    });
    afterEach(async function () {
        for (const b of open.splice(0)) await b.close();
        const admin = await server.client();
        await admin.flushall();
        admin.disconnect();
    });
    after(async function () {
        await server?.stop();
    });

    describe("Python's command sequence (the golden run)", function () {
        it("subscribes, publishes and saves positions with the same commands and the same bytes", async function () {
            // the recording's PUBSUB NUMSUB lines are the test driver waiting for the agent, not messaging work
            const golden = goldenCommands().filter((c) => c.command !== "PUBSUB").map((c) => `${c.command} ${c.rest}`);
            const gm = goldenMessages();
            const requestJson = gm.find((m) => m.command === "PUBLISH" && m.json.includes('"generation_prompt":"The benefits of multi-agent systems include"}'))!.json;
            const replyJson = gm.find((m) => m.command === "PUBLISH" && m.json.includes("GenerationPromptResponse") && m.json.includes("The benefits"))!.json;
            const request = readWireMessage(requestJson);
            const reply = readWireMessage(replyJson);
            const log = await server.monitor();
            const probe = track(await connect(server));
            const agent = track(await connect(server));
            // the agent process subscribes to its six topics in the order the Python agent did
            const agentTopics = ["state_topic", "guild_status_topic", "agent_inbox:phi_agent", "agent_self_inbox:phi_agent", "default_topic", "heartbeat"];
            for (const t of agentTopics) {
                await agent.backend.subscribeWire(GUILD, t, `${GUILD}$phi_agent`, async (m) => {
                    if (m.id === request.id) await agent.backend.publishWire(GUILD, "default_topic", reply);
                });
            }
            const probeGot = collector();
            await probe.backend.subscribeWire(GUILD, "default_topic", `${GUILD}$probe`, probeGot.handler);
            await probe.backend.publishWire(GUILD, "default_topic", request);
            await probeGot.waitFor(2);
            await log.waitFor((c) => line(c) === `SET eo:pos:${GUILD}$phi_agent:${GUILD}:default_topic ${reply.id}`);
            await agent.backend.idle();
            await probe.backend.idle();
            const ours = work(log).map(line);

            // 1. the agent's subscribe block is the golden one, command for command
            const goldenStart = golden.indexOf(`SUBSCRIBE ${GUILD}:state_topic`, golden.findIndex((l) => l.includes("$phi_agent")) - 1);
            const goldenBlock = golden.slice(goldenStart, goldenStart + 18);
            expect(goldenBlock.every((l) => /^(SUBSCRIBE|GET|ZRANGE) /.test(l))).to.equal(true);
            expect(ours.slice(0, 18)).to.deep.equal(goldenBlock);
            // 2. the request and the reply: SET ... EX 3600, ZADD <ms> <json>, PUBLISH <json>, byte for byte
            for (const m of [request, reply]) {
                const triple = golden.filter((l) => l.startsWith(`SET msg:${GUILD}:${m.id} `) ||
                    (l.startsWith(`ZADD ${GUILD}:default_topic `) || l.startsWith(`PUBLISH ${GUILD}:default_topic `)) && l.endsWith(serializeWireMessage(m)));
                expect(triple).to.have.length(3);
                const at = ours.indexOf(triple[0]!);
                expect(at, `ours has ${triple[0]!.slice(0, 60)}`).to.be.greaterThan(-1);
                expect(ours.slice(at, at + 3)).to.deep.equal(triple);
            }
            // 3. positions: each client records every message it handled, its own included, in order
            const positions = (client: string) => ours.filter((l) => l.startsWith(`SET eo:pos:${GUILD}$${client}:${GUILD}:default_topic `));
            const goldenPositions = (client: string) => golden.filter((l) => l.startsWith(`SET eo:pos:${GUILD}$${client}:${GUILD}:default_topic `)).slice(0, 2);
            expect(positions("phi_agent")).to.deep.equal(goldenPositions("phi_agent"));
            expect(positions("probe")).to.deep.equal(goldenPositions("probe"));
            // 4. nothing else: no MULTI, no extra keys
            expect(ours.filter((l) => !/^(SUBSCRIBE|GET|ZRANGE|SET|ZADD|PUBLISH) /.test(l))).to.deep.equal([]);
            await log.stop();
        });

        it("stores with RUSTIC_AI_REDIS_MSG_TTL as the expiry", async function () {
            const saved = process.env.RUSTIC_AI_REDIS_MSG_TTL;
            process.env.RUSTIC_AI_REDIS_MSG_TTL = "120";
            try {
                const { backend } = track(await connect(server));
                expect(backend.messageTtlSeconds).to.equal(120);
                const lease = await backend.lease("g");
                const m = createWireMessage({ generator: lease.generator, sender: { id: "a" }, topics: "t", payload: { k: 1 } });
                const log = await server.monitor();
                await backend.publishWire("g", "t", m);
                const set = await log.waitFor((c) => c.args[0] === "SET" && c.args[1] === `msg:g:${m.id}`);
                expect(set.args.slice(-2)).to.deep.equal(["EX", "120"]);
                await log.stop();
            } finally {
                if (saved === undefined) delete process.env.RUSTIC_AI_REDIS_MSG_TTL;
                else process.env.RUSTIC_AI_REDIS_MSG_TTL = saved;
            }
        });
    });

    describe("backlog and positions", function () {
        it("replays the backlog on subscribe, in id order, then delivers live messages", async function () {
            const { backend } = track(await connect(server));
            const lease = await backend.lease("g");
            const make = (i: number, priority?: 2 | 4) => createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i }, ...(priority ? { priority } : {}) });
            const before = [make(1), make(2), make(3, 2)];
            for (const m of before) await backend.publishToTopics("g", m);
            const got = collector();
            await backend.subscribeWire("g", "t", "g$sub", got.handler);
            const live = make(4);
            await backend.publishToTopics("g", live);
            const all = await got.waitFor(4);
            // the HIGH-priority one sorts first (ids sort by priority, then time), as Python's replay
            expect(all.map((m) => m.payload.i)).to.deep.equal([3, 1, 2, 4]);
            expect(all.every((m) => m.topic_published_to === "t")).to.equal(true);
        });

        it("saves the position after each message and a new process resumes after it", async function () {
            const first = track(await connect(server));
            const lease = await first.backend.lease("g");
            const make = (i: number) => createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i } });
            const got = collector();
            await first.backend.subscribeWire("g", "t", "g$worker", got.handler);
            const m1 = make(1);
            const m2 = make(2);
            await first.backend.publishToTopics("g", m1);
            await first.backend.publishToTopics("g", m2);
            await got.waitFor(2);
            await first.backend.idle();
            const admin = await server.client();
            expect(await admin.get("eo:pos:g$worker:g:t")).to.equal(m2.id.toString());
            await first.backend.unsubscribeWire("g", "t", "g$worker");
            // published while nobody of that client listens
            const m3 = make(3);
            const m4 = make(4);
            await first.backend.publishToTopics("g", m3);
            await first.backend.publishToTopics("g", m4);
            const log = await server.monitor();
            const second = track(await connect(server));
            const again = collector();
            await second.backend.subscribeWire("g", "t", "g$worker", again.handler);
            expect((await again.waitFor(2)).map((m) => m.payload.i)).to.deep.equal([3, 4]);
            const ms = gemstoneParts(m2.id).timestamp;
            expect(work(log).map(line).slice(0, 3)).to.deep.equal(["SUBSCRIBE g:t", "GET eo:pos:g$worker:g:t", `ZRANGEBYSCORE g:t ${ms} +inf`]);
            await second.backend.idle();
            expect(again.messages).to.have.length(2);
            admin.disconnect();
            await log.stop();
        });

        it("a handler that settles later (DeferredSettlement): the position is the low watermark of the settled messages", async function () {
            const { backend } = track(await connect(server));
            const lease = await backend.lease("g");
            const make = (i: number) => createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i } });
            const settles = new Map<number, () => void>();
            const delivered = new EventEmitter();
            await backend.subscribeWire("g", "t", "g$slow", (m) => {
                let settle!: () => void;
                const settled = new Promise<void>((resolve) => { settle = resolve; });
                settles.set(m.payload.i as number, settle);
                delivered.emit("message");
                return { settled };
            });
            const ms = [make(1), make(2), make(3)];
            for (const m of ms) await backend.publishToTopics("g", m);
            // delivery does not wait for the settlement: all three come one after another
            while (settles.size < 3) await once(delivered, "message");
            await backend.idle();
            const admin = await server.client();
            /** The saved position once every settlement callback has run and its SET (same connection) is through. */
            const position = async () => {
                await new Promise((r) => setImmediate(r));
                await backend.redis.ping();
                return admin.get("eo:pos:g$slow:g:t");
            };
            expect(await position(), "nothing settled").to.equal(null);
            settles.get(2)!();
            settles.get(3)!();
            expect(await position(), "1 is not settled: the position stays before it").to.equal(null);
            settles.get(1)!();
            expect(await position(), "all settled").to.equal(ms[2]!.id.toString());
            // a new process of the same client replays nothing
            const second = track(await connect(server));
            const again = collector();
            await second.backend.subscribeWire("g", "t", "g$slow", again.handler);
            const m4 = make(4);
            await backend.publishToTopics("g", m4);
            expect((await again.waitFor(1)).map((m) => m.payload.i)).to.deep.equal([4]);
            admin.disconnect();
        });

        it("a process that dies with messages unsettled: the next one replays them from the low watermark", async function () {
            const first = track(await connect(server));
            const lease = await first.backend.lease("g");
            const make = (i: number) => createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i } });
            const settles: (() => void)[] = [];
            const delivered = new EventEmitter();
            await first.backend.subscribeWire("g", "t", "g$dies", () => {
                let settle!: () => void;
                const settled = new Promise<void>((resolve) => { settle = resolve; });
                settles.push(settle);
                delivered.emit("message");
                return { settled };
            });
            for (let i = 1; i <= 4; i++) await first.backend.publishToTopics("g", make(i));
            while (settles.length < 4) await once(delivered, "message");
            settles[0]!(); // only the first is settled when the process goes
            await new Promise((r) => setImmediate(r));
            await first.backend.redis.ping();
            await first.backend.close();
            const second = track(await connect(server));
            const again = collector();
            await second.backend.subscribeWire("g", "t", "g$dies", again.handler);
            expect((await again.waitFor(3)).map((m) => m.payload.i)).to.deep.equal([2, 3, 4]);
            await second.backend.idle();
            expect(again.messages).to.have.length(3);
        });
    });

    describe("outages", function () {
        it("loses nothing over a Redis restart: resubscribes and replays from the saved position", async function () {
            const sub = track(await connect(server));
            const pub = track(await connect(server));
            const lease = await pub.backend.lease("g");
            const make = (i: number) => createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i } });
            const got = collector();
            await sub.backend.subscribeWire("g", "t", "g$sub", got.handler);
            await pub.backend.publishToTopics("g", make(0));
            await got.waitFor(1);
            await sub.backend.idle();
            const reconnected = once(sub.events, "reconnected");
            await server.restart();
            // the publisher's commands wait for its reconnect; the subscriber may still be away
            for (let i = 1; i <= 10; i++) await pub.backend.publishToTopics("g", make(i));
            await reconnected;
            const all = await got.waitFor(11);
            await sub.backend.idle();
            expect(all.map((m) => m.payload.i)).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        });

        it("replays what was published while its connection was cut (the server stayed up)", async function () {
            // the subscriber logs in as its own user, so it can be kept out while others publish
            const outage = await startRedisServer({ users: [{ name: "sub", password: "s3cret" }], persist: false });
            try {
                const url = `redis://sub:s3cret@127.0.0.1:${outage.port}`;
                const sub = await connect(outage, { url });
                const pub = await connect(outage);
                try {
                    const lease = await pub.backend.lease("g");
                    const make = (i: number) => createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i } });
                    const got = collector();
                    await sub.backend.subscribeWire("g", "t", "g$sub", got.handler);
                    await pub.backend.publishToTopics("g", make(0));
                    await got.waitFor(1);
                    await sub.backend.idle();
                    const admin = await outage.client();
                    const disconnected = once(sub.events, "disconnected");
                    await admin.call("ACL", "SETUSER", "sub", "off");
                    await admin.call("CLIENT", "KILL", "USER", "sub");
                    await disconnected;
                    for (let i = 1; i <= 5; i++) await pub.backend.publishToTopics("g", make(i));
                    const log = await outage.monitor();
                    const reconnected = once(sub.events, "reconnected");
                    await admin.call("ACL", "SETUSER", "sub", "on");
                    const [event] = await reconnected as [{ replayed: number }];
                    expect(event.replayed).to.equal(5);
                    const all = await got.waitFor(6);
                    expect(all.map((m) => m.payload.i)).to.deep.equal([0, 1, 2, 3, 4, 5]);
                    const cmds = work(log).map(line);
                    expect(cmds.indexOf("SUBSCRIBE g:t")).to.be.lessThan(cmds.findIndex((l) => l.startsWith("ZRANGEBYSCORE g:t ")));
                    await log.stop();
                    admin.disconnect();
                } finally {
                    await sub.backend.close();
                    await pub.backend.close();
                }
            } finally {
                await outage.stop();
            }
        });

        it("close() while Redis is away returns at once and ends the publishes that waited for it", async function () {
            const away = await startRedisServer({ persist: false });
            const { backend, events } = await connect(away);
            const lease = await backend.lease("g");
            const m = createWireMessage({ generator: lease.generator, sender: { id: "a" }, topics: "t", payload: { k: 1 } });
            const disconnected = once(events, "disconnected");
            await away.kill();
            await disconnected;
            const pending = backend.publishWire("g", "t", m).then(() => undefined, (e: unknown) => e);
            await backend.close();
            const err = await pending;
            expect(err).to.be.instanceOf(MessagingUnavailableError);
            expect(backend.closed).to.equal(true);
            await away.stop();
        });

        it("a publish while Redis is down rejects after publishTimeoutMs with ERR_MESSAGING_UNAVAILABLE, and is not written later", async function () {
            const down = await startRedisServer({ persist: true });
            try {
                const { backend, events } = await connect(down, { publishTimeoutMs: 300 });
                try {
                    const lease = await backend.lease("g");
                    const m = createWireMessage({ generator: lease.generator, sender: { id: "a" }, topics: "t", payload: { k: 1 } });
                    const closed = backend.redis.status === "ready" ? new Promise((resolve) => backend.redis.once("close", resolve)) : Promise.resolve();
                    await down.stop({ keepDir: true });
                    await closed;
                    let err: unknown;
                    try { await backend.publishWire("g", "t", m); } catch (e) { err = e; }
                    expect(err).to.be.instanceOf(MessagingUnavailableError);
                    const e = err as MessagingUnavailableError;
                    expect(e.code).to.equal("ERR_MESSAGING_UNAVAILABLE");
                    expect(e.message).to.contain(`redis://127.0.0.1:${down.port}`);
                    expect(e.message).to.match(/unreachable for 300 ms/);
                    expect(e.message).to.match(/nothing was written/);
                    expect(e.message).to.match(/publish again/);
                    expect(e.details).to.deep.include({ url: `redis://127.0.0.1:${down.port}`, sent: false });
                    // Redis comes back: the publish that gave up is not written then; the next one is, once
                    const reconnected = new Promise((resolve) => events.once("reconnected", resolve));
                    await down.start();
                    await reconnected;
                    const next = createWireMessage({ generator: lease.generator, sender: { id: "a" }, topics: "t", payload: { k: 2 } });
                    await backend.publishWire("g", "t", next);
                    const admin = await down.client();
                    const stored = (await admin.zrange("g:t", "0", "-1")).map((t) => readWireMessage(t).payload);
                    expect(stored).to.deep.equal([{ k: 2 }]);
                    expect(await admin.exists(`msg:g:${m.id}`)).to.equal(0);
                } finally {
                    await backend.close();
                }
            } finally {
                await down.stop();
            }
        });

        it("a publish during an outage shorter than publishTimeoutMs succeeds once Redis is back, written once", async function () {
            const down = await startRedisServer({ persist: true });
            try {
                const sub = await connect(down);
                const pub = await connect(down, { publishTimeoutMs: 60_000 });
                try {
                    const got = collector();
                    await sub.backend.subscribeWire("g", "t", "g$sub", got.handler);
                    const lease = await pub.backend.lease("g");
                    const m = createWireMessage({ generator: lease.generator, sender: { id: "a" }, topics: "t", payload: { k: 1 } });
                    const closed = pub.backend.redis.status === "ready" ? new Promise((resolve) => pub.backend.redis.once("close", resolve)) : Promise.resolve();
                    await down.stop({ keepDir: true });
                    await closed;
                    const publishing = pub.backend.publishWire("g", "t", m);
                    let settled = false;
                    void publishing.then(() => { settled = true; }, () => { settled = true; });
                    await new Promise((r) => setImmediate(r));
                    expect(settled, "the publish waits for Redis").to.equal(false);
                    await down.start();
                    await publishing;
                    expect((await got.waitFor(1)).map((x) => x.id)).to.deep.equal([m.id]);
                    await sub.backend.idle();
                    const admin = await down.client();
                    expect(await admin.zcard("g:t")).to.equal(1);
                    expect(await admin.get(`msg:g:${m.id}`)).to.equal(serializeWireMessage(m));
                    expect(got.messages).to.have.length(1);
                } finally {
                    await sub.backend.close();
                    await pub.backend.close();
                }
            } finally {
                await down.stop();
            }
        });

        it("rejects a bad publishTimeoutMs with a RangeError; the default is MESSAGING_DEFAULTS.publishTimeoutMs", async function () {
            const { backend } = track(await connect(server));
            expect(backend.publishTimeoutMs).to.equal(MESSAGING_DEFAULTS.publishTimeoutMs).and.to.equal(30_000);
            for (const bad of [0, -1, 1.5, Number.NaN]) {
                let err: unknown;
                try { await RedisMessagingBackend.connect({ url: server.url, publishTimeoutMs: bad }); } catch (e) { err = e; }
                expect(err, String(bad)).to.be.instanceOf(RangeError);
                expect((err as Error).message).to.contain("publishTimeoutMs");
            }
        });

        it("publish after close() is a typed error (ERR_MESSAGING_UNAVAILABLE)", async function () {
            const { backend } = await connect(server);
            const lease = await backend.lease("g");
            await backend.close();
            const m = createWireMessage({ generator: lease.generator, sender: { id: "a" }, topics: "t", payload: { k: 1 } });
            for (const call of [() => backend.publishWire("g", "t", m), () => backend.subscribeWire("g", "t", "c", () => undefined)]) {
                let err: unknown;
                try { await call(); } catch (e) { err = e; }
                expect(err).to.be.instanceOf(MessagingUnavailableError);
                expect((err as MessagingUnavailableError).code).to.equal("ERR_MESSAGING_UNAVAILABLE");
            }
        });
    });

    describe("malformed messages", function () {
        it("are dead-lettered as Python writes dead letters and never stop the subscriber", async function () {
            const { backend, events } = track(await connect(server));
            const lease = await backend.lease("g");
            const make = (i: number) => createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i } });
            const got: number[] = [];
            const done = new EventEmitter();
            await backend.subscribeWire("g", "t", "g$sub", (m) => {
                got.push(m.payload.i as number);
                done.emit("got");
                if (m.payload.i === 3) throw new TypeError("handler failed on 3");
            });
            const raw = await server.client();
            const good1 = make(1);
            await backend.publishToTopics("g", good1);
            const extraKey = serializeWireMessage({ ...make(9), topic_published_to: "t" }).replace(/}$/, ',"type":"request"}');
            for (const bad of ["not json", '{"sender":{"id":"x"},"topics":"t","payload":{"a":1}}', extraKey, '{"id":1,"payload":{}}']) {
                await raw.publish("g:t", bad);
            }
            await backend.publishToTopics("g", make(2));
            await backend.publishToTopics("g", make(3));
            await backend.publishToTopics("g", make(4));
            while (got.length < 4) await once(done, "got");
            await backend.idle();
            expect(got).to.deep.equal([1, 2, 3, 4]);
            const letters = (await raw.zrange("g:dead_letter_queue", "0", "-1")).map((t) => readWireMessage(t));
            expect(letters).to.have.length(5);
            for (const dl of letters) {
                expect(dl.sender).to.deep.equal({ id: "messaging_backend", name: "MessagingBackend" });
                expect(dl.topics).to.equal("dead_letter_queue");
                expect(dl.is_error_message).to.equal(true);
                expect(dl.topic_published_to).to.equal(null);
                expect(Object.keys(dl.payload)).to.deep.equal(["delivery_backend", "client_id", "original_topic", "original_message_id", "original_message", "error_type", "error_message"]);
                expect(dl.payload.client_id).to.equal("g$sub");
                expect(dl.payload.original_topic).to.equal("g:t");
            }
            const types = letters.map((d) => d.payload.error_type);
            expect(types.filter((t) => t === "JSONDecodeError")).to.have.length(1);
            expect(types.filter((t) => t === "ValidationError")).to.have.length(3);
            const handlerFailure = letters.find((d) => d.payload.error_type === "TypeError")!;
            expect(handlerFailure.payload.error_message).to.equal("handler failed on 3");
            expect(handlerFailure.in_response_to).to.equal(handlerFailure.payload.original_message_id);
            expect((handlerFailure.payload.original_message as Record<string, unknown>).payload).to.deep.equal({ i: 3 });
            void events;
            raw.disconnect();
        });

        it("skips bad members of a topic's backlog and replays the good ones", async function () {
            const { backend } = track(await connect(server));
            const lease = await backend.lease("g");
            const raw = await server.client();
            const m1 = createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i: 1 } });
            await backend.publishToTopics("g", m1);
            await raw.zadd("g:t", String(gemstoneParts(m1.id).timestamp), '{"id":"not a number"}');
            const m2 = createWireMessage({ generator: lease.generator, sender: { id: "pub" }, topics: "t", payload: { i: 2 } });
            await backend.publishToTopics("g", m2);
            const got = collector();
            await backend.subscribeWire("g", "t", "g$late", got.handler);
            expect((await got.waitFor(2)).map((m) => m.payload.i)).to.deep.equal([1, 2]);
            await backend.idle();
            expect(await raw.zcard("g:dead_letter_queue")).to.equal(1);
            raw.disconnect();
        });
    });

    describe("machine ids", function () {
        it("leases a different machine id per process, from 128 up, and releases it on close", async function () {
            const a = await connect(server, { namespace: "g" });
            const b = await connect(server, { namespace: "g" });
            const la = await a.backend.lease("g");
            const lb = await b.backend.lease("g");
            expect(la.machineId).to.not.equal(lb.machineId);
            for (const l of [la, lb]) expect(l.machineId).to.be.within(128, 255);
            expect(gemstoneParts(la.next()).machineId).to.equal(la.machineId);
            expect(a.backend.generator!.machineId).to.equal(la.machineId);
            const admin = await server.client();
            expect(await admin.get(`machine:g:${la.machineId}`)).to.equal(la.owner);
            await a.backend.close();
            expect(await admin.exists(`machine:g:${la.machineId}`)).to.equal(0);
            await b.backend.close();
            admin.disconnect();
        });

        it("takes its number back after an expiry, and moves to another one when someone else took it", async function () {
            const redis = await server.client();
            const changes: unknown[] = [];
            const lease = await MachineIdLease.acquire(redis, { namespace: "m", range: [200, 201], ttlMs: 60_000, onChange: (e) => changes.push(e) });
            const first = lease.machineId;
            const other = first === 200 ? 201 : 200;
            // expired (e.g. Redis was away longer than the ttl) and still free: the same number again
            await redis.del(machineIdKey("m", first));
            expect(await lease.renew()).to.equal(first);
            expect(await redis.get(machineIdKey("m", first))).to.equal(lease.owner);
            // expired and taken by another process: move to a free number, and say so
            await redis.set(machineIdKey("m", first), "someone-else");
            expect(await lease.renew()).to.equal(other);
            expect(changes).to.deep.equal([{ type: "moved", from: first, to: other }]);
            expect(gemstoneParts(lease.next()).machineId).to.equal(other);
            await lease.release();
            expect(await redis.exists(machineIdKey("m", other))).to.equal(0);
            expect(await redis.get(machineIdKey("m", first))).to.equal("someone-else");
            redis.disconnect();
        });

        it("runs out with a typed error when every id of the range is taken", async function () {
            const a = track(await connect(server, { namespace: "full", machineId: { range: [250, 250] } }));
            expect((await a.backend.lease("full")).machineId).to.equal(250);
            let err: unknown;
            try { await connect(server, { namespace: "full", machineId: { range: [250, 250] } }); } catch (e) { err = e; }
            expect(err).to.be.instanceOf(MessagingUnavailableError);
            expect(String((err as Error).message)).to.match(/250 to 250/);
        });
    });

    describe("URLs: users, passwords and TLS", function () {
        let secure: RedisServer;
        before(async function () {
            secure = await startRedisServer({ password: "top secret", users: [{ name: "alice", password: "w0nder" }], tls: true, persist: false });
        });
        after(async function () {
            await secure?.stop();
        });

        async function roundTrip(url: string, tls?: { ca: Buffer }): Promise<void> {
            const backend = await RedisMessagingBackend.connect({ url, ...(tls ? { tls } : {}), namespace: "g" });
            try {
                const got = collector();
                await backend.subscribeWire("g", "t", "g$a", got.handler);
                const m = createWireMessage({ generator: (await backend.lease("g")).generator, sender: { id: "a" }, topics: "t", payload: { k: 1 } });
                await backend.publishToTopics("g", m);
                expect((await got.waitFor(1))[0]!.id).to.equal(m.id);
            } finally {
                await backend.close();
            }
        }

        it("logs in with a user and password from the URL", async function () {
            await roundTrip(`redis://alice:w0nder@127.0.0.1:${secure.port}`);
            await roundTrip(`redis://:${encodeURIComponent("top secret")}@127.0.0.1:${secure.port}`);
        });

        it("speaks TLS with rediss:// (trusting the given CA)", async function () {
            await roundTrip(`rediss://alice:w0nder@127.0.0.1:${secure.tlsPort}`, { ca: readFileSync(secure.caFile!) });
        });

        it("rejects a wrong password, an untrusted certificate and a bad URL with typed errors, never showing the password", async function () {
            const attempts: [string, RegExp][] = [
                [`redis://alice:wrong-pass@127.0.0.1:${secure.port}`, /WRONGPASS/],
                [`rediss://alice:w0nder@127.0.0.1:${secure.tlsPort}`, /certificate/i],
                [`redis://127.0.0.1:${secure.port}`, /NOAUTH/],
            ];
            for (const [url, why] of attempts) {
                let err: unknown;
                try { await RedisMessagingBackend.connect({ url, connectTimeoutMs: 5000 }); } catch (e) { err = e; }
                expect(err, url).to.be.instanceOf(MessagingUnavailableError);
                expect((err as MessagingUnavailableError).code).to.equal("ERR_MESSAGING_UNAVAILABLE");
                expect((err as Error).message).to.match(why).and.not.contain("wrong-pass").and.not.contain("w0nder");
            }
            let bad: unknown;
            try { await RedisMessagingBackend.connect({ url: "http://127.0.0.1:1" }); } catch (e) { bad = e; }
            expect(bad).to.be.instanceOf(RangeError);
            expect((bad as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
        });
    });

    describe("a TypeScript guild over Redis", function () {
        it("spans two processes: an agent in a child process answers a client here", async function () {
            const child = spawn(process.execPath, [fileURLToPath(new URL("./helpers/redisGuildChild.js", import.meta.url)), server.url, "ts-guild"], { stdio: ["ignore", "pipe", "pipe"] });
            let stderr = "";
            child.stderr!.on("data", (c: Buffer) => { stderr += c.toString(); });
            try {
                const lines = createInterface({ input: child.stdout! });
                const [first] = await Promise.race([
                    once(lines, "line"),
                    once(child, "exit").then(() => { throw new Error(`child exited: ${stderr}`); }),
                ]) as [string];
                expect(first).to.equal("ready");
                const guild = await new GuildBuilder("ts-guild").setRedisMessaging(server.url).launch();
                try {
                    expect(guild.backend).to.be.instanceOf(RedisMessagingBackend);
                    const client = guild.client("asker");
                    const reply = await client.request("default_topic", Ping.create({ text: "hello" }), { timeoutMs: 30_000 });
                    expect(reply.format).to.equal(Pong.format);
                    expect(reply.payload).to.deep.equal({ text: "HELLO", pid: child.pid });
                    // the reply is a RusticAI message in Redis, readable as Python reads it
                    const admin = await server.client();
                    const stored = await admin.get(`msg:ts-guild:${reply.id}`);
                    expect(parseWireMessage(stored!).ok).to.equal(true);
                    admin.disconnect();
                } finally {
                    await guild.shutdown();
                }
                expect((guild.backend as RedisMessagingBackend).closed).to.equal(true);
            } finally {
                const exited = once(child, "exit");
                child.kill("SIGTERM");
                const [code] = await exited as [number];
                expect(code, stderr).to.equal(0);
            }
        });

        it("the in-memory backend stays the default (no Redis needed)", async function () {
            const guild = await new GuildBuilder("local").addAgentSpec(new AgentBuilder(PingAgent).setId("echo").setName("Echo").buildSpec()).launch();
            try {
                expect(guild.backend).to.be.instanceOf(InMemoryMessagingBackend);
                const reply = await guild.client("c").request("default_topic", Ping.create({ text: "x" }));
                expect(reply.payload).to.deep.equal({ text: "X", pid: process.pid });
            } finally {
                await guild.shutdown();
            }
        });

        it("launch() rejects with ERR_MESSAGING_UNAVAILABLE when Redis is not there", async function () {
            const gone = await startRedisServer({ persist: false });
            const url = gone.url;
            await gone.stop();
            let err: unknown;
            try { await new GuildBuilder("g").setRedisMessaging(url, { connectTimeoutMs: 3000 }).launch(); } catch (e) { err = e; }
            expect(err).to.be.instanceOf(MessagingUnavailableError);
        });
    });
});
