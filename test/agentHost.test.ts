// AgentHost (src/guild/rustic/AgentHost.ts) on the in-memory backend with a tiny model: Python's LLMPhiAgent
// behaviour in a RusticAI guild — replies, errors, routing slips, health, state — checked against the golden
// messages recorded from the Python code. The same host over Redis: redisAgent.test.ts.
import { expect } from "chai";
import { InMemoryMessagingBackend } from "../src/guild/backend.js";
import { AgentHost, type AgentHostEvent, type RequestLine } from "../src/guild/rustic/AgentHost.js";
import { GuildTopics, PYTHON_PHI_AGENT_CLASS, SystemFormats, type RusticMessage } from "../src/guild/rustic/protocol.js";
import { fnmatchcase } from "../src/guild/rustic/routing.js";
import { ErrorMessage, GenerationPromptRequest, GenerationPromptResponse } from "../src/messages/formats.js";
import { GemstoneGenerator, Priority, decodeGemstoneId } from "../src/messages/ids.js";
import { tinyModel } from "./helpers/models.js";
import { Probe, fromJson, golden, jsonKeys } from "./helpers/rustic.js";

const GUILD = "probe-6199e82dae";
const NAIVE_ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?$/;
const probeGen = new GemstoneGenerator(1);

/** A request shaped as Python's ProbeAgent.publish writes it (the golden one, with a new id). */
function request(overrides: Partial<RusticMessage> = {}, priority: Priority = Priority.NORMAL): RusticMessage {
    const base = fromJson(golden("request"));
    const { id } = probeGen.next(priority);
    const parts = decodeGemstoneId(id);
    return { ...base, id, thread: [id], priority: parts.priority, timestamp: parts.timestamp, ...overrides };
}

