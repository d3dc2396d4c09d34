/**
 * phi-agent serve's OpenAI endpoints, driven by the official `openai` npm client against a real listening server
 * (127.0.0.1, port 0) on the tiny test model: completions and chat, streaming, include_usage, stop, seeds,
 * logprobs, an aborted stream that frees its slot, the client's typed errors, and 16 concurrent streams.
 */
import { expect } from "chai";
import OpenAI, { AuthenticationError, BadRequestError, NotFoundError, RateLimitError } from "openai";
import { nextGeneration, startServer, type TestServer } from "./helpers/server.js";

const MODEL = "test-tiny-f32-s1";

function client(t: TestServer, apiKey = "unused"): OpenAI {
    return new OpenAI({ baseURL: `${t.url}/v1`, apiKey, maxRetries: 0 });
}

describe("server: OpenAI API (openai client)", function () {
    this.timeout(120_000);
    let t: TestServer;
    let openai: OpenAI;

    before(async function () {
        t = await startServer();
        openai = client(t);
    });
    after(async function () {
        await t?.server.close();
    });

    it("lists the model", async function () {
        const list = await openai.models.list();
        expect(list.data.map((m) => m.id)).to.deep.equal([MODEL]);
        const one = await openai.models.retrieve(MODEL);
        expect(one.id).to.equal(MODEL);
        const err = await openai.models.retrieve("gpt-4").catch((e: unknown) => e);
        expect(err).to.be.instanceOf(NotFoundError);
    });

    it("chat completion: text, finish_reason and usage", async function () {
        const r = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Say hello" }], max_tokens: 8 });
        expect(r.object).to.equal("chat.completion");
        expect(r.choices).to.have.length(1);
        const c = r.choices[0]!;
        expect(c.message.role).to.equal("assistant");
        expect(c.message.content).to.be.a("string");
        expect(["stop", "length"]).to.include(c.finish_reason);
        expect(r.usage!.completion_tokens).to.be.within(1, 8);
        if (c.finish_reason === "length") expect(r.usage!.completion_tokens).to.equal(8);
        // the prompt is Phi-2's QA form for one user turn
        expect(r.usage!.prompt_tokens).to.equal(t.server.model!.tokenize("Instruct: Say hello\nOutput:").length);
        expect(r.usage!.total_tokens).to.equal(r.usage!.prompt_tokens + r.usage!.completion_tokens);
    });

    it("legacy completion: max_tokens defaults to 16 (OpenAI's default)", async function () {
        const r = await openai.completions.create({ model: MODEL, prompt: "The capital of France is" });
        expect(r.object).to.equal("text_completion");
        const c = r.choices[0]!;
        expect(r.usage!.completion_tokens).to.be.at.most(16);
        if (c.finish_reason === "length") expect(r.usage!.completion_tokens).to.equal(16);
        const direct = await t.server.model!.generate("The capital of France is", { maxTokens: 16 });
        expect(c.text).to.equal(direct.text); // greedy, alone: the same tokens as PhiModel
    });

    it("streams a chat completion whose chunks add up to the non-streamed text; include_usage adds a usage chunk", async function () {
        const request = { model: MODEL, messages: [{ role: "user" as const, content: "Count to five" }], max_tokens: 12 };
        const whole = await openai.chat.completions.create(request);
        const stream = await openai.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
        let text = "";
        let finish: string | null = null;
        let usage: OpenAI.CompletionUsage | undefined | null;
        let roleSeen = false;
        let chunks = 0;
        for await (const chunk of stream) {
            chunks++;
            if (chunk.choices.length === 0) {
                usage = chunk.usage;
                continue;
            }
            expect(usage, "the usage chunk comes last").to.equal(undefined);
            const choice = chunk.choices[0]!;
            if (choice.delta.role) roleSeen = true;
            text += choice.delta.content ?? "";
            if (choice.finish_reason) finish = choice.finish_reason;
        }
        expect(roleSeen).to.equal(true);
        expect(chunks).to.be.greaterThan(2);
        expect(text).to.equal(whole.choices[0]!.message.content);
        expect(finish).to.equal(whole.choices[0]!.finish_reason);
        // the same counts; the streamed request repeats the prompt, so its prefix may come from the prompt cache
        const { prompt_tokens_details: cachedNow, ...counts } = usage!;
        const { prompt_tokens_details: _cachedBefore, ...wholeCounts } = whole.usage!;
        expect(counts).to.deep.equal(wholeCounts);
        expect(cachedNow?.cached_tokens ?? 0).to.be.within(0, usage!.prompt_tokens);
    });

    it("streams a legacy completion", async function () {
        const whole = await openai.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 10 });
        const stream = await openai.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 10, stream: true });
        let text = "";
        for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
        expect(text).to.equal(whole.choices[0]!.text);
    });

    it("stop: a string or an array; the text ends before it, finish_reason stop", async function () {
        const base = await openai.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 24 });
        const text = base.choices[0]!.text;
        // a stop string from the middle of the greedy text
        const words = text.split(" ").filter((w) => w.length > 2);
        expect(words.length, `greedy text ${JSON.stringify(text)}`).to.be.greaterThan(2);
        const stop = words[Math.floor(words.length / 2)]!;
        const cut = text.slice(0, text.indexOf(stop));
        for (const s of [stop, [stop, "\u2603never\u2603"]]) {
            const r = await openai.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 24, stop: s });
            expect(r.choices[0]!.text).to.equal(cut);
            expect(r.choices[0]!.finish_reason).to.equal("stop");
            const stream = await openai.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 24, stop: s, stream: true });
            let streamed = "";
            let finish: string | null = null;
            for await (const chunk of stream) {
                streamed += chunk.choices[0]?.text ?? "";
                finish = chunk.choices[0]?.finish_reason ?? finish;
            }
            expect(streamed).to.equal(cut);
            expect(finish).to.equal("stop");
        }
    });

    it("seed: the same seed gives the same sampled text, other seeds other text", async function () {
        const sample = (seed: number) => openai.chat.completions.create({
            model: MODEL, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 12, temperature: 1, seed,
        }).then((r) => r.choices[0]!.message.content);
        const a = await sample(42);
        expect(await sample(42)).to.equal(a);
        const others = await Promise.all([1, 2, 3].map(sample));
        expect(others.some((o) => o !== a), "three other seeds all matched seed 42").to.equal(true);
    });

    it("logprobs in OpenAI's shape (chat and legacy completions)", async function () {
        const r = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }], max_tokens: 6, logprobs: true, top_logprobs: 3 });
        const content = r.choices[0]!.logprobs!.content!;
        expect(content).to.have.length(r.usage!.completion_tokens);
        expect(content.map((c) => c.token).join("")).to.equal(r.choices[0]!.message.content);
        for (const c of content) {
            expect(c.logprob).to.be.at.most(0);
            expect(c.top_logprobs).to.have.length(3);
            const lps = c.top_logprobs.map((x) => x.logprob);
            expect([...lps].sort((x, y) => y - x)).to.deep.equal(lps);
            expect(c.top_logprobs[0]!.token, "greedy picks the most likely token").to.equal(c.token);
            expect(c.top_logprobs[0]!.logprob).to.be.closeTo(c.logprob, 1e-6);
            expect(c.bytes).to.deep.equal([...Buffer.from(c.token)]);
        }
        const stream = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }], max_tokens: 6, logprobs: true, top_logprobs: 3, stream: true });
        const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
        for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
        // the same tokens; logprobs equal to float rounding (a cached prompt prefix is computed in another batch)
        expect(streamed.map((c) => c.token)).to.deep.equal(content.map((c) => c.token));
        streamed.forEach((c, i) => expect(c.logprob, `token ${i}`).to.be.closeTo(content[i]!.logprob, 1e-3));

        const legacy = await openai.completions.create({ model: MODEL, prompt: "Hello", max_tokens: 5, logprobs: 2 });
        const lp = legacy.choices[0]!.logprobs!;
        expect(lp.tokens).to.have.length(legacy.usage!.completion_tokens);
        expect(lp.token_logprobs).to.have.length(lp.tokens!.length);
        expect(lp.top_logprobs!.every((o) => Object.keys(o).length <= 2)).to.equal(true);
        expect(lp.text_offset![0]).to.equal(0);
        const off = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }], max_tokens: 2 });
        expect(off.choices[0]!.logprobs, "off by default").to.equal(null);
    });

    it("errors surface as the client's typed errors, with the field named", async function () {
        const bad = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], temperature: 500 }).catch((e: unknown) => e);
        expect(bad).to.be.instanceOf(BadRequestError);
        expect((bad as BadRequestError).param).to.equal("temperature");
        expect((bad as BadRequestError).code).to.equal("invalid_value");
        expect((bad as Error).message).to.match(/temperature/).and.match(/0 to 100/);

        const missing = await openai.chat.completions.create({ model: MODEL } as never).catch((e: unknown) => e);
        expect(missing).to.be.instanceOf(BadRequestError);
        expect((missing as BadRequestError).param).to.equal("messages");

        const unknown = await openai.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "x" }] }).catch((e: unknown) => e);
        expect(unknown).to.be.instanceOf(NotFoundError);
        expect((unknown as NotFoundError).code).to.equal("model_not_found");

        const n = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], n: 2 }).catch((e: unknown) => e);
        expect(n).to.be.instanceOf(BadRequestError);
        expect((n as BadRequestError).code).to.equal("not_supported");
        expect((n as BadRequestError).param).to.equal("n");

        const noSchema = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], response_format: { type: "json_schema" } as never }).catch((e: unknown) => e);
        expect(noSchema).to.be.instanceOf(BadRequestError);
        expect((noSchema as BadRequestError).param).to.equal("response_format.json_schema.schema");
        const unsupported = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }],
            response_format: { type: "json_schema", json_schema: { name: "s", schema: { type: "string", pattern: "^a+$" } } } }).catch((e: unknown) => e);
        expect(unsupported).to.be.instanceOf(BadRequestError);
        expect((unsupported as Error).message).to.match(/pattern/);

        const tool = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "tool", content: "x", tool_call_id: "1" }] }).catch((e: unknown) => e);
        expect(tool).to.be.instanceOf(BadRequestError);
        expect((tool as BadRequestError).code).to.equal("not_supported");
    });

    it("response_format json_object and json_schema: the content is JSON (matching the schema), streamed or not", async function () {
        const schema = { type: "object", properties: { name: { type: "string", maxLength: 12 }, age: { type: "integer", minimum: 0, maximum: 150 } },
            required: ["name", "age"], additionalProperties: false };
        const finished: unknown[] = [];
        for (const seed of [1, 2, 3]) {
            const any = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "A JSON object, please" }],
                response_format: { type: "json_object" }, max_tokens: 200, temperature: 0.8, seed });
            if (any.choices[0]!.finish_reason === "stop") {
                const v = JSON.parse(any.choices[0]!.message.content!) as unknown;
                expect(v).to.be.an("object").and.not.an("array");
                finished.push(v);
            }
            const typed = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Name and age" }],
                response_format: { type: "json_schema", json_schema: { name: "person", schema } }, max_tokens: 200, temperature: 0.8, seed, stream: true });
            let text = "";
            let reason: string | null = null;
            for await (const chunk of typed) {
                text += chunk.choices[0]?.delta.content ?? "";
                reason = chunk.choices[0]?.finish_reason ?? reason;
            }
            if (reason === "stop") {
                const v = JSON.parse(text) as { name: unknown; age: unknown };
                expect(Object.keys(v).sort()).to.deep.equal(["age", "name"]);
                expect(v.name).to.be.a("string").with.length.at.most(12);
                expect(Number.isInteger(v.age) && (v.age as number) >= 0 && (v.age as number) <= 150, text).to.equal(true);
                finished.push(v);
            }
        }
        expect(finished.length, "most constrained outputs finish within 200 tokens").to.be.at.least(3);
    });

    it("a prompt longer than the context is a 400 before any stream byte", async function () {
        const long = "word ".repeat(600); // > 512 tokens of context
        for (const stream of [false, true]) {
            const err = await openai.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: long }], stream }).catch((e: unknown) => e);
            expect(err, `stream: ${stream}`).to.be.instanceOf(BadRequestError);
            expect((err as BadRequestError).code).to.equal("context_length_exceeded");
            expect((err as BadRequestError).param).to.equal("messages");
        }
        // a body near the 1 MiB limit is refused from its size alone (no tokenization on the event loop)
        const huge = await openai.completions.create({ model: MODEL, prompt: "x".repeat(900_000) }).catch((e: unknown) => e);
        expect(huge).to.be.instanceOf(BadRequestError);
        expect((huge as BadRequestError).code).to.equal("context_length_exceeded");
        expect((huge as Error).message).to.match(/the prompt is at least \d+ tokens/);
        const fits = await openai.completions.create({ model: MODEL, prompt: "word ".repeat(100), max_tokens: 500 }).catch((e: unknown) => e);
        expect(fits).to.be.instanceOf(BadRequestError);
        expect((fits as BadRequestError).code).to.equal("context_length_exceeded");
        expect((fits as BadRequestError).param).to.equal("max_tokens");
    });

    it("16 concurrent streams all complete", async function () {
        const runs = Array.from({ length: 16 }, async (_, i) => {
            const stream = await openai.chat.completions.create({
                model: MODEL, messages: [{ role: "user", content: `Request number ${i}` }], max_tokens: 16, stream: true, stream_options: { include_usage: true },
            });
            let text = "";
            let usage: OpenAI.CompletionUsage | null | undefined;
            let finish: string | null = null;
            for await (const chunk of stream) {
                text += chunk.choices[0]?.delta.content ?? "";
                finish = chunk.choices[0]?.finish_reason ?? finish;
                if (chunk.usage) usage = chunk.usage;
            }
            return { text, usage, finish };
        });
        const results = await Promise.all(runs);
        for (const r of results) {
            expect(r.finish).to.be.oneOf(["stop", "length"]);
            expect(r.usage!.completion_tokens).to.be.within(1, 16);
        }
        expect(t.server.model!.stats()).to.include({ active: 0, waiting: 0 });
    });
});

