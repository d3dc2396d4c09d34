/**
 * The prompt cache (LoadOptions.promptCacheSize, native/PromptCache.cpp): a call whose prompt starts with tokens
 * the engine holds the KV of reuses that KV, and its output is the cold output.
 *
 * Cold and warm: two models of the same file and options, one with promptCacheSize 0 (nothing reused), one with the
 * cache. llama.cpp computes the same tokens with other kernels depending on the batch's shape (a reused prefix is
 * decoded in other batches than in a cold call; on the CPU, flash attention runs a tiled kernel for 64 and more
 * rows, and sums a row's cells in their order in the cache with an f16 accumulator), so "equal" is checked as:
 *   - logits: the first-step logits of the second prompt, warm (reusing) and cold, differ by at most
 *     LOGIT_TOLERANCE (measured: 0 below 64 prompt tokens, at most 1.1e-3 above). One stale cell — the KV of the
 *     wrong token at one position, which the test fault "prompt-cache-stale" injects — moves them by 1.8e-2 to 0.28
 *     on these prompts, and is caught (last test of the greedy block);
 *   - greedy tokens: identical, except that a pair may diverge where the cold logits have a near-tie (the two
 *     tokens closer than NEAR_TIE), which batch shapes alone can flip; at most 2 of 20 pairs.
 */
import { expect } from "chai";
import { AbortError, PhiModel, PhiRangeError, PhiTypeError, type GenerationResult, type LoadOptions } from "../src/index.js";
import { TEST_THREADS, tinyModel } from "./helpers/models.js";

const LOGIT_TOLERANCE = 4e-3;
const NEAR_TIE = 2 * LOGIT_TOLERANCE;

function lcp(a: readonly number[], b: readonly number[]): number {
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    return i;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
    let d = 0;
    for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
    return d;
}

/** The tokens whose KV a finished call leaves: its prompt and what it decoded (the last sampled token is not). */
function decodedHistory(prompt: readonly number[], r: GenerationResult): number[] {
    const decoded = r.finishReason === "eos" ? r.tokens : r.tokens.slice(0, -1);
    return [...prompt, ...decoded];
}

/** A deterministic word sequence (xorshift), so prompts have many different tokens. */
function words(seed: number, n: number): string {
    const list = ["agent", "plan", "message", "topic", "guild", "reply", "state", "model", "token", "cache", "prefix",
        "queue", "batch", "river", "stone", "cloud", "table", "green", "north", "music", "paper", "light", "water",
        "horse", "glass", "sugar", "dream", "money", "heart", "night", "field", "chair", "seven", "orange", "quiet"];
    let x = seed * 2654435761 >>> 0 || 1;
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
        x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
        out.push(list[x % list.length]!);
    }
    return out.join(" ");
}

/** Distinct first words: no two pairs share a first token, so each second prompt can only reuse its own pair's KV. */
const HEADS = ["Apple", "Banana", "Cherry", "Dragon", "Eagle", "Forest", "Garden", "Harbor", "Island", "Jungle",
    "Kitten", "Lemon", "Mountain", "Needle", "Ocean", "Pirate", "Quartz", "Rocket", "Saturn"];

interface Pair {
    name: string;
    group: number; // pairs with the same group share their first prompt
    p1: string;
    p2: (first: GenerationResult) => string; // built once the first prompt's output is known
}

/**
 * 20 prompt pairs whose common prefix ranges from one word to ~180 tokens, crossing the 64-token batch boundaries,
 * with: identical prompts, a second prompt that is a strict prefix of the first, one that continues the first
 * call's output (its generated tokens' KV is reused), one that differs only in its last word, and two second prompts
 * that share one first prompt (they copy the same cached prefix at once).
 */
