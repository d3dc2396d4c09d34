/**
 * `npm run bench`: PhiModel against a plain C++ loop over the same llama.cpp libraries and threads, and against
 * node-llama-cpp's LlamaCompletion on the same GGUF, side by side. See bench/README.md.
 *
 *   node dist/scripts/bench.js [--shapes tiny,phi2] [--types q4_k_m,q8_0] [--threads N] [--quick]
 *                              [--repeat R] [--sides ours,cpp,nlc] [--levels 1,2,4,8] [--no-concurrency]
 *                              [--json out.json]
 *
 * Every side runs in its own child process (own memory, own threads); prompts have exactly the advertised token
 * count on every side; decoding runs a fixed number of greedy tokens (prompts are chosen so that greedy does not
 * hit EOS within the budget, and every side's count is checked). Progress goes to stderr, the table to stdout, the
 * raw numbers to bench/results/*.json.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ensureTestModel, TEST_MODEL_SHAPES, TEST_MODEL_TYPES, type TestModelShape, type TestModelType } from "../src/testModel/makeTestModel.js";
import { choiceFlag, intFlag, listFlag, scriptArgs, UsageError } from "./args.js";
import { kvCacheBytes } from "../src/model/limits.js";
import { LOAD_DEFAULTS } from "../src/model/options.js";
import {
    best,
    cpuSnapshot,
    fmtMb,
    fmtMs,
    fmtRate,
    fmtRatio,
    foreignLoad,
    least,
    LiveLine,
    median,
    repoRoot,
    runWorker,
    waitForQuiet,
    type BuiltPrompt,
    type RunTiming,
    type SingleSideResult,
} from "./bench-lib/common.js";
import { buildCppLoop, findLlamaLibDir, runCppLoop, type CppLoopResult } from "./bench-lib/cpp.js";
import type { NlcSingleJob } from "./bench-lib/worker-nlc.js";
import type { OursConcurrentJob, OursConcurrentResult, OursDefaultsJob, OursDefaultsResult, OursSingleJob, OursSingleResult } from "./bench-lib/worker-ours.js";

type Side = "ours" | "cpp" | "nlc";

interface Options {
    shapes: TestModelShape[];
    types: TestModelType[];
    threads: number;
    quick: boolean;
    repeat?: number;
    rounds?: number;
    waitQuiet: boolean;
    via: "agent" | "generate";
    repack: boolean;
    threadpool: boolean;
    flashAttention: "auto" | "on" | "off";
    sides: Side[];
    levels: number[];
    concurrency: boolean;
    /** Only the "defaults" row (8 concurrent generate() calls with default options on the tiny shape). */
    defaultsOnly: boolean;
    json?: string;
}

const USAGE = `usage: node dist/scripts/bench.js [--shapes tiny,phi2] [--types q4_k_m,q8_0] [--threads N] [--quick]
                [--repeat R] [--rounds N] [--no-wait] [--sides ours,cpp,nlc] [--levels 1,2,4,8]
                [--via agent|generate] [--no-repack] [--no-threadpool] [--flash-attn auto|on|off] [--no-concurrency] [--defaults-only] [--json FILE]`;

const SIDES = ["ours", "cpp", "nlc"] as const;

function parseArgs(argv: string[]): Options {
    return scriptArgs("bench", USAGE, {
        shapes: { type: "string" }, types: { type: "string" }, threads: { type: "string" }, quick: { type: "boolean" },
        repeat: { type: "string" }, rounds: { type: "string" }, "no-wait": { type: "boolean" }, sides: { type: "string" },
        levels: { type: "string" }, via: { type: "string" }, "no-repack": { type: "boolean" }, "no-threadpool": { type: "boolean" },
        "flash-attn": { type: "string" }, "no-concurrency": { type: "boolean" }, "defaults-only": { type: "boolean" }, json: { type: "string" },
    }, (v) => {
        const sides = listFlag("sides", v.sides, SIDES) ?? [...SIDES];
        if (!sides.includes("ours")) throw new UsageError("--sides must include ours (it picks the prompts every side uses)");
        const quick = v.quick === true;
        const o: Options = {
            shapes: listFlag("shapes", v.shapes, TEST_MODEL_SHAPES) ?? (quick ? ["tiny"] : ["tiny", "phi2"]),
            types: listFlag("types", v.types, TEST_MODEL_TYPES) ?? ["q4_k_m", "q8_0"],
            threads: intFlag("threads", v.threads, 1) ?? Math.max(1, os.availableParallelism()),
            quick,
            waitQuiet: v["no-wait"] !== true,
            via: choiceFlag("via", v.via, ["agent", "generate"] as const) ?? "agent",
            repack: v["no-repack"] !== true,
            threadpool: v["no-threadpool"] !== true,
            flashAttention: choiceFlag("flash-attn", v["flash-attn"], ["auto", "on", "off"] as const) ?? "auto",
            sides,
            levels: (listFlag("levels", v.levels) ?? ["1", "2", "4", "8"]).map((s) => intFlag("levels", s, 1)!),
            concurrency: v["no-concurrency"] !== true,
            defaultsOnly: v["defaults-only"] === true,
        };
        const repeat = intFlag("repeat", v.repeat, 1);
        const rounds = intFlag("rounds", v.rounds, 1);
        if (repeat !== undefined) o.repeat = repeat;
        if (rounds !== undefined) o.rounds = rounds;
        if (v.json !== undefined) o.json = v.json;
        return o;
    }, argv);
}

/** Per-shape workload. Sized so the default run stays around 15 minutes on 2 cores. */
function plan(shape: TestModelShape, quick: boolean, repeat?: number, rounds?: number) {
    if (shape === "tiny") {
        return {
            contextSize: 1024, promptLengths: [128, 512], genTokens: quick ? 96 : 128, shortGenTokens: 64,
            rounds: rounds ?? 2, repeat: repeat ?? 3, concPrompt: 32, concGen: quick ? 48 : 64, concRounds: rounds ?? 3, concRepeat: repeat ?? 4,
        };
    }
    return {
        contextSize: 1024, promptLengths: [128, 512], genTokens: quick ? 32 : 64, shortGenTokens: quick ? 8 : 16,
        rounds: rounds ?? 2, repeat: repeat ?? (quick ? 1 : 2), concPrompt: 32, concGen: quick ? 16 : 32, concRounds: rounds ?? 1, concRepeat: repeat ?? 2,
    };
}

