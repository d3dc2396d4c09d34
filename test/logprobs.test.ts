/**
 * GenerateOptions.logprobs: each generated token's log-probability and the most likely alternatives, checked
 * against an oracle: log-softmax of PhiModel.evaluate()'s logits for the same prefix.
 */
import { expect } from "chai";
import { PhiModel } from "../src/model/PhiModel.js";
import { PhiRangeError } from "../src/errors.js";
import { tinyModel } from "./helpers/models.js";

function logSoftmax(logits: Float32Array): Float64Array {
    let max = -Infinity;
    for (const x of logits) max = Math.max(max, x);
    let sum = 0;
    for (const x of logits) sum += Math.exp(x - max);
    const lse = max + Math.log(sum);
    return Float64Array.from(logits, (x) => x - lse);
}

describe("PhiModel logprobs", function () {
    this.timeout(120_000);
    let model: PhiModel;
    before(async function () {
        model = await PhiModel.load({ modelPath: await tinyModel("f32"), threads: 1, contextSize: 256, sequences: 2 });
    });
    after(async function () {
        await model?.dispose();
    });

    it("match log-softmax of evaluate()'s logits at every step, top alternatives in order", async function () {
        const prompt = "The benefits of multi-agent systems include";
        const r = await model.generate(prompt, { maxTokens: 5, logprobs: 4 });
        expect(r.logprobs).to.have.length(r.tokens.length);
        const ids = model.tokenize(prompt);
        for (const [i, lp] of r.logprobs!.entries()) {
            expect(lp.token).to.equal(r.tokens[i]);
            const oracle = logSoftmax(await model.evaluate([...ids, ...r.tokens.slice(0, i)]));
            expect(lp.logprob).to.be.closeTo(oracle[lp.token]!, 1e-3);
            const best = [...oracle.keys()].sort((a, b) => oracle[b]! - oracle[a]! || a - b).slice(0, 4);
            expect(lp.topLogprobs.map((t) => t.token)).to.deep.equal(best);
            for (const t of lp.topLogprobs) expect(t.logprob).to.be.closeTo(oracle[t.token]!, 1e-3);
            expect(lp.topLogprobs[0]!.token, "greedy takes the most likely token").to.equal(lp.token);
        }
    });

    it("come with the streamed chunks too; off by default; 0 alternatives is the token alone; out of range is refused", async function () {
        const chunks = [];
        for await (const c of model.stream("Hello", { maxTokens: 4, logprobs: 0 })) chunks.push(c);
        const withLp = chunks.filter((c) => c.token >= 0);
        expect(withLp.length).to.be.greaterThan(0);
        for (const c of withLp) {
            expect(c.logprob).to.be.a("number").and.be.at.most(0);
            expect(c.topLogprobs).to.deep.equal([]);
        }
        const plain = await model.generate("Hello", { maxTokens: 2 });
        expect(plain.logprobs).to.equal(undefined);
        for (const bad of [21, -1, 1.5]) {
            const err = await model.generate("Hello", { logprobs: bad }).catch((e: unknown) => e);
            expect(err, String(bad)).to.be.instanceOf(PhiRangeError);
            expect((err as Error).message).to.match(/logprobs/);
        }
    });
});
