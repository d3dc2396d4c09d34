/**
 * Bench worker for OUR side (PhiModel, and the agent for the concurrency rows). Runs in its own process:
 *   node dist/scripts/bench-lib/worker-ours.js '<job json>'
 * It also picks the prompts every side uses (exact token counts, no EOS within the budget under greedy).
 */
import { performance } from "node:perf_hooks";
import type { GenerateOptions, GenerationResult, LoadOptions, ModelInfo } from "../../src/model/types.js";
import {
    buildPrompt,
    ownCpuMs,
    peakRssKb,
    readJob,
    reportProgress,
    reportResult,
    type BuiltPrompt,
    type RunTiming,
    type SingleSideResult,
} from "./common.js";
import { runAgentConcurrency } from "./agent.js";

/** The part of PhiModel the bench uses (imported at run time, so the bench compiles before PhiModel exists). */
export interface BenchModel {
    readonly info: ModelInfo;
    tokenize(text: string, options?: { special?: boolean }): number[];
    generate(prompt: string, options?: GenerateOptions): Promise<GenerationResult>;
    dispose(): Promise<void>;
}

interface PhiModelStatic {
    load(options: LoadOptions): Promise<BenchModel>;
}

export async function importPhiModel(): Promise<PhiModelStatic> {
    const candidates = ["../../src/index.js", "../../src/model/PhiModel.js"];
    const errors: string[] = [];
    for (const rel of candidates) {
        try {
            const mod = (await import(new URL(rel, import.meta.url).href)) as { PhiModel?: PhiModelStatic };
            if (mod.PhiModel) return mod.PhiModel;
            errors.push(`${rel}: no PhiModel export`);
        } catch (err) {
            errors.push(`${rel}: ${(err as Error).message}`);
        }
    }
    throw new Error(`bench: cannot import PhiModel (build the project first: npm run build). ${errors.join("; ")}`);
}

export interface OursSingleJob {
    kind: "single";
    modelPath: string;
    threads: number;
    contextSize: number;
    batchSize: number;
    /** Prompt lengths in tokens; the first one is also the decode measurement. */
    promptLengths: number[];
    /** Tokens generated after the first prompt length (decode tok/s). */
    genTokens: number;
    /** Tokens generated after the other prompt lengths (prompt tok/s, TTFT). */
    shortGenTokens: number;
    repeat: number;
    maxVariants: number;
    /** LoadOptions.repack (undefined: PhiModel's default). */
    repack?: boolean;
    /** LoadOptions.threadpool (undefined: PhiModel's default). */
    threadpool?: boolean;
    /** LoadOptions.flashAttention (undefined: PhiModel's default). */
    flashAttention?: "auto" | "on" | "off";
    /** Prompts chosen by an earlier round (keyed by length): used as they are, only re-checked. */
    prompts?: Record<string, BuiltPrompt & { variant: number }>;
}

export interface OursConcurrentJob {
    kind: "concurrent";
    modelPath: string;
    threads: number;
    batchSize: number;
    levels: number[];
    promptTokens: number;
    genTokens: number;
    repeat: number;
    repack?: boolean;
    threadpool?: boolean;
    flashAttention?: "auto" | "on" | "off";
    /** Prompts chosen by an earlier round. */
    prompts?: BuiltPrompt[];
    /** "agent": through LLMPhiAgent in a guild; "generate": concurrent PhiModel.generate() calls. */
    via: "agent" | "generate";
}

/**
 * The "defaults" row: `requests` concurrent generate() calls with default options (no maxTokens) on a model
 * loaded with contextSize = kvCacheSize (the default) and `requests` sequences, so the calls share one KV cache.
 */
export interface OursDefaultsJob {
    kind: "defaults";
    modelPath: string;
    threads: number;
    batchSize: number;
    contextSize: number;
    requests: number;
    promptTokens: number;
    repeat: number;
    repack?: boolean;
    threadpool?: boolean;
    flashAttention?: "auto" | "on" | "off";
    prompts?: BuiltPrompt[];
}

export interface DefaultsRun {
    wallMs: number;
    /** Σ completion tokens / wall time, prompts included. */
    e2eTokS: number;
    completionTokens: number[];
    finishReasons: string[];
}

export interface OursDefaultsResult {
    prompts: BuiltPrompt[];
    runs: DefaultsRun[];
    /** From a run that watched every call's first token (onToken): ms after the calls were made. */
    firstTokenMs: number[];
    doneMs: number[];
    kvCacheSize: number;
    peakRssKb: number;
    cpuMs: number;
    notes: string[];
}

