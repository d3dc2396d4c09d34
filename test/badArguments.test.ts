/**
 * Every bad argument the issue lists is a typed error (TypeError / RangeError / PhiAgentError with a code) whose
 * message names the option or argument — never a native abort — and the model keeps working afterwards.
 * test/PhiModel.test.ts checks the error classes of a few of these; this file is the full catalogue.
 */
import { expect } from "chai";
import { execFile } from "node:child_process";
import os from "node:os";
import { promisify } from "node:util";
import { ContextOverflowError, PhiAgentError, PhiModel } from "../src/index.js";
import { OPTION_SCHEMAS, kvCacheBytes } from "../src/model/limits.js";
import { readAndCheckPhi2 } from "../src/gguf/validate.js";
import { tinyModel } from "./helpers/models.js";

const INDEX = new URL("../src/index.js", import.meta.url).href;

/** Loads with `options` in a fresh node (so an abort in llama.cpp fails this test instead of killing mocha). */
async function loadInChild(modelPath: string, options: Record<string, unknown>, concurrent = 0): Promise<{ code: number | null; signal: string | null; out: string }> {
    const script = `import(${JSON.stringify(INDEX)}).then(async ({ PhiModel }) => {
        try {
            const m = await PhiModel.load({ modelPath: ${JSON.stringify(modelPath)}, threads: 1, ...${JSON.stringify(options)} });
            const rs = await Promise.all(Array.from({ length: ${concurrent} }, (_, i) => m.generate("Hi " + i, { maxTokens: 2 })));
            console.log("LOADED", m.info.runtime.kvCacheSize, rs.filter((r) => r.tokens.length === 2).length);
            await m.dispose();
        } catch (e) { console.log("REJECTED", e.name, e.code, e.message); }
    })`;
    return promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { timeout: 120000 })
        .then((r) => ({ code: 0, signal: null, out: r.stdout.trim() }), (e: { code: number | null; signal: string | null; stdout: string }) => ({ code: e.code, signal: e.signal, out: String(e.stdout).trim() }));
}

type ErrorClass = typeof TypeError | typeof RangeError | typeof ContextOverflowError;

async function rejection(fn: () => unknown): Promise<unknown> {
    try {
        await fn();
    } catch (err) {
        return err;
    }
    return undefined;
}

function expectTyped(err: unknown, type: ErrorClass, names: RegExp, label: string): void {
    expect(err, `${label}: expected a ${type.name}`).to.be.instanceOf(type);
    expect((err as Error).message, label).to.match(names);
}

