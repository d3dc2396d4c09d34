/**
 * Streaming, stop strings, EOS, backpressure, KV sharing between concurrent calls without maxTokens, truncation and
 * the smaller API edges of PhiModel (issue 9, items 9, 10, 12, 24, 25), on real generated GGUFs through the addon.
 * Event-driven: no sleeps, no timed assertions.
 */
import { expect } from "chai";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { AbortError, PhiModel, type GenerationResult, type TokenChunk } from "../src/index.js";
import { readGGUF } from "../src/gguf/reader.js";
import { loadBinding } from "../src/native/binding.js";
import { ENDOFTEXT_ID as EOS } from "../src/testModel/vocab.js";
import { STREAM_BUFFER_CHUNKS } from "../src/model/PhiModel.js";
import { tinyModel } from "./helpers/models.js";

const SEED_PROMPT = "The benefits of multi-agent systems include";

/** A copy of `modelPath` whose output bias on <|endoftext|> is raised by `delta`. */
async function withEosBias(modelPath: string, delta: number, dir: string): Promise<string> {
    const header = await readGGUF(modelPath);
    const bias = header.tensors.find((t) => t.name === "output.bias")!;
    const file = path.join(dir, "eos-after.gguf");
    fs.copyFileSync(modelPath, file);
    const fd = fs.openSync(file, "r+");
    try {
        const at = header.dataOffset + bias.offset + EOS * 4;
        const value = Buffer.alloc(4);
        fs.readSync(fd, value, 0, 4, at);
        value.writeFloatLE(value.readFloatLE() + delta);
        fs.writeSync(fd, value, 0, 4, at);
    } finally {
        fs.closeSync(fd);
    }
    return file;
}

