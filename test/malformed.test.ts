/**
 * Malformed GGUFs never kill the process: each named case of issue 4 is refused by PhiModel.load with a typed error
 * whose code and message name the problem, and a seeded sample of mutations of a valid phi2 model either loads (and
 * generates) or is refused with a typed error — all in this process. `npm run fuzz` runs the full corpus in child
 * processes (scripts/fuzz.ts).
 */
import { expect } from "chai";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { GGUFError, PhiAgentError, PhiModel } from "../src/index.js";
import { buildCorpus, makeMetadataCase, METADATA_CASES, mutate, type Corpus } from "../scripts/malformed-corpus.js";

const LOAD = { contextSize: 64, batchSize: 64, sequences: 1, threads: 1 } as const;
const SAMPLE_SEED = 4242;
const SAMPLE_SIZE = 200;

async function tryLoad(modelPath: string): Promise<{ model?: PhiModel; error?: unknown }> {
    try {
        return { model: await PhiModel.load({ modelPath, ...LOAD }) };
    } catch (error) {
        return { error };
    }
}

describe("malformed GGUF files", function () {
    let dir: string;
    let corpus: Corpus;

    before(async function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-malformed-"));
        corpus = await buildCorpus(dir);
    });
    after(function () {
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it("the corpus's base model is valid: it loads and generates", async function () {
        const file = path.join(dir, "base.gguf");
        fs.writeFileSync(file, corpus.base);
        const { model, error } = await tryLoad(file);
        expect(error).to.equal(undefined);
        try {
            const r = await model!.generate("Hello", { maxTokens: 3 });
            expect(r.tokens).to.have.length(3);
            expect(model!.info.vocabSize).to.equal(51200);
        } finally {
            await model!.dispose();
        }
    });

    describe("named cases: each refused with a typed error naming the problem", function () {
        // The list is built in before(); mocha needs the names now, so they are listed here and checked against it.
        const NAMES = [
            "missing-path", "directory", "zero-bytes", "png-bytes", "bad-magic", "version-0", "version-1", "version-999",
            "n_tensors-2^62", "n_kv-2^62", "string-length-2^40", "tensor-dims-5", "tensor-dim-negative", "tensor-dims-overflow",
            "tensor-type-999", "tensor-offset-past-eof", "alignment-0", "alignment-3", "truncated-in-header", "truncated-in-kv",
            "truncated-in-tensor-info", "truncated-in-data", "llama-architecture", "vocab-only", "block_count-0",
            "block_count-100000", "duplicate-vocab-strings", "vocab-count-neq-embedding-rows",
        ];

        it("covers every case the issue names", function () {
            expect(corpus.named.map((c) => c.name)).to.deep.equal(NAMES);
        });

        for (const name of NAMES) {
            it(name, async function () {
                const c = corpus.named.find((x) => x.name === name)!;
                const file = await c.make(dir);
                const { model, error } = await tryLoad(file);
                if (model) await model.dispose();
                expect(model, "must not load").to.equal(undefined);
                expect(error).to.be.instanceOf(PhiAgentError);
                const e = error as PhiAgentError;
                expect(e.code).to.equal(c.code);
                expect(e.message).to.match(c.message);
                if (c.code !== "ERR_MODEL_NOT_FOUND") {
                    expect(e).to.be.instanceOf(GGUFError);
                    expect(e.message.startsWith(file), "the message starts with the file's path").to.equal(true);
                }
            });
        }
    });

    it(`${SAMPLE_SIZE} seeded mutations each load or fail with a typed error, in this process`, async function () {
        const codes = new Map<string, number>();
        let loaded = 0;
        for (let k = 0; k < SAMPLE_SIZE; k++) {
            const m = mutate(corpus.base, corpus.layout, SAMPLE_SEED, k);
            const file = path.join(dir, `mutation-${k}.gguf`);
            fs.writeFileSync(file, m.bytes);
            try {
                const { model, error } = await tryLoad(file);
                if (model) {
                    try {
                        const r = await model.generate("Hello, world", { maxTokens: 2 });
                        expect(r.tokens.length, m.name).to.be.at.most(2);
                        loaded++;
                    } finally {
                        await model.dispose();
                    }
                    continue;
                }
                const typed = error instanceof PhiAgentError || error instanceof TypeError || error instanceof RangeError;
                expect(typed, `${m.name}: ${String(error)}`).to.equal(true);
                const e = error as Error & { code?: string };
                const code = e instanceof PhiAgentError ? e.code : e.name;
                expect(e.message.length, m.name).to.be.greaterThan(20);
                codes.set(code, (codes.get(code) ?? 0) + 1);
            } finally {
                fs.rmSync(file, { force: true });
            }
        }
        const refused = [...codes.values()].reduce((a, b) => a + b, 0);
        this.test!.title += ` (${loaded} loaded, ${refused} refused: ${[...codes].map(([c, n]) => `${c} ${n}`).join(", ")})`;
        expect(loaded + refused).to.equal(SAMPLE_SIZE);
        expect(loaded, "some mutations are harmless").to.be.greaterThan(0);
        expect(codes.get("ERR_INVALID_GGUF") ?? 0, "most are caught by the GGUF check").to.be.greaterThan(SAMPLE_SIZE / 2);
    });

    it(`${METADATA_CASES.length} well-formed files with hostile metadata values each load or fail with a typed error, in this process`, async function () {
        let loaded = 0, refused = 0;
        for (let k = 0; k < METADATA_CASES.length; k++) {
            const c = METADATA_CASES[k]!;
            const file = await makeMetadataCase(dir, c, k);
            try {
                const { model, error } = await tryLoad(file);
                if (model) {
                    try {
                        await model.generate("Hello, world", { maxTokens: 2 });
                        loaded++;
                    } finally {
                        await model.dispose();
                    }
                    continue;
                }
                expect(error, `${c.name}: ${String(error)}`).to.be.instanceOf(PhiAgentError);
                expect((error as PhiAgentError).code, c.name).to.be.oneOf(["ERR_INVALID_GGUF", "ERR_UNSUPPORTED_ARCHITECTURE", "ERR_LOAD_FAILED"]);
                refused++;
            } finally {
                fs.rmSync(file, { force: true });
            }
        }
        this.test!.title += ` (${loaded} loaded, ${refused} refused)`;
        expect(refused).to.be.greaterThan(METADATA_CASES.length / 2);
    });

    it("mutations are deterministic for a seed", function () {
        const a = mutate(corpus.base, corpus.layout, 7, 3), b = mutate(corpus.base, corpus.layout, 7, 3);
        expect(a.name).to.equal(b.name);
        expect(Buffer.compare(a.bytes, b.bytes)).to.equal(0);
        expect(Buffer.compare(a.bytes, corpus.base)).to.not.equal(0);
    });
});