function makePairs(): Pair[] {
    const pairs: Pair[] = [];
    const shared = [1, 4, 9, 16, 24, 30, 31, 33, 45, 58, 80, 95, 120, 165];
    shared.forEach((n, i) => {
        const head = HEADS[i]!;
        const body = n > 1 ? " " + words(i + 1, n - 1) : "";
        pairs.push({ name: `~${n} shared words`, group: i, p1: `${head}${body} first ${words(100 + i, 1 + (i % 5))}`, p2: () => `${head}${body} second ${words(200 + i, 2 + (i % 7) * 3)}` });
    });
    let g = shared.length;
    const same = `${HEADS[g]} ${words(300, 70)}`;
    pairs.push({ name: "identical prompts", group: g++, p1: same, p2: () => same });
    const long = `${HEADS[g]} ${words(301, 150)}`;
    pairs.push({ name: "second is a strict prefix of the first", group: g++, p1: long, p2: () => long.split(" ").slice(0, 76).join(" ") });
    const chat = `${HEADS[g]} ${words(302, 30)}`;
    pairs.push({ name: "second continues the first call's output", group: g++, p1: chat, p2: (first) => `${chat}${first.text} ${words(303, 6)}` });
    const last = `${HEADS[g]} ${words(304, 60)}`;
    pairs.push({ name: "differ in the last word", group: g++, p1: `${last} alpha`, p2: () => `${last} omega` });
    const fork = `${HEADS[g]} ${words(305, 55)}`;
    pairs.push({ name: "two second prompts share one first prompt (a)", group: g, p1: fork, p2: () => `${fork} left ${words(306, 4)}` });
    pairs.push({ name: "two second prompts share one first prompt (b)", group: g, p1: fork, p2: () => `${fork} right ${words(307, 9)}` });
    return pairs;
}

const FIRST_TOKENS = 8;
const SECOND_TOKENS = 24;
const WAVE = 5; // = sequences: each wave's calls run together

interface PairRun {
    first: GenerationResult[];
    second: GenerationResult[];
    secondPrompts: string[];
}

/**
 * The pairs in waves of WAVE: the wave's first prompts together, then its second prompts together. `secondPrompts`
 * fixes the second prompts (the cold run uses the warm run's, so both compute the same prompts).
 */
async function runPairs(model: PhiModel, pairs: Pair[], secondPrompts?: string[]): Promise<PairRun> {
    const run: PairRun = { first: [], second: [], secondPrompts: [] };
    for (let w = 0; w < pairs.length; w += WAVE) {
        const wave = pairs.slice(w, w + WAVE);
        const first = await Promise.all(wave.map((p) => model.generate(p.p1, { maxTokens: FIRST_TOKENS })));
        const prompts = wave.map((p, i) => secondPrompts?.[w + i] ?? p.p2(first[i]!));
        const second = await Promise.all(prompts.map((p) => model.generate(p, { maxTokens: SECOND_TOKENS })));
        run.first.push(...first);
        run.second.push(...second);
        run.secondPrompts.push(...prompts);
    }
    return run;
}

/** Compares a warm second call with the cold one; returns what is wrong (empty: equal as the header defines). */
async function compareGreedy(cold: PhiModel, prompt: string, warm: GenerationResult, coldResult: GenerationResult): Promise<{ problems: string[]; nearTie: boolean }> {
    const a = warm.tokens, b = coldResult.tokens;
    const n = Math.min(a.length, b.length);
    let at = 0;
    while (at < n && a[at] === b[at]) at++;
    if (at === a.length && at === b.length && warm.finishReason === coldResult.finishReason) return { problems: [], nearTie: false };
    if (at === n) return { problems: [`one output is a prefix of the other (${a.length} vs ${b.length} tokens, ${warm.finishReason} vs ${coldResult.finishReason})`], nearTie: false };
    const logits = await cold.evaluate([...cold.tokenize(prompt), ...b.slice(0, at)]);
    const margin = logits[b[at]!]! - logits[a[at]!]!;
    if (margin < NEAR_TIE) return { problems: [], nearTie: true };
    return { problems: [`token ${at}: warm ${a[at]}, cold ${b[at]}, cold margin ${margin.toExponential(2)} (not a near-tie)`], nearTie: false };
}