/** One side's runs over all rounds: every run kept, the best loads, the highest peak RSS. */
function mergeSide(list: SingleSideResult[]): SingleSideResult {
    const runs: Record<string, RunTiming[]> = {};
    for (const s of list) for (const [k, v] of Object.entries(s.runs)) (runs[k] ??= []).push(...v);
    return {
        side: list[0]!.side,
        loadColdMs: least(list.map((s) => s.loadColdMs)),
        loadWarmMs: least(list.map((s) => s.loadWarmMs)),
        loadWarmMmapMs: least(list.map((s) => s.loadWarmMmapMs ?? NaN)),
        runs,
        tokens: list[0]!.tokens,
        peakRssKb: Math.max(...list.map((s) => s.peakRssKb)),
        cpuMs: list.reduce((a, s) => a + s.cpuMs, 0),
        notes: [...new Set(list.flatMap((s) => s.notes))],
    };
}

// ---------------------------------------------------------------------------------------------------------------

interface SideSummary {
    loadColdMs: number;
    loadWarmMs: number;
    loadWarmMmapMs: number;              // NaN: not measured
    prompt: Record<string, number>;      // best prompt tok/s per prompt length
    ttft: Record<string, number>;        // best TTFT ms per prompt length
    decode: number;                      // best decode tok/s (after the first prompt length)
    decodeLong: number;                  // best decode tok/s after the second (longer) prompt
    decodeMedian: number;
    peakRssKb: number;
}

function summarize(s: SingleSideResult, lengths: number[]): SideSummary {
    const prompt: Record<string, number> = {};
    const ttft: Record<string, number> = {};
    for (const n of lengths) {
        const runs: RunTiming[] = s.runs[String(n)] ?? [];
        prompt[n] = best(runs.map((r) => r.promptTokens / (r.promptMs / 1000)));
        ttft[n] = least(runs.map((r) => r.ttftMs));
    }
    const first = s.runs[String(lengths[0])] ?? [];
    return {
        loadColdMs: s.loadColdMs,
        loadWarmMs: s.loadWarmMs,
        loadWarmMmapMs: s.loadWarmMmapMs ?? NaN,
        prompt,
        ttft,
        decode: best(first.map((r) => r.decodeTokS)),
        decodeLong: best((s.runs[String(lengths[1])] ?? []).map((r) => r.decodeTokS)),
        decodeMedian: median(first.map((r) => r.decodeTokS)),
        peakRssKb: s.peakRssKb,
    };
}

function cppToSide(main: CppLoopResult, long: CppLoopResult | undefined, mmapOnly: CppLoopResult | undefined, lengths: number[]): SingleSideResult {
    const toRuns = (r: CppLoopResult): RunTiming[] =>
        r.prompt_ms.map((_pm, i) => ({
            promptTokens: r.prompt_tokens,
            completionTokens: r.gen_tokens,
            promptMs: r.ttft_ms[i]!, // prompt decode + first sample, like ours (usage.promptMs)
            ttftMs: r.ttft_ms[i]!,
            decodeTokS: r.decode_tok_s[i] ?? NaN,
            finishReason: "length",
            wallMs: NaN,
        }));
    const runs: Record<string, RunTiming[]> = { [String(lengths[0])]: toRuns(main) };
    if (long) runs[String(lengths[1])] = toRuns(long);
    const notes: string[] = [];
    for (const r of [main, long]) {
        if (r && r.first_eog.some((e) => e >= 0)) notes.push(`C++ loop: greedy sampled EOS at step ${r.first_eog.join(",")} (it keeps going; the other sides would stop)`);
    }
    return {
        side: "cpp",
        loadColdMs: main.backend_ms + main.load_ms,
        loadWarmMs: main.load_warm_ms ?? NaN,
        loadWarmMmapMs: mmapOnly?.load_warm_ms ?? NaN,
        runs,
        tokens: main.tokens,
        peakRssKb: Math.max(main.peak_rss_kb, long?.peak_rss_kb ?? 0),
        cpuMs: main.cpu_ms + (long?.cpu_ms ?? 0),
        notes,
        extra: { flashAttn: main.flash_attn, threadpool: main.threadpool, nCtx: main.n_ctx, cpu: main.cpu },
    };
}

function compareTokens(a: number[], b: number[]): string {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return `differ from token ${i}`;
    return a.length === b.length ? "identical" : `identical for ${n} tokens (lengths ${a.length}/${b.length})`;
}

interface ModelReport {
    shape: TestModelShape;
    type: TestModelType;
    path: string;
    fileBytes: number;
    plan: ReturnType<typeof plan>;
    raw: Partial<Record<Side, unknown[]>>;
    summary: Partial<Record<Side, SideSummary>>;
    ratios: { vsCpp?: Record<string, number>; vsNlc?: Record<string, number> };
    checks: string[];
    errors: string[];
    /** Share of the CPU other processes used while each side ran, per run. */
    load: Record<string, number[]>;
}

/** 8 concurrent generate() calls with default options (no maxTokens) sharing one KV cache, against the C++ loop. */
interface DefaultsReport {
    shape: TestModelShape;
    type: TestModelType;
    requests: number;
    promptTokens: number;
    contextSize: number;
    /** Per ours run: completion tokens of each call. */
    oursRuns: { e2eTokS: number; completionTokens: number[]; finishReasons: string[] }[];
    cppGenTokens: number;
    cppRuns: number[];
    ours: number;
    cpp: number;
    ratio: number;
    firstTokenMs: number[];
    doneMs: number[];
    allFirstBeforeAnyDone: boolean;
    notes: string[];
    errors: string[];
    load: Record<string, number[]>;
}