describe("bad arguments", function () {
    const CONTEXT = 64;
    let modelPath: string;
    let model: PhiModel;

    before(async function () {
        modelPath = await tinyModel("f32");
        model = await PhiModel.load({ modelPath, threads: 1, contextSize: CONTEXT });
    });
    after(async function () {
        await model?.dispose();
    });

    describe("token ids (detokenize, and evaluate with ids)", function () {
        const BAD_IDS: [number, RegExp][] = [
            [-1, /-1 is out of range.*0 to 51199/],
            [51200, /51200 is out of range.*0 to 51199/],
            [2 ** 31, /2147483648 is out of range/],
            [1.5, /1\.5 is not a token id/],
            [NaN, /NaN is not a token id/],
        ];
        for (const [id, message] of BAD_IDS) {
            it(`${id}: RangeError naming the index, value and valid range`, async function () {
                expectTyped(await rejection(() => model.detokenize([464, id])), RangeError, /tokens\[1\]/, "detokenize");
                expectTyped(await rejection(() => model.detokenize([464, id])), RangeError, message, "detokenize");
                expectTyped(await rejection(() => model.evaluate([464, id])), RangeError, /prompt\[1\]/, "evaluate");
                expectTyped(await rejection(() => model.evaluate([464, id])), RangeError, message, "evaluate");
                if (Number.isInteger(id)) { // (an Int32Array cannot hold 1.5 or NaN)
                    expectTyped(await rejection(() => model.detokenize(Int32Array.from([id]))), RangeError, /tokens\[0\]/, "Int32Array");
                }
            });
        }
        it("a non-array is a TypeError", async function () {
            expectTyped(await rejection(() => model.detokenize("464" as never)), TypeError, /"tokens".*array of token ids/, "detokenize");
            expectTyped(await rejection(() => model.detokenize([464, "1" as never])), RangeError, /tokens\[1\]/, "string id");
        });
    });

    describe("generate() options", function () {
        const CASES: [string, Record<string, unknown>, ErrorClass][] = [
            ["temperature", { temperature: -1 }, RangeError],
            ["temperature", { temperature: NaN }, RangeError],
            ["temperature", { temperature: Infinity }, RangeError],
            ["temperature", { temperature: "hot" }, TypeError],
            ["topP", { topP: 0 }, RangeError],
            ["topP", { topP: 1.5 }, RangeError],
            ["topK", { topK: -5 }, RangeError],
            ["maxTokens", { maxTokens: 0 }, RangeError],
            ["maxTokens", { maxTokens: -1 }, RangeError],
            ["maxTokens", { maxTokens: 1e12 }, RangeError],
            ["seed", { seed: 1.5 }, RangeError],
            ["seed", { seed: -1 }, RangeError],
            ["minP", { minP: 2 }, RangeError],
            ["repeatPenalty", { repeatPenalty: 0 }, RangeError],
            ["stop", { stop: 5 }, TypeError],
            ["stop\\[0\\]", { stop: [""] }, RangeError],
            ["truncate", { truncate: "end" }, RangeError],
            ["signal", { signal: {} }, TypeError],
            ["onToken", { onToken: "yes" }, TypeError],
            ["temprature", { temprature: 1 }, TypeError],
        ];
        for (const [option, options, type] of CASES) {
            it(`${JSON.stringify(options, (_k, v: unknown) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v))}: ${type.name} naming "${option.replace(/\\/g, "")}"`, async function () {
                const names = new RegExp(`"${option}"`);
                expectTyped(await rejection(() => model.generate("Hello", options as never)), type, names, "generate");
                expectTyped(await rejection(() => model.stream("Hello", options as never)), type, names, "stream");
            });
        }
    });

    describe("load() options", function () {
        for (const contextSize of [0, -1, NaN, 1e9, 1.5]) {
            it(`contextSize ${contextSize}: RangeError naming "contextSize", before anything is loaded`, async function () {
                // the file does not exist: had anything been read or loaded first, the error would be ERR_MODEL_NOT_FOUND
                const err = await rejection(() => PhiModel.load({ modelPath: `${modelPath}.missing`, contextSize }));
                expectTyped(err, RangeError, /"contextSize"/, "load");
                expect((err as Error).message).to.include(String(contextSize));
            });
        }
        it(`contextSize "512": TypeError`, async function () {
            expectTyped(await rejection(() => PhiModel.load({ modelPath, contextSize: "512" as never })), TypeError, /"contextSize"/, "load");
        });
        it("other bad load options name themselves", async function () {
            const CASES: [Record<string, unknown>, ErrorClass, RegExp][] = [
                [{ threads: 0 }, RangeError, /"threads"/],
                [{ batchSize: -8 }, RangeError, /"batchSize"/],
                [{ sequences: 0 }, RangeError, /"sequences"/],
                [{ gpuLayers: -1 }, RangeError, /"gpuLayers"/],
                [{ device: "tpu" }, RangeError, /device "tpu"/i],
                [{ mmap: "yes" }, TypeError, /"mmap"/],
                [{ threadpool: 1 }, TypeError, /"threadpool"/],
                [{ flashAttention: true }, TypeError, /"flashAttention"/],
                [{ kvCacheSize: 32, contextSize: 64 }, RangeError, /"kvCacheSize"/],
                [{ contextSize: 64, sequences: 65 }, RangeError, /"sequences" \(65\) cannot exceed "contextSize" \(64\)/],
                [{ contextSize: 64, kvCacheSize: 100, sequences: 101 }, RangeError, /"sequences" \(101\) cannot exceed "kvCacheSize" \(100\)/],
                [{ sequences: 16, batchSize: 8 }, RangeError, /"sequences" \(16\) cannot exceed "batchSize" \(8\)/],
                [{ modelPath: "" }, TypeError, /"modelPath"/],
                [{ contextsize: 64 }, TypeError, /"contextsize"/],
            ];
            for (const [options, type, names] of CASES) {
                expectTyped(await rejection(() => PhiModel.load({ modelPath, ...options } as never)), type, names, JSON.stringify(options));
            }
            expectTyped(await rejection(() => PhiModel.load(undefined as never)), TypeError, /options object/, "no options");
        });
    });

    describe("sequences against the KV cache (llama.cpp aborts on more sequences than min(KV cells, batchSize))", function () {
        this.timeout(240000);
        it("contextSize 64 with 65 sequences, and 16 with 17: a RangeError naming sequences, the process lives", async function () {
            for (const options of [{ contextSize: 64, sequences: 65 }, { contextSize: 16, sequences: 17 }]) {
                const r = await loadInChild(modelPath, options);
                expect(r.signal, JSON.stringify(options)).to.equal(null);
                expect(r.code, JSON.stringify(options)).to.equal(0);
                expect(r.out, JSON.stringify(options)).to.match(/^REJECTED RangeError ERR_INVALID_ARGUMENT "sequences"/);
            }
        });
        it("the bound is exact: 16 cells hold 16 sequences, 17 cells 17 (all decoding at once)", async function () {
            for (const [options, n] of [[{ contextSize: 16, sequences: 16 }, 16], [{ contextSize: 16, kvCacheSize: 17, sequences: 17 }, 17]] as const) {
                const r = await loadInChild(modelPath, options, n);
                expect(r.out, JSON.stringify(options)).to.equal(`LOADED ${options.sequences === 17 ? 17 : 16} ${n}`);
            }
        });
    });

    describe("threads", function () {
        it("more threads than logical CPUs is a RangeError naming the option and the CPU count", async function () {
            const cpus = os.availableParallelism();
            for (const name of ["threads", "batchThreads"]) {
                const err = await rejection(() => PhiModel.load({ modelPath, contextSize: 32, [name]: cpus + 1 }));
                expectTyped(err, RangeError, new RegExp(`"${name}" is ${cpus + 1}, but this machine has ${cpus} logical CPU`), name);
                expect((err as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
            }
            const ok = await PhiModel.load({ modelPath, contextSize: 32, sequences: 1, threads: cpus });
            expect(ok.info.runtime.threads).to.equal(cpus);
            await ok.dispose();
        });
    });

    describe("a KV cache larger than the memory", function () {
        it("the estimate is llama.cpp's own KV buffer size (its log, for 100 and 1000 cells)", async function () {
            this.timeout(120000);
            const { hparams } = await readAndCheckPhi2(modelPath);
            for (const cells of [100, 1000]) {
                const script = `import(${JSON.stringify(INDEX)}).then(async ({ PhiModel }) => {
                    const m = await PhiModel.load({ modelPath: ${JSON.stringify(modelPath)}, threads: 1, sequences: 1, contextSize: ${cells} }); await m.dispose(); })`;
                const { stderr } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script],
                    { timeout: 60000, env: { ...process.env, PHI_AGENT_LLAMA_LOG: "info" } });
                const logged = /KV buffer size =\s*([\d.]+) MiB/.exec(stderr);
                expect(logged, stderr.slice(-2000)).to.not.equal(null);
                expect(Number(logged![1])).to.equal(kvCacheBytes(hparams, cells) / 2 ** 20);
            }
        });

        it("is refused before llama.cpp allocates, naming kvCacheSize and the bytes it needs", async function () {
            const { hparams } = await readAndCheckPhi2(modelPath);
            const cells = OPTION_SCHEMAS.kvCacheSize.maximum!;
            const bytes = kvCacheBytes(hparams, cells);
            if (bytes <= os.totalmem()) this.skip(); // this machine could hold it
            const err = await rejection(() => PhiModel.load({ modelPath, contextSize: 64, kvCacheSize: cells }));
            expectTyped(err, RangeError, /"kvCacheSize" is \d+: its KV cache would need [\d.]+ GiB .*more than all of this machine's RAM/, "kvCacheSize");
            expect((err as Error).message).to.not.match(/training context/);
            expect((err as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
        });
    });

    describe("tokenize() / detokenize() options (one checker for both)", function () {
        it("null, a non-object, a non-boolean special or an unknown key: TypeError naming it", async function () {
            const ids = model.tokenize("hi");
            for (const [call, message] of [
                [() => model.tokenize("hi", null as never), /tokenize\(\) options must be an object/],
                [() => model.detokenize(ids, null as never), /detokenize\(\) options must be an object/],
                [() => model.tokenize("hi", "special" as never), /tokenize\(\) options must be an object/],
                [() => model.tokenize("hi", { special: "yes" } as never), /"special"/],
                [() => model.detokenize(ids, { special: "yes" } as never), /"special"/],
                [() => model.detokenize(ids, { specail: true } as never), /Unknown detokenize\(\) option "specail"/],
                [() => model.tokenize("hi", { specail: true } as never), /Unknown tokenize\(\) option "specail"/],
            ] as const) {
                const err = await rejection(call);
                expectTyped(err, TypeError, message, String(message));
                expect((err as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
            }
            expect(model.detokenize(ids, { special: true })).to.equal("hi");
            expect(model.tokenize("hi", undefined)).to.deep.equal(ids);
        });
    });

    describe("prompts", function () {
        it(`a prompt longer than the context (${CONTEXT} tokens): ContextOverflowError, unless truncate: "start"`, async function () {
            const long = "one two three four five six seven eight nine ten ".repeat(10); // 100 tokens
            const n = model.tokenize(long).length;
            expect(n).to.be.greaterThan(CONTEXT);
            for (const call of [() => model.generate(long, { maxTokens: 2 }), () => model.stream(long, { maxTokens: 2 }), () => model.evaluate(long), () => model.evaluate(model.tokenize(long))]) {
                const err = await rejection(call);
                expect(err).to.be.instanceOf(ContextOverflowError);
                const e = err as ContextOverflowError;
                expect(e.code).to.equal("ERR_CONTEXT_OVERFLOW");
                expect(e.promptTokens).to.equal(n);
                expect(e.contextSize).to.equal(CONTEXT);
                expect(e.message).to.match(new RegExp(`${n} tokens.*${CONTEXT}.*truncate`));
            }
            const r = await model.generate(long, { maxTokens: 2, truncate: "start" });
            expect(r.usage.promptTokens).to.equal(CONTEXT - 2); // room for maxTokens (issue 9, item 12)
            expect(r.finishReason).to.equal("length");
        });

        const BAD_TEXT: [string, string, RegExp][] = [
            ["empty", "", /"prompt" is empty/],
            ["a lone high surrogate", "abc\ud800def", /"prompt" contains a lone UTF-16 surrogate \(at index 3\)/],
            ["a lone low surrogate", "\udc00", /"prompt" contains a lone UTF-16 surrogate \(at index 0\)/],
            ["a reversed pair", "x\udc00\ud800", /lone UTF-16 surrogate \(at index 1\)/],
            ["a NUL character", "nul\u0000byte", /"prompt" contains a NUL character at index 3/],
        ];
        for (const [label, prompt, message] of BAD_TEXT) {
            it(`${label}: RangeError naming "prompt" (generate, stream, evaluate)`, async function () {
                expectTyped(await rejection(() => model.generate(prompt, { maxTokens: 2 })), RangeError, message, "generate");
                expectTyped(await rejection(() => model.stream(prompt, { maxTokens: 2 })), RangeError, message, "stream");
                expectTyped(await rejection(() => model.evaluate(prompt)), RangeError, message, "evaluate");
            });
        }
        it("evaluate([]) is a RangeError naming \"prompt\"", async function () {
            expectTyped(await rejection(() => model.evaluate([])), RangeError, /"prompt" is empty/, "evaluate");
        });
        it("tokenize() refuses lone surrogates and NUL, naming \"text\"; allows the empty string", async function () {
            expectTyped(await rejection(() => model.tokenize("a\ud800")), RangeError, /"text" contains a lone UTF-16 surrogate/, "surrogate");
            expectTyped(await rejection(() => model.tokenize("a\u0000")), RangeError, /"text" contains a NUL character/, "NUL");
            expectTyped(await rejection(() => model.tokenize(42 as never)), TypeError, /"text"/, "number");
            expect(model.tokenize("")).to.deep.equal([]);
        });
        it("non-string prompts are TypeErrors", async function () {
            expectTyped(await rejection(() => model.generate(42 as never)), TypeError, /"prompt"/, "number");
            expectTyped(await rejection(() => model.generate(null as never)), TypeError, /"prompt"/, "null");
        });
    });

    describe("afterwards (mocha runs this suite last)", function () {
        it("after all of the above the model still generates the same greedy tokens", async function () {
            const fresh = await PhiModel.load({ modelPath, threads: 1, contextSize: CONTEXT });
            try {
                const a = await model.generate("The benefits of multi-agent systems include", { maxTokens: 8 });
                const b = await fresh.generate("The benefits of multi-agent systems include", { maxTokens: 8 });
                expect(a.tokens).to.deep.equal(b.tokens);
                expect(a.tokens).to.have.length(8);
            } finally {
                await fresh.dispose();
            }
            expect(model.disposed).to.equal(false);
        });

        it("every error above is a PhiAgentError with a stable code; argument errors are ERR_INVALID_ARGUMENT", async function () {
            const errors = [
                await rejection(() => model.generate("x", { temperature: -1 })),
                await rejection(() => model.generate("x".repeat(0))),
                await rejection(() => model.detokenize([-1])),
                await rejection(() => model.tokenize(42 as never)),
                await rejection(() => PhiModel.load({ modelPath, contextSize: 0 })),
                await rejection(() => model.generate("one ".repeat(200))),
            ];
            for (const [i, e] of errors.entries()) {
                expect(e, String(e)).to.be.instanceOf(PhiAgentError);
                expect((e as PhiAgentError).code, String(e)).to.equal(i < errors.length - 1 ? "ERR_INVALID_ARGUMENT" : "ERR_CONTEXT_OVERFLOW");
            }
        });
    });
});