describe("prompt cache (LoadOptions.promptCacheSize)", function () {
    this.timeout(600_000);
    let modelPath: string;
    let base: LoadOptions;

    before(async function () {
        modelPath = await tinyModel("f32");
        base = { modelPath, threads: TEST_THREADS, contextSize: 256, kvCacheSize: 2560, batchSize: 64, sequences: WAVE };
    });

    describe("options", function () {
        it("promptCacheSize is validated before anything loads, and reported in info.runtime", async function () {
            for (const bad of [-1, 1.5, 2 ** 24 + 1]) {
                const err = await PhiModel.load({ ...base, promptCacheSize: bad }).catch((e: unknown) => e);
                expect(err, String(bad)).to.be.instanceOf(PhiRangeError);
                expect((err as Error).message).to.contain("promptCacheSize");
            }
            const err = await PhiModel.load({ ...base, promptCacheSize: "1" as unknown as number }).catch((e: unknown) => e);
            expect(err).to.be.instanceOf(PhiTypeError);
            const m = await PhiModel.load({ ...base, contextSize: 64, kvCacheSize: 256, promptCacheSize: 0 });
            try {
                expect(m.info.runtime.promptCacheSize).to.equal(0);
            } finally {
                await m.dispose();
            }
            const d = await PhiModel.load({ ...base, contextSize: 64, kvCacheSize: 256 });
            try {
                expect(d.info.runtime.promptCacheSize).to.equal(2048); // LOAD_DEFAULTS.promptCacheSize (README)
            } finally {
                await d.dispose();
            }
        });
    });

    describe("reuse", function () {
        let warm: PhiModel;
        let cold: PhiModel;
        before(async function () {
            warm = await PhiModel.load(base);
            cold = await PhiModel.load({ ...base, promptCacheSize: 0 });
        });
        after(async function () {
            await warm?.dispose();
            await cold?.dispose();
        });

        it("usage.cachedPromptTokens: a repeated prompt reuses all but its last token, another prompt only the common prefix, the cold model nothing", async function () {
            const p = `Zebra ${words(400, 30)}`;
            const ids = warm.tokenize(p);
            const first = await warm.generate(p, { maxTokens: 4 });
            expect(first.usage.cachedPromptTokens).to.equal(0);
            const again = await warm.generate(p, { maxTokens: 4 });
            expect(again.usage.cachedPromptTokens).to.equal(ids.length - 1);
            expect(again.usage.promptTokens).to.equal(ids.length);
            expect(again.tokens).to.deep.equal(first.tokens);
            const other = `${p} and then ${words(401, 5)}`;
            const r = await warm.generate(other, { maxTokens: 4 });
            expect(r.usage.cachedPromptTokens).to.equal(Math.min(lcp(warm.tokenize(other), decodedHistory(ids, again)), warm.tokenize(other).length - 1));
            expect(r.usage.cachedPromptTokens).to.be.at.least(ids.length - 1);
            for (let i = 0; i < 2; i++) expect((await cold.generate(p, { maxTokens: 4 })).usage.cachedPromptTokens).to.equal(0);
            expect(cold.stats().cachedCells).to.equal(0);
            expect(warm.stats().cachedCells).to.be.greaterThan(0);
        });

        describe("greedy output with the cache equals the cold output", function () {
            const pairs = makePairs();
            let warmRun: PairRun;
            let coldRun: PairRun;
            const coldLogits = new Map<string, Float32Array>();
            const coldEvaluate = async (prompt: string) => {
                if (!coldLogits.has(prompt)) coldLogits.set(prompt, await cold.evaluate(prompt));
                return coldLogits.get(prompt)!;
            };

            before(async function () {
                warmRun = await runPairs(warm, pairs);
                coldRun = await runPairs(cold, pairs, warmRun.secondPrompts);
            });

            it("the pairs: distinct first tokens across groups, and common prefixes from 1 to over 150 tokens", function () {
                const firsts = new Map<number, number>();
                for (const p of pairs) {
                    const t = warm.tokenize(p.p1)[0]!;
                    expect(firsts.get(t) ?? p.group, `first token of ${p.name}`).to.equal(p.group);
                    firsts.set(t, p.group);
                }
                const shared = pairs.map((p, i) => lcp(warm.tokenize(p.p1), warm.tokenize(warmRun.secondPrompts[i]!)));
                this.test!.title += ` (${shared.join(", ")})`;
                expect(Math.min(...shared)).to.be.at.most(2);
                expect(Math.max(...shared)).to.be.greaterThan(150);
                expect(shared.filter((n) => n > 64).length, `prefixes longer than one batch: ${shared}`).to.be.at.least(5);
            });

            it("every second call reuses exactly its pair's common prefix (usage.cachedPromptTokens); cold ones reuse nothing", function () {
                pairs.forEach((p, i) => {
                    const ids = warm.tokenize(warmRun.secondPrompts[i]!);
                    const histories = pairs.map((q, j) => (q.group === p.group ? decodedHistory(warm.tokenize(q.p1), warmRun.first[j]!) : []));
                    const expected = Math.min(ids.length - 1, Math.max(...histories.map((h) => lcp(ids, h))));
                    expect(warmRun.second[i]!.usage.cachedPromptTokens, p.name).to.equal(expected);
                    // a first prompt has nothing to reuse (the one first prompt two pairs share may reuse its twin's)
                    if (pairs.filter((q) => q.group === p.group).length === 1) expect(warmRun.first[i]!.usage.cachedPromptTokens, `${p.name}: first prompt`).to.equal(0);
                    expect(coldRun.second[i]!.usage.cachedPromptTokens).to.equal(0);
                });
                expect(warmRun.second.filter((r) => r.usage.cachedPromptTokens > 0)).to.have.length(pairs.length);
            });

            it("20 pairs, run concurrently: the same greedy tokens as the cold run (a divergence only at a near-tie)", async function () {
                const problems: string[] = [];
                let identical = 0, nearTies = 0;
                for (let i = 0; i < pairs.length; i++) {
                    expect(warmRun.first[i]!.tokens, `${pairs[i]!.name}: first prompt`).to.have.length.greaterThan(0);
                    const c = await compareGreedy(cold, warmRun.secondPrompts[i]!, warmRun.second[i]!, coldRun.second[i]!);
                    problems.push(...c.problems.map((m) => `${pairs[i]!.name}: ${m}`));
                    if (c.nearTie) nearTies++;
                    else if (c.problems.length === 0) identical++;
                }
                this.test!.title += ` (${identical}/20 identical, ${nearTies} near-tie divergences)`;
                expect(problems).to.deep.equal([]);
                expect(nearTies, "near-ties are rare").to.be.at.most(2);
            });

            it("the first-step logits of every second prompt, reusing the cache, equal the cold ones within the tolerance", async function () {
                let worst = 0, exact = 0;
                for (let i = 0; i < pairs.length; i++) {
                    const prompt = warmRun.secondPrompts[i]!;
                    const [w, c] = await Promise.all([warm.evaluate(prompt), coldEvaluate(prompt)]);
                    const d = maxAbsDiff(w, c);
                    worst = Math.max(worst, d);
                    if (d === 0) exact++;
                    expect(d, pairs[i]!.name).to.be.lessThan(LOGIT_TOLERANCE);
                }
                this.test!.title += ` (max |diff| ${worst.toExponential(2)}, ${exact}/20 bit-identical)`;
            });

            it("the comparison catches a wrong reuse: with one stale cell (test fault), every pair it hits is flagged", async function () {
                process.env["PHI_AGENT_TEST_FAULT"] = "prompt-cache-stale";
                let stale: PhiModel;
                try {
                    stale = await PhiModel.load(base);
                } finally {
                    delete process.env["PHI_AGENT_TEST_FAULT"];
                }
                try {
                    let hit = 0, smallest = Infinity;
                    for (let i = 0; i < pairs.length; i++) {
                        await stale.generate(pairs[i]!.p1, { maxTokens: FIRST_TOKENS });
                        const prompt = warmRun.secondPrompts[i]!;
                        const before = warmRun.second[i]!.usage.cachedPromptTokens;
                        const r = await stale.generate(prompt, { maxTokens: 1 });
                        if (r.usage.cachedPromptTokens !== before + 1) continue; // the fault did not apply (nothing past the prefix to reuse)
                        hit++;
                        const d = maxAbsDiff(await stale.evaluate(prompt), await coldEvaluate(prompt));
                        smallest = Math.min(smallest, d);
                        expect(d, `${pairs[i]!.name}: the stale cell went unnoticed`).to.be.greaterThan(LOGIT_TOLERANCE);
                    }
                    this.test!.title += ` (${hit} pairs hit; smallest logit shift ${smallest.toExponential(2)})`;
                    expect(hit).to.be.at.least(15);
                } finally {
                    await stale.dispose();
                }
            });
        });

        it("a running call's decoded prompt is shared with a call that arrives while it generates", async function () {
            const p = `Walrus ${words(500, 120)}`;
            const more = `${p} ${words(501, 8)}`;
            let second: Promise<GenerationResult> | undefined;
            const first = await warm.generate(p, {
                maxTokens: 40,
                onToken: () => { second ??= warm.generate(more, { maxTokens: 16 }); },
            });
            const r = await second!;
            const ids = warm.tokenize(p);
            expect(r.usage.cachedPromptTokens).to.be.at.least(lcp(ids, warm.tokenize(more)));
            expect(first.tokens).to.have.length(40);
            const c = await compareGreedy(cold, more, r, await cold.generate(more, { maxTokens: 16 }));
            expect(c.problems).to.deep.equal([]);
        });
    });

    describe("abort", function () {
        it("mid-prompt: the decoded part stays cached, and the same prompt again reuses it and gives the cold output", async function () {
            const opts = { ...base, contextSize: 2048, kvCacheSize: 4096, batchSize: 8, sequences: 2 };
            const warm = await PhiModel.load(opts);
            const cold = await PhiModel.load({ ...opts, promptCacheSize: 0 });
            try {
                const long = `Yak ${words(600, 1500)}`; // ~1500 tokens: ~190 decode calls of 8
                const ids = warm.tokenize(long);
                // Event-driven: a companion generates one token per decode call, and each of those calls also decodes
                // 7 tokens of the long prompt, which is submitted at the companion's first token. When the
                // companion's 40 tokens are done, the prompt is about 250 tokens in: it is aborted then.
                const controller = new AbortController();
                let victim: Promise<unknown> | undefined;
                await warm.generate("Ibex", {
                    maxTokens: 40,
                    onToken: () => { victim ??= warm.generate(long, { maxTokens: 4, signal: controller.signal }).catch((e: unknown) => e); },
                });
                controller.abort();
                expect(await victim).to.be.instanceOf(AbortError);
                const again = await warm.generate(long, { maxTokens: 12 });
                this.test!.title += ` (${again.usage.cachedPromptTokens} of ${ids.length} prompt tokens were cached)`;
                expect(again.usage.cachedPromptTokens).to.be.at.least(16);
                expect(again.usage.cachedPromptTokens).to.be.lessThan(ids.length - 1);
                const c = await compareGreedy(cold, long, again, await cold.generate(long, { maxTokens: 12 }));
                expect(c.problems).to.deep.equal([]);
            } finally {
                await warm.dispose();
                await cold.dispose();
            }
        });

        it("right after submission and from the next event-loop turn, repeatedly: the next call is still the cold output", async function () {
            const opts = { ...base, contextSize: 1024, kvCacheSize: 1024, batchSize: 512, sequences: 1 };
            const warm = await PhiModel.load(opts);
            const cold = await PhiModel.load({ ...opts, promptCacheSize: 0 });
            try {
                const long = `Gnu ${words(700, 500)}`;
                for (let i = 0; i < 6; i++) {
                    const controller = new AbortController();
                    const p = warm.generate(long, { maxTokens: 4, signal: controller.signal }).catch((e: unknown) => e);
                    if (i % 2 === 0) controller.abort();
                    else setImmediate(() => controller.abort());
                    const e = await p;
                    expect(e instanceof AbortError || (e as GenerationResult).tokens !== undefined).to.equal(true);
                }
                const r = await warm.generate(long, { maxTokens: 12 });
                const c = await compareGreedy(cold, long, r, await cold.generate(long, { maxTokens: 12 }));
                expect(c.problems).to.deep.equal([]);
            } finally {
                await warm.dispose();
                await cold.dispose();
            }
        });
    });

    describe("KV cells", function () {
        it("the bound: cached cells stay within promptCacheSize, the least recently used history is cut from its end", async function () {
            const m = await PhiModel.load({ ...base, kvCacheSize: 512, promptCacheSize: 100 });
            try {
                const a = `Koala ${words(800, 60)}`, b = `Lynx ${words(801, 60)}`;
                const ra = await m.generate(a, { maxTokens: 4 });
                const la = decodedHistory(m.tokenize(a), ra).length;
                expect(m.stats().cachedCells).to.equal(Math.min(100, la));
                const rb = await m.generate(b, { maxTokens: 4 });
                const lb = decodedHistory(m.tokenize(b), rb).length;
                expect(m.stats().cachedCells).to.equal(100);
                // b (the most recent) is whole; a keeps its first 100 - lb tokens
                const again = await m.generate(a, { maxTokens: 4 });
                expect(again.usage.cachedPromptTokens).to.equal(100 - lb);
                expect(again.tokens).to.deep.equal(ra.tokens);
                // then b was the least recently used: cut to what a's history (la cells) leaves of the 100
                const bAgain = await m.generate(b, { maxTokens: 4 });
                expect(bAgain.usage.cachedPromptTokens).to.equal(100 - la);
                expect(m.stats().cachedCells).to.equal(100);
                // a history longer than the bound keeps its first promptCacheSize tokens
                const long = `Moose ${words(802, 160)}`;
                await m.generate(long, { maxTokens: 4 });
                expect(m.stats().cachedCells).to.equal(100);
                expect((await m.generate(long, { maxTokens: 4 })).usage.cachedPromptTokens).to.equal(100);
            } finally {
                await m.dispose();
            }
        });

        it("cached cells give way: a call that needs the whole KV cache runs at once with a full cache", async function () {
            const m = await PhiModel.load({ ...base, contextSize: 256, kvCacheSize: 256, sequences: 2, promptCacheSize: 4096 });
            try {
                for (let i = 0; i < 3; i++) await m.generate(`Otter ${i} ${words(900 + i, 100)}`, { maxTokens: 8 });
                expect(m.stats().cachedCells).to.be.greaterThan(200);
                const prompt = `Panda ${words(910, 180)}`;
                const n = m.tokenize(prompt).length;
                const r = await m.generate(prompt, { maxTokens: 256 - n });
                expect(r.finishReason).to.equal("length");
                expect(r.tokens).to.have.length(256 - n);
                expect(m.stats().cachedCells).to.be.at.most(256);
            } finally {
                await m.dispose();
            }
        });

        it("shared prefixes under a cache of exactly llama.cpp's size: 48 concurrent calls with and without maxTokens, aborts and paused streams never fail a decode", async function () {
            // kvCacheSize 256 is llama.cpp's own cell count (it pads to 256): counting one cell too few would let a
            // batch find no free cell, which fails the calls in it with ERR_GENERATION_FAILED.
            const m = await PhiModel.load({ ...base, contextSize: 128, kvCacheSize: 256, batchSize: 32, sequences: 4, promptCacheSize: 4096 });
            try {
                const stems = [0, 1, 2].map((s) => `Quokka ${s} ${words(1000 + s, 40)}`);
                const calls: Promise<unknown>[] = [];
                for (let i = 0; i < 48; i++) {
                    const prompt = `${stems[i % 3]} ${words(1100 + i, i % 11)}`;
                    const controller = new AbortController();
                    const options = { signal: controller.signal, ...(i % 4 === 3 ? {} : { maxTokens: 1 + ((i * 7) % 40) }) };
                    if (i % 6 === 5) {
                        // a stream read slowly: paused natively while it falls behind
                        calls.push((async () => {
                            const s = m.stream(prompt, options);
                            for await (const _ of s) await new Promise((r) => setImmediate(r));
                            return s.result;
                        })().catch((e: unknown) => e));
                    } else {
                        calls.push(m.generate(prompt, { ...options, onToken: (c) => { if (i % 8 === 1 && c.token >= 0) controller.abort(); } }).catch((e: unknown) => e));
                    }
                }
                const results = await Promise.all(calls);
                const failures = results.filter((r) => r instanceof Error && !(r instanceof AbortError)).map((e) => (e as Error).message);
                expect(failures).to.deep.equal([]);
                const finished = results.filter((r) => !(r instanceof Error)) as GenerationResult[];
                expect(finished.length).to.be.at.least(36);
                expect(finished.filter((r) => r.usage.cachedPromptTokens > 0).length, "calls that reused a prefix").to.be.at.least(20);
                for (const r of finished) expect(["eos", "length", "context"]).to.include(r.finishReason);
                const whole = await m.generate(stems[0]!, { maxTokens: 128 - m.tokenize(stems[0]!).length });
                expect(["length", "eos"]).to.include(whole.finishReason);
                expect(m.stats()).to.include({ active: 0, waiting: 0 });
            } finally {
                await m.dispose();
            }
        });
    });
});