interface ConcurrencyReport {
    shape: TestModelShape;
    type: TestModelType;
    via: string;
    promptTokens: number;
    genTokens: number;
    /** ratio = oursE2e / cppE2e (the comparable one); decodeRatio = ours / cpp (decode-only aggregates, see DEFINITIONS). */
    levels: { level: number; ours: number; oursE2e: number; cpp: number; cppE2e: number; ratio: number; decodeRatio: number; oursRuns: number[]; cppRuns: number[] }[];
    notes: string[];
    errors: string[];
    load: Record<string, number[]>;
}

function ratios(ours: SideSummary, other: SideSummary, lengths: number[]): Record<string, number> {
    const r: Record<string, number> = {};
    for (const n of lengths) {
        r[`prompt${n}`] = ours.prompt[n]! / other.prompt[n]!;
        r[`ttft${n}`] = other.ttft[n]! / ours.ttft[n]!; // speed ratio: > 1 = ours faster
    }
    r.decode = ours.decode / other.decode;
    r.decodeLong = ours.decodeLong / other.decodeLong;
    r.loadWarm = other.loadWarmMs / ours.loadWarmMs;
    r.loadWarmMmap = other.loadWarmMmapMs / ours.loadWarmMmapMs;
    return r;
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
    const opts = parseArgs(process.argv.slice(2));
    const root = repoRoot();
    const dist = path.join(root, "dist", "scripts", "bench-lib");
    const live = new LiveLine();
    const started = new Date();
    const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-bench-"));
    process.on("exit", () => fs.rmSync(tmpDir, { recursive: true, force: true }));

    live.log(`bench: shapes ${opts.shapes.join(",")}, types ${opts.types.join(",")}, ${opts.threads} thread(s), sides ${opts.sides.join(",")}${opts.quick ? ", quick" : ""}${opts.repack ? "" : ", no repack (node-llama-cpp keeps its default)"}${opts.threadpool ? ", persistent threadpool (ours and the C++ loop)" : ", per-graph threads"}`);

    // 1. Test models (phi2-shape ones take minutes to write the first time).
    const models: { shape: TestModelShape; type: TestModelType; path: string }[] = [];
    for (const shape of opts.shapes) {
        for (const type of opts.types) {
            const label = `model ${shape} ${type}`;
            live.set(`${label}: checking`);
            let lastPct = -1;
            const p = await ensureTestModel({
                shape, type, seed: 1,
                onProgress: (f, l) => {
                    const pct = Math.floor(f * 100);
                    if (pct !== lastPct) {
                        lastPct = pct;
                        live.set(`${label}: writing ${bar(f)} ${pct}% ${l}`);
                    }
                },
            });
            models.push({ shape, type, path: p });
            live.log(`${label}: ${path.relative(root, p)} (${(fs.statSync(p).size / 1e6).toFixed(0)} MB)`);
        }
    }

    // 2. The C++ loop.
    const libDir = findLlamaLibDir(root);
    let cppBin: string | undefined;
    const setupErrors: string[] = [];
    if (opts.sides.includes("cpp")) {
        live.set("building the C++ loop");
        try {
            cppBin = buildCppLoop(root, libDir, (s) => live.log(s));
        } catch (err) {
            setupErrors.push(`C++ loop skipped: ${(err as Error).message}`);
            live.log(setupErrors.at(-1)!);
        }
    }

    // 3. Measurements. Sides run one after the other, each in its own process, in `rounds` rounds (ours, C++,
    //    node-llama-cpp, then again), so that a burst of load from other processes hits no side alone; each
    //    number is the best over all rounds. Before each side we wait (a while) for the machine to be quiet, and
    //    we record how much CPU other processes used while it ran.
    const reports: ModelReport[] = [];
    const concurrency: ConcurrencyReport[] = [];
    const WORKER_TIMEOUT = 20 * 60 * 1000;
    const cores = os.availableParallelism();
    // waiting for a quiet machine is capped for the whole run, so a busy machine does not make the bench endless
    let waitBudgetMs = opts.quick ? 30_000 : 180_000;
    const measured = async <T>(rep: { load: Record<string, number[]> }, label: string, progress: (s: string) => void,
        fn: () => Promise<T>, cpuOf: (r: T) => number): Promise<T> => {
        if (opts.waitQuiet && waitBudgetMs > 0) {
            const t = Date.now();
            await waitForQuiet(0.15, Math.min(waitBudgetMs, opts.quick ? 15_000 : 60_000), (busy) => progress(`waiting for other processes to calm down (they use ${(busy * 100).toFixed(0)}% of the CPU)`));
            waitBudgetMs -= Date.now() - t;
        }
        const a = cpuSnapshot();
        const r = await fn();
        const load = foreignLoad(a, cpuSnapshot(), cpuOf(r), cores);
        (rep.load[label] ??= []).push(load);
        return r;
    };

    const defaultsRows: DefaultsReport[] = [];
    const runDefaultsRow = async (m: { shape: TestModelShape; type: TestModelType; path: string }, pl: ReturnType<typeof plan>, tag: string, progress: (s: string) => void) => {
        const requests = 8;
        const d: DefaultsReport = {
            shape: m.shape, type: m.type, requests, promptTokens: pl.concPrompt, contextSize: pl.contextSize, oursRuns: [], cppGenTokens: 0,
            cppRuns: [], ours: NaN, cpp: NaN, ratio: NaN, firstTokenMs: [], doneMs: [], allFirstBeforeAnyDone: false, notes: [], errors: [], load: {},
        };
        defaultsRows.push(d);
        let prompts: BuiltPrompt[] | undefined;
        try {
            // rounds alternate the sides: ours, C++, ours, C++, ...
            for (let round = 1; round <= pl.concRounds; round++) {
                const rtag = ` (defaults row, round ${round}/${pl.concRounds})`;
                const rprogress = (s: string) => progress(s + rtag);
                const job: OursDefaultsJob = {
                    kind: "defaults", modelPath: m.path, threads: opts.threads, batchSize: LOAD_DEFAULTS.batchSize, contextSize: pl.contextSize, requests,
                    promptTokens: pl.concPrompt, repeat: pl.concRepeat, repack: opts.repack, threadpool: opts.threadpool, flashAttention: opts.flashAttention,
                    ...(prompts ? { prompts } : {}),
                };
                const od = await measured(d, "ours", rprogress,
                    () => runWorker<OursDefaultsResult>(path.join(dist, "worker-ours.js"), job, rprogress, WORKER_TIMEOUT), (r) => r.cpuMs);
                prompts = od.prompts;
                d.notes.push(...od.notes);
                d.oursRuns.push(...od.runs);
                if (round === 1) {
                    d.firstTokenMs = od.firstTokenMs;
                    d.doneMs = od.doneMs;
                    d.allFirstBeforeAnyDone = Math.max(...od.firstTokenMs) < Math.min(...od.doneMs);
                    // the C++ loop decodes the same prompts as 8 sequences, as many tokens each as ours gave a call on average
                    const mean = od.runs.flatMap((r) => r.completionTokens).reduce((a, b) => a + b, 0) / (od.runs.length * requests);
                    // (phi_loop wants S × (prompt + gen + 1) cells: with the same KV size as ours that is at most 2 tokens fewer)
                    d.cppGenTokens = Math.min(Math.floor(mean), Math.floor(od.kvCacheSize / requests) - pl.concPrompt - 1);
                }
                if (!cppBin) continue;
                const cpp = await measured(d, "cpp", rprogress, () => {
                    rprogress(`C++ loop: ${requests} sequences x ${d.cppGenTokens} tokens x${pl.concRepeat}`);
                    return runCppLoop(cppBin!, {
                        model: m.path, threads: opts.threads, promptIds: od.prompts.map((p) => p.ids), genTokens: d.cppGenTokens,
                        sequences: requests, repeat: pl.concRepeat, ctx: od.kvCacheSize, repack: opts.repack, threadpool: opts.threadpool, flashAttn: opts.flashAttention,
                    }, tmpDir, WORKER_TIMEOUT);
                }, (r) => r.cpu_ms);
                d.cppRuns.push(...cpp.e2e_aggregate_tok_s);
            }
        } catch (err) {
            d.errors.push((err as Error).message);
            live.log(`${tag} defaults row FAILED: ${(err as Error).message}`);
        }
        d.ours = best(d.oursRuns.map((r) => r.e2eTokS));
        d.cpp = best(d.cppRuns);
        d.ratio = d.ours / d.cpp;
        d.notes = [...new Set(d.notes)];
        {
            for (const [label, loads] of Object.entries(d.load)) {
                const worst = best(loads);
                if (worst > 0.1) d.notes.push(`other processes used up to ${(worst * 100).toFixed(0)}% of the CPU while "${label}" ran: its numbers are less reliable`);
            }
            live.log(`${tag} defaults row: ${fmtRate(d.ours)}/${fmtRate(d.cpp)} tok/s (ours/C++ e2e) = ${fmtRatio(d.ratio)}; first tokens before any finished: ${d.allFirstBeforeAnyDone}`);
        }
    };

    for (const [mi, m] of models.entries()) {
        const pl = plan(m.shape, opts.quick, opts.repeat, opts.rounds);
        if (opts.defaultsOnly) pl.rounds = 0;
        const tag = `[${mi + 1}/${models.length} ${m.shape} ${m.type}]`;
        const rep: ModelReport = {
            shape: m.shape, type: m.type, path: path.relative(root, m.path), fileBytes: fs.statSync(m.path).size,
            plan: pl, raw: {}, summary: {}, ratios: {}, checks: [], errors: [], load: {},
        };
        reports.push(rep);
        const progress = (s: string) => live.set(`${tag} ${s}`);
        const sides: Partial<Record<Side, SingleSideResult[]>> = {};
        const raw: Partial<Record<Side, unknown[]>> = {};
        let prompts: OursSingleResult["prompts"] | undefined;

        for (let round = 1; round <= pl.rounds; round++) {
            const rtag = pl.rounds > 1 ? ` (round ${round}/${pl.rounds})` : "";
            const rprogress = (s: string) => progress(s + rtag);
            // ours first: it picks the prompts
            let ours: OursSingleResult;
            try {
                const job: OursSingleJob = {
                    kind: "single", modelPath: m.path, threads: opts.threads, contextSize: pl.contextSize, batchSize: LOAD_DEFAULTS.batchSize,
                    promptLengths: pl.promptLengths, genTokens: pl.genTokens, shortGenTokens: pl.shortGenTokens,
                    repeat: pl.repeat, maxVariants: 12, repack: opts.repack, threadpool: opts.threadpool, flashAttention: opts.flashAttention, ...(prompts ? { prompts } : {}),
                };
                ours = await measured(rep, "ours", rprogress,
                    () => runWorker<OursSingleResult>(path.join(dist, "worker-ours.js"), job, rprogress, WORKER_TIMEOUT), (r) => r.cpuMs);
                prompts = ours.prompts;
                (sides.ours ??= []).push(ours);
                (raw.ours ??= []).push(ours);
                const s = summarize(ours, pl.promptLengths);
                live.log(`${tag} ours${rtag}: decode ${fmtRate(s.decode)} tok/s, prompt128 ${fmtRate(s.prompt[128]!)} tok/s`);
            } catch (err) {
                rep.errors.push(`ours: ${(err as Error).message}`);
                live.log(`${tag} ours FAILED: ${(err as Error).message}`);
                break;
            }
            const pIds = (n: number) => ours.prompts[String(n)]!.ids;

            if (cppBin) {
                try {
                    const [a, b, c] = await measured(rep, "cpp", rprogress, async () => {
                        rprogress(`C++ loop: ${pl.promptLengths[0]}-token prompt + ${pl.genTokens} tokens x${pl.repeat}`);
                        const a = await runCppLoop(cppBin!, {
                            model: m.path, threads: opts.threads, promptIds: [pIds(pl.promptLengths[0]!)], genTokens: pl.genTokens,
                            sequences: 1, repeat: pl.repeat, ctx: pl.contextSize, reload: true, repack: opts.repack, threadpool: opts.threadpool, flashAttn: opts.flashAttention,
                        }, tmpDir, WORKER_TIMEOUT);
                        rprogress(`C++ loop: ${pl.promptLengths[1]}-token prompt + ${pl.shortGenTokens} tokens x${pl.repeat}`);
                        const b = await runCppLoop(cppBin!, {
                            model: m.path, threads: opts.threads, promptIds: [pIds(pl.promptLengths[1]!)], genTokens: pl.shortGenTokens,
                            sequences: 1, repeat: pl.repeat, ctx: pl.contextSize, repack: opts.repack, threadpool: opts.threadpool, flashAttn: opts.flashAttention,
                        }, tmpDir, WORKER_TIMEOUT);
                        let c: CppLoopResult | undefined;
                        if (opts.repack) {
                            rprogress("C++ loop: loading with --no-repack (twice)");
                            c = await runCppLoop(cppBin!, {
                                model: m.path, threads: opts.threads, promptIds: [pIds(pl.promptLengths[0]!).slice(0, 8)], genTokens: 2,
                                sequences: 1, repeat: 1, ctx: pl.contextSize, reload: true, repack: false, threadpool: opts.threadpool, flashAttn: opts.flashAttention,
                            }, tmpDir, WORKER_TIMEOUT);
                        }
                        return [a, b, c] as const;
                    }, ([a, b, c]) => a.cpu_ms + b.cpu_ms + (c?.cpu_ms ?? 0));
                    const side = cppToSide(a, b, c, pl.promptLengths);
                    (sides.cpp ??= []).push(side);
                    (raw.cpp ??= []).push({ main: a, long: b });
                    const s = summarize(side, pl.promptLengths);
                    live.log(`${tag} C++${rtag}:  decode ${fmtRate(s.decode)} tok/s, prompt128 ${fmtRate(s.prompt[128]!)} tok/s`);
                } catch (err) {
                    rep.errors.push(`cpp: ${(err as Error).message}`);
                    live.log(`${tag} C++ loop FAILED: ${(err as Error).message}`);
                }
            }

            if (opts.sides.includes("nlc")) {
                try {
                    const job: NlcSingleJob = {
                        modelPath: m.path, threads: opts.threads, contextSize: pl.contextSize, batchSize: LOAD_DEFAULTS.batchSize,
                        flashAttention: opts.flashAttention === "auto" ? "auto" : opts.flashAttention === "on",
                        prompts: pl.promptLengths.map((n, i) => ({ n, text: ours.prompts[String(n)]!.text, maxTokens: i === 0 ? pl.genTokens : pl.shortGenTokens })),
                        repeat: pl.repeat,
                    };
                    const nlc = await measured(rep, "nlc", rprogress,
                        () => runWorker<SingleSideResult>(path.join(dist, "worker-nlc.js"), job, rprogress, WORKER_TIMEOUT), (r) => r.cpuMs);
                    (sides.nlc ??= []).push(nlc);
                    (raw.nlc ??= []).push(nlc);
                    const s = summarize(nlc, pl.promptLengths);
                    live.log(`${tag} node-llama-cpp${rtag}: decode ${fmtRate(s.decode)} tok/s, prompt128 ${fmtRate(s.prompt[128]!)} tok/s`);
                } catch (err) {
                    rep.errors.push(`node-llama-cpp: ${(err as Error).message}`);
                    live.log(`${tag} node-llama-cpp FAILED: ${(err as Error).message}`);
                }
            }
        }
        rep.raw = raw;
        const merged: Partial<Record<Side, SingleSideResult>> = {};
        for (const side of ["ours", "cpp", "nlc"] as Side[]) {
            const list = sides[side];
            if (list?.length) {
                merged[side] = mergeSide(list);
                rep.summary[side] = summarize(merged[side]!, pl.promptLengths);
            }
        }
        const ours = merged.ours;
        if (ours) {
            // consistency checks: same prompts and budgets everywhere, same greedy tokens
            rep.checks.push(...ours.notes);
            if (merged.cpp) {
                rep.checks.push(...merged.cpp.notes);
                rep.checks.push(`greedy tokens ours vs C++: ${compareTokens(ours.tokens, merged.cpp.tokens)}`);
            }
            if (merged.nlc) {
                rep.checks.push(...merged.nlc.notes);
                rep.checks.push(`greedy tokens ours vs node-llama-cpp: ${compareTokens(ours.tokens, merged.nlc.tokens)}`);
            }
            for (const [i, n] of pl.promptLengths.entries()) {
                const budget = i === 0 ? pl.genTokens : pl.shortGenTokens;
                for (const [side, s] of [["ours", ours], ["node-llama-cpp", merged.nlc]] as const) {
                    for (const r of s?.runs[String(n)] ?? []) {
                        if (r.completionTokens !== budget) rep.checks.push(`MISMATCH ${side}: ${r.completionTokens}/${budget} tokens after the ${n}-token prompt (${r.finishReason})`);
                        if (side === "ours" && r.promptTokens !== n) rep.checks.push(`MISMATCH ours: ${r.promptTokens} prompt tokens for a ${n}-token prompt`);
                    }
                }
            }
            rep.checks = [...new Set(rep.checks)];
        }
        for (const [label, loads] of Object.entries(rep.load)) {
            const worst = best(loads);
            if (worst > 0.1) rep.checks.push(`other processes used up to ${(worst * 100).toFixed(0)}% of the CPU while "${label}" ran: its numbers are less reliable`);
        }
        if (rep.summary.ours && rep.summary.cpp) rep.ratios.vsCpp = ratios(rep.summary.ours, rep.summary.cpp, pl.promptLengths);
        if (rep.summary.ours && rep.summary.nlc) rep.ratios.vsNlc = ratios(rep.summary.ours, rep.summary.nlc, pl.promptLengths);

        // 4. Concurrency rows: once per shape, on its first type.
        if (opts.concurrency && m.shape === "tiny" && m.type === opts.types[0]) {
            await runDefaultsRow(m, pl, tag, progress);
        }
        if (opts.concurrency && !opts.defaultsOnly && m.type === opts.types[0] && ours) {
            const c: ConcurrencyReport = {
                shape: m.shape, type: m.type, via: "", promptTokens: pl.concPrompt, genTokens: pl.concGen, levels: [], notes: [], errors: [], load: {},
            };
            concurrency.push(c);
            const oursRounds: OursConcurrentResult[] = [];
            const cppByLevel = new Map<number, CppLoopResult[]>();
            let cprompts: BuiltPrompt[] | undefined;
            try {
                for (let round = 1; round <= pl.concRounds; round++) {
                    const rtag = pl.concRounds > 1 ? ` (round ${round}/${pl.concRounds})` : "";
                    const rprogress = (s: string) => progress(s + rtag);
                    const job: OursConcurrentJob = {
                        kind: "concurrent", modelPath: m.path, threads: opts.threads, batchSize: LOAD_DEFAULTS.batchSize, levels: opts.levels,
                        promptTokens: pl.concPrompt, genTokens: pl.concGen, repeat: pl.concRepeat, via: opts.via, repack: opts.repack, threadpool: opts.threadpool, flashAttention: opts.flashAttention,
                        ...(cprompts ? { prompts: cprompts } : {}),
                    };
                    const oc = await measured(c, "ours", rprogress,
                        () => runWorker<OursConcurrentResult>(path.join(dist, "worker-ours.js"), job, rprogress, WORKER_TIMEOUT), (r) => r.cpuMs);
                    oursRounds.push(oc);
                    cprompts = oc.prompts;
                    if (!cppBin) continue;
                    for (const level of opts.levels) {
                        const cpp = await measured(c, "cpp", rprogress, () => {
                            rprogress(`C++ loop: ${level} sequence(s) in one batch x${pl.concRepeat}`);
                            return runCppLoop(cppBin!, {
                                model: m.path, threads: opts.threads, promptIds: oc.prompts.slice(0, level).map((p) => p.ids),
                                genTokens: pl.concGen, sequences: level, repeat: pl.concRepeat,
                                ctx: oc.kvCacheSize, repack: opts.repack, threadpool: opts.threadpool, flashAttn: opts.flashAttention,
                            }, tmpDir, WORKER_TIMEOUT);
                        }, (r) => r.cpu_ms);
                        if (cpp.first_eog.some((e) => e >= 0)) c.notes.push(`C++ loop at ${level} sequences sampled EOS (steps ${cpp.first_eog.join(",")})`);
                        (cppByLevel.get(level) ?? cppByLevel.set(level, []).get(level)!).push(cpp);
                    }
                }
                c.via = oursRounds[0]!.viaNote;
                for (const oc of oursRounds) c.notes.push(...oc.notes);
                for (const level of opts.levels) {
                    const rounds = oursRounds.flatMap((oc) => oc.rounds.filter((r) => r.level === level));
                    for (const r of rounds) {
                        if (r.completionTokens.some((t) => t !== pl.concGen)) {
                            c.notes.push(`MISMATCH ours at ${level} requests: completion tokens ${r.completionTokens.join(",")} (budget ${pl.concGen}; ${r.finishReasons.join(",")})`);
                        }
                    }
                    const cpps = cppByLevel.get(level) ?? [];
                    const oursAgg = best(rounds.map((r) => r.aggregateTokS));
                    const cppAgg = best(cpps.flatMap((x) => x.aggregate_tok_s));
                    const oursE2e = best(rounds.map((r) => r.e2eTokS));
                    const cppE2e = best(cpps.flatMap((x) => x.e2e_aggregate_tok_s));
                    c.levels.push({
                        level,
                        ours: oursAgg,
                        oursE2e,
                        cpp: cppAgg,
                        cppE2e,
                        ratio: oursE2e / cppE2e,
                        decodeRatio: oursAgg / cppAgg,
                        oursRuns: rounds.map((r) => r.aggregateTokS),
                        cppRuns: cpps.flatMap((x) => x.aggregate_tok_s),
                    });
                }
                c.notes = [...new Set(c.notes)];
                for (const [label, loads] of Object.entries(c.load)) {
                    const worst = best(loads);
                    if (worst > 0.1) c.notes.push(`other processes used up to ${(worst * 100).toFixed(0)}% of the CPU while "${label}" ran: its numbers are less reliable`);
                }
                live.log(`${tag} concurrency: ${c.levels.map((l) => `${l.level}: ${fmtRate(l.oursE2e)}/${fmtRate(l.cppE2e)}`).join(", ")} tok/s (ours/C++, end to end)`);
            } catch (err) {
                c.errors.push((err as Error).message);
                live.log(`${tag} concurrency FAILED: ${(err as Error).message}`);
            }
        }
    }
    live.clear();

    // 5. Output.
    const cpu = os.cpus()[0]?.model?.trim() ?? "unknown CPU";
    const header = `phi-agent bench: ${opts.threads} thread(s), ${cpu}, ${os.availableParallelism()} logical cores, ` +
        `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, libraries ${path.relative(root, libDir)}`;
    const table = renderTable(reports, concurrency, header, defaultsRows) + setupErrors.map((e) => `! ${e}\n`).join("");
    process.stdout.write(table);

    const outFile = opts.json
        ? path.resolve(opts.json)
        : path.join(root, "bench", "results", `bench-${started.toISOString().replace(/[:.]/g, "-")}.json`);
    fs.mkdirSync(path.dirname(outFile), { recursive: true });
    const json = {
        version: 1,
        date: started.toISOString(),
        durationS: (Date.now() - started.getTime()) / 1000,
        machine: { cpu, logicalCores: os.availableParallelism(), totalMemBytes: os.totalmem(), node: process.version, platform: `${process.platform}-${process.arch}` },
        options: opts,
        libDir: path.relative(root, libDir),
        definitions: DEFINITIONS,
        models: reports,
        concurrency,
        defaults: defaultsRows,
        verdicts: verdicts(reports, concurrency, defaultsRows),
        setupErrors,
    };
    fs.writeFileSync(outFile, JSON.stringify(json, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2) + "\n");
    process.stdout.write(`\nJSON: ${path.relative(process.cwd(), outFile) || outFile}\n`);
    const failed = setupErrors.length > 0 || reports.some((r) => r.errors.length) || concurrency.some((c) => c.errors.length) || defaultsRows.some((d) => d.errors.length);
    if (failed) process.exitCode = 1;
}

