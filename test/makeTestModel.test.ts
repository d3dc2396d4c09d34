import { expect } from "chai";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { gunzipSync } from "node:zlib";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OutputPathError, PhiAgentError } from "../src/errors.js";
import { readGGUF, readTensorF32 } from "../src/gguf/reader.js";
import { GGMLType, GGUFValueType, LlamaTokenType, type GGUFHeader } from "../src/gguf/types.js";
import { checkPhi2 } from "../src/gguf/validate.js";
import { ensureTestModel, makeTestModel, testModelPath } from "../src/testModel/makeTestModel.js";
import { gpt2VocabPath, loadPhi2Vocab, packagedVocabPath, readGPT2VocabGGUF, type PackagedVocab } from "../src/testModel/vocab.js";
import { tinyModel } from "./helpers/models.js";

const sha = async (p: string) => createHash("sha256").update(await readFile(p)).digest("hex");

describe("makeTestModel (tiny)", function () {
    this.timeout(180000);
    let dir: string;
    let h: GGUFHeader;

    before(async () => {
        dir = await mkdtemp(join(tmpdir(), "phi-testmodel-"));
        h = await readGGUF(await tinyModel("f32"));
    });
    after(async () => {
        await rm(dir, { recursive: true, force: true });
    });

    it("ensureTestModel puts the tiny f32 model under models/ and is idempotent", async () => {
        const p = await tinyModel("f32");
        expect(p).to.equal(testModelPath("tiny", "f32", 1));
        expect(p.endsWith(join("models", "test-tiny-f32-s1.gguf"))).to.equal(true);
        const before = (await stat(p)).mtimeMs;
        expect(await ensureTestModel({ shape: "tiny", type: "f32", seed: 1 })).to.equal(p);
        expect((await stat(p)).mtimeMs).to.equal(before);
    });

    it("has phi2 metadata with the types llama.cpp expects", () => {
        const type = (k: string) => h.kv.find((e) => e.key === k)?.type;
        expect(h.metadata["general.architecture"]).to.equal("phi2");
        expect(h.metadata["general.name"]).to.equal("phi2-test-tiny");
        expect(h.metadata["general.file_type"]).to.equal(0);
        for (const k of ["context_length", "embedding_length", "feed_forward_length", "block_count", "attention.head_count",
            "attention.head_count_kv", "rope.dimension_count"]) {
            expect(type(`phi2.${k}`), k).to.equal(GGUFValueType.UINT32);
        }
        expect(type("phi2.attention.layer_norm_epsilon")).to.equal(GGUFValueType.FLOAT32);
        expect(h.metadata["phi2.attention.layer_norm_epsilon"]).to.equal(Math.fround(1e-5));
        expect([h.metadata["phi2.embedding_length"], h.metadata["phi2.block_count"], h.metadata["phi2.attention.head_count"],
            h.metadata["phi2.feed_forward_length"], h.metadata["phi2.rope.dimension_count"], h.metadata["phi2.context_length"]])
            .to.deep.equal([256, 2, 4, 1024, 32, 2048]);
        expect(h.metadata["tokenizer.ggml.model"]).to.equal("gpt2");
        expect(h.metadata["tokenizer.ggml.pre"]).to.equal("phi-2");
        expect(h.metadata["tokenizer.ggml.bos_token_id"]).to.equal(50256);
        expect(h.metadata["tokenizer.ggml.eos_token_id"]).to.equal(50256);
        expect(h.metadata["tokenizer.ggml.unknown_token_id"]).to.equal(50256);
        expect(h.metadata["tokenizer.ggml.add_bos_token"]).to.equal(false);
        expect(h.kv.find((e) => e.key === "tokenizer.ggml.token_type")?.arrayType).to.equal(GGUFValueType.INT32);
        expect(() => checkPhi2(h)).to.not.throw();
    });

    it("has the real Phi-2 vocabulary: 51200 tokens, whitespace runs at 50257..50294, [PAD] after", () => {
        const tokens = h.metadata["tokenizer.ggml.tokens"] as string[];
        const types = h.metadata["tokenizer.ggml.token_type"] as Int32Array;
        expect(tokens).to.have.length(51200);
        expect(types).to.have.length(51200);
        expect(tokens.slice(0, 3)).to.deep.equal(["!", "\"", "#"]);
        expect(tokens[464]).to.equal("The");
        expect(tokens[4034]).to.equal("Ġbenefits");
        expect(tokens[50256]).to.equal("<|endoftext|>");
        expect(types[50256]).to.equal(LlamaTokenType.CONTROL);
        expect(types[464]).to.equal(LlamaTokenType.NORMAL);
        for (let n = 31; n >= 2; n--) {
            const id = 50257 + (31 - n);
            expect(tokens[id], `id ${id}`).to.equal(" ".repeat(n));
            expect(types[id]).to.equal(LlamaTokenType.USER_DEFINED);
        }
        for (let n = 9; n >= 2; n--) {
            const id = 50287 + (9 - n);
            expect(tokens[id], `id ${id}`).to.equal("\t".repeat(n));
            expect(types[id]).to.equal(LlamaTokenType.USER_DEFINED);
        }
        expect(tokens[50295]).to.equal("[PAD50295]");
        expect(tokens[51199]).to.equal("[PAD51199]");
        expect(types[51199]).to.equal(LlamaTokenType.UNUSED);
        expect(new Set(tokens).size).to.equal(51200);
        const merges = h.metadata["tokenizer.ggml.merges"] as string[];
        expect(merges).to.have.length(50000);
        expect(merges[0]).to.equal("Ġ t");
    });

    it("has every phi2 tensor with fused attn_qkv, norms at 1/0 and random weights", async () => {
        expect(h.tensors.map((t) => t.name)).to.include.members([
            "token_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight", "output.bias",
            "blk.0.attn_qkv.weight", "blk.1.ffn_down.bias",
        ]);
        expect(h.tensors).to.have.length(25);
        expect(h.tensors.find((t) => t.name === "blk.0.attn_qkv.weight")!.dims).to.deep.equal([256, 768]);
        expect(h.tensors.find((t) => t.name === "token_embd.weight")!.dims).to.deep.equal([256, 51200]);
        const norm = await readTensorF32(h, "blk.1.attn_norm.weight");
        expect(Array.from(norm).every((x) => x === 1)).to.equal(true);
        const nb = await readTensorF32(h, "output_norm.bias");
        expect(Array.from(nb).every((x) => x === 0)).to.equal(true);
        const w = await readTensorF32(h, "blk.0.ffn_up.weight");
        let sum = 0, sq = 0, max = 0;
        for (const x of w) { sum += x; sq += x * x; max = Math.max(max, Math.abs(x)); }
        const mean = sum / w.length, std = Math.sqrt(sq / w.length - mean * mean);
        expect(Math.abs(mean)).to.be.below(0.001);
        expect(std).to.be.closeTo(0.05 / Math.sqrt(3), 0.001); // uniform ±0.05
        expect(max).to.be.at.most(0.05);
        // distinct tensors use distinct streams
        const w2 = await readTensorF32(h, "blk.1.ffn_up.weight");
        expect(w2[0]).to.not.equal(w[0]);
    });

    it("is deterministic per seed, and q8_0/f16 hold the same weights as f32", async () => {
        const a = join(dir, "a.gguf"), b = join(dir, "b.gguf"), c = join(dir, "c.gguf");
        const ra = await makeTestModel({ out: a, shape: "tiny", type: "q8_0", seed: 1 });
        await makeTestModel({ out: b, shape: "tiny", type: "q8_0", seed: 1 });
        await makeTestModel({ out: c, shape: "tiny", type: "q8_0", seed: 2 });
        expect(ra).to.deep.equal({ path: a, shape: "tiny", type: "q8_0", seed: 1, bytes: (await stat(a)).size });
        expect(await sha(a)).to.equal(await sha(b));
        expect(await sha(a)).to.not.equal(await sha(c));
        expect((await readdir(dir)).filter((f) => f.startsWith("."))).to.deep.equal([]); // no temp files left

        const q = await readGGUF(a);
        expect(q.metadata["general.file_type"]).to.equal(7);
        expect(q.tensors.find((t) => t.name === "output.weight")!.type).to.equal(GGMLType.Q8_0);
        expect(q.tensors.find((t) => t.name === "output.bias")!.type).to.equal(GGMLType.F32);
        expect(() => checkPhi2(q)).to.not.throw();
        const ref = await readTensorF32(h, "blk.0.attn_output.weight");
        const got = await readTensorF32(q, "blk.0.attn_output.weight");
        let maxErr = 0;
        for (let i = 0; i < ref.length; i++) maxErr = Math.max(maxErr, Math.abs(ref[i]! - got[i]!));
        expect(maxErr).to.be.above(0).and.below(0.05 / 127 * 0.6);

        const f16 = join(dir, "f16.gguf");
        await makeTestModel({ out: f16, shape: "tiny", type: "f16", seed: 1 });
        const hf = await readGGUF(f16);
        expect(hf.metadata["general.file_type"]).to.equal(1);
        const g = await readTensorF32(hf, "blk.0.attn_output.weight");
        for (let i = 0; i < 1000; i++) expect(Math.abs(g[i]! - ref[i]!)).to.be.at.most(0.05 * 2 ** -11);
    });

    it("reports progress from 0 to 1", async () => {
        const seen: [number, string][] = [];
        await makeTestModel({ out: join(dir, "p.gguf"), shape: "tiny", type: "f16", seed: 3, onProgress: (f, l) => seen.push([f, l]) });
        expect(seen.length).to.be.above(3);
        expect(seen.at(-1)![0]).to.equal(1);
        for (let i = 1; i < seen.length; i++) expect(seen[i]![0]).to.be.at.least(seen[i - 1]![0]);
        expect(seen.some(([, l]) => l === "token_embd.weight")).to.equal(true);
    });

    it("refuses bad options with TypeError/RangeError", async () => {
        const bad = async (o: unknown, cls: typeof TypeError | typeof RangeError, frag: string) => {
            let err: unknown;
            try { await makeTestModel(o as Parameters<typeof makeTestModel>[0]); } catch (e) { err = e; }
            expect(err).to.be.instanceOf(cls);
            expect((err as Error).message).to.include(frag);
        };
        await bad({ shape: "tiny", type: "f32" }, TypeError, "out");
        await bad({ out: join(dir, "x.gguf"), shape: "huge", type: "f32" }, RangeError, "\"huge\"");
        await bad({ out: join(dir, "x.gguf"), shape: "tiny", type: "q3" }, RangeError, "\"q3\"");
        await bad({ out: join(dir, "x.gguf"), shape: "tiny", type: "f32", seed: -1 }, RangeError, "seed");
        expect(existsSync(join(dir, "x.gguf"))).to.equal(false);
    });

    it("refuses an existing out without overwrite, and a folder, before any work; overwrite: true replaces", async () => {
        const out = join(dir, "existing.gguf");
        await writeFile(out, "precious");
        const progress: number[] = [];
        const fail = async (o: Partial<Parameters<typeof makeTestModel>[0]>): Promise<OutputPathError> => {
            let err: unknown;
            try { await makeTestModel({ out, shape: "tiny", type: "q8_0", onProgress: (f) => progress.push(f), ...o }); } catch (e) { err = e; }
            expect(err).to.be.instanceOf(OutputPathError);
            return err as OutputPathError;
        };
        const exists = await fail({});
        expect(exists.code).to.equal("ERR_OUTPUT_EXISTS");
        expect(exists.message).to.include("overwrite: true");
        expect(await readFile(out, "utf8")).to.equal("precious");
        const folder = await fail({ out: dir, overwrite: true });
        expect(folder.code).to.equal("ERR_INVALID_OUTPUT");
        expect(folder.message).to.include("is a folder");
        expect(progress, "no work was done").to.deep.equal([]);
        let typeErr: unknown;
        try { await makeTestModel({ out, shape: "tiny", type: "q8_0", overwrite: "yes" as unknown as boolean }); } catch (e) { typeErr = e; }
        expect(typeErr).to.be.instanceOf(TypeError);
        const r = await makeTestModel({ out, shape: "tiny", type: "q8_0", overwrite: true });
        expect(r.bytes).to.equal((await stat(out)).size);
        expect(() => checkPhi2(h)).to.not.throw();
    });

    it("the packaged vocabulary (dist, shipped in the npm package) holds llama.cpp's GPT-2 GGUF arrays and its MIT notice", async function () {
        const source = gpt2VocabPath();
        if (!existsSync(source)) this.skip(); // an installed package: no deps/
        const packaged = JSON.parse(gunzipSync(await readFile(packagedVocabPath())).toString("utf8")) as PackagedVocab;
        const gguf = await readGPT2VocabGGUF(source);
        expect(packaged.tokens).to.deep.equal(gguf.tokens);
        expect(packaged.merges).to.deep.equal(gguf.merges);
        expect(packaged.tokenTypes).to.deep.equal(Array.from(gguf.tokenTypes));
        expect(packaged.license).to.include("MIT License").and.include("The ggml authors").and.include("Permission is hereby granted");
    });

    it("the vocabulary loader caches and is the one written to the file", async () => {
        const v = await loadPhi2Vocab();
        expect(v.tokens).to.deep.equal(h.metadata["tokenizer.ggml.tokens"]);
        expect(await loadPhi2Vocab()).to.equal(v);
    });
});