describe("server: OpenAI API limits (openai client)", function () {
    this.timeout(120_000);

    it("an aborted stream frees its slot at once (parallel 1)", async function () {
        const t = await startServer({ load: { sequences: 1, contextSize: 2048 } });
        try {
            const openai = client(t);
            const aborted = nextGeneration(t.server, (e) => e.finishReason === "abort");
            const stream = await openai.completions.create({ model: MODEL, prompt: "Once", max_tokens: 2000, stream: true });
            let got = 0;
            for await (const chunk of stream) {
                if (chunk.choices[0]?.text) got++;
                if (got === 2) break; // the client's iterator aborts the HTTP request
            }
            const e = await aborted;
            expect(e.completionTokens).to.be.lessThan(2000);
            expect(t.server.model!.stats().active).to.equal(0);
            const next = await openai.completions.create({ model: MODEL, prompt: "Twice", max_tokens: 4 });
            expect(next.usage!.completion_tokens).to.be.within(1, 4);
        } finally {
            await t.server.close();
        }
    });

    it("a full queue is a RateLimitError (429 with Retry-After)", async function () {
        const t = await startServer({ load: { sequences: 1, contextSize: 2048 }, maxQueue: 0 });
        try {
            const openai = client(t);
            const stream = await openai.completions.create({ model: MODEL, prompt: "Once", max_tokens: 2000, stream: true });
            const it = stream[Symbol.asyncIterator]();
            await it.next(); // it holds the only slot now
            const err = await openai.completions.create({ model: MODEL, prompt: "Twice", max_tokens: 4 }).catch((e: unknown) => e);
            expect(err).to.be.instanceOf(RateLimitError);
            expect((err as RateLimitError).code).to.equal("queue_full");
            expect((err as RateLimitError).headers?.get("retry-after")).to.equal("1");
            stream.controller.abort();
        } finally {
            await t.server.close();
        }
    });

    it("an API key is required when set: AuthenticationError without it or with a wrong one", async function () {
        const t = await startServer({ apiKey: "s3cret-key" });
        try {
            const wrong = await client(t, "not-the-key").models.list().catch((e: unknown) => e);
            expect(wrong).to.be.instanceOf(AuthenticationError);
            expect((wrong as AuthenticationError).code).to.equal("invalid_api_key");
            const r = await client(t, "s3cret-key").chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], max_tokens: 2 });
            expect(r.choices).to.have.length(1);
        } finally {
            await t.server.close();
        }
    });
});
