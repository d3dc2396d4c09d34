/**
 * PhiModel.tokenize / detokenize / streamed text against independent oracles:
 *  - @huggingface/tokenizers (the tokenizer of transformers.js v4) loaded from a tokenizer.json we build from the
 *    same vocabulary, merges and added whitespace tokens (test/reference/tokenizerJson.ts), offline;
 *  - llama.cpp's own GPT-2 tokenizer vectors (deps/llama.cpp/models/ggml-vocab-gpt-2.gguf.inp/.out).
 */
import { expect } from "chai";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { PhiModel } from "../src/index.js";
import { gpt2VocabPath } from "../src/testModel/vocab.js";
import { tinyModel } from "./helpers/models.js";
import { writeCycleModel } from "./reference/cycleModel.js";
import { HFOracle, readLlamaVocabTests, writePhi2TokenizerJson } from "./reference/tokenizerJson.js";
import { hasWhitespaceRun, tokenizerCorpus } from "./reference/tokenizerCorpus.js";

const show = (s: string) => (s.length > 60 ? JSON.stringify(s.slice(0, 60)) + `… (${s.length} chars)` : JSON.stringify(s));

describe("tokenizer (oracles)", function () {
    let model: PhiModel;
    let dir: string;
    /** Phi-2's tokenizer.json: <|endoftext|> is a special added token (HF always splits it out of text). */
    let hf: HFOracle;
    /** The same without <|endoftext|> among the added tokens: the literal text is BPE'd like any text. */
    let hfPlain: HFOracle;
    const corpus = tokenizerCorpus();

    before(async function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-tokenizer-"));
        await writePhi2TokenizerJson(path.join(dir, "phi2"));
        await writePhi2TokenizerJson(path.join(dir, "phi2-plain"), { endoftextAddedToken: false });
        hf = await HFOracle.fromDir(path.join(dir, "phi2"));
        hfPlain = await HFOracle.fromDir(path.join(dir, "phi2-plain"));
        model = await PhiModel.load({ modelPath: await tinyModel("f32"), threads: 1, contextSize: 512 });
    });
    after(async function () {
        await model?.dispose();
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it("the corpus has ≥ 200 strings of every kind the issue names", function () {
        expect(corpus.length).to.be.at.least(200);
        expect(corpus).to.include("");
        expect(corpus.some((s) => s.length >= 20_000)).to.equal(true);
        expect(corpus.some((s) => s.includes("\r\n"))).to.equal(true);
        expect(corpus.some((s) => s.includes("\u200d"))).to.equal(true); // ZWJ emoji
        expect(corpus.some((s) => s.includes("<|endoftext|>"))).to.equal(true);
        for (let n = 2; n <= 40; n++) expect(corpus.some((s) => s.includes("a" + " ".repeat(n) + "b")), `${n} spaces`).to.equal(true);
        for (const s of corpus) expect(s.isWellFormed() && !s.includes("\u0000"), show(s)).to.equal(true);
    });

    it("the oracle is Phi-2's tokenizer: the seed prompt and the whitespace tokens", function () {
        expect(hf.encode("The benefits of multi-agent systems include")).to.deep.equal([464, 4034, 286, 5021, 12, 25781, 3341, 2291]);
        expect(hf.encode("a    b")).to.deep.equal([64, 50284, 65]);
        expect(hf.encode("<|endoftext|>")).to.deep.equal([50256]);
        expect(hfPlain.encode("<|endoftext|>")).to.have.length.greaterThan(1);
    });

    it("tokenize(text) gives the oracle's ids for every corpus string (<|endoftext|> as plain text)", function () {
        const mismatches: string[] = [];
        for (const s of corpus) {
            const ours = model.tokenize(s);
            const theirs = hfPlain.encode(s);
            if (JSON.stringify(ours) !== JSON.stringify(theirs)) mismatches.push(`${show(s)}\n  ours ${JSON.stringify(ours)}\n  hf   ${JSON.stringify(theirs)}`);
        }
        expect(mismatches, mismatches.slice(0, 5).join("\n")).to.deep.equal([]);
    });

    it("tokenize(text, { special: true }) gives the oracle's ids with <|endoftext|> as a special token", function () {
        const mismatches: string[] = [];
        let withSpecial = 0;
        for (const s of corpus) {
            const ours = model.tokenize(s, { special: true });
            const theirs = hf.encode(s);
            if (theirs.includes(50256)) withSpecial++;
            if (JSON.stringify(ours) !== JSON.stringify(theirs)) mismatches.push(`${show(s)}\n  ours ${JSON.stringify(ours)}\n  hf   ${JSON.stringify(theirs)}`);
        }
        expect(mismatches, mismatches.slice(0, 5).join("\n")).to.deep.equal([]);
        expect(withSpecial).to.be.greaterThan(3);
    });

    it("matches llama.cpp's GPT-2 tokenizer vectors (texts without whitespace runs)", async function () {
        const base = gpt2VocabPath();
        const tests = await readLlamaVocabTests(`${base}.inp`, `${base}.out`);
        let compared = 0, skipped = 0;
        for (const t of tests) {
            if (hasWhitespaceRun(t.text)) { // Phi-2's added tokens take runs of ≥ 2 spaces/tabs; GPT-2 has none
                skipped++;
                continue;
            }
            compared++;
            expect(model.tokenize(t.text), show(t.text)).to.deep.equal(t.ids);
            expect(hfPlain.encode(t.text), `oracle: ${show(t.text)}`).to.deep.equal(t.ids);
        }
        expect(compared).to.be.at.least(30);
        expect(skipped).to.be.greaterThan(0);
        this.test!.title += ` (${compared} compared, ${skipped} with whitespace runs skipped)`;
    });

    it("detokenize(tokenize(text)) returns every corpus string unchanged", function () {
        const broken: string[] = [];
        for (const s of corpus) {
            const back = model.detokenize(model.tokenize(s));
            if (back !== s) broken.push(`${show(s)} -> ${show(back)}`);
        }
        expect(broken, `${broken.length} strings changed:\n${broken.slice(0, 8).join("\n")}`).to.deep.equal([]);
    });

    it("the oracle's decode (without clean_up_tokenization_spaces) is lossless on the same ids", function () {
        for (const s of corpus) expect(hfPlain.decode(model.tokenize(s)), show(s)).to.equal(s);
    });

    it("renders <|endoftext|> only with { special: true }", function () {
        const ids = model.tokenize("a<|endoftext|>b", { special: true });
        expect(ids).to.deep.equal([64, 50256, 65]);
        expect(model.detokenize(ids)).to.equal("ab");
        expect(model.detokenize(ids, { special: true })).to.equal("a<|endoftext|>b");
    });

    describe("streamed text", function () {
        const isWellFormedChunk = (t: string) => t.isWellFormed() && !t.includes("\ufffd");

        it("onToken chunks reassemble to result.text and never split a character", async function () {
            let multiByte = 0;
            // High temperature over the whole vocabulary: random byte-level tokens, so partial UTF-8 sequences occur.
            for (let seed = 1; seed <= 12; seed++) {
                const chunks: string[] = [];
                const r = await model.generate("日本語と🤖の話:", {
                    maxTokens: 48, temperature: 5, seed, onToken: (c) => chunks.push(c.text),
                });
                expect(chunks.join(""), `seed ${seed}`).to.equal(r.text);
                expect(r.text).to.equal(model.detokenize(r.tokens));
                // A split character would show up as U+FFFD in a chunk where the full text has none.
                if (!r.text.includes("\ufffd")) for (const c of chunks) expect(isWellFormedChunk(c), JSON.stringify(c)).to.equal(true);
                if (/[^\u0000-\u007f]/.test(r.text)) multiByte++;
            }
            expect(multiByte, "some runs produced multi-byte characters").to.be.greaterThan(0);
        });

        it("holds back a character split across tokens until it is complete (model that generates 日本é ok🤖…)", async function () {
            const unit = "日本é ok🤖";
            const cycle = model.tokenize(unit);
            const partial = cycle.filter((t) => model.detokenize([t]).includes("\ufffd"));
            expect(partial.length, "tokens that are only part of a character").to.be.at.least(4);
            const file = path.join(dir, "cycle.gguf");
            await writeCycleModel(file, cycle);
            const cyc = await PhiModel.load({ modelPath: file, threads: 1, contextSize: 128 });
            try {
                const n = cycle.length * 3;
                const chunks: string[] = [];
                const r = await cyc.generate("🤖", { maxTokens: n, onToken: (c) => chunks.push(c.text) });
                expect(r.tokens).to.deep.equal([...cycle, ...cycle, ...cycle]);
                expect(r.text).to.equal(unit.repeat(3));
                expect(chunks.join("")).to.equal(r.text);
                for (const c of chunks) expect(c.isWellFormed() && !c.includes("\ufffd"), JSON.stringify(c)).to.equal(true);
                expect(chunks.filter((c) => c === "").length, "empty chunks while a character is incomplete").to.be.at.least(partial.length);

                const streamed: string[] = [];
                const st = cyc.stream("🤖", { maxTokens: n });
                for await (const chunk of st) streamed.push(chunk.text);
                expect(streamed.join("")).to.equal(unit.repeat(3));
                for (const c of streamed) expect(c.includes("\ufffd"), JSON.stringify(c)).to.equal(false);
            } finally {
                await cyc.dispose();
            }
        });

        it("model.stream() yields chunks that reassemble to result.text", async function () {
            for (const [prompt, seed] of [["Emoji: 👩‍👩‍👧‍👦", 3], ["Ελληνικά και русский", 4], ["def f():\n\treturn", 5]] as const) {
                const s = model.stream(prompt, { maxTokens: 40, temperature: 5, seed });
                let text = "";
                for await (const chunk of s) {
                    expect(chunk.text.isWellFormed()).to.equal(true);
                    text += chunk.text;
                }
                const result = await s.result;
                expect(text).to.equal(result.text);
                expect(result.text).to.equal(model.detokenize(result.tokens));
            }
        });
    });
});