const DEFINITIONS = {
    prompt: "prompt tokens / time to first token: prompt decoded in n_batch chunks + the first greedy sample (ours: usage.promptMs; C++: llama_time_us around the decodes and the sample; node-llama-cpp: JS clock to the first onToken). Best of the runs.",
    ttft: "time from the call to the first sampled token (ours: usage.promptMs). Best of the runs.",
    decode: "(generated tokens - 1) / time from the first to the last token, greedy, after the 128-token prompt. Best of the runs.",
    loadCold: "first load in a fresh process: ours PhiModel.load (addon + libraries + model + context); C++ backend registry + model + context; node-llama-cpp getLlama + loadModel + createContext.",
    loadWarm: "second load in the same process (file in the page cache, libraries loaded).",
    peakRss: "VmHWM of the side's own process (includes the mmapped weights that were touched).",
    aggregate: "concurrency e2e: S × generated / wall time from sending the S requests to the last token (prompts included), both sides. decode: Σ(generated - 1) / decode time; C++: from the S first tokens to the end; ours: the longest usage.generationMs (it includes the steps that decoded the prompts of requests admitted later, so it reads low). Ratios in verdicts use e2e.",
    ratios: "speed ratios: ours/other for tok/s, other/ours for times (> 1 = ours faster).",
};