describe("streaming and KV sharing", function () {
    let modelPath: string;
    let model: PhiModel;
    let dir: string;

    before(async function () {
        modelPath = await tinyModel("f32");
        model = await PhiModel.load({ modelPath, threads: 1, contextSize: 256 });
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-stream-"));
    });
    after(async function () {
        await model?.dispose();
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    describe("a model that says <|endoftext|> after a few tokens", function () {
        let eosModel: PhiModel;
        let tokens: number[];  // what the base model generates greedily before the biased one says EOS
        let text: string;

        before(async function () {
            // Greedy margins of EOS on the base model: raise EOS's bias between the margin at step k and the
            // smallest margin before it, so that greedy generates exactly the first k tokens, then EOS.
            const base = await model.generate(SEED_PROMPT, { maxTokens: 16 });
            const prompt = model.tokenize(SEED_PROMPT);
            const margins: number[] = [];
            for (let i = 0; i < base.tokens.length; i++) {
                const logits = await model.evaluate([...prompt, ...base.tokens.slice(0, i)]);
                let max = -Infinity;
                for (const x of logits) max = Math.max(max, x);
                margins.push(max - logits[EOS]!);
            }
            let k = -1;
            for (let i = 3; i < margins.length && k < 0; i++) if (margins[i]! < Math.min(...margins.slice(0, i)) - 0.05) k = i;
            if (k < 0) throw new Error(`no step where EOS comes closer than before: margins ${margins.map((m) => m.toFixed(3)).join(",")}`);
            const delta = (margins[k]! + Math.min(...margins.slice(0, k))) / 2;
            eosModel = await PhiModel.load({ modelPath: await withEosBias(modelPath, delta, dir), threads: 1, contextSize: 256 });
            tokens = base.tokens.slice(0, k);
            text = model.detokenize(tokens);
            const check = await eosModel.generate(SEED_PROMPT, { maxTokens: 16 });
            expect(check.finishReason).to.equal("eos");
            expect(check.tokens).to.deep.equal(tokens);
        });
        after(async function () {
            await eosModel?.dispose();
        });

        // a stop string that starts with the text's end and can never complete: its start is held back until EOS
        const heldStop = () => Array.from(text).slice(-2).join("") + "\u0007";

        it("onToken: the text held back for a stop string is streamed at EOS; the chunks add up to the result", async function () {
            const chunks: TokenChunk[] = [];
            const r = await eosModel.generate(SEED_PROMPT, { maxTokens: 16, stop: [heldStop()], onToken: (c) => { chunks.push(c); } });
            expect(r.finishReason).to.equal("eos");
            expect(r.text).to.equal(text);
            expect(chunks.map((c) => c.text).join("")).to.equal(r.text);
        });

        it("stream() with a stop string and EOS: chunks add up to result.text, every token comes once, the last chunk belongs to no token", async function () {
            const stream = eosModel.stream(SEED_PROMPT, { maxTokens: 16, stop: [heldStop()] });
            const chunks: TokenChunk[] = [];
            for await (const c of stream) chunks.push(c);
            const r = await stream.result;
            expect(r.finishReason).to.equal("eos");
            expect(chunks.map((c) => c.text).join("")).to.equal(r.text);
            expect(chunks.filter((c) => c.token >= 0).map((c) => c.token)).to.deep.equal(r.tokens);
            expect(chunks.at(-1)!.token).to.equal(-1);
            expect(chunks.at(-1)!.text).to.equal(heldStop().slice(0, -1));
        });

        it("stream() without a stop string ends with the last token's chunk (no repeated token)", async function () {
            const stream = eosModel.stream(SEED_PROMPT, { maxTokens: 16 });
            const chunks: TokenChunk[] = [];
            for await (const c of stream) chunks.push(c);
            const r = await stream.result;
            expect(chunks.map((c) => c.token)).to.deep.equal(r.tokens);
            expect(chunks.map((c) => c.text).join("")).to.equal(r.text);
        });
    });

    describe("stream()", function () {
        it("streams text that never includes a stop string found in the greedy text (stream + stop, length)", async function () {
            const full = await model.generate(SEED_PROMPT, { maxTokens: 24 });
            for (const [a, b] of [[3, 9], [12, 20], [20, 23]] as const) {
                const stop = full.text.slice(a, b);
                const stream = model.stream(SEED_PROMPT, { maxTokens: 24, stop: [stop] });
                let streamed = "";
                for await (const c of stream) streamed += c.text;
                const r = await stream.result;
                expect(r.finishReason).to.equal("stop");
                expect(streamed).to.equal(r.text);
                expect(r.text).to.equal(full.text.slice(0, full.text.indexOf(stop)));
            }
        });

        it("can be iterated once: a second iteration throws a TypeError", async function () {
            const stream = model.stream(SEED_PROMPT, { maxTokens: 4 });
            const first: TokenChunk[] = [];
            for await (const c of stream) first.push(c);
            expect(first).to.have.length(4);
            expect(() => stream[Symbol.asyncIterator]()).to.throw(TypeError, /iterated once/);
            let threw: unknown;
            try {
                for await (const c of stream) first.push(c);
            } catch (err) {
                threw = err;
            }
            expect(threw).to.be.instanceOf(TypeError);
        });

        it(`pauses a request whose reader falls ${STREAM_BUFFER_CHUNKS} chunks behind, while other requests go on`, async function () {
            const slow = model.stream(SEED_PROMPT, { maxTokens: 90 });
            let settled = false;
            void slow.result.then(() => (settled = true), () => (settled = true));
            const it = slow[Symbol.asyncIterator]();
            const first = await it.next();  // one chunk read, then the reader stops reading
            expect(first.done).to.equal(false);
            // 150 steps of another request: unpaused, the 90-token stream would have finished long before
            const other = await model.generate("Two words", { maxTokens: 150 });
            expect(other.tokens).to.have.length(150);
            expect(settled, "the unread stream ran to its end").to.equal(false);
            const rest: TokenChunk[] = [first.value as TokenChunk];
            for (let n = await it.next(); !n.done; n = await it.next()) rest.push(n.value);
            const r = await slow.result;
            expect(r.tokens).to.have.length(90);
            expect(rest.map((c) => c.text).join("")).to.equal(r.text);
            expect(rest.map((c) => c.token)).to.deep.equal(r.tokens);
        });

        it("breaking out of a paused stream cancels it", async function () {
            const stream = model.stream(SEED_PROMPT, { maxTokens: 100 });
            let n = 0;
            for await (const _c of stream) {
                if (++n === 1) await model.generate("One", { maxTokens: 100 }); // meanwhile it fills and pauses
                if (n === 3) break;
            }
            const err = await stream.result.catch((e: unknown) => e);
            expect(err).to.be.instanceOf(AbortError);
            expect(model.stats().active).to.equal(0);
        });

        it("a paused stream never blocks a request that waits for its KV cells", async function () {
            const stream = model.stream(SEED_PROMPT, { maxTokens: 200 }); // 208 of the 256 cells
            const it = stream[Symbol.asyncIterator]();
            await it.next();
            // 101 cells: it waits for the unread stream's cells, so the stream must not stay paused
            const other = await model.generate("One", { maxTokens: 100 });
            expect(other.tokens).to.have.length(100);
            let chunks = 1;
            for (let n = await it.next(); !n.done; n = await it.next()) chunks++;
            expect(chunks).to.equal(200);
            expect((await stream.result).tokens).to.have.length(200);
        });
    });

    describe("AbortError and disposed", function () {
        it("AbortError carries the signal's reason as its cause and in its message", async function () {
            const reason = new Error("the user pressed stop");
            const controller = new AbortController();
            const err = await model.generate(SEED_PROMPT, { signal: controller.signal, onToken: () => controller.abort(reason) })
                .catch((e: unknown) => e);
            expect(err).to.be.instanceOf(AbortError);
            expect((err as AbortError).cause).to.equal(reason);
            expect((err as AbortError).message).to.include("the user pressed stop");
            const before = await model.generate(SEED_PROMPT, { signal: AbortSignal.abort("shutting down") }).catch((e: unknown) => e);
            expect(before).to.be.instanceOf(AbortError);
            expect((before as AbortError).cause).to.equal("shutting down");
            expect((before as AbortError).message).to.include("shutting down");
        });

        it("`disposed` is true as soon as dispose() is called", async function () {
            const m = await PhiModel.load({ modelPath, threads: 1, contextSize: 32 });
            const disposing = m.dispose();
            expect(m.disposed).to.equal(true);
            expect(() => m.tokenize("x")).to.throw();
            await disposing;
            expect(m.disposed).to.equal(true);
        });
    });

    describe("truncate: \"start\"", function () {
        const long = "word ".repeat(300);

        it("keeps room for maxTokens", async function () {
            const r = await model.generate(long, { maxTokens: 20, truncate: "start" });
            expect(r.usage.promptTokens).to.equal(256 - 20);
            expect(r.finishReason).to.equal("length");
            expect(r.tokens).to.have.length(20);
        });

        it("keeps room for at least one token without maxTokens", async function () {
            const r = await model.generate(long, { truncate: "start" });
            expect(r.usage.promptTokens).to.equal(255);
            expect(r.tokens.length).to.be.at.least(1);
            expect(r.finishReason).to.be.oneOf(["context", "eos"]);
        });
    });

    describe("KV cells for calls without maxTokens", function () {
        const candidates = ["One", "Two words", SEED_PROMPT, "The end", "Hello, world", "def main():"];

        it("4 concurrent calls with default options all get a first token before any finishes, and all end", async function () {
            // prompts whose greedy continuation does not say EOS soon
            const prompts: string[] = [];
            for (const p of candidates) {
                if (prompts.length === 4) break;
                if ((await model.generate(p, { maxTokens: 64 })).finishReason === "length") prompts.push(p);
            }
            expect(prompts).to.have.length(4);
            const events: string[] = [];
            const results = await Promise.all(prompts.map((p, i) => {
                let first = true;
                return model.generate(p, {
                    onToken: () => {
                        if (first) events.push(`first ${i}`);
                        first = false;
                    },
                }).then((r) => {
                    events.push(`done ${i}`);
                    return r;
                });
            }));
            const firstDone = events.findIndex((e) => e.startsWith("done"));
            expect(events.slice(0, firstDone).filter((e) => e.startsWith("first")), events.join(", ")).to.have.length(4);
            for (const r of results) {
                expect(r.finishReason).to.be.oneOf(["context", "eos"]);
                expect(r.tokens.length).to.be.at.least(1);
            }
            // the cache (256 cells) was shared: together they used no more than it holds (+1 sampled, undecoded, each);
            // prompt tokens from the prompt cache share cells that exist already, so only the others count
            const used = results.reduce((s, r) => s + r.usage.promptTokens - r.usage.cachedPromptTokens + r.tokens.length, 0);
            expect(used).to.be.at.most(256 + 4);
            expect(model.stats().active).to.equal(0);
        });

        it("a request waiting for cells gets in once the running call without maxTokens reaches its fair share", async function () {
            const m = await PhiModel.load({ modelPath, threads: 1, contextSize: 128, sequences: 2 });  // fair share 64
            try {
                let unboundedDone = false;
                let bounded: Promise<GenerationResult> | undefined;
                const unbounded = m.generate("Two words", {
                    onToken: () => {
                        // needs all 128 cells: it waits, and the unbounded call must end at its share to let it in
                        bounded ??= m.generate(SEED_PROMPT, { maxTokens: 120 });
                    },
                }).then((r) => {
                    unboundedDone = true;
                    return r;
                });
                const u = await unbounded;
                const b = await bounded!;
                expect(unboundedDone).to.equal(true);
                expect(u.finishReason).to.equal("context");
                expect(u.usage.promptTokens + u.tokens.length).to.be.at.most(64 + 1);
                expect(b.finishReason).to.equal("length");
                expect(b.tokens).to.have.length(120);
            } finally {
                await m.dispose();
            }
        });
    });

    describe("native submit() takes no defaults", function () {
        it("rejects options missing a sampling field with a TypeError (src/model/options.ts is the one source)", async function () {
            const binding = loadBinding();
            const Original = binding.NativeEngine;
            // an engine whose submit() drops "temperature" on its way to the addon
            binding.NativeEngine = class extends (Original as unknown as new (...a: unknown[]) => { submit(...a: unknown[]): number }) {
                override submit(tokens: unknown, options: unknown, cb: unknown): number {
                    const { temperature: _t, ...rest } = options as Record<string, unknown>;
                    return super.submit(tokens, rest, cb);
                }
            } as unknown as typeof Original;
            let m: PhiModel | undefined;
            try {
                m = await PhiModel.load({ modelPath, threads: 1, contextSize: 32 });
            } finally {
                binding.NativeEngine = Original;
            }
            try {
                const err = await m.generate(SEED_PROMPT, { maxTokens: 2 }).catch((e: unknown) => e);
                expect(err).to.be.instanceOf(TypeError);
                expect((err as Error).message).to.include("temperature");
            } finally {
                await m.dispose();
            }
            expect((await model.generate(SEED_PROMPT, { maxTokens: 2 })).tokens).to.have.length(2);
        });
    });
});
