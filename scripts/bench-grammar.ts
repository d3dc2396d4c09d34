/**
 * `npm run bench:grammar`: the cost of typed output. Decode tok/s of grammar-constrained generation against
 * unconstrained generation of the same prompt on the same loaded model, in one run, alternating the two so that
 * load from other processes hits both alike; ratio = constrained / unconstrained (goal ≥ 0.8).
 *
 *   node dist/scripts/bench-grammar.js [--shape phi2|tiny] [--type q4_k_m|q8_0|f16|f32] [--threads N]
 *                                      [--tokens N] [--repeat R] [--parallel P] [--modes ours,first,full]
 *
 * Workloads: "json-object" (a record schema with strings, numbers, enums and an array of objects), "json-text"
 * (long strings: most tokens fit), "digits" (GBNF of digits: almost no token the random model prefers fits, so
 * every token is masked: the worst case). Modes: "ours" (the chain picks, the grammar checks that one token, and
 * only when it does not fit is the vocabulary masked, by first byte and best logits first), "first" (mask before
 * every pick, still by first byte and best logits first), "full" (mask the whole vocabulary before every pick:
 * llama.cpp's plain grammar-first sampling). With --stats, the sampler prints per request where its time went.
 * The model is the project's random-weight phi2 GGUF (ensureTestModel, cached under models/). Wrap runs in
 * `flock "$BENCH_LOCK"` (or any lock) so that benchmarks never overlap.
 */
import { PhiModel, type GenerateOptions, type GenerationResult } from "../src/index.js";
import { ensureTestModel, TEST_MODEL_SHAPES, TEST_MODEL_TYPES } from "../src/testModel/makeTestModel.js";
import { choiceFlag, intFlag, listFlag, scriptArgs } from "./args.js";

const USAGE = `Usage: node dist/scripts/bench-grammar.js [--shape phi2|tiny] [--type q4_k_m|q8_0|f16|f32] [--threads N]
         [--tokens N] [--repeat R] [--parallel P] [--modes ours,first,full] [--stats]`;

const MODES = ["ours", "first", "full"] as const;
type Mode = (typeof MODES)[number];

const o = scriptArgs("bench-grammar", USAGE, {
    shape: { type: "string" }, type: { type: "string" }, threads: { type: "string" }, tokens: { type: "string" },
    repeat: { type: "string" }, parallel: { type: "string" }, modes: { type: "string" }, stats: { type: "boolean" },
}, (v) => ({
    shape: choiceFlag("shape", v.shape, TEST_MODEL_SHAPES) ?? "phi2",
    type: choiceFlag("type", v.type, TEST_MODEL_TYPES) ?? "q4_k_m",
    threads: intFlag("threads", v.threads, 1),
    tokens: intFlag("tokens", v.tokens, 2, 2000) ?? 48,
    repeat: intFlag("repeat", v.repeat, 1, 100) ?? 3,
    parallel: intFlag("parallel", v.parallel, 1, 64) ?? 1,
    modes: (listFlag("modes", v.modes, MODES) ?? ["ours"]) as Mode[],
    stats: v.stats === true,
}));

const WORKLOADS: { name: string; options: Pick<GenerateOptions, "jsonSchema" | "grammar"> }[] = [
    {
        name: "json-object",
        options: {
            jsonSchema: {
                type: "object",
                properties: {
                    name: { type: "string", maxLength: 24 },
                    age: { type: "integer", minimum: 0, maximum: 150 },
                    role: { enum: ["admin", "user", "guest"] },
                    score: { type: "number" },
                    tags: { type: "array", items: { type: "object", properties: { key: { type: "string", maxLength: 12 }, on: { type: "boolean" } }, required: ["key", "on"] }, maxItems: 8 },
                },
                required: ["name", "age", "role", "score", "tags"],
                additionalProperties: false,
            },
        },
    },
    { name: "json-text", options: { jsonSchema: { type: "object", properties: { text: { type: "string", minLength: 1500 } }, required: ["text"] } } },
    { name: "digits", options: { grammar: "root ::= [0-9]{1500}\n" } },
];

/** Decode tok/s of one generate(): tokens after the first over the time after the first (the prompt is not in it). */
function rate(r: GenerationResult): number {
    return r.usage.generationMs > 0 ? ((r.usage.completionTokens - 1) * 1000) / r.usage.generationMs : 0;
}

async function run(model: PhiModel, prompt: string, options: GenerateOptions, parallel: number): Promise<{ rate: number; tokens: number }> {
    const results = await Promise.all(Array.from({ length: parallel }, (_, i) => model.generate(prompt + " ".repeat(i), { ...options, seed: 1 + i })));
    // aggregate: every request's decoded tokens over the longest decode
    const tokens = results.reduce((n, r) => n + r.usage.completionTokens - 1, 0);
    const ms = Math.max(...results.map((r) => r.usage.generationMs));
    return { rate: parallel === 1 ? rate(results[0]!) : (tokens * 1000) / ms, tokens: tokens + results.length };
}

function median(xs: number[]): number {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main(): Promise<void> {
    if (o.stats) process.env["PHI_AGENT_SAMPLER_STATS"] = "1";
    process.stderr.write(`bench-grammar: model ${o.shape} ${o.type} (written on first use; phi2 q4_k_m takes minutes)\n`);
    const modelPath = await ensureTestModel({ shape: o.shape, type: o.type });
    const model = await PhiModel.load({ modelPath, contextSize: 2048, sequences: Math.max(1, o.parallel), ...(o.threads ? { threads: o.threads } : {}) });
    const prompt = "Instruct: Describe the user as JSON.\nOutput:";
    const base: GenerateOptions = { maxTokens: o.tokens, temperature: 0 };
    const rows: string[] = [];
    try {
        await model.generate(prompt, { maxTokens: 4 }); // warm up
        for (const w of WORKLOADS) {
            for (const mode of o.modes) {
                const free: number[] = [], typed: number[] = [];
                let typedTokens = 0;
                for (let i = 0; i < o.repeat; i++) {
                    // alternate, so that what else runs on the machine weighs on both alike
                    delete process.env["PHI_AGENT_GRAMMAR_MODE"];
                    free.push((await run(model, prompt, base, o.parallel)).rate);
                    if (mode !== "ours") process.env["PHI_AGENT_GRAMMAR_MODE"] = mode;
                    const t = await run(model, prompt, { ...base, ...w.options }, o.parallel);
                    delete process.env["PHI_AGENT_GRAMMAR_MODE"];
                    typed.push(t.rate);
                    typedTokens += t.tokens;
                }
                const f = median(free), t = median(typed);
                const row = `${w.name.padEnd(12)} ${mode.padEnd(6)} unconstrained ${f.toFixed(2).padStart(7)} tok/s   constrained ${t.toFixed(2).padStart(7)} tok/s   ratio ${(t / f).toFixed(2)}   (${(typedTokens / o.repeat).toFixed(0)} tokens/run)`;
                rows.push(row);
                process.stderr.write(row + "\n");
            }
        }
    } finally {
        await model.dispose();
    }
    const info = `${o.shape} ${o.type}, ${o.parallel} request(s) at once, greedy, ${o.tokens} tokens, median of ${o.repeat}`;
    process.stdout.write(`\nConstrained vs unconstrained decode (${info}); goal: ratio >= 0.80\n${rows.join("\n")}\n`);
}

await main();