function bar(f: number, width = 20): string {
    const n = Math.max(0, Math.min(width, Math.round(f * width)));
    return "[" + "#".repeat(n) + ".".repeat(width - n) + "]";
}

function pad(s: string, n: number, right = false): string {
    return right ? s.padEnd(n) : s.padStart(n);
}

function renderTable(reports: ModelReport[], conc: ConcurrencyReport[], header: string, defaults: DefaultsReport[] = []): string {
    const lines: string[] = [header, ""];
    const cols = ["", "load cold", "load warm", "warm mmap", "prompt128", "prompt512", "TTFT128", "TTFT512", "decode", "dec@512", "peak RSS"];
    const w = [22, 10, 10, 10, 10, 10, 9, 9, 9, 9, 9];
    const row = (cells: string[]) => cells.map((c, i) => pad(c, w[i]!, i === 0)).join(" ");
    lines.push(row(cols));
    lines.push(row(["", "", "", "no repack", "tok/s", "tok/s", "", "", "tok/s", "tok/s", ""]));
    const names: Record<Side, string> = { ours: "ours", cpp: "C++ loop", nlc: "node-llama-cpp" };
    for (const r of reports) {
        lines.push(`${r.shape} ${r.type}  (${(r.fileBytes / 1e6).toFixed(0)} MB, ${r.plan.genTokens} decoded tokens after 128, ${r.plan.shortGenTokens} after 512, best of ${r.plan.rounds}×${r.plan.repeat} runs)`);
        for (const side of ["ours", "cpp", "nlc"] as Side[]) {
            const s = r.summary[side];
            if (!s) continue;
            lines.push(row([`  ${names[side]}`, fmtMs(s.loadColdMs), fmtMs(s.loadWarmMs), fmtMs(s.loadWarmMmapMs), fmtRate(s.prompt[128]!), fmtRate(s.prompt[512]!),
                fmtMs(s.ttft[128]!), fmtMs(s.ttft[512]!), fmtRate(s.decode), fmtRate(s.decodeLong), fmtMb(s.peakRssKb)]));
        }
        for (const [label, q] of [["ours/C++", r.ratios.vsCpp], ["ours/node-llama-cpp", r.ratios.vsNlc]] as const) {
            if (!q) continue;
            lines.push(row([`  ${label}`, "", fmtRatio(q.loadWarm!), fmtRatio(q.loadWarmMmap!), fmtRatio(q.prompt128!), fmtRatio(q.prompt512!), fmtRatio(q.ttft128!),
                fmtRatio(q.ttft512!), fmtRatio(q.decode!), fmtRatio(q.decodeLong!), ""]));
        }
        for (const c of r.checks) lines.push(`  · ${c}`);
        for (const e of r.errors) lines.push(`  ! ${e.split("\n").slice(0, 4).join("\n    ")}`);
    }
    for (const c of conc) {
        lines.push("");
        lines.push(`Concurrent requests, ${c.shape} ${c.type}: ${c.promptTokens}-token prompts, ${c.genTokens} tokens each; aggregate tok/s`);
        lines.push(`  ours = ${c.via}; C++ = the same prompts as S sequences in one llama_decode batch`);
        lines.push(`  e2e = all generated tokens / wall time from sending to the last token (prompts included): the comparable figure;`);
        lines.push(`  decode = Σ(generated - 1) / decode time (ours: longest usage.generationMs, which also holds the steps that`);
        lines.push(`  decoded later requests' prompts, so ours reads low when prompts are not negligible)`);
        lines.push("  " + ["requests", "ours e2e", "C++ e2e", "ours/C++", "ours dec", "C++ dec", "ours/C++"].map((h, i) => pad(h, i ? 10 : 8)).join(" "));
        for (const l of c.levels) {
            lines.push("  " + [String(l.level), fmtRate(l.oursE2e), fmtRate(l.cppE2e), fmtRatio(l.ratio), fmtRate(l.ours), fmtRate(l.cpp), fmtRatio(l.decodeRatio)]
                .map((h, i) => pad(h, i ? 10 : 8)).join(" "));
        }
        for (const n of c.notes) lines.push(`  · ${n}`);
        for (const e of c.errors) lines.push(`  ! ${e.split("\n").slice(0, 4).join("\n    ")}`);
    }
    for (const d of defaults) {
        lines.push("");
        lines.push(`${d.requests} concurrent generate() calls with default options, ${d.shape} ${d.type}: ${d.promptTokens}-token prompts, contextSize = kvCacheSize = ${d.contextSize}, sequences ${d.requests}`);
        lines.push(`  (no maxTokens: the calls share the KV cache and end with "context"; C++ = the same prompts as ${d.requests} sequences x ${d.cppGenTokens} tokens in one batch)`);
        const c = d.oursRuns[0]?.completionTokens ?? [];
        lines.push(`  tokens per call: ${c.join(", ")} (${[...new Set(d.oursRuns.flatMap((r) => r.finishReasons))].join(", ")})`);
        lines.push(`  first token (ms after the calls): ${d.firstTokenMs.map((x) => x.toFixed(0)).join(", ")}; first call done at ${Math.min(...d.doneMs).toFixed(0)} ms`);
        lines.push(`  e2e tok/s: ours ${fmtRate(d.ours)}, C++ ${fmtRate(d.cpp)}, ours/C++ ${fmtRatio(d.ratio)} (best of ${d.oursRuns.length} / ${d.cppRuns.length} runs)`);
        for (const n of d.notes) lines.push(`  · ${n}`);
        for (const e of d.errors) lines.push(`  ! ${e.split("\n").slice(0, 4).join("\n    ")}`);
    }
    const v = verdicts(reports, conc, defaults);
    if (v.length) {
        lines.push("");
        lines.push("Targets (issue 5):");
        for (const x of v) lines.push(`  ${x.pass === undefined ? "n/a " : x.pass ? "PASS" : "FAIL"}  ${x.what}: ${x.value}`);
    }
    return lines.join("\n") + "\n";
}