export interface OursSingleResult extends SingleSideResult {
    prompts: Record<string, BuiltPrompt & { variant: number }>;
    info: ModelInfo;
}

export interface ConcurrentRound {
    level: number;
    wallMs: number;
    /** Σ(completion - 1) / max(generationMs): the decode-only aggregate, comparable to phi_loop's aggregate_tok_s. */
    aggregateTokS: number;
    /** Σ completion / wall time (prompt included). */
    e2eTokS: number;
    completionTokens: number[];
    finishReasons: string[];
}

export interface OursConcurrentResult {
    via: "agent" | "generate";
    viaNote: string;
    prompts: BuiltPrompt[];
    rounds: ConcurrentRound[];
    /** KV cells of ours' context (sized for the highest level): the C++ loop gets the same n_ctx at every level. */
    kvCacheSize: number;
    peakRssKb: number;
    cpuMs: number;
    notes: string[];
}

function timing(r: GenerationResult, wallMs: number): RunTiming {
    const u = r.usage;
    return {
        promptTokens: u.promptTokens,
        completionTokens: u.completionTokens,
        promptMs: u.promptMs,
        ttftMs: u.promptMs,
        decodeTokS: u.completionTokens > 1 && u.generationMs > 0 ? (u.completionTokens - 1) / (u.generationMs / 1000) : NaN,
        finishReason: r.finishReason,
        wallMs,
    };
}

async function timedGenerate(model: BenchModel, text: string, maxTokens: number): Promise<{ r: GenerationResult; wallMs: number }> {
    const t0 = performance.now();
    const r = await model.generate(text, { maxTokens, temperature: 0 });
    return { r, wallMs: performance.now() - t0 };
}

const tokenizer = (model: BenchModel) => (text: string) => model.tokenize(text, { special: false });

async function single(job: OursSingleJob): Promise<OursSingleResult> {
    const PhiModel = await importPhiModel();
    const notes: string[] = [];
    const loadOpts: LoadOptions = {
        modelPath: job.modelPath,
        device: "cpu",
        threads: job.threads,
        contextSize: job.contextSize,
        sequences: 1,
        kvCacheSize: job.contextSize,
        batchSize: job.batchSize,
        ...(job.repack !== undefined ? { repack: job.repack } : {}),
        ...(job.threadpool !== undefined ? { threadpool: job.threadpool } : {}),
        ...(job.flashAttention !== undefined ? { flashAttention: job.flashAttention } : {}),
        promptCacheSize: 0, // rows measure prompt processing: a repeated prompt must not come from the prompt cache
    };
    reportProgress("ours: loading (cold)");
    let t0 = performance.now();
    let model = await PhiModel.load(loadOpts);
    const loadColdMs = performance.now() - t0;
    await model.dispose();
    reportProgress("ours: loading (warm)");
    t0 = performance.now();
    model = await PhiModel.load(loadOpts);
    const loadWarmMs = performance.now() - t0;

    // Pick prompts: exactly n tokens, and greedy must not hit EOS within the budget (random weights may).
    // The check run doubles as the warm-up.
    const prompts: OursSingleResult["prompts"] = {};
    for (const [i, n] of job.promptLengths.entries()) {
        const budget = i === 0 ? job.genTokens : job.shortGenTokens;
        let chosen: (BuiltPrompt & { variant: number }) | undefined;
        const given = job.prompts?.[String(n)];
        for (let v = given?.variant ?? 0; v < job.maxVariants && !chosen; v++) {
            reportProgress(`ours: checking the ${n}-token prompt (variant ${v})`);
            const p = given && v === given.variant ? given : buildPrompt(tokenizer(model), n, v);
            const { r } = await timedGenerate(model, p.text, budget);
            if (r.finishReason === "length" && r.usage.completionTokens === budget) chosen = { ...p, variant: v };
            else notes.push(`${n}-token prompt variant ${v}: finishReason ${r.finishReason} after ${r.usage.completionTokens}/${budget} tokens; trying another`);
            if (r.usage.promptTokens !== n) notes.push(`ours: usage.promptTokens ${r.usage.promptTokens} for a ${n}-token prompt`);
        }
        if (!chosen) throw new Error(`bench: no prompt of ${n} tokens generates ${budget} tokens without EOS in ${job.maxVariants} variants`);
        prompts[String(n)] = chosen;
    }

    const runs: Record<string, RunTiming[]> = {};
    let tokens: number[] = [];
    for (let rep = 0; rep < job.repeat; rep++) {
        for (const [i, n] of job.promptLengths.entries()) {
            const budget = i === 0 ? job.genTokens : job.shortGenTokens;
            reportProgress(`ours: ${n}-token prompt + ${budget} tokens, run ${rep + 1}/${job.repeat}`);
            const { r, wallMs } = await timedGenerate(model, prompts[String(n)]!.text, budget);
            (runs[String(n)] ??= []).push(timing(r, wallMs));
            if (i === 0 && rep === 0) tokens = r.tokens;
        }
    }
    const info = model.info;
    await model.dispose();
    const peak = peakRssKb(); // before the mmap-only loads below

    // Warm load with the weights purely memory-mapped (repack: false), when the runs above repacked them.
    let loadWarmMmapMs: number | undefined;
    if (job.repack !== false) {
        for (let i = 0; i < 2; i++) {
            reportProgress(`ours: loading with repack: false (${i === 0 ? "cold" : "warm"})`);
            t0 = performance.now();
            const m = await PhiModel.load({ ...loadOpts, repack: false });
            loadWarmMmapMs = performance.now() - t0;
            await m.dispose();
        }
    }
    return { side: "ours", loadColdMs, loadWarmMs, loadWarmMmapMs, runs, tokens, peakRssKb: peak, cpuMs: ownCpuMs(), notes, prompts, info };
}

