// Model tests: LLMPhiAgent in a guild on a generated tiny phi2 GGUF (random weights, the real Phi-2 vocabulary).
import { expect } from "chai";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { LLMPhiAgent, PhiAgentProps, isPhiAgentEvent } from "../src/agent/index.js";
import { AgentBuilder, GuildBuilder, type Guild, type GuildEvent, type ProbeClient } from "../src/guild/index.js";
import {
    DEFAULT_TOPIC,
    ErrorMessage,
    GenerationPromptRequest,
    GenerationPromptResponse,
    parseMessage,
    type Message,
} from "../src/messages/index.js";
import { PhiAgentError } from "../src/errors.js";
import type { PhiModel } from "../src/model/PhiModel.js";
import type { LoadOptions } from "../src/model/types.js";
import { tinyModel } from "./helpers/models.js";

const SEED_PROMPT = "The benefits of multi-agent systems include";

function phiSpec(modelPath: string, extra: Partial<ConstructorParameters<typeof PhiAgentProps>[0]> = {}, agentClass: typeof LLMPhiAgent = LLMPhiAgent) {
    return new AgentBuilder(agentClass)
        .setId("phi_agent")
        .setName("Phi-2 LLM")
        .setDescription("Text generation using Microsoft's Phi-2 model")
        // one thread: the tiny model needs no more, and spinning worker threads crawl on a busy 2-core machine
        .setProperties(new PhiAgentProps({ modelPath, device: "cpu", threads: 1, ...extra }))
        .buildSpec();
}

function response(m: Message): GenerationPromptResponse {
    expect(m.format, JSON.stringify(m.payload)).to.equal(GenerationPromptResponse.format);
    return GenerationPromptResponse.parse(m.payload);
}

function error(m: Message): ErrorMessage {
    expect(m.format, JSON.stringify(m.payload)).to.equal(ErrorMessage.format);
    expect(m.is_error_message).to.equal(true);
    return ErrorMessage.parse(m.payload);
}