describe("AgentHost (in-memory backend, tiny model)", function () {
    this.timeout(120000);
    let backend: InMemoryMessagingBackend;
    let host: AgentHost;
    let probe: Probe;
    const events: AgentHostEvent[] = [];
    const lines = new Map<string, RequestLine>();
    const lineWaits = new Map<string, (l: RequestLine) => void>();
    const lineOf = (id: string) => lines.has(id) ? Promise.resolve(lines.get(id)!) : new Promise<RequestLine>((r) => lineWaits.set(id, r));

    async function send(m: RusticMessage, topic?: string): Promise<RusticMessage> {
        for (const t of topic ? [topic] : Array.isArray(m.topics) ? m.topics : [m.topics]) {
            await backend.publish(GUILD, t, { ...m, topic_published_to: t });
        }
        return m;
    }

    before(async () => {
        const modelPath = await tinyModel("q8_0");
        backend = new InMemoryMessagingBackend();
        probe = await Probe.listen(backend, GUILD, [GuildTopics.DEFAULT_TOPIC, GuildTopics.ERROR_TOPIC, GuildTopics.HEARTBEAT_TOPIC,
            GuildTopics.STATE_TOPIC, "agent_self_inbox:phi_agent", "user_outbox:u1", "routed_probe", "elsewhere", "also"]);
        host = new AgentHost({
            backend, guildId: GUILD,
            props: { modelPath, device: "cpu", threads: 1, contextSize: 256, maxNewTokens: 3 },
            additionalTopics: ["extra_topic"],
            history: async (ids) => ids.map((id) => `{"id":${id}}`),
            onEvent: (e) => {
                events.push(e);
                if (e.type === "request") {
                    lines.set(e.requestId, e);
                    lineWaits.get(e.requestId)?.(e);
                }
            },
        });
        await host.start();
    });

    after(async () => {
        await host?.stop();
        backend?.close();
    });

    it("subscribes to Python's six topics plus the additional ones", () => {
        expect(host.topics).to.deep.equal(["default_topic", "agent_inbox:phi_agent", "agent_self_inbox:phi_agent",
            "guild_status_topic", "state_topic", "heartbeat", "extra_topic"]);
        for (const t of host.topics) expect(backend.subscribers(GUILD, t)).to.include("phi_agent");
    });

    it("sends a SelfReadyNotification to itself, then a first Heartbeat in response to it", async () => {
        const ready = await probe.next((m) => m.format === SystemFormats.SELF_READY);
        const g = fromJson(golden("self_ready"));
        expect(Object.keys(ready)).to.deep.equal(jsonKeys(golden("self_ready")));
        expect(ready.topics).to.deep.equal(g.topics);
        expect(ready.payload).to.deep.equal(g.payload);
        expect(ready.routing_slip).to.deep.equal({ steps: [] });
        expect(ready.message_history).to.have.length(1);
        expect(ready.message_history[0]).to.deep.include({ origin: "0", result: ready.id, processor: "LLMPhiAgent:self", from_topic: null, to_topics: ["agent_self_inbox:phi_agent"] });
        const hb = await probe.next((m) => m.format === SystemFormats.HEARTBEAT && m.in_response_to === ready.id);
        expect(Object.keys(hb)).to.deep.equal(jsonKeys(golden("first_heartbeat")));
        expect(hb.priority).to.equal(Priority.HIGH);
        expect(hb.thread).to.deep.equal(ready.thread);
        expect(hb.message_history.map((e) => e.processor)).to.deep.equal(["LLMPhiAgent:self", "send_first_heartbeat"]);
        expect(hb.message_history[1]).to.deep.include({ origin: ready.id, result: hb.id, from_topic: null, to_topics: [] });
        expect(hb.payload.checkstatus).to.equal("ok");
        expect(hb.payload.checktime).to.match(NAIVE_ISO);
        expect(hb.payload.responsetime).to.match(NAIVE_ISO);
        expect(probe.messages.indexOf(ready)).to.be.lessThan(probe.messages.indexOf(hb));
    });

    it("answers the seed's GenerationPromptRequest as Python does (golden reply's shape)", async () => {
        const req = await send(request());
        const reply = await probe.replyTo(req.id);
        const g = fromJson(golden("reply"));
        expect(Object.keys(reply)).to.deep.equal(jsonKeys(golden("reply")));
        expect(reply.format).to.equal(GenerationPromptResponse.format);
        expect(reply.topics).to.equal("default_topic"); // a string, as the request's
        expect(reply.sender).to.deep.equal(g.sender);
        expect(reply.in_response_to).to.equal(req.id);
        expect(reply.thread).to.deep.equal([req.id]);
        expect(reply.message_history).to.deep.equal([{ agent: g.sender, origin: req.id, result: reply.id, processor: "generate_prompt",
            from_topic: "default_topic", to_topics: ["default_topic"], reason: null }]);
        for (const k of ["routing_slip", "ttl", "traceparent", "session_state", "origin_guild_stack", "is_error_message", "recipient_list",
            "conversation_id", "forward_header", "enrich_with_history", "process_status"] as const) {
            expect(reply[k], k).to.deep.equal(g[k]);
        }
        expect(reply.priority).to.equal(Priority.NORMAL);
        const payload = GenerationPromptResponse.parse(reply.payload);
        expect(payload.generation_prompt).to.equal(req.payload.generation_prompt);
        expect(payload.generated_response.startsWith(payload.generation_prompt)).to.equal(true);
        expect((await lineOf(req.id)).outcome).to.equal("answered");
    });

    it("copies ttl, traceparent, session_state, origin_guild_stack and priority, and echoes list topics", async () => {
        const req = await send(request({
            topics: ["default_topic", "extra_topic"], ttl: 30, traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            session_state: { user: "u1", n: 2 }, origin_guild_stack: [{ guild_id: "outer", saga_id: null }],
        }, Priority.HIGH), "default_topic");
        const reply = await probe.replyTo(req.id);
        expect(reply.topics).to.deep.equal(["default_topic", "extra_topic"]);
        expect(reply.ttl).to.equal(30);
        expect(reply.traceparent).to.equal(req.traceparent);
        expect(reply.session_state).to.deep.equal({ user: "u1", n: 2 });
        expect(reply.origin_guild_stack).to.deep.equal([{ guild_id: "outer", saga_id: null }]);
        expect(reply.priority).to.equal(Priority.HIGH);
        expect(decodeGemstoneId(reply.id).priority).to.equal(Priority.HIGH);
        expect(reply.message_history[0]!.to_topics).to.deep.equal(["default_topic", "extra_topic"]);
    });

    for (const [label, problem] of [["malformed_request", "generation_prompt"], ["wrong_type_request", "generation_prompt"]] as const) {
        it(`answers a malformed request (${label}) with an ErrorMessage on error_topic`, async () => {
            const base = fromJson(golden(label));
            const req = await send(request({ payload: base.payload }));
            const err = await probe.replyTo(req.id);
            expect(Object.keys(err)).to.deep.equal(jsonKeys(golden("malformed_error")));
            expect(err.topics).to.deep.equal(["error_topic"]);
            expect(err.topic_published_to).to.equal("error_topic");
            expect(err.is_error_message).to.equal(true);
            expect(err.format).to.equal(ErrorMessage.format);
            const payload = ErrorMessage.parse(err.payload);
            expect(payload.agent_type).to.equal(PYTHON_PHI_AGENT_CLASS);
            expect(payload.error_message).to.contain(problem);
            expect(err.message_history[0]).to.deep.include({ processor: "generate_prompt", from_topic: "default_topic", to_topics: ["error_topic"] });
            expect(err.session_state).to.deep.equal({});
            expect((await lineOf(req.id)).outcome).to.equal("error");
        });
    }

    it("answers only GenerationPromptRequest: other formats, replies and others' errors get nothing", async () => {
        const before = probe.messages.filter((m) => m.sender.id === "phi_agent").length;
        const junk = [
            request({ format: "some.other.Format", payload: { x: 1 } }),
            request({ format: GenerationPromptResponse.format, payload: { generation_prompt: "a", generated_response: "b" } }),
            request({ format: ErrorMessage.format, payload: { agent_type: "x", error_type: "y", error_message: "z" }, is_error_message: true }),
            request({ sender: { id: "phi_agent", name: "Phi-2 LLM" } }), // its own request on default_topic: filtered
        ];
        for (const j of junk) await send(j);
        const req = await send(request());
        await probe.replyTo(req.id);
        const junkIds = new Set(junk.map((j) => j.id));
        const fromAgent = probe.messages.filter((m) => m.sender.id === "phi_agent" && !junkIds.has(m.id)).slice(before);
        expect(fromAgent.map((m) => m.in_response_to)).to.deep.equal([req.id]);
        for (const j of junk) expect(lines.has(j.id)).to.equal(false);
    });

    it("does not generate on essential topics or another agent's self inbox", async () => {
        const onState = await send(request({ topics: "state_topic" }));
        const req = await send(request());
        await probe.replyTo(req.id);
        expect(probe.answersTo(onState.id)).to.deep.equal([]);
        expect(lines.has(onState.id)).to.equal(false);
    });

    for (const [check, answer] of [["health_check_heartbeat_topic", "heartbeat"], ["health_check_status_topic", "heartbeat_status_topic"]] as const) {
        it(`answers a HealthCheckRequest (${check}) with a Heartbeat on heartbeat`, async () => {
            const g = fromJson(golden(check));
            const topic = g.topics as string;
            const hc = await send(request({ format: g.format, payload: { checktime: "2026-12-02T03:04:53.342819" }, topics: topic }, Priority.NORMAL));
            const hb = await probe.next((m) => m.format === SystemFormats.HEARTBEAT && m.in_response_to === hc.id);
            expect(Object.keys(hb)).to.deep.equal(jsonKeys(golden(answer)));
            expect(hb.topics).to.deep.equal(["heartbeat"]);
            expect(hb.priority).to.equal(Priority.HIGH);
            expect(hb.thread).to.deep.equal(hc.thread);
            expect(hb.routing_slip).to.deep.equal({ steps: [] });
            expect(hb.session_state).to.equal(null);
            expect(hb.message_history).to.deep.equal([{ agent: { id: "phi_agent", name: "Phi-2 LLM" }, origin: hc.id, result: hb.id,
                processor: "send_heartbeat", from_topic: null, to_topics: [], reason: null }]);
            expect(Object.keys(hb.payload)).to.deep.equal(["checktime", "checkstatus", "responsetime", "checkmeta"]);
            expect(hb.payload.checktime).to.equal("2026-12-02T03:04:53.342819");
            expect(hb.payload.checkstatus).to.equal("ok");
            expect(hb.payload.responsetime).to.match(NAIVE_ISO);
            expect(hb.payload.checkmeta).to.have.keys("qos_latency", "observed_latency");
        });
    }

    describe("routing slips", () => {
        const slip = (...steps: Record<string, unknown>[]) => ({ steps });

        it("sends the reply to the step's destination, with the step's priority and recipients; the used step leaves the slip", async () => {
            const req = await send(request({ routing_slip: slip(
                { agent_type: PYTHON_PHI_AGENT_CLASS, destination: { topics: "user_outbox:u1", priority: Priority.HIGH, recipient_list: [{ id: "u1", name: "U" }] } },
                { agent: { id: "someone_else" }, destination: { topics: "elsewhere" } },
            ) }));
            const reply = await probe.replyTo(req.id);
            expect(reply.topics).to.equal("user_outbox:u1");
            expect(reply.topic_published_to).to.equal("user_outbox:u1");
            expect(reply.priority).to.equal(Priority.HIGH);
            expect(reply.recipient_list).to.deep.equal([{ id: "u1", name: "U" }]);
            expect(reply.routing_slip!.steps).to.have.length(1);
            expect(reply.routing_slip!.steps[0]).to.deep.equal({
                agent: { id: "someone_else", name: null }, agent_type: null, method_name: null, origin_filter: null, message_format: null,
                destination: { topics: "elsewhere", recipient_list: [], priority: null }, mark_forwarded: false, route_times: 1,
                transformer: null, agent_state_update: null, guild_state_update: null, process_status: null, reason: null,
            });
            expect(reply.message_history[0]!.to_topics).to.deep.equal(["user_outbox:u1"]);
            expect(probe.answersTo(req.id)).to.have.length(1);
        });

        it("matches agent tags with wildcards, agent_type globs, method names, origin filters and formats as Python does", async () => {
            expect(fnmatchcase(PYTHON_PHI_AGENT_CLASS, "rustic_ai.huggingface.*")).to.equal(true);
            expect(fnmatchcase("a.b", "a?b")).to.equal(true);
            expect(fnmatchcase("ab", "[!a]b")).to.equal(false);
            const req = await send(request({ routing_slip: slip(
                { agent: { name: "Phi-2 LLM" }, method_name: "other_method", destination: { topics: "elsewhere" } },
                { agent_type: "rustic_ai.*.LLMPhiAgent", origin_filter: { origin_topic: "agent_inbox:phi_agent" }, destination: { topics: "elsewhere" } },
                { agent_type: "*", message_format: ErrorMessage.format, destination: { topics: "elsewhere" } },
                { agent: { name: "Phi-2 LLM" }, origin_filter: { origin_sender: { id: "probe" }, origin_topic: "default_topic" },
                    message_format: GenerationPromptResponse.format, method_name: "generate_prompt", route_times: -1, destination: { topics: ["also"] } },
            ) }));
            const reply = await probe.replyTo(req.id);
            expect(reply.topics).to.deep.equal(["also"]);
            // route_times -1 is decremented by Python too (to -2) and never reaches 0: the step stays
            expect(reply.routing_slip!.steps.map((s) => s.route_times)).to.deep.equal([1, 1, 1, -2]);
        });

        it("forwards (mark_forwarded), sets process_status, and adds the step's reason to the history", async () => {
            const req = await send(request({ routing_slip: slip({ agent_type: PYTHON_PHI_AGENT_CLASS, mark_forwarded: true, process_status: "completed", reason: "route it" }) }));
            const reply = await probe.replyTo(req.id);
            expect(reply.forward_header).to.deep.equal({ origin_message_id: req.id, on_behalf_of: req.sender });
            expect(reply.process_status).to.equal("completed");
            expect(reply.message_history[0]!.reason).to.deep.equal(["route it"]);
            expect(reply.topics).to.equal("default_topic");
        });

        it("routes errors to error_topic and to the slip's matching steps", async () => {
            const req = await send(request({ payload: { prompt: "no" }, routing_slip: slip({ agent_type: PYTHON_PHI_AGENT_CLASS, destination: { topics: "user_outbox:u1" } }) }));
            const inbox = await probe.replyTo(req.id, "user_outbox:u1");
            const err = await probe.replyTo(req.id, "error_topic");
            expect(inbox.is_error_message).to.equal(true);
            expect(err.topics).to.deep.equal(["error_topic"]);
            expect(probe.messages.indexOf(inbox)).to.be.lessThan(probe.messages.indexOf(err));
        });

        it("applies a JSONata PayloadTransformer (payload and format)", async () => {
            const req = await send(request({ routing_slip: slip({ agent_type: PYTHON_PHI_AGENT_CLASS,
                transformer: { expression: "{\"text\": generated_response, \"prompt\": generation_prompt}", output_format: "tests.formats.Text" } }) }));
            const reply = await probe.replyTo(req.id);
            expect(reply.format).to.equal("tests.formats.Text");
            expect(reply.payload).to.have.keys("text", "prompt");
            expect(reply.payload.prompt).to.equal(req.payload.generation_prompt);
        });

        it("applies a JSONata FunctionalTransformer (topics and payload from the origin and the reply)", async () => {
            const req = await send(request({ routing_slip: slip({ agent_type: PYTHON_PHI_AGENT_CLASS, transformer: { style: "content_based_router",
                handler: "{\"topics\": \"routed_\" & origin.sender.id, \"payload\": {\"r\": payload.generated_response}, \"context\": {\"seen\": true}}" } }) }));
            const reply = await probe.replyTo(req.id);
            expect(reply.topics).to.equal("routed_probe");
            expect(reply.payload).to.have.keys("r");
            expect(reply.session_state).to.deep.equal({ seen: true });
        });

        it("sends the guild and agent state updates a step asks for, before the reply", async () => {
            const req = await send(request({ routing_slip: slip({ agent_type: PYTHON_PHI_AGENT_CLASS,
                guild_state_update: { state_update: "{\"last_prompt\": untransformed.payload.generation_prompt}" },
                agent_state_update: { state_update: "{\"count\": 1}" } }) }));
            const reply = await probe.replyTo(req.id, "default_topic");
            const updates = probe.messages.filter((m) => m.in_response_to === req.id && m.format === SystemFormats.STATE_UPDATE_REQUEST);
            expect(updates.map((u) => (u.payload as { state_owner: string }).state_owner)).to.deep.equal(["guild", "agent"]);
            for (const u of updates) {
                expect(u.topics).to.deep.equal(["state_topic"]);
                expect(u.priority).to.equal(Priority.HIGH);
                expect(probe.messages.indexOf(u)).to.be.lessThan(probe.messages.indexOf(reply));
                expect(u.message_history.at(-1)).to.deep.include({ processor: "generate_prompt", from_topic: null, to_topics: [] });
            }
            expect(updates[0]!.payload).to.deep.equal({ state_owner: "guild", guild_id: GUILD, agent_id: null, update_format: "json-merge-patch",
                state_update: { last_prompt: req.payload.generation_prompt }, update_path: null, update_version: null, update_timestamp: null });
            expect((updates[1]!.payload as { agent_id: string }).agent_id).to.equal("phi_agent");
        });

        it("drops the reply when the transformer returns nothing, as Python does", async () => {
            const req = await send(request({ routing_slip: slip({ agent_type: PYTHON_PHI_AGENT_CLASS, transformer: { expression: "nothing_here" } }) }));
            expect((await lineOf(req.id)).outcome).to.equal("dropped");
            expect(probe.answersTo(req.id)).to.deep.equal([]);
        });

        it("answers a CEL transformer (not run here) with a typed ErrorMessage on error_topic", async () => {
            const req = await send(request({ routing_slip: slip({ agent_type: PYTHON_PHI_AGENT_CLASS, transformer: { expression: "payload", expression_type: "cel" } }) }));
            const err = await probe.replyTo(req.id);
            expect(err.topics).to.deep.equal(["error_topic"]);
            expect(err.payload).to.deep.include({ error_type: "UnsupportedRoutingError", code: "ERR_UNSUPPORTED_ROUTE" });
            expect(String(err.payload.error_message)).to.contain("CEL");
        });

        it("answers a slip Python would reject (a rule without agent or agent_type) with an ErrorMessage", async () => {
            const req = await send(request({ routing_slip: slip({ destination: { topics: "elsewhere" } }) }));
            const err = await probe.replyTo(req.id);
            expect(err.topics).to.deep.equal(["error_topic"]);
            expect(err.payload).to.deep.include({ error_type: "InvalidRoutingSlipError" });
        });
    });

    it("fills session_state.enriched_history from the store for enrich_with_history", async () => {
        const first = await send(request());
        const r1 = await probe.replyTo(first.id);
        const req = await send(request({ enrich_with_history: 1, message_history: r1.message_history }));
        const reply = await probe.replyTo(req.id);
        expect(reply.session_state).to.deep.equal({ enriched_history: [`{"id":${first.id}}`] });
    });

    it("keeps the agent's and the guild's state from state responses, for transformers", async () => {
        await send(request({ topics: "state_topic", format: SystemFormats.STATE_UPDATE_RESPONSE,
            payload: { state_owner: "agent", guild_id: GUILD, agent_id: "phi_agent", state: { mood: "good" }, version: 1, timestamp: 1 } }));
        const req = await send(request({ routing_slip: { steps: [{ agent_type: PYTHON_PHI_AGENT_CLASS,
            transformer: { style: "content_based_router", handler: "{\"payload\": {\"mood\": agent_state.mood}}" } }] } }));
        const reply = await probe.replyTo(req.id);
        expect(reply.payload).to.deep.equal({ mood: "good" });
        expect(host.agentState).to.deep.equal({ mood: "good" });
    });

    it("takes requests from its inbox and additional topics, and answers a request on two of its topics once", async () => {
        const req = request({ topics: ["agent_inbox:phi_agent", "default_topic"] });
        await send(req);
        const reply = await probe.replyTo(req.id);
        expect(reply.topics).to.deep.equal(["agent_inbox:phi_agent", "default_topic"]);
        expect((await lineOf(req.id)).outcome).to.equal("answered");
        expect(probe.answersTo(req.id).filter((m) => m.topic_published_to === "default_topic")).to.have.length(1);
        const extra = await send(request({ topics: "extra_topic" }));
        expect((await lineOf(extra.id)).outcome).to.equal("answered");
    });

    it("requests are generated concurrently (the model's batch), each answered", async () => {
        const reqs = await Promise.all(Array.from({ length: 4 }, () => send(request({ payload: { generation_prompt: "Once upon a time" } }))));
        const replies = await Promise.all(reqs.map((r) => probe.replyTo(r.id)));
        expect(replies.map((r) => r.in_response_to)).to.deep.equal(reqs.map((r) => r.id));
        expect(new Set(replies.map((r) => r.id)).size).to.equal(4);
        void GenerationPromptRequest;
    });
});
