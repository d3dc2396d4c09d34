// Model-free: guild runtime with stub agents, builders, clients, backends, and PhiAgentProps validation.
// (LLMPhiAgent is imported for its props only; no model is loaded here.)
import { expect } from "chai";
import { EventEmitter, once } from "node:events";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Type } from "@sinclair/typebox";
import {
    Agent,
    AgentBuilder,
    GuildBuilder,
    GuildTimeoutError,
    InMemoryMessagingBackend,
    agentSpecToJSON,
    formatGuildEvent,
    type AgentSpec,
    type Guild,
    type GuildEvent,
    type MessagingBackend,
    type MessageHandler,
} from "../src/guild/index.js";
import {
    DEFAULT_TOPIC,
    ErrorMessage,
    GenerationPromptRequest,
    defineMessageFormat,
    messageToJSON,
    createMessage,
    type Message,
} from "../src/messages/index.js";
import { LLMPhiAgent, PhiAgentProps } from "../src/agent/index.js";
import { PhiAgentError } from "../src/errors.js";

const Echo = defineMessageFormat("tests.formats.Echo", Type.Object({ text: Type.String(), delayMs: Type.Optional(Type.Integer({ minimum: 0 })) }));
const Echoed = defineMessageFormat("tests.formats.Echoed", Type.Object({ text: Type.String(), by: Type.String() }));
const Boom = defineMessageFormat("tests.formats.Boom", Type.Object({}));
/** Handled only once `count` Gate requests are in flight together: serial handlers would never get there. */
const Gate = defineMessageFormat("tests.formats.Gate", Type.Object({ text: Type.String(), count: Type.Integer({ minimum: 1 }) }));
const Announce = defineMessageFormat("tests.formats.Announce", Type.Object({ name: Type.String() }));

interface EchoProps { prefix: string }

