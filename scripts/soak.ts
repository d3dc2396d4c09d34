/**
 * Soak test: many load → generate → dispose cycles in one process, printing the resident set size (RSS) per cycle
 * and the drift between an early cycle and the last. A leak of native memory (model, context, KV cache, batches,
 * thread-safe functions) shows up as RSS that keeps growing.
 *
 *   node dist/scripts/soak.js [--cycles 50] [--from 5] [--window 5] [--tokens 32] [--max-drift 5] [--model PATH]
 *                             [--concurrent 4] [--threads 1] [--default-malloc]
 *
 * Each cycle loads the model (default: the tiny f32 test model, written on first use), runs `--concurrent` generate()
 * calls of `--tokens` tokens together, disposes the model, runs a full GC and samples RSS. Exit code 1 when the RSS
 * after the last cycles differs from the RSS after cycle `--from` by more than `--max-drift` percent, or the
 * least-squares trend over those cycles adds up to more than that. Cycles are compared as medians of `--window`
 * cycles (cycle 5 = median of cycles 5..9, cycle 50 = median of 46..50), because RSS after dispose moves between a
 * few levels ~15 MB apart from one cycle to the next (allocator and thread caches), with no trend.
 *
 * Allocator noise: with glibc's defaults, RSS after dispose jumps between two levels ~40 MB apart for the first
 * dozen or so cycles (its dynamic mmap threshold rises after the first large free, so later llama.cpp buffers come
 * from the heap and are kept for reuse instead of being unmapped). That is caching, not a leak, but it hides one.
 * On Linux the script therefore runs its cycles in a child process with MALLOC_MMAP_THRESHOLD_=1048576 (a fixed
 * threshold: buffers ≥ 1 MiB are always mmapped and given back on free), so RSS tracks live memory. Pass
 * --default-malloc to measure with the allocator's defaults instead.
 */
import { intFlag, numberFlag, scriptArgs } from "./args.js";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { PhiModel } from "../src/index.js";
import { ensureTestModel } from "../src/testModel/makeTestModel.js";


function fullGc(): () => void {
    const g = (globalThis as { gc?: () => void }).gc;
    if (g) return g;
    setFlagsFromString("--expose-gc");
    return runInNewContext("gc") as () => void;
}

const USAGE = "usage: node dist/scripts/soak.js [--cycles 50] [--from 5] [--window 5] [--tokens 32] [--max-drift 5] [--model PATH] [--concurrent 4] [--threads 1] [--default-malloc]";

function soakArgs() {
    return scriptArgs("soak", USAGE, {
        cycles: { type: "string" }, from: { type: "string" }, tokens: { type: "string" }, concurrent: { type: "string" },
        "max-drift": { type: "string" }, window: { type: "string" }, threads: { type: "string" }, model: { type: "string" },
        "default-malloc": { type: "boolean" },
    }, (v) => ({
        cycles: intFlag("cycles", v.cycles, 1) ?? 50,
        from: intFlag("from", v.from, 1) ?? 5,
        tokens: intFlag("tokens", v.tokens, 1) ?? 32,
        concurrent: intFlag("concurrent", v.concurrent, 1) ?? 4,
        maxDrift: numberFlag("max-drift", v["max-drift"], 0) ?? 5,
        window: intFlag("window", v.window, 1) ?? 5,
        threads: intFlag("threads", v.threads, 1) ?? 1,
        model: v.model,
        defaultMalloc: v["default-malloc"] === true,
    }));
}

const mb = (b: number) => (b / 1024 / 1024).toFixed(1);