async function concurrent(job: OursConcurrentJob): Promise<OursConcurrentResult> {
    const PhiModel = await importPhiModel();
    const notes: string[] = [];
    const maxLevel = Math.max(...job.levels);
    const perSeq = job.promptTokens + job.genTokens + 8;
    // the agent's contextSize is per request and also its KV cache size: room for every request at once
    const agentContext = Math.ceil((maxLevel * perSeq) / 256) * 256;
    reportProgress("ours (concurrent): loading");
    const model = await PhiModel.load({
        modelPath: job.modelPath,
        device: "cpu",
        threads: job.threads,
        contextSize: perSeq,
        sequences: maxLevel,
        kvCacheSize: maxLevel * perSeq,
        batchSize: job.batchSize,
        ...(job.repack !== undefined ? { repack: job.repack } : {}),
        ...(job.threadpool !== undefined ? { threadpool: job.threadpool } : {}),
        ...(job.flashAttention !== undefined ? { flashAttention: job.flashAttention } : {}),
        promptCacheSize: 0, // rows measure prompt processing: a repeated prompt must not come from the prompt cache
    });
    // Distinct prompts of the same length; each must run its full budget under greedy (checked all together,
    // which also warms up).
    const prompts: BuiltPrompt[] = job.prompts ? job.prompts.slice(0, maxLevel) : [];
    let variant = 100;  // replacements come from variants no other prompt uses
    for (let i = prompts.length; i < maxLevel; i++) prompts.push(buildPrompt(tokenizer(model), job.promptTokens, i));
    for (let attempt = 0; attempt < 4; attempt++) {
        reportProgress(`ours (concurrent): checking ${maxLevel} prompts`);
        const rs = await Promise.all(prompts.map((p) => model.generate(p.text, { maxTokens: job.genTokens, temperature: 0 })));
        const bad = rs.map((r, i) => (r.usage.completionTokens === job.genTokens ? -1 : i)).filter((i) => i >= 0);
        if (!bad.length) break;
        for (const i of bad) {
            notes.push(`concurrent prompt ${i} stopped (${rs[i]!.finishReason}) after ${rs[i]!.usage.completionTokens}; replaced`);
            prompts[i] = buildPrompt(tokenizer(model), job.promptTokens, variant++);
        }
    }

    const rounds: ConcurrentRound[] = [];
    let viaNote: string;
    if (job.via === "agent") {
        // the agent loads its own PhiModel (sequences = the highest level); ours goes first
        await model.dispose();
        viaNote = "LLMPhiAgent in a guild (GenerationPromptRequests published at once, replies via a probe)";
        rounds.push(...await runAgentConcurrency(prompts, job, agentContext, (s) => reportProgress(s)));
    } else {
        viaNote = "concurrent PhiModel.generate() calls on one model";
        for (const level of job.levels) {
            for (let rep = 0; rep < job.repeat; rep++) {
                reportProgress(`ours (concurrent): ${level} request(s), run ${rep + 1}/${job.repeat}`);
                const t0 = performance.now();
                const rs = await Promise.all(
                    prompts.slice(0, level).map((p) => model.generate(p.text, { maxTokens: job.genTokens, temperature: 0 })),
                );
                const wallMs = performance.now() - t0;
                const gen = Math.max(...rs.map((r) => r.usage.generationMs));
                const decoded = rs.reduce((s, r) => s + Math.max(0, r.usage.completionTokens - 1), 0);
                const total = rs.reduce((s, r) => s + r.usage.completionTokens, 0);
                rounds.push({
                    level,
                    wallMs,
                    aggregateTokS: gen > 0 ? decoded / (gen / 1000) : NaN,
                    e2eTokS: total / (wallMs / 1000),
                    completionTokens: rs.map((r) => r.usage.completionTokens),
                    finishReasons: rs.map((r) => r.finishReason),
                });
            }
        }
        await model.dispose();
    }
    const kvCacheSize = job.via === "agent" ? agentContext : maxLevel * perSeq;
    return { via: job.via, viaNote, prompts, rounds, kvCacheSize, peakRssKb: peakRssKb(), cpuMs: ownCpuMs(), notes };
}

