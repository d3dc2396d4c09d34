/**
 * The typed-output guarantee, as a property: over many generated JSON Schemas × seeds, every output that ends with
 * "eos" or "stop" parses and validates against its schema, checked by an independent validator (ajv), on a
 * random-weight model (where only the grammar makes the output valid). And the same for GBNF grammars built from
 * a small regular-expression AST, checked against the equivalent JavaScript RegExp.
 * The numbers (finished, invalid, cut short) are printed; the thresholds are the issue's: 0 invalid, ≥ 90% finished.
 */
import { expect } from "chai";
import { Ajv } from "ajv";
import { PhiModel, type GenerateOptions, type GenerationResult } from "../src/index.js";
import { tinyModel } from "./helpers/models.js";
import { gbnfOf, regexOf, rng, RxGen, SchemaGen } from "./helpers/typedOutputGen.js";

/** Runs `jobs` with at most `limit` in flight (the model decodes them together). */
async function pool<T>(jobs: (() => Promise<T>)[], limit: number): Promise<T[]> {
    const out: T[] = new Array(jobs.length);
    let next = 0;
    await Promise.all(Array.from({ length: limit }, async () => {
        while (next < jobs.length) {
            const i = next++;
            out[i] = await jobs[i]!();
        }
    }));
    return out;
}

const SAMPLING: GenerateOptions[] = [
    { temperature: 0 },
    { temperature: 1, topK: 40 },
    { temperature: 0.8, topK: 100 },
    { temperature: 1 },
];
const PROMPTS = ["Output:", "The answer as JSON:", "Instruct: describe a cat\nOutput:", "{"];

describe("typed output property (grammar-constrained decoding on random weights)", function () {
    this.timeout(1_200_000);
    let model: PhiModel;

    before(async function () {
        model = await PhiModel.load({ modelPath: await tinyModel("f32"), threads: 1, contextSize: 512, kvCacheSize: 4096, sequences: 8 });
    });
    after(async function () {
        await model?.dispose();
    });

    it("JSON Schema: every finished output of 128 schemas × 4 seeds/samplers validates (ajv); ≥ 90% finish", async function () {
        const gen = new SchemaGen(rng(12));
        const ajv = new Ajv({ strict: false });
        const schemas = Array.from({ length: 128 }, () => gen.top(3));
        const validators = schemas.map((s) => ajv.compile(s));
        const jobs = schemas.flatMap((schema, i) => SAMPLING.map((sampling, k) => async () => {
            const r = await model.generate(PROMPTS[(i + k) % PROMPTS.length]!, { ...sampling, seed: 1000 + i * 7 + k, maxTokens: 200, jsonSchema: schema });
            return { i, k, r };
        }));
        const results = await pool(jobs, 8);
        let finished = 0;
        const invalid: string[] = [];
        const reasons: Record<string, number> = {};
        for (const { i, k, r } of results) {
            reasons[r.finishReason] = (reasons[r.finishReason] ?? 0) + 1;
            if (r.finishReason !== "eos" && r.finishReason !== "stop") continue;
            finished++;
            let value: unknown;
            try {
                value = JSON.parse(r.text);
            } catch (err) {
                invalid.push(`schema ${i}, sampling ${k}: does not parse (${(err as Error).message}): ${JSON.stringify(r.text)} for ${JSON.stringify(schemas[i])}`);
                continue;
            }
            expect(r.json, "result.json is the parsed text").to.deep.equal(value);
            if (!validators[i]!(value)) {
                invalid.push(`schema ${i}, sampling ${k}: ${ajv.errorsText(validators[i]!.errors)}: ${JSON.stringify(r.text)} for ${JSON.stringify(schemas[i])}`);
            }
        }
        const total = results.length;
        console.log(`      JSON Schema: ${total} cases, ${finished} finished (${((100 * finished) / total).toFixed(1)}%), ${invalid.length} invalid; finish reasons ${JSON.stringify(reasons)}`);
        expect(invalid, invalid.slice(0, 5).join("\n")).to.deep.equal([]);
        expect(total).to.be.at.least(500);
        expect(finished / total).to.be.at.least(0.9);
    });

    it("GBNF: every finished output of 64 generated grammars × 2 seeds matches the same language written as a RegExp", async function () {
        const gen = new RxGen(rng(7));
        const cases = Array.from({ length: 64 }, () => gen.gen(3));
        const jobs = cases.flatMap((rx, i) => [0, 1].map((k) => async () => {
            const grammar = `root ::= ${gbnfOf(rx)}\n`;
            const r: GenerationResult = await model.generate(PROMPTS[i % PROMPTS.length]!, { ...SAMPLING[k + 1]!, seed: 77 + i * 3 + k, maxTokens: 120, grammar });
            return { i, r, grammar };
        }));
        const results = await pool(jobs, 8);
        let finished = 0;
        const wrong: string[] = [];
        for (const { i, r, grammar } of results) {
            if (r.finishReason !== "eos" && r.finishReason !== "stop") continue;
            finished++;
            const re = new RegExp(`^${regexOf(cases[i]!)}$`, "u");
            if (!re.test(r.text)) wrong.push(`${JSON.stringify(r.text)} does not match ${re} (grammar ${grammar.trim()})`);
        }
        console.log(`      GBNF: ${results.length} cases, ${finished} finished, ${wrong.length} not matching`);
        expect(wrong, wrong.slice(0, 5).join("\n")).to.deep.equal([]);
        expect(finished / results.length).to.be.at.least(0.9);
    });
});