async function main(): Promise<void> {
    const { cycles, from, tokens, concurrent, maxDrift, window, threads, model } = soakArgs();
    if (from >= cycles) {
        console.error(`--from (${from}) must be less than --cycles (${cycles})`);
        process.exit(2);
    }
    const modelPath = model ?? await ensureTestModel({ shape: "tiny", type: "f32", seed: 1 });
    const gc = fullGc();
    const settle = async () => {
        for (let i = 0; i < 3; i++) {
            gc();
            await new Promise((r) => setTimeout(r, 10));
        }
    };
    await settle();
    console.log(`soak: ${cycles} cycles of load → ${concurrent}× generate(${tokens} tokens) → dispose; model ${modelPath}`);
    const threshold = process.env["MALLOC_MMAP_THRESHOLD_"];
    console.log(threshold ? `glibc MALLOC_MMAP_THRESHOLD_=${threshold} (fixed mmap threshold, see the script's header)` : "allocator defaults");
    console.log(`start: rss ${mb(process.memoryUsage().rss)} MB`);

    const after: number[] = [];
    let reference: string | undefined;
    const t0 = Date.now();
    for (let c = 1; c <= cycles; c++) {
        const model = await PhiModel.load({ modelPath, contextSize: 256, threads });
        const results = await Promise.all(Array.from({ length: concurrent }, () =>
            model.generate("The benefits of multi-agent systems include", { maxTokens: tokens })));
        const loadedRss = process.memoryUsage().rss;
        const text = results[0]!.text;
        reference ??= text;
        if (results.some((r) => r.text !== reference || r.tokens.length !== tokens)) {
            console.error(`cycle ${c}: a generation differed from the first cycle's`);
            process.exit(1);
        }
        await model.dispose();
        await settle();
        const m = process.memoryUsage();
        after.push(m.rss);
        console.log(`cycle ${String(c).padStart(3)}: rss ${mb(m.rss).padStart(7)} MB after dispose ` +
            `(${mb(loadedRss).padStart(7)} MB while loaded; JS heap ${mb(m.heapUsed)} MB, external ${mb(m.external)} MB)`);
    }
    // RSS after dispose moves between a few levels ~15 MB apart from cycle to cycle (allocator and thread caches),
    // so single cycles are compared as medians of a window: cycles from..from+w-1 against the last w cycles.
    const median = (xs: number[]) => { const v = [...xs].sort((a, b) => a - b); return v[Math.floor(v.length / 2)]!; };
    const w = Math.min(window, Math.floor((cycles - from + 1) / 2));
    const base = median(after.slice(from - 1, from - 1 + w));
    const last = median(after.slice(cycles - w));
    const drift = ((last - base) / base) * 100;
    // least-squares slope over cycles from..N: a leak is a steady climb
    const ys = after.slice(from - 1);
    const mx = (ys.length - 1) / 2, my = ys.reduce((a, b) => a + b, 0) / ys.length;
    const slope = ys.reduce((a, y, i) => a + (i - mx) * (y - my), 0) / (ys.reduce((a, _y, i) => a + (i - mx) ** 2, 0) || 1);
    const trendPct = (slope * (ys.length - 1) / base) * 100;
    console.log(`\nRSS after dispose: cycle ${from} ${mb(after[from - 1]!)} MB, cycle ${cycles} ${mb(after[cycles - 1]!)} MB; ` +
        `min ${mb(Math.min(...ys))} / max ${mb(Math.max(...ys))} MB over cycles ${from}..${cycles}`);
    console.log(`median of cycles ${from}..${from + w - 1}: ${mb(base)} MB; median of cycles ${cycles - w + 1}..${cycles}: ${mb(last)} MB; ` +
        `drift ${drift >= 0 ? "+" : ""}${drift.toFixed(2)}% (limit ±${maxDrift}%)`);
    console.log(`trend over cycles ${from}..${cycles}: ${(slope / 1024).toFixed(1)} KB/cycle = ${trendPct >= 0 ? "+" : ""}${trendPct.toFixed(2)}% ` +
        `(limit ±${maxDrift}%); ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    if (Math.abs(trendPct) > maxDrift) {
        console.log("SOAK FAILED: RSS keeps growing");
        process.exitCode = 1;
        return;
    }
    if (Math.abs(drift) > maxDrift) {
        console.log("SOAK FAILED: RSS drifted more than the limit");
        process.exitCode = 1;
    } else {
        console.log("soak passed: RSS flat");
    }
}

if (process.platform === "linux" && process.env["MALLOC_MMAP_THRESHOLD_"] === undefined && !soakArgs().defaultMalloc) {
    const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
        stdio: "inherit",
        env: { ...process.env, MALLOC_MMAP_THRESHOLD_: "1048576" },
    });
    process.exit(child.status ?? 1);
} else main().catch((err) => {
    console.error(err);
    process.exit(1);
});