/** Echoes Echo payloads (after delayMs), throws on Boom; counts what it saw. */
class EchoAgent extends Agent<EchoProps> {
    static log: string[] = [];
    /** "delaying" is emitted when a handler starts waiting its delayMs. */
    static readonly events = new EventEmitter();
    maxInflight = 0;
    #gated = 0;
    #openGate?: () => void;
    readonly #gate = new Promise<void>((resolve) => { this.#openGate = resolve; });
    constructor(spec: AgentSpec<EchoProps>) {
        super(spec);
        this.handle(Gate, async (ctx) => {
            this.maxInflight = Math.max(this.maxInflight, this.inflight);
            if (++this.#gated === ctx.payload.count) this.#openGate!();
            await this.#gate;
            ctx.send(Echoed.create({ text: `${this.props.prefix}${ctx.payload.text}`, by: this.id }));
        });
        this.handle(Announce, (ctx) => {
            this.emitAgentEvent("announced", { name: ctx.payload.name }, { text: `announced ${ctx.payload.name}` });
            ctx.send(Echoed.create({ text: ctx.payload.name, by: this.id }));
        });
        this.handle(Echo, async (ctx) => {
            this.maxInflight = Math.max(this.maxInflight, this.inflight);
            if (ctx.payload.delayMs) {
                EchoAgent.events.emit("delaying", ctx.payload.text);
                await new Promise<void>((resolve) => {
                    const t = setTimeout(resolve, ctx.payload.delayMs);
                    ctx.signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
                });
                if (ctx.signal.aborted) throw ctx.signal.reason;
            }
            ctx.send(Echoed.create({ text: `${this.props.prefix}${ctx.payload.text}`, by: this.id }));
        });
        this.handle(Boom, () => {
            throw new RangeError("boom: this handler always fails");
        });
    }
    protected override onStart(): void { EchoAgent.log.push(`start:${this.id}`); }
    protected override onStop(): void { EchoAgent.log.push(`stop:${this.id}`); }
}

class FailingStartAgent extends Agent {
    protected override async onStart(): Promise<void> {
        throw new Error("no luck today");
    }
}

function echoSpec(id = "echo", configure?: (b: AgentBuilder<typeof EchoAgent>) => void): AgentSpec<EchoProps> {
    const b = new AgentBuilder(EchoAgent).setId(id).setName("Echo").setDescription("echoes").setProperties({ prefix: "> " });
    configure?.(b);
    return b.buildSpec();
}

describe("guild runtime (model-free)", function () {
    this.timeout(10000);
    let guild: Guild | undefined;
    afterEach(async () => {
        await guild?.shutdown();
        guild = undefined;
    });

    describe("AgentBuilder.buildSpec", () => {
        it("builds a spec like RusticAI's (listening to default_topic)", () => {
            const spec = echoSpec("echo_1", (b) => b.addAdditionalTopic("side"));
            expect(spec).to.include({ id: "echo_1", name: "Echo", description: "echoes", className: "EchoAgent", listenToDefaultTopic: true });
            expect(spec.additionalTopics).to.deep.equal(["side"]);
            expect(Object.isFrozen(spec)).to.equal(true);
            expect(agentSpecToJSON(spec)).to.deep.equal({
                id: "echo_1", name: "Echo", description: "echoes", class_name: "EchoAgent",
                additional_topics: ["side"], listen_to_default_topic: true, properties: { prefix: "> " },
            });
        });

        it("names what is missing or wrong", () => {
            expect(() => new AgentBuilder(EchoAgent).buildSpec()).to.throw(TypeError, /name is required/);
            expect(() => new AgentBuilder(EchoAgent).setId("has space")).to.throw(RangeError, /id must be letters/);
            expect(() => new AgentBuilder(class NotAnAgent {} as never)).to.throw(TypeError, /class NotAnAgent, which does not extend Agent/);
            expect(() => new AgentBuilder(EchoAgent).setName("")).to.throw(RangeError, /name must not be empty/);
        });

        it("makes an id from the name when none is set", () => {
            expect(new AgentBuilder(EchoAgent).setName("My Echo!").setProperties({ prefix: "" }).buildSpec().id).to.match(/^my_echo_[0-9a-f]{6}$/);
        });
    });

    describe("AgentBuilder(LLMPhiAgent) validates PhiAgentProps when the spec is built", () => {
        const builder = () => new AgentBuilder(LLMPhiAgent).setId("phi_agent").setName("Phi-2 LLM").setDescription("Text generation using Microsoft's Phi-2 model");

        it("accepts the seed's sample (model_id as a GGUF path, torch_device cuda:0) with the seed's defaults", () => {
            const spec = builder().setProperties(new PhiAgentProps({ model_id: "models/phi-2.Q4_K_M.gguf", torch_device: "cuda:0" })).buildSpec();
            expect(spec.properties).to.be.instanceOf(PhiAgentProps);
            expect(spec.properties).to.include({
                modelPath: "models/phi-2.Q4_K_M.gguf", device: "cuda:0", contextSize: 2048, maxLength: 200, temperature: 0, includePrompt: true,
            });
            expect(spec.className).to.equal("LLMPhiAgent");
        });

        it("accepts plain fields too, mapping mps to metal", () => {
            const spec = builder().setProperties({ modelPath: "m.gguf", device: "mps", gpuLayers: "all" }).buildSpec();
            expect(spec.properties.device).to.equal("metal");
            expect(spec.properties.gpuLayers).to.equal("all");
        });

        it("fails at buildSpec with the field's name: RangeError for a bad value", () => {
            for (const [props, field] of [
                [{ modelPath: "m.gguf", device: "gpu" }, /device must be "auto", "cpu", "cuda", "cuda:N"/],
                [{ modelPath: "m.gguf", contextSize: 8 }, /contextSize must be >= 16/],
                [{ modelPath: "m.gguf", maxLength: 4096, contextSize: 2048 }, /maxLength \(4096\) exceeds contextSize \(2048\)/],
                [{ modelPath: "m.gguf", threads: 0 }, /threads must be >= 1/],
                [{ model_id: "microsoft/phi-2" }, /model_id is "microsoft\/phi-2", which is not a GGUF file/],
                [{ modelPath: "m.gguf", modelpath: "x" }, /modelpath is not a known field \(did you mean modelPath\?\)/],
                [{ modelPath: "m.gguf", device: "cpu", torch_device: "cuda" }, /torch_device \("cuda"\) differs from device/],
            ] as const) {
                const b = builder().setProperties(props as never);
                let error: unknown;
                try { b.buildSpec(); } catch (err) { error = err; }
                expect(error, JSON.stringify(props)).to.be.instanceOf(RangeError);
                expect((error as Error).message).to.match(field);
                expect((error as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
            }
        });

        it("fails at buildSpec with a TypeError for a wrong type or a missing modelPath", () => {
            expect(() => builder().buildSpec()).to.throw(TypeError, /modelPath is required/);
            expect(() => builder().setProperties({ modelPath: "m.gguf", includePrompt: "yes" } as never).buildSpec())
                .to.throw(TypeError, /includePrompt must be a boolean \(got string "yes"\)/);
            expect(() => builder().setProperties({ modelPath: "m.gguf", gpuLayers: {} } as never).buildSpec())
                .to.throw(TypeError, /gpuLayers must be an integer >= 0 or "all"/);
        });

        it("maxLength's default follows a smaller contextSize, so a spec builds (and the error, if any, comes at construction)", () => {
            const props = new PhiAgentProps({ modelPath: "m.gguf", contextSize: 100 });
            expect(props.maxLength).to.equal(100);
            const spec = builder().setProperties(props).buildSpec();
            expect(spec.properties.maxLength).to.equal(100);
            expect(new PhiAgentProps({ modelPath: "m.gguf" }).maxLength).to.equal(200);
            expect(() => new PhiAgentProps({ modelPath: "m.gguf", maxLength: 3000 })).to.throw(RangeError, /maxLength \(3000\) exceeds contextSize \(2048\)/);
            expect(() => new PhiAgentProps({ modelPath: "m.gguf", contextSize: 100, maxLength: 101 })).to.throw(RangeError, /maxLength \(101\) exceeds contextSize \(100\)/);
        });

        it("refuses at construction what would abort llama.cpp at launch(): more sequences than contextSize", () => {
            for (const init of [{ contextSize: 16, sequences: 17, maxLength: 10 }, { contextSize: 64, sequences: 65 }]) {
                let error: unknown;
                try { new PhiAgentProps({ modelPath: "m.gguf", ...init }); } catch (err) { error = err; }
                expect(error, JSON.stringify(init)).to.be.instanceOf(RangeError);
                expect((error as Error).message).to.match(/sequences \(\d+\) exceeds contextSize \(\d+\)/);
                expect((error as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
            }
            expect(new PhiAgentProps({ modelPath: "m.gguf", contextSize: 16, sequences: 16 }).sequences).to.equal(16);
        });

        it("refuses more threads than logical CPUs", () => {
            const cpus = os.availableParallelism();
            expect(() => new PhiAgentProps({ modelPath: "m.gguf", threads: cpus + 1 })).to.throw(RangeError, new RegExp(`threads \\(${cpus + 1}\\) exceeds the ${cpus} logical CPUs`));
            expect(new PhiAgentProps({ modelPath: "m.gguf", threads: cpus }).threads).to.equal(cpus);
        });

        it("PhiAgentProps is frozen: a value cannot be changed after validation", () => {
            const props = new PhiAgentProps({ modelPath: "m.gguf" });
            expect(() => { (props as { contextSize: number }).contextSize = -1; }).to.throw(TypeError);
            expect(PhiAgentProps.jsonSchema).to.have.nested.property("properties.modelPath.type", "string");
        });
    });

    describe("GuildBuilder.launch / Guild", () => {
        it("routes a request to the agent and its reply back, matched by in_response_to, in the request's thread", async () => {
            EchoAgent.log = [];
            guild = await new GuildBuilder("g1").addAgentSpec(echoSpec()).launch();
            expect(EchoAgent.log).to.deep.equal(["start:echo"]);
            const probe = await guild.probe();
            const client = guild.client("my_client", "My client");
            const sent = client.publish(DEFAULT_TOPIC, Echo.create({ text: "hi" }));
            const reply = await probe.waitForReply(sent, 2000);
            expect(reply.format).to.equal(Echoed.format);
            expect(reply.payload).to.deep.equal({ text: "> hi", by: "echo" });
            expect(reply.in_response_to).to.equal(sent.id);
            expect(reply.thread).to.deep.equal(sent.thread);
            expect(reply.sender).to.deep.equal({ id: "echo", name: "Echo" });
            expect(reply.topic_published_to).to.equal(DEFAULT_TOPIC);
            // the probe saw the request too (it was not its own)
            expect(probe.messages.map((m) => m.id)).to.include(sent.id);
        });

        it("ignores formats an agent does not handle, and keeps going", async () => {
            guild = await new GuildBuilder("g2").addAgentSpec(echoSpec()).launch();
            const probe = await guild.probe();
            const client = guild.client("c");
            const unknown = client.publish(DEFAULT_TOPIC, { whatever: 1 }, { format: "tests.formats.Unknown" });
            const known = client.publish(DEFAULT_TOPIC, Echo.create({ text: "after" }));
            await probe.waitForReply(known, 2000);
            expect(probe.repliesTo(unknown)).to.deep.equal([]);
        });

        it("answers an invalid payload with an ErrorMessage naming the field, without calling the handler", async () => {
            guild = await new GuildBuilder("g3").addAgentSpec(echoSpec()).launch();
            const client = guild.client("c");
            const reply = await client.request(DEFAULT_TOPIC, { text: 5 }, { format: Echo.format, timeoutMs: 2000 });
            expect(reply.format).to.equal(ErrorMessage.format);
            expect(reply.is_error_message).to.equal(true);
            const err = reply.payload as ErrorMessage;
            expect(err.agent_type).to.equal("EchoAgent");
            expect(err.error_type).to.equal("ValidationError");
            expect(err.error_message).to.equal("Invalid Echo: text must be a string (got number 5)");
        });

        it("turns a throwing handler into one ErrorMessage reply and a handler_error event", async () => {
            const events: GuildEvent[] = [];
            guild = await new GuildBuilder("g4").onEvent((e) => events.push(e)).addAgentSpec(echoSpec()).launch();
            const client = guild.client("c");
            const reply = await client.request(DEFAULT_TOPIC, Boom.create({}), { timeoutMs: 2000 });
            expect(reply.payload).to.deep.include({ agent_type: "EchoAgent", error_type: "RangeError", error_message: "boom: this handler always fails" });
            const handlerErrors = events.filter((e) => e.type === "handler_error");
            expect(handlerErrors).to.have.length(1);
            expect(handlerErrors[0]).to.include({ guildId: "g4", agentId: "echo", format: Boom.format });
            // and the agent still answers
            const again = await client.request(DEFAULT_TOPIC, Echo.create({ text: "still here" }), { timeoutMs: 2000 });
            expect(again.payload).to.deep.equal({ text: "> still here", by: "echo" });
        });

        it("runs handlers concurrently (no lock)", async () => {
            guild = await new GuildBuilder("g5").addAgentSpec(echoSpec()).launch();
            const probe = await guild.probe();
            const client = guild.client("c");
            // each handler waits until all 10 are in flight: handlers run one after another would never reply
            const sent = Array.from({ length: 10 }, (_, i) => client.publish(DEFAULT_TOPIC, Gate.create({ text: String(i), count: 10 })));
            await Promise.all(sent.map((s) => probe.waitForReply(s, 8000)));
            expect(guild.agent<EchoAgent>("echo")!.maxInflight).to.equal(10);
            for (const s of sent) expect(probe.repliesTo(s)).to.have.length(1);
        });

        it("delivers on additional topics and replies on the topic the request came in on", async () => {
            guild = await new GuildBuilder("g6")
                .addAgentSpec(echoSpec("side_echo", (b) => b.listenToDefaultTopic(false).addAdditionalTopic("side")))
                .launch();
            const sideProbe = await guild.probe("side_probe", ["side"]);
            const defaultProbe = await guild.probe("default_probe");
            const client = guild.client("c");
            const ignored = client.publish(DEFAULT_TOPIC, Echo.create({ text: "nobody listens" }));
            const sent = client.publish("side", Echo.create({ text: "side" }));
            // `ignored` was published first: had the agent taken it, its reply would have been published (and, the
            // backend delivering in publish order, received) before this one
            const reply = await sideProbe.waitForReply(sent, 2000);
            expect(reply.topic_published_to).to.equal("side");
            expect(defaultProbe.repliesTo(ignored)).to.deep.equal([]);
            expect(defaultProbe.messages.map((m) => m.id)).to.deep.equal([ignored.id]);
        });

        it("answers a message read from a RusticAI JSON dump (publishMessage)", async () => {
            guild = await new GuildBuilder("g7").addAgentSpec(echoSpec()).launch();
            const probe = await guild.probe();
            const client = guild.client("py_bridge");
            const pythonish = messageToJSON(createMessage({ sender: { id: "python_client", name: "Python" }, topics: DEFAULT_TOPIC,
                format: Echo.format, payload: { text: "from python" } }));
            const sent = client.publishMessage(pythonish);
            const reply = await probe.waitForReply(sent.id, 2000);
            expect(reply.payload).to.deep.equal({ text: "> from python", by: "echo" });
        });

        it("request() times out with GuildTimeoutError when nobody answers", async () => {
            guild = await new GuildBuilder("g8").addAgentSpec(echoSpec()).launch();
            const client = guild.client("c");
            let error: unknown;
            try {
                await client.request("empty_topic", Echo.create({ text: "hello?" }), { timeoutMs: 100 });
            } catch (err) { error = err; }
            expect(error).to.be.instanceOf(GuildTimeoutError);
            expect((error as GuildTimeoutError).code).to.equal("ERR_TIMEOUT");
            expect((error as Error).message).to.match(/No reply to message \d+ \(tests\.formats\.Echo\) on empty_topic within 100 ms/);
        });

        it("rejects payloads without a format or that are not JSON, naming the part", async () => {
            guild = await new GuildBuilder("g9").addAgentSpec(echoSpec()).launch();
            const client = guild.client("c");
            expect(() => client.publish(DEFAULT_TOPIC, { generation_prompt: "x" })).to.throw(TypeError, /format is unknown.*GenerationPromptRequest\.create/);
            expect(() => client.publish(DEFAULT_TOPIC, { f: () => 1 }, { format: "a.b.C" })).to.throw(TypeError, /payload\.f is a function/);
            expect(() => client.publish(DEFAULT_TOPIC, { when: new Date() }, { format: "a.b.C" })).to.throw(TypeError, /payload\.when is a Date instance/);
            expect(() => client.publish("", Echo.create({ text: "x" }))).to.throw(TypeError, /topics must be/);
        });

        it("refuses duplicate ids", async () => {
            expect(() => new GuildBuilder("g").addAgentSpec(echoSpec("a")).addAgentSpec(echoSpec("a"))).to.throw(RangeError, /id "a" is already in guild/);
            guild = await new GuildBuilder("g10").addAgentSpec(echoSpec("a")).launch();
            expect(() => guild!.client("a")).to.throw(RangeError, /already used by an agent/);
            guild.client("c1");
            expect(() => guild!.client("c1")).to.throw(RangeError, /already used by an open client/);
        });

        it("launch() rejects, naming the agent, when an agent fails to start, and stops the others", async () => {
            EchoAgent.log = [];
            const bad = new AgentBuilder(FailingStartAgent).setId("bad").setName("Bad").buildSpec();
            let error: unknown;
            try {
                await new GuildBuilder("g11").addAgentSpec(echoSpec("good")).addAgentSpec(bad).launch();
            } catch (err) { error = err; }
            expect((error as Error).message).to.equal("Agent \"bad\" (FailingStartAgent) failed to start: no luck today");
            expect(EchoAgent.log).to.deep.equal(["start:good", "stop:good"]);
        });
    });

    describe("events", () => {
        it("an agent's own events reach the guild's listeners as agent_event, with the agent's name, data and text", async () => {
            const events: GuildEvent[] = [];
            guild = await new GuildBuilder("g15").onEvent((e) => events.push(e)).addAgentSpec(echoSpec()).launch();
            await guild.client("c").request(DEFAULT_TOPIC, Announce.create({ name: "warm" }), { timeoutMs: 2000 });
            const mine = events.filter((e) => e.type === "agent_event");
            expect(mine).to.have.length(1);
            expect(mine[0]).to.deep.include({ type: "agent_event", agentId: "echo", guildId: "g15", name: "announced", data: { name: "warm" } });
            expect(formatGuildEvent(mine[0]!)).to.equal("[echo] announced warm");
        });

        it("the generic guild does not know the model: src/guild imports nothing from src/model and names no model_* event", () => {
            const dir = path.join(process.cwd(), "src", "guild");
            for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".ts"))) {
                const text = fs.readFileSync(path.join(dir, file), "utf8");
                expect(text, file).to.not.match(/from\s+"\.\.\/(model|agent|native)\//);
                expect(text, file).to.not.match(/model_(load|loaded|disposed)|ModelInfo/);
            }
        });
    });

    describe("Guild.shutdown", () => {
        it("cancels in-flight requests, which are still answered, stops agents, and refuses later use", async () => {
            EchoAgent.log = [];
            guild = await new GuildBuilder("g12").addAgentSpec(echoSpec()).launch();
            const probe = await guild.probe();
            const client = guild.client("c");
            const delaying = new Set<string>();
            const bothDelaying = new Promise<void>((resolve) => {
                const on = (text: string) => { delaying.add(text); if (delaying.size === 2) { EchoAgent.events.off("delaying", on); resolve(); } };
                EchoAgent.events.on("delaying", on);
            });
            const slow = client.publish(DEFAULT_TOPIC, Echo.create({ text: "slow", delayMs: 60000 }));
            const pending = client.request(DEFAULT_TOPIC, Echo.create({ text: "never", delayMs: 60000 }), { timeoutMs: 60000 });
            await bothDelaying; // both handlers are waiting out their minute
            await guild.shutdown(); // (the suite's 10 s timeout fails this if shutdown waits for the delays)
            expect(EchoAgent.log).to.deep.equal(["start:echo", "stop:echo"]);
            const replies = probe.messages.filter((m) => m.in_response_to === slow.id);
            expect(replies).to.have.length(1);
            expect(replies[0]!.payload).to.include({ error_type: "PhiAgentError" });
            expect((replies[0]!.payload as ErrorMessage).error_message).to.match(/is stopping/);
            // the request() got its reply too (or the client closing), never hangs
            const outcome = await pending.then((m) => m.format, (e: Error) => e.name);
            expect([ErrorMessage.format, "PhiAgentError"]).to.include(outcome);
            expect(guild.state).to.equal("stopped");
            expect(() => client.publish(DEFAULT_TOPIC, Echo.create({ text: "late" }))).to.throw(PhiAgentError, /closed|shutdown/);
            expect(() => guild!.client("x")).to.throw(PhiAgentError, /after shutdown\(\)/);
            await guild.shutdown(); // idempotent
        });
    });

    describe("MessagingBackend", () => {
        it("can be replaced: the guild uses the given backend and leaves it open", async () => {
            const inner = new InMemoryMessagingBackend();
            const published: string[] = [];
            const recording: MessagingBackend = {
                publish(ns: string, topic: string, message: Message) { published.push(`${ns}/${topic}/${message.format}`); return inner.publish(ns, topic, message); },
                subscribe(ns: string, topic: string, id: string, handler: MessageHandler) { return inner.subscribe(ns, topic, id, handler); },
                unsubscribe(ns: string, topic: string, id: string) { return inner.unsubscribe(ns, topic, id); },
                async close() { throw new Error("a shared backend must not be closed by the guild"); },
            };
            guild = await new GuildBuilder("g13").setMessagingBackend(recording).addAgentSpec(echoSpec()).launch();
            const client = guild.client("c");
            await client.request(DEFAULT_TOPIC, Echo.create({ text: "x" }), { timeoutMs: 2000 });
            expect(published).to.deep.equal([`g13/${DEFAULT_TOPIC}/${Echo.format}`, `g13/${DEFAULT_TOPIC}/${Echoed.format}`]);
            await guild.shutdown();
            expect(inner.closed).to.equal(false);
            expect(inner.subscribers("g13", DEFAULT_TOPIC)).to.deep.equal([]);
        });

        it("InMemoryMessagingBackend delivers a copy to each subscriber, later, and refuses use after close", async () => {
            const backend = new InMemoryMessagingBackend();
            const got: Message[] = [];
            backend.subscribe("ns", "t", "a", (m) => { m.payload.mutated = true; got.push(m); });
            backend.subscribe("ns", "t", "b", (m) => { got.push(m); });
            const message = createMessage({ sender: { id: "s" }, topics: "t", format: "a.b.C", payload: { n: 1 } });
            backend.publish("ns", "t", message);
            expect(got).to.have.length(0); // never synchronously
            await new Promise((r) => setImmediate(r));
            expect(got).to.have.length(2);
            expect(message.payload).to.deep.equal({ n: 1 });
            expect(got[1]!.payload).to.deep.equal({ n: 1 });
            backend.close();
            expect(() => backend.publish("ns", "t", message)).to.throw(PhiAgentError, /closed/);
        });
    });

    describe("GenerationPromptRequest routing", () => {
        it("a GenerationPromptRequest is ignored by an agent that does not handle it", async () => {
            guild = await new GuildBuilder("g14").addAgentSpec(echoSpec()).launch();
            const probe = await guild.probe();
            const client = guild.client("c");
            const sent = client.publish(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: "x" }));
            // a marker the agent does answer, sent after it on the same ordered topic: a reply to `sent` would come first
            const marker = client.publish(DEFAULT_TOPIC, Echo.create({ text: "marker" }));
            const markerReply = await probe.waitForReply(marker, 2000);
            const before = probe.messages.slice(0, probe.messages.findIndex((m) => m.id === markerReply.id));
            expect(before.filter((m) => m.in_response_to === sent.id)).to.deep.equal([]);
            expect(probe.repliesTo(sent)).to.deep.equal([]);
        });
    });
});
