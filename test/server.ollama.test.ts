/**
 * phi-agent serve's Ollama endpoints, driven by the official `ollama` npm client against a real listening server
 * (127.0.0.1, port 0) on the tiny test model: generate and chat, streaming (NDJSON, a last object with done,
 * done_reason, counts and durations), options, seeds, logprobs, an aborted stream that frees its slot, the
 * client's ResponseError, the model listing endpoints, and 16 concurrent streams.
 */
import { expect } from "chai";
import { Ollama } from "ollama";
import { nextGeneration, startServer, type TestServer } from "./helpers/server.js";

const MODEL = "test-tiny-f32-s1";

interface ResponseErrorLike extends Error { status_code: number; error: string }

describe("server: Ollama API (ollama client)", function () {
    this.timeout(120_000);
    let t: TestServer;
    let ollama: Ollama;

    before(async function () {
        t = await startServer();
        ollama = new Ollama({ host: t.url });
    });
    after(async function () {
        await t?.server.close();
    });

    it("version, tags, show and ps describe the one model", async function () {
        const v = await ollama.version();
        expect(v.version).to.match(/^\d+\.\d+\.\d+/);
        const tags = await ollama.list();
        expect(tags.models).to.have.length(1);
        const m = tags.models[0]!;
        expect(m.name).to.equal(`${MODEL}:latest`);
        expect(m.details.format).to.equal("gguf");
        expect(m.details.family).to.equal("phi2");
        expect(m.size).to.be.greaterThan(0);
        const show = await ollama.show({ model: MODEL });
        expect((show.model_info as unknown as Record<string, unknown>)["general.architecture"]).to.equal("phi2");
        expect(show.template).to.include("Instruct:");
        expect(show.details.quantization_level).to.equal("F32");
        const ps = await ollama.ps();
        expect(ps.models.map((x) => x.name)).to.deep.equal([`${MODEL}:latest`]);
    });

    it("generate: non-streamed text with counts and durations; raw gives the prompt as it is", async function () {
        const r = await ollama.generate({ model: MODEL, prompt: "Why is the sky blue?", stream: false, options: { num_predict: 8 } });
        expect(r.done).to.equal(true);
        expect(r.done_reason).to.be.oneOf(["stop", "length"]);
        expect(r.eval_count).to.be.within(1, 8);
        expect(r.prompt_eval_count).to.equal(t.server.model!.tokenize("Instruct: Why is the sky blue?\nOutput:").length);
        for (const d of [r.total_duration, r.prompt_eval_duration, r.eval_duration]) expect(d).to.be.a("number").and.be.at.least(0);
        expect(r.total_duration).to.be.greaterThan(0);
        const raw = await ollama.generate({ model: MODEL, prompt: "Why is the sky blue?", raw: true, stream: false, options: { num_predict: 8 } });
        expect(raw.prompt_eval_count).to.equal(t.server.model!.tokenize("Why is the sky blue?").length);
        const direct = await t.server.model!.generate("Why is the sky blue?", { maxTokens: 8 });
        expect(raw.response).to.equal(direct.text);
    });

    it("generate: streamed parts add up to the non-streamed text; the last has done and the stats", async function () {
        const request = { model: MODEL, prompt: "List three colors", options: { num_predict: 12 } };
        const whole = await ollama.generate({ ...request, stream: false });
        const parts = await ollama.generate({ ...request, stream: true });
        let text = "";
        let last: Awaited<typeof whole> | undefined;
        let n = 0;
        for await (const part of parts) {
            n++;
            expect(last, "nothing after the done object").to.equal(undefined);
            text += part.response;
            if (part.done) last = part as typeof whole;
        }
        expect(n).to.be.greaterThan(2);
        expect(text).to.equal(whole.response);
        expect(last!.done_reason).to.equal(whole.done_reason);
        expect(last!.eval_count).to.equal(whole.eval_count);
        expect(last!.prompt_eval_count).to.equal(whole.prompt_eval_count);
    });

    it("chat: streamed and not; the system message and turns use Phi-2's chat form", async function () {
        const messages = [
            { role: "system", content: "You are terse." },
            { role: "user", content: "Hi" },
            { role: "assistant", content: "Hello." },
            { role: "user", content: "How are you?" },
        ];
        const whole = await ollama.chat({ model: MODEL, messages, stream: false, options: { num_predict: 10 } });
        expect(whole.message.role).to.equal("assistant");
        expect(whole.done).to.equal(true);
        expect(whole.prompt_eval_count).to.equal(t.server.model!.tokenize("You are terse.\nUser: Hi\nAssistant: Hello.\nUser: How are you?\nAssistant:").length);
        const parts = await ollama.chat({ model: MODEL, messages, stream: true, options: { num_predict: 10 } });
        let text = "";
        let done = false;
        for await (const part of parts) {
            text += part.message.content;
            done ||= part.done;
        }
        expect(done).to.equal(true);
        expect(text).to.equal(whole.message.content);
        // Phi-2's stop strings: the reply never contains the next user turn
        expect(whole.message.content).to.not.include("\nUser:");
    });

    it("options: num_predict, stop, and seeds (same seed, same text)", async function () {
        const base = await ollama.generate({ model: MODEL, prompt: "Once upon a time", raw: true, stream: false, options: { num_predict: 24 } });
        expect(base.eval_count).to.be.at.most(24);
        const text = base.response ?? "";
        const words = text.split(" ").filter((w) => w.length > 2);
        const stop = words[Math.floor(words.length / 2)]!;
        const cut = await ollama.generate({ model: MODEL, prompt: "Once upon a time", raw: true, stream: false, options: { num_predict: 24, stop: [stop] } });
        expect(cut.response).to.equal(text.slice(0, text.indexOf(stop)));
        expect(cut.done_reason).to.equal("stop");
        const sample = (seed: number) => ollama.generate({ model: MODEL, prompt: "Tell me", stream: false, options: { num_predict: 12, temperature: 1, seed } }).then((r) => r.response);
        const a = await sample(7);
        expect(await sample(7)).to.equal(a);
        const others = await Promise.all([8, 9, 10].map(sample));
        expect(others.some((o) => o !== a)).to.equal(true);
    });

    it("logprobs (Ollama's shape)", async function () {
        const r = await ollama.generate({ model: MODEL, prompt: "Hi", stream: false, logprobs: true, top_logprobs: 2, options: { num_predict: 5 } });
        expect(r.logprobs).to.have.length(r.eval_count);
        for (const lp of r.logprobs!) {
            expect(lp.logprob).to.be.at.most(0);
            expect(lp.top_logprobs).to.have.length(2);
        }
        expect(r.logprobs!.map((x) => x.token).join("")).to.equal(r.response);
    });

    it("format \"json\" and a JSON schema: the response is JSON (matching the schema)", async function () {
        const schema = { type: "object", properties: { ok: { type: "boolean" }, n: { type: "integer", minimum: 1, maximum: 9 } }, required: ["ok", "n"], additionalProperties: false };
        let finished = 0;
        for (const seed of [1, 2, 3]) {
            const any = await ollama.generate({ model: MODEL, prompt: "JSON:", stream: false, format: "json", options: { seed, temperature: 0.8, num_predict: 200 } });
            if (any.done_reason === "stop") {
                expect(JSON.parse(any.response ?? "")).to.be.an("object");
                finished++;
            }
            const typed = await ollama.chat({ model: MODEL, messages: [{ role: "user", content: "ok and n" }], stream: false, format: schema, options: { seed, temperature: 0.8, num_predict: 200 } });
            if (typed.done_reason === "stop") {
                const v = JSON.parse(typed.message.content) as { ok: unknown; n: unknown };
                expect(Object.keys(v).sort()).to.deep.equal(["n", "ok"]);
                expect(v.ok).to.be.a("boolean");
                expect(v.n).to.be.oneOf([1, 2, 3, 4, 5, 6, 7, 8, 9]);
                finished++;
            }
        }
        expect(finished, "most constrained outputs finish within 200 tokens").to.be.at.least(3);
    });

    it("errors are the client's ResponseError with the server's message and status", async function () {
        const unknown = await ollama.generate({ model: "llama3", prompt: "x", stream: false }).catch((e: unknown) => e) as ResponseErrorLike;
        expect(unknown.name).to.equal("ResponseError");
        expect(unknown.status_code).to.equal(404);
        expect(unknown.error).to.match(/"llama3" does not exist/);
        const bad = await ollama.generate({ model: MODEL, prompt: "x", stream: false, options: { temperature: -1 } }).catch((e: unknown) => e) as ResponseErrorLike;
        expect(bad.status_code).to.equal(400);
        expect(bad.error).to.match(/options\.temperature/);
        const json = await ollama.generate({ model: MODEL, prompt: "x", stream: false, format: 42 as never }).catch((e: unknown) => e) as ResponseErrorLike;
        expect(json.status_code).to.equal(400);
        expect(json.error).to.match(/format/);
        const streamed = await ollama.generate({ model: MODEL, prompt: "word ".repeat(600), stream: true }).catch((e: unknown) => e) as ResponseErrorLike;
        expect(streamed.status_code, "too long for the context: 400 before any stream byte").to.equal(400);
        expect(streamed.error).to.match(/context/);
    });

    it("16 concurrent streams all complete", async function () {
        const results = await Promise.all(Array.from({ length: 16 }, async (_, i) => {
            const parts = await ollama.chat({ model: MODEL, messages: [{ role: "user", content: `Question ${i}` }], stream: true, options: { num_predict: 16 } });
            let text = "";
            let count = -1;
            for await (const part of parts) {
                text += part.message.content;
                if (part.done) count = part.eval_count;
            }
            return { text, count };
        }));
        for (const r of results) expect(r.count).to.be.within(1, 16);
        expect(t.server.model!.stats()).to.include({ active: 0, waiting: 0 });
    });
});