describe("LLMPhiAgent (tiny test model)", function () {
    this.timeout(120000);
    let modelPath: string;
    let guild: Guild;
    let probe: ProbeClient;
    let agent: LLMPhiAgent;
    let model: PhiModel;
    const events: GuildEvent[] = [];
    /** generated_response of the seed's example request (greedy, default budget) */
    let seedResponse: string | undefined;

    before(async () => {
        modelPath = await tinyModel("q8_0");
        guild = await new GuildBuilder("phi_guild").onEvent((e) => events.push(e)).addAgentSpec(phiSpec(modelPath)).launch();
        probe = await guild.probe();
        agent = guild.agent<LLMPhiAgent>("phi_agent")!;
        model = await agent.ready();
    });

    after(async () => {
        await guild?.shutdown();
    });

    describe("start()", () => {
        it("loads the model once, with its progress visible as events", () => {
            const progress = events.filter((e) => isPhiAgentEvent(e, "model_load_progress"));
            expect(progress.length).to.be.greaterThan(0);
            expect(progress.at(-1)!.data.progress).to.equal(1);
            const loaded = events.filter((e) => isPhiAgentEvent(e, "model_loaded"));
            expect(loaded).to.have.length(1);
            expect(loaded[0]).to.deep.include({ agentId: "phi_agent", guildId: "phi_guild" });
            expect(model.info.architecture).to.equal("phi2");
            expect(model.info.runtime.contextSize).to.equal(2048);
            expect(model.info.runtime.device).to.equal("cpu");
            expect(agent.model).to.equal(model);
        });
    });

    describe("GenerationPromptRequest", () => {
        it("answers the seed's example request with a GenerationPromptResponse that begins with the prompt", async () => {
            const client = guild.client("my_client");
            const sent = client.publish("default_topic", GenerationPromptRequest.create({ generation_prompt: SEED_PROMPT }));
            const reply = await probe.waitForReply(sent, 60000);
            expect(reply.in_response_to).to.equal(sent.id);
            expect(reply.sender).to.deep.equal({ id: "phi_agent", name: "Phi-2 LLM" });
            const r = response(reply);
            expect(r.generation_prompt).to.equal(SEED_PROMPT);
            expect(r.generated_response.startsWith(SEED_PROMPT)).to.equal(true);
            // the seed's max_length=200 counts the prompt; tokens are counted with the model's own vocabulary
            const promptTokens = model.tokenize(SEED_PROMPT).length;
            expect(r.usage!.prompt_tokens).to.equal(promptTokens);
            expect(promptTokens).to.equal(8); // "The| benefits| of| multi|-|agent| systems| include" in Phi-2's vocabulary
            expect(r.usage!.total_tokens).to.be.at.most(200);
            if (r.finish_reason === "length") expect(r.usage!.total_tokens).to.equal(200);
            expect(r.usage!.completion_tokens).to.be.greaterThan(0);
            expect(r.generated_response.length).to.be.greaterThan(SEED_PROMPT.length);
            seedResponse = r.generated_response;
            await client.close();
        });

        it("is greedy by default: the same request gives the same text", async () => {
            const client = guild.client("greedy_client");
            const a = await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: "Alice and Bob", max_tokens: 12 }), { timeoutMs: 60000 });
            const b = await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: "Alice and Bob", max_tokens: 12 }), { timeoutMs: 60000 });
            expect(response(a).generated_response).to.equal(response(b).generated_response);
            expect(response(a).usage!.completion_tokens).to.be.at.most(12);
            await client.close();
        });

        it("serves 20 requests sent at once, a third malformed, with exactly 20 replies matched by in_response_to; then still answers", async () => {
            const client = guild.client("load_client");
            const watcher = await guild.probe("load_probe");
            const malformed: { payload: Record<string, unknown>; field: RegExp }[] = [
                { payload: {}, field: /generation_prompt is required/ },
                { payload: { generation_prompt: 42 }, field: /generation_prompt must be a string \(got number 42\)/ },
                { payload: { generation_prompt: "" }, field: /generation_prompt must not be empty/ },
                { payload: { generation_prompt: "ok", max_tokens: 0 }, field: /max_tokens must be >= 1/ },
                { payload: { generation_prompt: "ok", temperature: "hot" }, field: /temperature must be a number/ },
                { payload: { generation_prompt: ["a", "b"] }, field: /generation_prompt must be a string \(got an array of 2\)/ },
                { payload: { generation_prompt: "ok", stop: "\n" }, field: /stop must be an array/ },
            ];
            const sent: { message: Message; bad?: RegExp; prompt?: string }[] = [];
            let nextBad = 0;
            for (let i = 0; i < 20; i++) {
                if (i % 3 === 1) {
                    const m = malformed[nextBad++]!;
                    sent.push({ message: client.publish(DEFAULT_TOPIC, m.payload, { format: GenerationPromptRequest.format }), bad: m.field });
                } else {
                    const prompt = `Request number ${i} asks about agents`;
                    sent.push({ message: client.publish(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: prompt, max_tokens: 8 })), prompt });
                }
            }
            expect(sent.filter((s) => s.bad)).to.have.length(7);

            // the engine decodes several of them together (no lock in the agent)
            let peakActive = 0;
            let done = false;
            const sampler = (async () => {
                while (!done) {
                    peakActive = Math.max(peakActive, model.stats().active);
                    await new Promise((r) => setImmediate(r));
                }
            })();
            const replies = await Promise.all(sent.map((s) => watcher.waitForReply(s.message, 60000)));
            done = true;
            await sampler;
            // no handler is running any more, so no further reply can be made; a marker answered after that, on the
            // same ordered topic, arrives after anything extra they published
            while (agent.inflight > 0) await new Promise((r) => setImmediate(r));
            const marker = client.publish(DEFAULT_TOPIC, { generation_prompt: 7 }, { format: GenerationPromptRequest.format });
            await watcher.waitForReply(marker, 60000);

            const ids = new Set(sent.map((s) => s.message.id));
            const allReplies = watcher.messages.filter((m) => m.in_response_to !== null && ids.has(m.in_response_to!));
            expect(allReplies).to.have.length(20);
            for (const [i, s] of sent.entries()) {
                expect(watcher.repliesTo(s.message), `request ${i}`).to.have.length(1);
                const reply = replies[i]!;
                expect(reply.in_response_to).to.equal(s.message.id);
                if (s.bad) {
                    const e = error(reply);
                    expect(e.error_type).to.equal("ValidationError");
                    expect(e.agent_type).to.equal("LLMPhiAgent");
                    expect(e.error_message).to.match(s.bad);
                } else {
                    const r = response(reply);
                    expect(r.generation_prompt).to.equal(s.prompt);
                    expect(r.generated_response.startsWith(s.prompt!)).to.equal(true);
                }
            }
            expect(peakActive, "generate() calls decoded together").to.be.greaterThan(1);

            const after = await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: SEED_PROMPT, max_tokens: 4 }), { timeoutMs: 60000 });
            expect(response(after).generation_prompt).to.equal(SEED_PROMPT);
            await watcher.close();
            await client.close();
        });

        it("answers a prompt longer than the context with a ContextOverflowError message, and keeps serving", async () => {
            const client = guild.client("overflow_client");
            const long = "hello ".repeat(2100);
            const reply = await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: long }), { timeoutMs: 60000 });
            const e = error(reply);
            expect(e.error_type).to.equal("ContextOverflowError");
            expect(e.code).to.equal("ERR_CONTEXT_OVERFLOW");
            expect(e.error_message).to.match(/The prompt is \d+ tokens but the context holds 2048/);
            expect((e.details as { prompt_tokens: number }).prompt_tokens).to.be.greaterThan(2048);
            const ok = await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: "short", max_tokens: 2 }), { timeoutMs: 60000 });
            expect(response(ok).generation_prompt).to.equal("short");
            await client.close();
        });

        it("honours per-request max_tokens and stop", async () => {
            const client = guild.client("options_client");
            const r = response(await client.request(DEFAULT_TOPIC,
                GenerationPromptRequest.create({ generation_prompt: SEED_PROMPT, max_tokens: 3 }), { timeoutMs: 60000 }));
            expect(r.usage!.completion_tokens).to.be.at.most(3);
            if (r.usage!.completion_tokens === 3) expect(r.finish_reason).to.equal("length");
            expect(seedResponse!.startsWith(r.generated_response)).to.equal(true);

            // a stop string taken from the greedy continuation cuts the text right before it
            const continuation = seedResponse!.slice(SEED_PROMPT.length);
            const stop = continuation.slice(10, 16);
            expect(stop.trim().length, "a usable stop string").to.be.greaterThan(0);
            const s = response(await client.request(DEFAULT_TOPIC,
                GenerationPromptRequest.create({ generation_prompt: SEED_PROMPT, max_tokens: 40, stop: [stop] }), { timeoutMs: 60000 }));
            expect(s.finish_reason).to.equal("stop");
            expect(s.generated_response).to.equal(SEED_PROMPT + continuation.slice(0, continuation.indexOf(stop)));
            await client.close();
        });

        it("answers a request with a lone surrogate or a NUL in the prompt with a ValidationError naming generation_prompt", async () => {
            const client = guild.client("surrogate_client");
            for (const [prompt, what] of [["bad \ud800 text", /"generation_prompt" contains a lone UTF-16 surrogate \(at index 4\)/], ["nul\u0000byte", /"generation_prompt" contains a NUL character at index 3/]] as const) {
                const e = error(await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: prompt }), { timeoutMs: 60000 }));
                expect(e.error_type).to.equal("ValidationError");
                expect(e.code).to.equal("ERR_INVALID_ARGUMENT");
                expect(e.error_message).to.match(what);
                expect(e.error_message).to.not.match(/"text"/);
            }
            await client.close();
        });
    });

    describe("includePrompt: false", () => {
        it("returns only the continuation", async () => {
            const g = await new GuildBuilder("no_prompt_guild").addAgentSpec(phiSpec(modelPath, { includePrompt: false, maxNewTokens: 5 })).launch();
            try {
                const reply = await g.client("c").request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: SEED_PROMPT }), { timeoutMs: 60000 });
                const r = response(reply);
                const m = await g.agent<LLMPhiAgent>("phi_agent")!.ready();
                const direct = await m.generate(SEED_PROMPT, { maxTokens: 5 });
                expect(r.generated_response).to.equal(direct.text);
                expect(r.usage!.completion_tokens).to.equal(direct.usage.completionTokens);
            } finally {
                await g.shutdown();
            }
        });
    });

    describe("failures", () => {
        it("answers every request with a ModelLoadError message when the model could not load; the guild still launches", async () => {
            const missing = path.join(os.tmpdir(), `no-such-model-${process.pid}.gguf`);
            const seen: GuildEvent[] = [];
            const g = await new GuildBuilder("broken_guild").onEvent((e) => seen.push(e)).addAgentSpec(phiSpec(missing)).launch();
            try {
                const failed = seen.find((e) => isPhiAgentEvent(e, "model_load_failed"));
                expect(failed, "model_load_failed event").to.not.equal(undefined);
                const client = g.client("c");
                for (let i = 0; i < 2; i++) {
                    const e = error(await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: SEED_PROMPT }), { timeoutMs: 10000 }));
                    expect(e.error_type).to.equal("ModelLoadError");
                    expect(e.code).to.equal("ERR_MODEL_NOT_FOUND");
                    expect(e.error_message).to.include(missing);
                }
                let readyError: unknown;
                await g.agent<LLMPhiAgent>("phi_agent")!.ready().catch((err) => { readyError = err; });
                expect(readyError).to.be.instanceOf(PhiAgentError);
            } finally {
                await g.shutdown();
            }
        });

        it("answers with a GenerationError message when generate() fails, and keeps serving", async () => {
            let failNext = true;
            class FlakyPhiAgent extends LLMPhiAgent {
                protected override async loadModel(options: LoadOptions): Promise<PhiModel> {
                    const real = await super.loadModel(options);
                    return new Proxy(real, {
                        get(target, prop) {
                            if (prop === "generate" && failNext) {
                                failNext = false;
                                return () => Promise.reject(new PhiAgentError("ERR_GENERATION_FAILED", "llama_decode failed (-1)"));
                            }
                            const value = Reflect.get(target, prop, target) as unknown;
                            return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
                        },
                    });
                }
            }
            const g = await new GuildBuilder("flaky_guild").addAgentSpec(phiSpec(modelPath, {}, FlakyPhiAgent)).launch();
            try {
                const client = g.client("c");
                const e = error(await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: "x", max_tokens: 2 }), { timeoutMs: 60000 }));
                expect(e).to.deep.include({ agent_type: "FlakyPhiAgent", error_type: "GenerationError", code: "ERR_GENERATION_FAILED" });
                expect(e.error_message).to.equal("Generation failed: llama_decode failed (-1)");
                const ok = await client.request(DEFAULT_TOPIC, GenerationPromptRequest.create({ generation_prompt: "x", max_tokens: 2 }), { timeoutMs: 60000 });
                expect(response(ok).generation_prompt).to.equal("x");
            } finally {
                await g.shutdown();
            }
        });
    });

    describe("Guild.shutdown()", () => {
        it("disposes the model", async () => {
            const seen: GuildEvent[] = [];
            const g = await new GuildBuilder("dispose_guild").onEvent((e) => seen.push(e)).addAgentSpec(phiSpec(modelPath)).launch();
            const a = g.agent<LLMPhiAgent>("phi_agent")!;
            const m = await a.ready();
            expect(m.disposed).to.equal(false);
            await g.shutdown();
            expect(m.disposed).to.equal(true);
            expect(a.model).to.equal(undefined);
            expect(seen.map((e) => (e.type === "agent_event" ? e.name : e.type))).to.include.members(["model_disposed", "agent_stopped"]);
            expect(() => m.tokenize("x")).to.throw(PhiAgentError);
        });
    });

    describe("examples/sample-usage", () => {
        it("runs the seed's sample usage and prints a GenerationPromptResponse that begins with the prompt", async function () {
            this.timeout(300000);
            const script = fileURLToPath(new URL("../examples/sample-usage.js", import.meta.url));
            const { stdout } = await promisify(execFile)(process.execPath, [script, modelPath, "cpu"], {
                timeout: 290000,
                env: { ...process.env, PHI2_MODEL: "", PHI2_DEVICE: "", PHI2_THREADS: "1" },
            });
            const printed = /^GenerationPromptResponse (\{[\s\S]*\})\s*$/.exec(stdout);
            expect(printed, stdout).to.not.equal(null);
            const r = JSON.parse(printed![1]!) as GenerationPromptResponse;
            expect(Object.keys(r)).to.deep.equal(["generation_prompt", "generated_response"]);
            expect(r.generation_prompt).to.equal(SEED_PROMPT);
            expect(r.generated_response.startsWith(SEED_PROMPT)).to.equal(true);
            // same model, same greedy decoding, same budget as the agent in this guild's answer to the same request
            expect(r.generated_response).to.equal(seedResponse);
        });
    });

    describe("scripts/demo (npm run demo)", () => {
        it("publishes the seed's request through a guild and prints the GenerationPromptResponse message, saying the weights are random", async function () {
            this.timeout(300000);
            const script = fileURLToPath(new URL("../scripts/demo.js", import.meta.url));
            const { stdout, stderr } = await promisify(execFile)(process.execPath, [script], {
                timeout: 290000,
                env: { ...process.env, PHI2_MODEL: "", PHI2_DEVICE: "cpu", PHI2_THREADS: "1" },
            });
            const message = parseMessage(stdout);
            expect(message.format).to.equal(GenerationPromptResponse.format);
            expect(message.sender).to.deep.equal({ id: "phi_agent", name: "Phi-2 LLM" });
            expect(message.in_response_to).to.match(/^\d+$/);
            const r = response(message);
            expect(r.generation_prompt).to.equal(SEED_PROMPT);
            expect(r.generated_response).to.equal(seedResponse); // the same tiny q8_0 model, greedy, maxLength 200
            expect(stderr).to.match(/RANDOM weights/);
            expect(stderr).to.match(/model disposed/);
        });
    });

    describe("source", () => {
        it("LLMPhiAgent reaches native code only through PhiModel", () => {
            const dir = path.join(process.cwd(), "src", "agent");
            for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".ts"))) {
                const text = fs.readFileSync(path.join(dir, file), "utf8");
                expect(text, file).to.not.match(/from\s+"[^"]*native[^"]*"|\.node"|createRequire/);
            }
        });
    });
});
