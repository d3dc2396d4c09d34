/**
 * Greedy output under concurrency (issue 9, item 11): does batching change greedy tokens, and is it llama.cpp's
 * batched kernels or our engine? Runs P distinct prompts × T greedy tokens
 *   - ours: each prompt alone, then all P as concurrent generate() calls (one batch);
 *   - the C++ loop (bench/cpp/phi_loop.cpp, same libraries): each prompt alone, then as sequence 0 of a P-sequence
 *     batch with the other prompts (one llama_decode per step, all sequences in lockstep);
 * and counts the prompts whose tokens are identical to the solo run, on each side.
 *
 *   node dist/scripts/bench-lib/determinism.js [--type f32] [--prompts 16] [--tokens 64] [--threads 2]
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { ensureTestModel, type TestModelType } from "../../src/testModel/makeTestModel.js";
import { buildPrompt, repoRoot } from "./common.js";
import { buildCppLoop, findLlamaLibDir, runCppLoop } from "./cpp.js";
import { PhiModel } from "../../src/index.js";

const { values } = parseArgs({
    options: {
        type: { type: "string", default: "f32" },
        prompts: { type: "string", default: "16" },
        tokens: { type: "string", default: "64" },
        threads: { type: "string", default: "2" },
        "prompt-tokens": { type: "string", default: "16" },
    },
});
const P = Number(values.prompts), T = Number(values.tokens), threads = Number(values.threads), L = Number(values["prompt-tokens"]);
const root = repoRoot();
const modelPath = await ensureTestModel({ shape: "tiny", type: values.type as TestModelType, seed: 1 });
const ctx = Math.ceil((P * (L + T + 8)) / 256) * 256;
// promptCacheSize 0: the batched run computes its prompts as the solo run did, not from the prompt cache
const model = await PhiModel.load({ modelPath, device: "cpu", threads, contextSize: L + T + 8, kvCacheSize: ctx, sequences: P, promptCacheSize: 0 });
const prompts = Array.from({ length: P }, (_, i) => buildPrompt((t) => model.tokenize(t), L, i));
const firstDiff = (a: number[], b: number[]) => { const n = Math.min(a.length, b.length); for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i; return a.length === b.length ? -1 : n; };

const solo: number[][] = [];
for (const p of prompts) solo.push((await model.generate(p.text, { maxTokens: T })).tokens);
const together = (await Promise.all(prompts.map((p) => model.generate(p.text, { maxTokens: T })))).map((r) => r.tokens);
const oursDiff = prompts.map((_, i) => firstDiff(solo[i]!, together[i]!));
await model.dispose();

const libDir = findLlamaLibDir(root);
const bin = buildCppLoop(root, libDir, (s) => process.stderr.write(s + "\n"));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "phi-det-"));
const cppSolo: number[][] = [], cppBatched: number[][] = [];
for (let i = 0; i < P; i++) {
    const ids = prompts.map((p) => p.ids);
    const rotated = [...ids.slice(i), ...ids.slice(0, i)]; // prompt i is sequence 0
    const common = { model: modelPath, threads, genTokens: T, repeat: 1, ctx, threadpool: true };
    cppSolo.push((await runCppLoop(bin, { ...common, promptIds: [ids[i]!], sequences: 1 }, tmp, 600_000)).tokens);
    cppBatched.push((await runCppLoop(bin, { ...common, promptIds: rotated, sequences: P }, tmp, 600_000)).tokens);
}
fs.rmSync(tmp, { recursive: true, force: true });
const cppDiff = prompts.map((_, i) => firstDiff(cppSolo[i]!, cppBatched[i]!));
const oursVsCpp = prompts.map((_, i) => firstDiff(solo[i]!, cppSolo[i]!));
const report = (d: number[]) => `${d.filter((x) => x < 0).length}/${P} identical${d.some((x) => x >= 0) ? ` (first differing token: ${d.filter((x) => x >= 0).join(", ")})` : ""}`;
console.log(`tiny ${values.type}, ${P} prompts × ${L} tokens, ${T} greedy tokens, ${threads} thread(s), n_ctx ${ctx}`);
console.log(`  ours, concurrent vs solo:        ${report(oursDiff)}`);
console.log(`  C++ loop, ${P}-batch vs solo:      ${report(cppDiff)}`);
console.log(`  solo: ours vs C++ loop:          ${report(oursVsCpp)}`);
console.log(JSON.stringify({ oursDiff, cppDiff, oursVsCpp }));