describe("server: Ollama API limits (ollama client)", function () {
    this.timeout(120_000);

    it("an aborted stream frees its slot at once (parallel 1)", async function () {
        const t = await startServer({ load: { sequences: 1, contextSize: 2048 } });
        try {
            const ollama = new Ollama({ host: t.url });
            const aborted = nextGeneration(t.server, (e) => e.finishReason === "abort");
            const parts = await ollama.generate({ model: MODEL, prompt: "Once", raw: true, stream: true, options: { num_predict: 2000 } });
            let got = 0;
            try {
                for await (const part of parts) {
                    if (part.response) got++;
                    if (got === 2) parts.abort();
                }
            } catch (err) {
                expect((err as Error).name).to.equal("AbortError");
            }
            const e = await aborted;
            expect(e.completionTokens).to.be.lessThan(2000);
            expect(t.server.model!.stats().active).to.equal(0);
            const next = await ollama.generate({ model: MODEL, prompt: "Twice", stream: false, options: { num_predict: 4 } });
            expect(next.eval_count).to.be.within(1, 4);
        } finally {
            await t.server.close();
        }
    });

    it("with an API key: 401 ResponseError without it, works with it (Authorization header)", async function () {
        const t = await startServer({ apiKey: "k-123" });
        try {
            const anonymous = await new Ollama({ host: t.url }).list().catch((e: unknown) => e) as ResponseErrorLike;
            expect(anonymous.status_code).to.equal(401);
            expect(anonymous.error).to.match(/API key/);
            const keyed = new Ollama({ host: t.url, headers: { Authorization: "Bearer k-123" } });
            expect((await keyed.list()).models).to.have.length(1);
        } finally {
            await t.server.close();
        }
    });
});