/** The native checks need the addon (npm run build:native); they skip with a note when it is not built. */
describe("makeTestModel with llama.cpp", function () {
    this.timeout(300000);

    function nativeMissing(err: unknown): boolean {
        return err instanceof PhiAgentError && (err.code === "ERR_NATIVE_BINDING" || err.code === "ERR_LIBRARY_NOT_FOUND");
    }

    it("llama.cpp tokenizes with the test model's vocabulary like Phi-2 (whitespace runs hit the added tokens)", async function () {
        const { PhiModel } = await import("../src/model/PhiModel.js");
        let model;
        try {
            model = await PhiModel.load({ modelPath: await tinyModel("f32"), device: "cpu", contextSize: 128 });
        } catch (err) {
            if (nativeMissing(err)) this.skip();
            throw err;
        }
        try {
            expect(model.tokenize("The benefits of multi-agent systems include"))
                .to.deep.equal([464, 4034, 286, 5021, 12, 25781, 3341, 2291]);
            expect(model.tokenize("a    b\t\tc")).to.deep.equal([64, 50284, 65, 50294, 66]);
            expect(model.detokenize([64, 50284, 65, 50294, 66])).to.equal("a    b\t\tc");
        } finally {
            await model.dispose();
        }
    });

    it("q4_k_m is quantized by llama.cpp from an f16 temp file", async function () {
        let p: string;
        try {
            p = await tinyModel("q4_k_m");
        } catch (err) {
            if (nativeMissing(err)) this.skip();
            throw err;
        }
        const q = await readGGUF(p);
        expect(q.metadata["general.file_type"]).to.equal(15);
        const types = new Set(q.tensors.map((t) => t.type));
        expect(types.has(GGMLType.Q4_K)).to.equal(true);
        expect(q.tensors.find((t) => t.name === "output_norm.weight")!.type).to.equal(GGMLType.F32);
        expect(() => checkPhi2(q)).to.not.throw();
        expect((await readdir(join(p, ".."))).filter((f) => f.startsWith(".test-tiny-q4_k_m"))).to.deep.equal([]);
    });
});