async function defaults(job: OursDefaultsJob): Promise<OursDefaultsResult> {
    const PhiModel = await importPhiModel();
    const notes: string[] = [];
    reportProgress("ours (defaults): loading");
    const model = await PhiModel.load({
        modelPath: job.modelPath,
        device: "cpu",
        threads: job.threads,
        contextSize: job.contextSize,
        sequences: job.requests,
        batchSize: job.batchSize,
        ...(job.repack !== undefined ? { repack: job.repack } : {}),
        ...(job.threadpool !== undefined ? { threadpool: job.threadpool } : {}),
        ...(job.flashAttention !== undefined ? { flashAttention: job.flashAttention } : {}),
        promptCacheSize: 0, // rows measure prompt processing: a repeated prompt must not come from the prompt cache
    });
    const all = () => Promise.all(prompts.map((p) => model.generate(p.text)));
    // Prompts whose calls all run until the cache is shared out ("context"), none stopping at EOS; also the warm-up.
    const prompts: BuiltPrompt[] = job.prompts ? job.prompts.slice(0, job.requests) : [];
    let variant = 200;
    for (let i = prompts.length; i < job.requests; i++) prompts.push(buildPrompt(tokenizer(model), job.promptTokens, i));
    for (let attempt = 0; attempt < 6; attempt++) {
        reportProgress(`ours (defaults): checking ${job.requests} prompts`);
        const rs = await all();
        const bad = rs.map((r, i) => (r.finishReason === "context" ? -1 : i)).filter((i) => i >= 0);
        if (!bad.length) break;
        for (const i of bad) {
            notes.push(`defaults prompt ${i} ended with ${rs[i]!.finishReason} after ${rs[i]!.usage.completionTokens}; replaced`);
            prompts[i] = buildPrompt(tokenizer(model), job.promptTokens, variant++);
        }
    }
    // Who gets a first token when: one run watching the tokens (onToken is not on the measured runs).
    const t0 = performance.now();
    const firstTokenMs = prompts.map(() => NaN);
    const doneMs = prompts.map(() => NaN);
    await Promise.all(prompts.map((p, i) => model.generate(p.text, {
        onToken: () => { if (Number.isNaN(firstTokenMs[i]!)) firstTokenMs[i] = performance.now() - t0; },
    }).then(() => { doneMs[i] = performance.now() - t0; })));
    const runs: DefaultsRun[] = [];
    for (let rep = 0; rep < job.repeat; rep++) {
        reportProgress(`ours (defaults): ${job.requests} concurrent default calls, run ${rep + 1}/${job.repeat}`);
        const start = performance.now();
        const rs = await all();
        const wallMs = performance.now() - start;
        runs.push({
            wallMs,
            e2eTokS: rs.reduce((s, r) => s + r.usage.completionTokens, 0) / (wallMs / 1000),
            completionTokens: rs.map((r) => r.usage.completionTokens),
            finishReasons: rs.map((r) => r.finishReason),
        });
    }
    const kvCacheSize = model.info.runtime.kvCacheSize;
    await model.dispose();
    return { prompts, runs, firstTokenMs, doneMs, kvCacheSize, peakRssKb: peakRssKb(), cpuMs: ownCpuMs(), notes };
}

const job = readJob<OursSingleJob | OursConcurrentJob | OursDefaultsJob>();
try {
    reportResult(job.kind === "single" ? await single(job) : job.kind === "concurrent" ? await concurrent(job) : await defaults(job));
} catch (err) {
    console.error((err as Error).stack ?? String(err));
    process.exitCode = 1;
}
