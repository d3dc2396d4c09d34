/** PhiModel on real generated GGUFs through the real addon and llama.cpp. */
import { expect } from "chai";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { AbortError, ContextOverflowError, DisposedError, GGUFError, PhiAgentError, PhiModel } from "../src/index.js";
import { readGGUF } from "../src/gguf/reader.js";
import { writeGGUF, kv } from "../src/gguf/writer.js";
import { TEST_THREADS, tinyModel } from "./helpers/models.js";

const SEED_PROMPT = "The benefits of multi-agent systems include";

describe("PhiModel", function () {
    let modelPath: string;
    let model: PhiModel;

    before(async function () {
        modelPath = await tinyModel("f32");
        model = await PhiModel.load({ modelPath, threads: TEST_THREADS, contextSize: 256 });
    });
    after(async function () {
        await model?.dispose();
    });

    describe("load() and info", function () {
        it("reads the metadata of the loaded file", function () {
            expect(model.info.architecture).to.equal("phi2");
            expect(model.info.vocabSize).to.equal(51200);
            expect(model.info.contextLength).to.equal(2048);
            expect(model.info.embeddingLength).to.equal(256);
            expect(model.info.layers).to.equal(2);
            expect(model.info.heads).to.equal(4);
            expect(model.info.quantization).to.equal("f32");
            expect(model.info.fileSize).to.equal(fs.statSync(modelPath).size);
            expect(model.info.parameterCount).to.be.greaterThan(1_000_000);
            expect(model.info.runtime.device).to.equal("cpu");
            expect(model.info.runtime.contextSize).to.equal(256);
            expect(model.info.runtime.threads).to.equal(2);
        });

        it("reports load progress up to 1", async function () {
            const seen: number[] = [];
            const m = await PhiModel.load({ modelPath, threads: 1, contextSize: 32, onProgress: (p) => seen.push(p) });
            await m.dispose();
            expect(seen.length).to.be.greaterThan(0);
            expect(seen[seen.length - 1]).to.equal(1);
            for (let i = 1; i < seen.length; i++) expect(seen[i]).to.be.at.least(seen[i - 1]!);
        });

        it("keeps the event loop running while it loads: an abort from a progress callback stops llama.cpp's load itself", async function () {
            // If the load blocked the event loop, the callback (and so the abort) would run only after llama.cpp had
            // finished, and the rejection would carry no native cause; here llama.cpp itself reports ERR_ABORTED.
            const controller = new AbortController();
            const err = await PhiModel.load({ modelPath, threads: 1, contextSize: 32, mmap: false, signal: controller.signal, onProgress: (p) => { if (p < 1) controller.abort(); } })
                .then(async (m) => { await m.dispose(); return null; }, (e: unknown) => e);
            expect(err).to.be.instanceOf(AbortError);
            expect(((err as Error).cause as { code?: string } | undefined)?.code, "aborted inside llama.cpp's load").to.equal("ERR_ABORTED");
        });

        it("refuses a GGUF whose architecture is not phi2, before the native load", async function () {
            const header = await readGGUF(modelPath);
            const dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-arch-"));
            const file = path.join(dir, "llama.gguf");
            await writeGGUF(file, {
                metadata: [kv.str("general.architecture", "llama"), kv.u32("llama.block_count", 1)],
                tensors: [],
            });
            try {
                const err = await PhiModel.load({ modelPath: file }).then(() => null, (e: unknown) => e);
                expect(err).to.be.instanceOf(GGUFError);
                expect((err as PhiAgentError).code).to.equal("ERR_UNSUPPORTED_ARCHITECTURE");
                expect((err as Error).message).to.match(/llama/).and.match(/phi2/);
            } finally {
                fs.rmSync(dir, { recursive: true, force: true });
            }
            expect(header.metadata["general.architecture"]).to.equal("phi2");
        });

        it("refuses a missing file with ERR_MODEL_NOT_FOUND", async function () {
            const err = await PhiModel.load({ modelPath: path.join(os.tmpdir(), "does-not-exist.gguf") }).catch((e: unknown) => e);
            expect(err).to.be.instanceOf(PhiAgentError);
            expect((err as PhiAgentError).code).to.equal("ERR_MODEL_NOT_FOUND");
        });

        it("is cancelled by an AbortSignal", async function () {
            const controller = new AbortController();
            const loading = PhiModel.load({ modelPath, contextSize: 32, signal: controller.signal, mmap: false, onProgress: () => controller.abort() });
            const err = await loading.then(async (m) => { await m.dispose(); return null; }, (e: unknown) => e);
            expect(err).to.be.instanceOf(AbortError);
        });
    });

    describe("tokenize() / detokenize()", function () {
        it("tokenizes the seed's prompt like Phi-2's tokenizer", function () {
            expect(model.tokenize(SEED_PROMPT)).to.deep.equal([464, 4034, 286, 5021, 12, 25781, 3341, 2291]);
        });

        it("maps runs of spaces and tabs to the added whitespace tokens 50257..50294", function () {
            expect(model.tokenize("a    b")).to.deep.equal([64, 50284, 65]);
            expect(model.tokenize("a\t\tb")).to.deep.equal([64, 50294, 65]);
            const ids = model.tokenize("x" + " ".repeat(31) + "y" + "\t".repeat(9) + "z");
            expect(ids).to.include(50257);
            expect(ids).to.include(50287);
        });

        it("parses <|endoftext|> only when asked", function () {
            expect(model.tokenize("<|endoftext|>", { special: true })).to.deep.equal([50256]);
            expect(model.tokenize("<|endoftext|>")).to.have.length.greaterThan(1);
        });

        it("round-trips text through detokenize()", function () {
            for (const text of [SEED_PROMPT, "def f(x):\n\treturn  x ** 2\n", "héllo wörld — 日本語 🤖 👩‍👩‍👧", ""]) {
                expect(model.detokenize(model.tokenize(text))).to.equal(text);
            }
        });

        it("rejects bad token ids with a RangeError, not a native abort", function () {
            for (const bad of [-1, 51200, 2 ** 31, 1.5, NaN]) expect(() => model.detokenize([1, bad])).to.throw(RangeError);
        });
    });

    describe("generate()", function () {
        it("is greedy and deterministic by default", async function () {
            const a = await model.generate(SEED_PROMPT, { maxTokens: 24 });
            const b = await model.generate(SEED_PROMPT, { maxTokens: 24 });
            expect(a.tokens).to.have.length(24);
            expect(a.tokens).to.deep.equal(b.tokens);
            expect(a.text).to.equal(model.detokenize(a.tokens));
            expect(a.finishReason).to.equal("length");
            expect(a.usage.promptTokens).to.equal(8);
            expect(a.usage.completionTokens).to.equal(24);
            expect(a.usage.promptMs).to.be.greaterThan(0);
            expect(a.usage.generationMs).to.be.greaterThan(0);
        });

        it("decodes the same tokens with per-graph threads as with its persistent threadpool", async function () {
            expect(model.info.runtime.threadpool).to.equal(true);
            const perGraph = await PhiModel.load({ modelPath, threads: TEST_THREADS, contextSize: 256, threadpool: false });
            try {
                expect(perGraph.info.runtime.threadpool).to.equal(false);
                const a = await model.generate(SEED_PROMPT, { maxTokens: 24 });
                const b = await perGraph.generate(SEED_PROMPT, { maxTokens: 24 });
                expect(b.tokens).to.deep.equal(a.tokens);
            } finally {
                await perGraph.dispose();
            }
        });

        it("reproduces a sampled run with the same seed", async function () {
            const opts = { maxTokens: 24, temperature: 1.2, topK: 100, topP: 0.95, seed: 1234 };
            const a = await model.generate(SEED_PROMPT, opts);
            const b = await model.generate(SEED_PROMPT, opts);
            const c = await model.generate(SEED_PROMPT, { ...opts, seed: 99 });
            const greedy = await model.generate(SEED_PROMPT, { maxTokens: 24 });
            expect(a.tokens).to.deep.equal(b.tokens);
            expect(a.tokens).to.not.deep.equal(c.tokens);
            expect(a.tokens).to.not.deep.equal(greedy.tokens);
        });

        it("stops before a stop string and says 'stop'", async function () {
            const full = await model.generate(SEED_PROMPT, { maxTokens: 24 });
            const stop = full.text.slice(10, 14); // a piece of text the greedy run will produce
            const r = await model.generate(SEED_PROMPT, { maxTokens: 24, stop: [stop] });
            expect(r.finishReason).to.equal("stop");
            expect(r.text).to.equal(full.text.slice(0, full.text.indexOf(stop)));
        });

        it("never streams text that turns out to be a stop string", async function () {
            const full = await model.generate(SEED_PROMPT, { maxTokens: 24 });
            const stop = full.text.slice(12, 20);
            let streamed = "";
            const r = await model.generate(SEED_PROMPT, { maxTokens: 24, stop: [stop], onToken: (c) => { streamed += c.text; } });
            expect(r.finishReason).to.equal("stop");
            expect(streamed).to.equal(r.text);
            expect(streamed).to.not.include(stop);
        });

        it("ends with 'eos' when the model emits <|endoftext|>", async function () {
            // A copy of the tiny model whose output bias makes <|endoftext|> (50256) the greedy choice.
            const header = await readGGUF(modelPath);
            const bias = header.tensors.find((t) => t.name === "output.bias")!;
            const dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-eos-"));
            const file = path.join(dir, "eos.gguf");
            fs.copyFileSync(modelPath, file);
            const fd = fs.openSync(file, "r+");
            const value = Buffer.alloc(4);
            value.writeFloatLE(1000);
            fs.writeSync(fd, value, 0, 4, header.dataOffset + bias.offset + 50256 * 4);
            fs.closeSync(fd);
            const eos = await PhiModel.load({ modelPath: file, threads: TEST_THREADS, contextSize: 64 });
            try {
                const r = await eos.generate(SEED_PROMPT, { maxTokens: 10 });
                expect(r.finishReason).to.equal("eos");
                expect(r.tokens).to.deep.equal([]);
                expect(r.text).to.equal("");
            } finally {
                await eos.dispose();
                fs.rmSync(dir, { recursive: true, force: true });
            }
        });

        it("ends with 'context' when the sequence fills the context", async function () {
            const small = await PhiModel.load({ modelPath, threads: TEST_THREADS, contextSize: 16 });
            try {
                const r = await small.generate(SEED_PROMPT); // 8 prompt tokens
                expect(r.finishReason).to.equal("context");
                expect(r.tokens).to.have.length(16 - 8 + 1);
            } finally {
                await small.dispose();
            }
        });

        it("throws ContextOverflowError for a prompt longer than the context, or keeps its end on request", async function () {
            const long = "word ".repeat(300);
            const err = await model.generate(long, { maxTokens: 2 }).catch((e: unknown) => e);
            expect(err).to.be.instanceOf(ContextOverflowError);
            expect((err as ContextOverflowError).code).to.equal("ERR_CONTEXT_OVERFLOW");
            const r = await model.generate(long, { maxTokens: 2, truncate: "start" });
            expect(r.usage.promptTokens).to.equal(256 - 2); // room for maxTokens (test/stream.test.ts)
            expect(r.finishReason).to.equal("length");
        });

        it("streams text that reassembles to the result", async function () {
            const chunks: string[] = [];
            const stream = model.stream("Hello, world", { maxTokens: 20 });
            for await (const chunk of stream) chunks.push(chunk.text);
            const result = await stream.result;
            expect(chunks.join("")).to.equal(result.text);
            expect(result.tokens).to.have.length(20);
        });

        it("stops when the signal aborts: AbortError, and the next call works", async function () {
            // aborted from its own token callback: the abort is ordered after the generation started, no clock
            const controller = new AbortController();
            const pending = model.generate(SEED_PROMPT, { signal: controller.signal, onToken: () => controller.abort() });
            const err = await pending.catch((e: unknown) => e);
            expect(err).to.be.instanceOf(AbortError);
            const stopper = new AbortController();
            let seen = 0;
            const partial = await model.generate(SEED_PROMPT, { signal: stopper.signal, stopOnAbort: true, onToken: () => { if (++seen === 2) stopper.abort(); } });
            expect(partial.finishReason).to.equal("abort");
            expect(partial.tokens.length).to.be.at.least(2);
            const next = await model.generate(SEED_PROMPT, { maxTokens: 4 });
            expect(next.tokens).to.have.length(4);
        });

        it("rejects a signal that is already aborted without starting", async function () {
            const err = await model.generate(SEED_PROMPT, { signal: AbortSignal.abort() }).catch((e: unknown) => e);
            expect(err).to.be.instanceOf(AbortError);
        });

        it("gives concurrent calls the same tokens as the same calls one by one", async function () {
            const prompts = ["One", "Two words", SEED_PROMPT, "def main():\n    print('hi')", "Ünïcödé ✓", "The end"];
            const sequential: Awaited<ReturnType<PhiModel["generate"]>>[] = [];
            for (const p of prompts) sequential.push(await model.generate(p, { maxTokens: 16 }));
            const concurrent = await Promise.all(prompts.map((p) => model.generate(p, { maxTokens: 16 })));
            concurrent.forEach((r, i) => expect(r.tokens, prompts[i]).to.deep.equal(sequential[i]!.tokens));
        });

        it("keeps the event loop running while it generates: an abort from the next event-loop turn stops it", async function () {
            // A generation that only ends at its 2048-token context, stopped from a setImmediate callback: were the event
            // loop blocked while it decodes, the callback would run after the end and the reason would be "context".
            const long = await PhiModel.load({ modelPath, threads: 1, contextSize: 2048, sequences: 1 });
            try {
                const controller = new AbortController();
                const running = long.generate(SEED_PROMPT, { signal: controller.signal, stopOnAbort: true });
                setImmediate(() => controller.abort());
                const r = await running;
                expect(r.finishReason).to.equal("abort");
                expect(r.tokens.length).to.be.below(2048 - 8);
            } finally {
                await long.dispose();
            }
        });

        it("rejects bad options with TypeError / RangeError", async function () {
            const bad: [object, typeof TypeError | typeof RangeError][] = [
                [{ temperature: -1 }, RangeError], [{ temperature: NaN }, RangeError], [{ temperature: Infinity }, RangeError],
                [{ topP: 0 }, RangeError], [{ topP: 1.5 }, RangeError], [{ topK: -5 }, RangeError],
                [{ maxTokens: 0 }, RangeError], [{ maxTokens: -1 }, RangeError], [{ maxTokens: 1e12 }, RangeError],
                [{ seed: 1.5 }, RangeError], [{ temperature: "hot" }, TypeError], [{ stop: 5 }, TypeError],
            ];
            for (const [options, type] of bad) {
                const err = await model.generate(SEED_PROMPT, options as never).catch((e: unknown) => e);
                expect(err, JSON.stringify(options)).to.be.instanceOf(type);
            }
            for (const prompt of ["", "bad \ud800 surrogate", "nul\u0000byte"]) {
                const err = await model.generate(prompt, { maxTokens: 2 }).catch((e: unknown) => e);
                expect(err, JSON.stringify(prompt)).to.be.instanceOf(RangeError);
            }
        });
    });

    describe("memory", function () {
        // Resident KiB of this process's mappings of `file` (Linux: /proc/self/smaps).
        function mappedRssKb(file: string): number {
            const real = fs.realpathSync(file);
            let total = 0;
            let inFile = false;
            for (const line of fs.readFileSync("/proc/self/smaps", "utf8").split("\n")) {
                const header = /^[0-9a-f]+-[0-9a-f]+ \S+ [0-9a-f]+ \S+ \d+\s*(.*)$/.exec(line);
                if (header) inFile = header[1] === real;
                else if (inFile && line.startsWith("Rss:")) total += Number(line.split(/\s+/)[1]);
            }
            return total;
        }

        it("gives back the file pages of weights it repacks; an mmap-only load keeps them mapped", async function () {
            if (process.platform !== "linux") this.skip();
            const q4 = await tinyModel("q4_k_m");
            const fileKb = fs.statSync(q4).size / 1024;
            const repacked = await PhiModel.load({ modelPath: q4, threads: 1, contextSize: 64, repack: true });
            try {
                // llama.cpp populated the whole mapping and read every weight through it; none of it stays resident
                expect(mappedRssKb(q4)).to.be.below(fileKb * 0.1);
                const r = await repacked.generate(SEED_PROMPT, { maxTokens: 8 });
                expect(r.usage.completionTokens).to.equal(8);
                // what is still read through the mapping (embedding rows, weights that are not repacked) comes back
                expect(mappedRssKb(q4)).to.be.above(0);
            } finally {
                await repacked.dispose();
            }
            expect(mappedRssKb(q4)).to.equal(0);
            const mapped = await PhiModel.load({ modelPath: q4, threads: 1, contextSize: 64, repack: false });
            try {
                expect(mappedRssKb(q4)).to.be.above(fileKb * 0.9);
            } finally {
                await mapped.dispose();
            }
        });
    });

    describe("dispose()", function () {
        it("is idempotent, ends in-flight work with DisposedError and refuses later calls", async function () {
            const m = await PhiModel.load({ modelPath, threads: TEST_THREADS, contextSize: 2048 });
            let firstToken!: () => void;
            const streaming = new Promise<void>((resolve) => { firstToken = resolve; });
            const running = m.generate(SEED_PROMPT, { onToken: () => firstToken() }).catch((e: unknown) => e);
            await streaming; // in flight (it runs to the 2048-token context unless disposed)
            await Promise.all([m.dispose(), m.dispose()]);
            expect(await running).to.be.instanceOf(DisposedError);
            expect(m.disposed).to.equal(true);
            expect(() => m.tokenize("x")).to.throw(DisposedError);
            const err = await m.generate("x").catch((e: unknown) => e);
            expect(err).to.be.instanceOf(DisposedError);
            expect((err as DisposedError).code).to.equal("ERR_DISPOSED");
        });

        it("supports await using (Symbol.asyncDispose)", async function () {
            const m = await PhiModel.load({ modelPath, threads: 1, contextSize: 32 });
            await m[Symbol.asyncDispose]();
            expect(m.disposed).to.equal(true);
        });
    });
});