function verdicts(reports: ModelReport[], conc: ConcurrencyReport[], defaults: DefaultsReport[] = []): { what: string; value: string; pass?: boolean }[] {
    const out: { what: string; value: string; pass?: boolean }[] = [];
    const find = (shape: string, type: string) => reports.find((r) => r.shape === shape && r.type === type);
    const ge = (x: number | undefined, t: number) => (x === undefined || !Number.isFinite(x) ? undefined : x >= t);
    const phiQ4 = find("phi2", "q4_k_m");
    if (phiQ4?.ratios.vsCpp) {
        out.push({ what: "phi2 q4_k_m decode ≥ 0.97× C++", value: fmtRatio(phiQ4.ratios.vsCpp.decode!), pass: ge(phiQ4.ratios.vsCpp.decode, 0.97) });
        for (const n of [128, 512]) {
            const x = phiQ4.ratios.vsCpp[`prompt${n}`];
            out.push({ what: `phi2 q4_k_m prompt${n} ≥ 0.97× C++`, value: fmtRatio(x!), pass: ge(x, 0.97) });
        }
    }
    if (phiQ4?.summary.ours) {
        const ms = phiQ4.summary.ours.loadWarmMs;
        out.push({ what: "phi2 q4_k_m warm load < 0.5 s (as measured, repack on)", value: fmtMs(ms), pass: Number.isFinite(ms) ? ms < 500 : undefined });
        const mm = phiQ4.summary.ours.loadWarmMmapMs;
        if (Number.isFinite(mm)) out.push({ what: "phi2 q4_k_m warm load < 0.5 s with repack: false", value: fmtMs(mm), pass: mm < 500 });
    }
    for (const r of reports) {
        const s = r.summary.ours;
        const info = (r.raw.ours?.[0] as { info?: { layers: number; embeddingLength: number } } | undefined)?.info;
        if (!s || !info) continue;
        // f16 K and V for every layer and context cell
        // Phi-2 is multi-head attention: head dim × KV heads = the embedding length
        const kvBytes = kvCacheBytes({ blockCount: info.layers, headDim: info.embeddingLength, headCountKV: 1 }, r.plan.contextSize);
        const limitKb = (r.fileBytes + kvBytes + 150e6) / 1024;
        out.push({
            what: `${r.shape} ${r.type} peak RSS ≤ file + KV cache + 150 MB`,
            value: `${fmtMb(s.peakRssKb)} vs ${fmtMb(limitKb)} (file ${fmtMb(r.fileBytes / 1024)} + KV ${fmtMb(kvBytes / 1024)} + 150e6 bytes; MB = 2^20 bytes)`,
            pass: s.peakRssKb <= limitKb,
        });
    }
    for (const r of reports.filter((x) => x.shape === "tiny")) {
        if (r.ratios.vsCpp) out.push({ what: `tiny ${r.type} decode ≥ 0.8× C++`, value: fmtRatio(r.ratios.vsCpp.decode!), pass: ge(r.ratios.vsCpp.decode, 0.8) });
    }
    for (const r of reports) {
        const q = r.ratios.vsNlc;
        if (!q) continue;
        const keys = ["prompt128", "prompt512", "decode", "decodeLong"];
        const worst = Math.min(...keys.map((k) => q[k]!));
        out.push({ what: `${r.shape} ${r.type} ahead of node-llama-cpp (prompt128, prompt512, decode, dec@512)`, value: `min ${fmtRatio(worst)}`, pass: ge(worst, 1) });
    }
    for (const c of conc) {
        const l4 = c.levels.find((l) => l.level === 4);
        if (l4) out.push({ what: `${c.shape} ${c.type} 4 concurrent ≥ 0.95× C++ 4-sequence batch (e2e)`, value: `${fmtRate(l4.oursE2e)} vs ${fmtRate(l4.cppE2e)} tok/s = ${fmtRatio(l4.ratio)} (decode-only ${fmtRatio(l4.decodeRatio)})`, pass: ge(l4.ratio, 0.95) });
    }
    for (const d of defaults) {
        if (!d.firstTokenMs.length) continue;
        out.push({ what: `${d.shape} ${d.type} ${d.requests} concurrent default calls: every first token before any call finishes (issue 9)`, value: `last first token ${Math.max(...d.firstTokenMs).toFixed(0)} ms, first done ${Math.min(...d.doneMs).toFixed(0)} ms`, pass: d.allFirstBeforeAnyDone });
        out.push({ what: `${d.shape} ${d.type} ${d.requests} concurrent default calls ≥ 0.95× C++ ${d.requests}-sequence batch (e2e)`, value: `${fmtRate(d.ours)} vs ${fmtRate(d.cpp)} tok/s = ${fmtRatio(d.ratio)}`, pass: ge(d.ratio, 0.95) });
    }
    return out;
}

main().catch((err) => {
    process.stderr.write(`\nbench: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
});
